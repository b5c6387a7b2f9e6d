"""The small op set every protocol and the engine are written against — one definition, two backends.

A protocol's GELU or softmax is written ONCE in terms of these ops. It then runs
  * on :class:`pmpc.mpc.crypten_ops.CrypTenOps` — secret-shared ``CrypTensor`` values: the real 2-party protocol, with
    real rounds and bytes, and
  * on :class:`TorchOps` — plain ``torch.Tensor`` values: an exact emulation of the same arithmetic
    (float64 by default; ``fxp_bits`` rounds secret products to the fixed-point grid as MPC does).
Values of either kind support the arithmetic operators with public scalars/tensors, ``.sum``,
``.reshape``, ``.transpose``, ``.matmul`` and indexing natively; everything whose implementation
differs between backends (comparisons, sharing, reveal, bit access, concatenation) goes through
an ``Ops`` method. Composite helpers (``select``, ``poly``, ``max``, ``normalize``) are defined here
once, on top of those primitives, so both backends perform identical arithmetic.

Round discipline: a round costs the same for one value or thousands, so every helper that needs
several thresholds or several products issues them as ONE batched call, independent steps run
side by side (:meth:`Ops.parallel`: their openings share rounds), and a product whose result only
feeds ring-integer arithmetic or a bit read stays exact on its product's scale (no truncation).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from pmpc.accounting import Tracker

# |activation| bound the protocols state for comparisons on element-wise inputs (GELU/SiLU
# arguments, attention scores, softmax inputs): two such values differ by < 2^15, which a 32-bit
# lane holds EXACTLY at 16 fraction bits (``Ops.lane``). Real LLMs stay orders of magnitude below;
# sums of squares, softmax denominators and residual streams do not, and keep the whole ring.
ACT_BOUND = 2.0 ** 14
# extra fraction bits of a public weight matrix under MPC (``CrypTenOps.matmul``)
WEIGHT_EXTRA_BITS = 8
# fraction bits of a public factor folded into a bit extraction (``Ops.bits(scale=...)``)
BITS_SCALE_FRAC = 16
# the softmax max may compare all pairs of a row in one level up to this many comparisons a call
# (decode rows: 9 x 41 keys = 7,380, ~1 MB opened a layer): 9 rounds with one adder circuit, a
# candidate plan that wins where the gates' levels would take more rounds
ALL_PAIRS_MAX = 1 << 13
# the MPC runtime's default rule for a one-round comparison gate (``pmpc.mpc.gates.DCF_MAX_LEVELS``,
# elements x (lane bits - 1)), for plans that depend on it (``Ops.max``); a test holds them equal
ONE_ROUND_LEVELS = 1 << 14


class Ops:
    """Backend-neutral operations. Subclasses implement the primitives marked ``primitive``."""

    kind = "abstract"
    fxp_bits = 16  # fractional bits of the fixed-point encoding (CrypTen's default)

    def __init__(self, tracker: Tracker | None = None):
        self.tracker = tracker or Tracker(None)

    # -- accounting ------------------------------------------------------------------------
    def scope(self, name: str):
        """Attribute the rounds/bytes/time spent inside to ``name`` (nested scopes allowed)."""
        return self.tracker.scope(name)

    # -- primitives --------------------------------------------------------------------------
    def share(self, t: torch.Tensor, src: int = 0):  # primitive
        raise NotImplementedError

    def reveal(self, x, dst: int | None = None) -> torch.Tensor:  # primitive
        raise NotImplementedError

    def ltz(self, x, bound: float | None = None, ulp: float | None = None):
        """1 where x < 0 else 0 (same kind as x). ``bound``/``ulp``: see :meth:`lane`."""
        lane = self.lane(bound, ulp)
        if lane is None:
            return self._ltz_ring(x)
        return self.lift(self._ltz_lane(x, *lane))

    def ltz_int(self, x, bound: float | None = None, ulp: float | None = None):
        """``ltz`` as an exact ring integer 0/1 (no fixed-point scale): products of such bits never
        truncate."""
        lane = self.lane(bound, ulp)
        return self._ltz_ring_int(x) if lane is None else self._ltz_lane(x, *lane)

    def lane(self, bound: float | None, ulp: float | None = None):
        """The ring slice a comparison needs, as (lane bits, dropped low bits), or None for the
        whole 64-bit ring.

        A caller that knows ``|x| < bound`` (real units) and needs the sign only to a resolution of
        ``ulp`` lets the comparison read bits [drop, drop + lane) of the encoding: the sign of x is
        the top bit of that slice when 2^(lane-1) > bound 2^(fxp - drop). Lanes of 8/16/32 bits are
        packed 64/lane to a ring word, so the adder circuit (the cost of a comparison) runs on
        fewer words and fewer levels: SIRNN's and BOLT's point that a comparison should cost the
        bits it needs, not the ring's. ``ulp`` None = exact (drop 0). With drop > 0 a value in
        [0, 2^(drop - fxp)) may read as negative (the low bits' carry is lost)."""
        if bound is None:
            return None
        drop = 0 if ulp is None else max(0, min(self.fxp_bits, self.fxp_bits + math.floor(math.log2(ulp))))
        need = 1 + math.ceil(math.log2(bound)) + self.fxp_bits - drop
        for lane in (8, 16, 32):
            if need <= lane:
                return lane, drop
        return None

    def lift(self, b):  # primitive: a ring-integer 0/1 as a fixed-point 0/1
        raise NotImplementedError

    def _ltz_ring(self, x):  # primitive: sign over the whole ring, fixed-point 0/1
        raise NotImplementedError

    def _ltz_ring_int(self, x):  # primitive: sign over the whole ring, ring-integer 0/1
        raise NotImplementedError

    def _ltz_lane(self, x, lane: int, drop: int):  # primitive: sign of a packed ring slice, ring integer
        raise NotImplementedError

    def bits(self, x, positions: Sequence[int]):  # primitive: bits of the fixed-point encoding
        raise NotImplementedError

    def from_int(self, v, frac_bits: int):  # primitive: read an exact ring integer as v / 2^frac_bits
        raise NotImplementedError

    def lookup(self, d, k: int, tables):  # primitive
        """``tables[g][d[g]]`` for exact ring-integer indices ``d`` (stacked, [G, ...], each in
        [0, 2^k)) and G public tables of 2^k reals: fixed-point values (the entries rounded to
        2^-f, exact thereafter). Under MPC one round for all G (dealer one-hot vectors,
        :mod:`pmpc.mpc.gates`); SIRNN's lookup tables."""
        raise NotImplementedError

    def slice_lookup(self, x, lo: int, k: int, table):  # primitive
        """``table[s]`` for s = bits [lo, lo + k) of the fixed-point encoding of the secret ``x``
        (floor(x 2^(f - lo)) mod 2^k, exactly) and a public table of 2^k reals (rounded to
        2^-f): a bit slice and a table in one primitive, SIRNN's table-driven initial guesses.
        Under MPC two rounds (:func:`pmpc.mpc.gates.slice_lookup`): the carry of the parties'
        low bits (a one-round lane sign) and a one-round dealer one-hot lookup."""
        raise NotImplementedError

    def _table_ints(self, tables, k: int):
        """The tables as ring integers round(T 2^f), [G, 2^k] (float: no rounding emulation)."""
        t = torch.as_tensor(np.asarray(tables, dtype=np.float64))
        if t.shape[-1] != 1 << k:
            raise ValueError(f"a {k}-bit lookup needs tables of {1 << k} entries")
        return self.fixed(t, self.fxp_bits)

    def cat(self, xs, dim=0):  # primitive
        raise NotImplementedError

    def stack(self, xs, dim=0):  # primitive
        raise NotImplementedError

    def is_secret(self, x) -> bool:  # primitive
        raise NotImplementedError

    def parallel(self, *fns) -> list:
        """Run the callables ``fns`` (no arguments; independent of each other) and return their
        results in order. Under MPC their openings share rounds (:mod:`pmpc.mpc.concurrent`): the
        branches cost the rounds of the longest, not the sum. Here: one after the other, the
        same arithmetic."""
        return [f() for f in fns]

    def mul(self, x, y):
        """Elementwise product of two secret values (one Beaver round under MPC)."""
        return x * y

    def matmul(self, x, y, truncate: bool = True):
        """x @ y. ``truncate=False``: a product that is only ever revealed (the output layer's
        logits) may stay on its raw fixed-point scale under MPC: its truncation would cost a
        round and a pass over every element for nothing the reader needs. Plain tensors have no
        scale."""
        return x.matmul(y)

    def matmul_residual(self, x, y, residual):
        """``h = residual + x @ y`` and the split of h that :meth:`sum_squares` starts with
        (the ring integer floor(h 2^(f/2)), ``split``), for the pre-norm residual stream whose
        next step is a norm. Under MPC, with y public, both come from ONE truncation of the
        product's raw sum (:class:`pmpc.mpc.crypten_ops.CrypTenOps`): the norm's first round
        rides on the linear layer's. Here: the same values, one after the other."""
        h = residual + self.matmul(x, y)
        return h, self.idiv(self.as_int(h), 2 ** (self.fxp_bits // 2))

    def public_operands(self, W: dict, names) -> dict:
        """Ready the public weights ``names`` of ``W`` (right operands of products, the same at
        every call) once, in whatever form this backend multiplies them in: plain tensors need
        nothing."""
        return W

    def fix_operands(self, W: dict, names) -> dict:
        """Ready the secret weights ``names`` of ``W`` (right operands of products, the same at
        every call) for products that do not re-open them: see :mod:`pmpc.mpc.fixed_operand`.
        Plain tensors have nothing to open."""
        return W

    def kv_append(self, cache, k, v, name: str):
        """A layer's KV cache ``cache`` ([keys, values]; None before the first step) grown by this
        step's ``k`` and ``v`` along dim 2; returns the whole keys and values, the right operands
        of the attention products. ``name`` names the layer, for a backend that keeps state per
        cache (under MPC each cached row is opened once, not at every token). A cache of batch
        one grown by rows of a batch B (a shared prefix, :meth:`pmpc.engine.Engine.prefill`)
        becomes every row's first."""
        if cache[0] is not None:
            k, v = extend_rows(cache[0], k, self.cat), extend_rows(cache[1], v, self.cat)
        cache[0], cache[1] = k, v
        return k, v

    def combine(self, products=(), terms=(), const=0.0, bound: float = ACT_BOUND, coef_frac: int | None = None):
        """``sum_i c_i a_i b_i + sum_j d_j v_j + const`` for public coefficients (scalars or
        tensors) and secret a, b, v: the products in ONE batched Beaver round and the whole sum
        truncated ONCE. ``products``: (c, a, b) triples; ``terms``: (d, v) pairs.

        Why: under 2-party MPC a truncation costs a round (the exact truncation's wrap bit), and
        CrypTen truncates after every product AND after every multiplication by a public float.
        Here the public coefficients stay ring integers ``round(c 2^k)`` on the products' raw
        2^(2f) scale (the values' 2^f without products) and one truncation by 2^(f+k) (2^k)
        removes every scale at once. k is the fewest bits that hold every coefficient exactly
        (1.5 needs 1), at most what ``bound`` (on |result|) leaves of the ring below the exact
        truncation's 2^62 limit; only the final sum must fit, intermediate terms may wrap.
        Integer coefficients and no products: no truncation, no round. ``coef_frac`` fixes k
        instead (the caller knows the products' real scale: a ring-integer flag times a value
        sits on 2^f, not 2^(2f), and leaves the coefficients more room than the rule above)."""
        raise NotImplementedError

    def coef_bits(self, coefs, has_products: bool, bound: float, max_k: int | None = None) -> int:
        """The k of :meth:`combine`: fewest fraction bits that represent every coefficient
        exactly, capped by the ring room that ``bound`` leaves (and at 24 bits of precision)."""
        scale = 2 * self.fxp_bits if has_products else self.fxp_bits
        cap = min(24 if max_k is None else max_k, 61 - scale - max(0, math.ceil(math.log2(max(bound, 1.0)))))
        if cap < 0:
            raise ValueError(f"combine: a result bounded by {bound:g} does not fit the ring at this scale")
        for k in range(cap + 1):
            if all(_integral(c * 2.0 ** k) for c in coefs):
                return k
        return cap

    def mul_scaled(self, x, y, scale: float, add=(), const=0.0, bound: float = ACT_BOUND):
        """``scale x y + sum d v + const``: one product, the public factor and the affine terms
        ride on its truncation (see :meth:`combine`)."""
        return self.combine([(scale, x, y)], add, const, bound)

    def mul_many(self, pairs, scales=None, bound: float = ACT_BOUND, max_k: int | None = None) -> list:
        """``[s_i a_i b_i]`` for (a_i, b_i) in ``pairs`` (any shapes: each pair broadcasts on its
        own): ONE Beaver round and ONE truncation for all, the public ``scales`` (default 1)
        riding on it. ``max_k`` caps the scales' fraction bits where an operand sits on a larger
        scale than the standard one (its product leaves less room in the ring). ``bound``: on
        every |result|, or a list, one per pair."""
        raise NotImplementedError

    def _slots(self, pairs, scales, bound, max_k):
        """Per pair of :meth:`mul_many`: its scale, its bound and its coefficient bits."""
        n = len(pairs)
        scales = [1.0] * n if scales is None else list(scales)
        bounds = list(bound) if isinstance(bound, (list, tuple)) else [bound] * n
        return scales, bounds, [self.coef_bits([c], True, b, max_k) for c, b in zip(scales, bounds)]

    def int_combine(self, terms, const=0.0):
        """``sum_i c_i b_i + const`` for ring-integer b_i (``ltz_int``, ``bits(..., lift=False)``)
        and public c_i: the coefficients as integers round(c 2^f), so the fixed-point result
        needs no truncation: local, exact up to the coefficients' rounding to 2^-f."""
        fb = self.fxp_bits
        acc = None
        for c, b in terms:
            t = b * self.fixed(c, fb)
            acc = t if acc is None else acc + t
        return self.from_int(acc + self.fixed(const, fb), fb)

    def int_dot(self, b, coefs):
        """``sum_i coefs_i b[i]`` over the first dim of ring integers ``b`` and public integer
        coefficients: one local broadcast product and sum, exact (modulo 2^64 under MPC; the
        emulation's float64 is exact below 2^53)."""
        c = torch.tensor(coefs, dtype=torch.long).reshape(-1, *[1] * (b.dim() - 1))
        return (b * c).sum(0)

    def fixed(self, c, bits: int):
        """A public coefficient on the 2^-bits grid, as the ring integer round(c 2^bits)."""
        return _round_coef(c, bits)

    # -- composites: one definition for both backends ----------------------------------------
    def lt(self, x, thresholds: float | Sequence[float], bound: float | None = None, ulp: float | None = None,
           integer: bool = False):
        """``x < c`` as 0/1 values. Several thresholds are compared in ONE batched call and
        returned as a list, in the order given. ``bound`` bounds |x - c| (see :meth:`lane`).
        ``integer``: as ring integers (:meth:`ltz_int`): a product with one needs no truncation."""
        ltz = self.ltz_int if integer else self.ltz
        if isinstance(thresholds, (int, float)):
            return ltz(x - float(thresholds), bound, ulp)
        diffs = self.stack([x - float(c) for c in thresholds])
        flags = ltz(diffs, bound, ulp)
        return [flags[i] for i in range(len(thresholds))]

    def ge(self, x, thresholds, bound: float | None = None, ulp: float | None = None, integer: bool = False):
        r = self.lt(x, thresholds, bound, ulp, integer)
        return [1 - f for f in r] if isinstance(r, list) else 1 - r

    def select(self, b, x, y):
        """``b ? x : y`` for a 0/1 value ``b``: y + b (x - y), one product."""
        return y + self.mul(b, x - y)

    def abs(self, x):
        return self.mul(x, 1 - 2 * self.ltz(x))

    def relu(self, x):
        return self.mul(x, 1 - self.ltz(x))

    def square(self, x):
        return self.mul(x, x)

    def powers(self, x, n: int) -> list:
        """[x, x^2, ..., x^n] in ceil(log2 n) rounds: each level multiplies the known powers by
        the highest one in one batched product (never ``CrypTensor.pow``, wrong for odd p >= 5)."""
        terms = [x]
        while len(terms) < n:
            top = terms[-1]
            k = min(len(terms), n - len(terms))
            batch = self.mul(self.stack(terms[:k]), self.stack([top] * k))
            terms.extend(batch[i] for i in range(k))
        return terms[:n]

    def poly(self, x, coeffs: Sequence[float], bound: float = ACT_BOUND):
        """sum_i coeffs[i] * x**i (coefficients low to high). The powers below the last level come
        from :meth:`powers`; the last level's products and every coefficient go into ONE
        :meth:`combine`: ceil(log2 deg) product rounds plus one truncation, however many terms.
        ``bound``: on |result| (a tighter bound keeps more bits of the coefficients)."""
        coeffs = [float(c) for c in coeffs]
        deg = len(coeffs) - 1
        if deg == 0:
            return x * 0.0 + coeffs[0]
        known = [x]
        while 2 * len(known) < deg:
            known = known + self._next_level(known)
        m = len(known)
        prods = [(coeffs[m + 1 + j], known[j], known[-1]) for j in range(deg - m) if coeffs[m + 1 + j] != 0.0]
        lin = [(coeffs[i + 1], known[i]) for i in range(m) if coeffs[i + 1] != 0.0]
        return self.combine(prods, lin, coeffs[0], bound=bound)

    def _next_level(self, known: list) -> list:
        """x^(m+1) .. x^(2m) from [x .. x^m] in one batched product."""
        top = known[-1]
        batch = self.mul(self.stack(known), self.stack([top] * len(known)))
        return [batch[i] for i in range(len(known))]

    def one_round_comparisons(self, elements: int, lane: int) -> bool:
        """Whether ``elements`` comparisons on a ``lane``-bit lane cost one round (a dealer-keyed
        gate under MPC): the MPC runtime's default rule (:func:`pmpc.mpc.gates.use_dcf`,
        ``auto``), so that the emulation takes the plans MPC takes by default."""
        return elements * (lane - 1) <= ONE_ROUND_LEVELS

    def max_plan(self, rows: int, n: int, fan_in: int = 8) -> list:
        """:meth:`_search_max_plan`, once per shape and comparison rule (a decode step asks it
        the same question at every layer; the search is quadratic in ``n``)."""
        memo = self.__dict__.setdefault("_max_plans", {})
        key = (rows, n, fan_in, self.comparison_rule())
        if key not in memo:
            memo[key] = self._search_max_plan(rows, n, fan_in)
        return memo[key]

    def comparison_rule(self) -> str:
        """The name of the rule :meth:`one_round_comparisons` follows (a backend with a switch
        names its setting): what a memoised plan depends on."""
        return "auto"

    def _search_max_plan(self, rows: int, n: int, fan_in: int = 8) -> list:
        """The group sizes of :meth:`max`'s levels for ``rows`` rows of ``n`` keys. Each level
        costs its comparison's rounds (one where the all-pairs comparison fits a one-round gate,
        :meth:`one_round_comparisons`) plus its winner's (:meth:`_winner_rounds`). Of three
        candidates the fewer rounds wins, then the fewer comparisons (bytes): ``fan_in`` at every
        level; levels that are all one-round gates, the fewest comparisons among the fewest levels
        (a small search: 41 keys in groups of 2, 3 and 7); all pairs in one level where that stays
        within ``ALL_PAIRS_MAX`` comparisons (one adder circuit). The same plan whoever makes the
        gates' keys: with the compiled key generation (:mod:`pmpc.mpc.fss`) a plan with more gate
        levels costs party 0 no measurable time when it makes them itself (``local``, live)."""
        def cost(plan):  # (rounds, comparisons)
            r, c, m = 0, 0, n
            for k in plan:
                g = -(-m // k)
                cmp = rows * g * k * (k - 1) // 2
                r += (1 if self.one_round_comparisons(cmp, 32) else 7) + self._winner_rounds(rows * g * k, k)
                c, m = c + cmp, g
            return r, c

        fixed, m = [], n
        while m > 1:
            fixed.append(min(fan_in, m))
            m = -(-m // fixed[-1])
        best = {1: (0, 0, [])}  # keys left -> (levels, comparisons, plan), every level a gate
        for m in range(2, n + 1):
            options = []
            for k in range(2, m + 1):
                g = -(-m // k)
                cmp = rows * g * k * (k - 1) // 2
                if g in best and self.one_round_comparisons(cmp, 32) and self._winner_rounds(rows * g * k, k) == 2:
                    lv, c, plan = best[g]
                    options.append((lv + 1, c + cmp, [k] + plan))
            if options:
                best[m] = min(options, key=lambda o: o[:2])
        plans = [fixed] + ([best[n][2]] if n in best else [])
        if 1 < n and rows * n * (n - 1) // 2 <= ALL_PAIRS_MAX:
            plans.append([n])  # all pairs at once: one adder circuit, no keys but the winners'
        return min(plans, key=cost)

    def _winner_rounds(self, keys: int, k: int) -> int:
        """Rounds to pick and select each group's winner: by its count of wins (one small gate,
        one product) where that gate is one round, else by the product of its k - 1 "beats" bits
        (a halving tree) and the select."""
        return 2 if self.one_round_comparisons(keys, 8) else math.ceil(math.log2(max(k - 1, 1))) + 1

    def max(self, x, dim: int = -1, fan_in: int = 8):
        """Maximum along ``dim`` (keepdim), by a tournament of groups (:meth:`max_plan`).

        A comparison costs rounds (one as a dealer-keyed gate, ~7 as an adder circuit); a binary
        tree over n keys pays them log2(n) times. Here each level compares ALL pairs inside
        groups of k in ONE batched call (ties go to the lower index, so the pairs order
        the group totally and exactly one key beats all k - 1 others), counts each key's wins (a
        local sum of exact 0/1 ring integers), finds the winner by ONE small comparison of the
        count with k - 1 (an 8-bit lane: a one-round gate) and selects it with one product:
        cmp + 2 rounds a level, ~(k-1)/2 comparisons per element. Where that small comparison
        would be an adder circuit (large prefill levels), the winner is the product of its k - 1
        "beats" bits instead (log2(k-1) rounds). The maximum is exact whatever the grouping."""
        if dim not in (-1, x.dim() - 1):
            return self.max(x.transpose(dim, -1), -1, fan_in).transpose(dim, -1)
        plan = self.max_plan(math.prod(x.shape[:-1]), x.shape[-1], fan_in)
        for k in plan:
            n = x.shape[-1]
            if n % k:  # pad with copies of the first key: duplicates cannot change the max
                x = self.cat([x, self.cat([x[..., :1]] * (k - n % k), dim=-1)], dim=-1)
            g = x.reshape(*x.shape[:-1], x.shape[-1] // k, k)
            pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
            first, second = torch.tensor([i for i, _ in pairs]), torch.tensor([j for _, j in pairs])
            # exact 0/1 integers; all pairs of every group in one subtraction and one comparison
            lt = self.ltz_int(g[..., first] - g[..., second], bound=2 * ACT_BOUND)  # x_i < x_j: a 32-bit lane
            beats = self.cat([1 - lt, lt], dim=-1)  # pair p: i >= j at p (i keeps the tie), j > i at P + p
            of = [[p if i == a else len(pairs) + p for p, (a, b) in enumerate(pairs) if i in (a, b)] for i in range(k)]
            factors = beats[..., torch.tensor(of)]  # [..., groups, k, k - 1]: what each key must beat
            if self._winner_rounds(math.prod(factors.shape[:-1]), k) == 2:
                # loser <=> wins <= k - 2 <=> wins - (k - 1) + 1/2 < 0: on the 1/2 grid, |.| < k
                lost = self.ltz_int(self.lift(factors.sum(-1)) - (k - 1.5), bound=k, ulp=0.5)
                x = self.mul(1 - lost, g).sum(-1)
                continue
            while factors.shape[-1] > 1:  # the winner beats all: their product, halving each round
                h = factors.shape[-1] // 2
                prod = self.mul(factors[..., :h], factors[..., h:2 * h])
                factors = self.cat([prod, factors[..., 2 * h:]], dim=-1) if factors.shape[-1] % 2 else prod
            x = self.mul(factors[..., 0], g).sum(-1)
        return x

    def normalize_bins(self, x, base_log2: int = 2, lo: int = -8, hi: int = 15, bound: float | None = None):
        """The comparisons of :meth:`normalize` alone: [x < 2^(g k)] for k in (lo, hi], ring
        integers, one batched comparison. Signs do not depend on the scale: x may sit on a
        product's scale (then ``bound`` None: the whole ring)."""
        thresholds = torch.tensor([2.0 ** (base_log2 * k) for k in range(lo + 1, hi + 1)],
                                  dtype=getattr(x, "dtype", torch.float64))
        return self.ltz_int(x.unsqueeze(0) - thresholds.reshape(-1, *[1] * x.dim()), bound)

    def rescale(self, x):
        """x on the standard scale 2^-f: a value left on a product's scale (an exact ring
        product) truncated, one round under MPC; here rounded to the grid."""
        return x

    def normalize(self, x, base_log2: int = 2, lo: int = -8, hi: int = 15, scale: float = 1.0, times=None, times_bound: float = ACT_BOUND, power: float = 1.0, bound: float | None = None, exact: bool = False, below=None):
        """Range reduction by the most significant bit, for x > 0 (SIRNN's msnzb step).

        With g = ``base_log2`` and bins [2^(g k), 2^(g (k+1))) for k in [lo, hi], one batched
        comparison gives the one-hot bin of x, hence the secret power of two ``f = 2^-k`` (a public
        linear combination of the one-hot), and ``m = x * f^g`` in [1, 2^g). So
        ``1/x = f / m`` (g = 1) and ``rsqrt(x) = f * rsqrt(m)`` (g = 2). Returns (m, scale * f).
        Powers of two are exact in fixed point: the reduction loses no precision. Inputs below bin
        lo (above bin hi) are treated as in bin lo (hi): that is the supported range,
        2^(g lo) .. 2^(g (hi+1)).

        The one-hot is a set of exact ring integers, so any public function of the bin is a local
        integer combination, read as fixed point at a scale of our choosing: f^g = 2^(-g k) on the
        scale 2^(g hi) (every bin an exact integer, however small f^g is) gives m in ONE product,
        and ``scale * f`` on the standard scale rides along with no truncation.

        ``power`` p returns scale f^p instead (any public function of the bin is free: p = 1/2
        with g = 1 gives rsqrt(x) = f^(1/2) rsqrt(m) on m in [1, 2), SPU's parity trick).

        With ``times=t`` (|t scale f| < ``times_bound``), returns (m, t scale f) instead, both
        from ONE product round: the factor the caller multiplies the result into needs no round
        of its own.

        ``exact``: returns (mi, scale f, e) with mi = m 2^e EXACTLY, a ring integer (read it with
        ``from_int(mi, e)``; e = x's own scale bits + g hi): the product of x's encoding and the
        bin's integer power of two needs no truncation, so m costs one product round, not two.
        A bit slice of it (:meth:`slice_lookup`) reads the same bits as of the truncated m; its
        truncation (``idiv``), where m itself is needed, can run beside the slice. x may sit on a
        larger scale than the standard one (:meth:`sum_squares` with ``exact``)."""
        ks = list(range(lo + 1, hi + 1))
        # x < 2^(g k) for every k at once (one public broadcast subtraction); ``bound`` (on
        # |x - 2^(g k)|) lets the comparison read a lane (:meth:`lane`); ``below``: taken already
        if below is None:
            below = self.normalize_bins(x, base_log2, lo, hi, bound)

        def onehot_sum(w):  # sum_k onehot_k w(k) for public integer weights, as ONE weighted sum:
            # with bins lo = [below_0], k_i = [below_{i+1}] - [below_i], hi = 1 - [below_last],
            # the sum telescopes to w(hi) + sum_i below_i (w(k_i - 1) - w(k_i)): local, exact
            return self.int_dot(below, [w(k - 1) - w(k) for k in ks]) + w(hi)

        fb, g = self.fxp_bits, base_log2
        f = self.from_int(onehot_sum(lambda k: self.fixed(scale * 2.0 ** (-power * k), fb)), fb)
        if exact:
            return self.mul(self.as_int(x), onehot_sum(lambda k: 2 ** (g * (hi - k)))), f, self.scale_bits(x) + g * hi
        fg = self.from_int(onehot_sum(lambda k: 2 ** (g * (hi - k))), g * hi)
        if times is None:
            return self.mul_scaled(x, fg, 1.0, bound=2.0 ** g), f
        # ``times`` * scale f (the value the result will multiply, brought into range now) in
        # the same product round
        return tuple(self.mul_many([(x, fg), (times, f)], None, [2.0 ** g, times_bound],
                                   max_k=61 - fb - g * hi - g))

    def sum(self, x, dim=-1, keepdim=True):
        return x.sum(dim, keepdim=keepdim)

    def sum_squares(self, x, exact: bool = False, split=None):
        """sum_j x_j^2 over the last dim at full precision, safe for LLM "massive activations"
        up to |x| < 2^23: one product round and two truncations, no comparison.

        Hidden states of real LLMs carry a few values of 1e3-1e4 (SmolLM2: 22552). Squared in
        16-bit fixed point the product needs 2^61 of the 64-bit ring before its truncation, whose
        exact 2-party form (:mod:`pmpc.mpc.crypten_compat`) needs |value| < 2^62: a plain x*x is at its
        limit already. So, in ring integers (r(v) = v 2^16), x is split as r(x) = 2^8 r(a) + r(l)
        with a = x 2^-8 (one truncation) and l the exact remainder (|r(l)| < 2^9), and
            r(x^2) = r(a)^2 + r(l) (r(x) + 2^8 r(a)) / 2^16.
        Both terms are products of ring integers, taken in ONE batched round with no truncation:
        r(a)^2 IS the result's top part (< 2^63 for |x| < 2^23); the small term (< 2^41) is
        summed over the row and truncated by 2^16 once. Error: a unit of 2^-16 on the sum, below
        a plain x*x's n/2.

        ``exact``: the sum EXACTLY, on the scale 2^(2f) (r(a)^2 2^16 plus the small term, not
        truncated): one truncation and one round less, for a caller that reads only the sum's
        bits and products with ring integers (:meth:`normalize` with ``exact``). Room: the sum
        below 2^30 (the rsqrt's range) takes 2^62 of the ring. ``split``: r(a), already taken
        (:meth:`matmul_residual`): no truncation round here at all."""
        h = self.fxp_bits // 2
        xi = self.as_int(x)
        ai = self.idiv(xi, 2 ** h) if split is None else split  # r(a) = r(x) / 2^8
        li = xi - ai * (2 ** h)                 # r(l): integer arithmetic, exact
        p = self.mul(self.stack([ai, li]), self.stack([ai, xi + ai * (2 ** h)]))
        top = p[0].sum(-1, keepdim=True)
        if exact:
            return self.from_int(top * 2 ** (2 * h) + p[1].sum(-1, keepdim=True), 2 * self.fxp_bits)
        low = self.idiv(p[1].sum(-1, keepdim=True), 2 ** (2 * h))
        return self.from_int(top + low, self.fxp_bits)

    def idiv(self, v, d: int):  # primitive: ring integer v // d (a one-round exact truncation under MPC)
        raise NotImplementedError

    def as_int(self, x):  # primitive: the encoding of x read as a ring integer (scale 1)
        raise NotImplementedError

    def scale_bits(self, x) -> int:
        """The fraction bits of x's encoding (what :meth:`as_int` multiplies by): the standard
        ``fxp_bits``, or more for a value left on a product's scale."""
        return self.fxp_bits


class TorchOps(Ops):
    """Plain tensors: the exact emulation of a protocol's arithmetic (no communication)."""

    kind = "torch"

    def __init__(self, dtype=torch.float64, fxp_bits: int | None = None, tracker=None):
        super().__init__(tracker)
        self.dtype = dtype
        self.round_bits = fxp_bits  # None: no fixed-point rounding emulation

    def _q(self, t):
        if self.round_bits is None:
            return t
        s = 2.0 ** self.round_bits
        return torch.round(t * s) / s

    def share(self, t, src=0):
        return self._q(t.to(self.dtype))

    def reveal(self, x, dst=None):
        return x

    def is_secret(self, x):
        return torch.is_tensor(x) and x.is_floating_point()

    def _ltz_ring(self, x):
        return (x < 0).to(x.dtype)

    _ltz_ring_int = _ltz_ring

    def _ltz_lane(self, x, lane, drop):
        # the ring slice MPC reads, wrap-around included: out-of-bound inputs fail alike
        enc = torch.floor(x.double() * 2.0 ** self.fxp_bits).to(torch.int64)
        v = (enc >> drop) & ((1 << lane) - 1)
        return (v >= (1 << (lane - 1))).to(x.dtype)

    def as_int(self, x):
        return x * 2.0 ** self.fxp_bits

    def rescale(self, x):
        return self._q(x)

    def idiv(self, v, d):
        return v / d

    def lift(self, b):
        return b

    def mul(self, x, y):
        return self._q(x * y)

    def combine(self, products=(), terms=(), const=0.0, bound: float = ACT_BOUND, coef_frac: int | None = None):
        # fixed-point emulation: the coefficients on MPC's 2^-k grid, one rounding of the sum;
        # float64 (no rounding emulation): the ideal arithmetic, coefficients exact
        coef = (lambda c: c)
        if self.round_bits is not None:
            k = coef_frac if coef_frac is not None else \
                self.coef_bits([c for c, *_ in products] + [c for c, _ in terms], bool(products), bound)
            coef = (lambda c: _round_coef(c, k).to(self.dtype) * 2.0 ** -k if torch.is_tensor(c)
                    else _round_coef(c, k) * 2.0 ** -k)
        out = None
        for c, a, b in products:
            out = _acc(out, self._product(a, b) * coef(c))
        for d, v in terms:
            out = _acc(out, v * coef(d))
        if out is None:
            raise ValueError("combine needs at least one secret product or term")
        return self._q(out + const)

    def _product(self, a, b):
        return a * b

    def int_dot(self, b, coefs):  # in float64 whatever the dtype: exact below 2^53, as MPC's ring is
        c = torch.tensor(coefs, dtype=torch.float64).reshape(-1, *[1] * (b.dim() - 1))
        return (b.double() * c).sum(0).to(b.dtype)

    def fixed(self, c, bits):
        # without fixed-point emulation: the ideal arithmetic, coefficients exact
        return super().fixed(c, bits) if self.round_bits is not None else c * 2.0 ** bits

    def mul_many(self, pairs, scales=None, bound=ACT_BOUND, max_k: int | None = None) -> list:
        scales, _, ks = self._slots(pairs, scales, bound, max_k)
        if self.round_bits is not None:
            scales = [_round_coef(c, k) * 2.0 ** -k for c, k in zip(scales, ks)]
        return [self._q(a * b * c) for (a, b), c in zip(pairs, scales)]

    def bits(self, x, positions, lift: bool = True, scale: float = 1.0, offset: float = 0.0):
        if scale != 1.0:
            scale = self.fixed(scale, BITS_SCALE_FRAC) * 2.0 ** -BITS_SCALE_FRAC
        enc = torch.floor((x * scale + offset) * 2.0 ** self.fxp_bits).to(torch.int64)
        return torch.stack([((enc >> p) & 1).to(x.dtype) for p in positions])

    def from_int(self, v, frac_bits):
        return v * 2.0 ** -frac_bits if frac_bits else v

    def lookup(self, d, k, tables):
        t = self._table_ints(tables, k).to(torch.float64)
        g = d.shape[0]
        idx = d.reshape(g, -1).round().long()
        if bool((idx < 0).any()) or bool((idx >= 1 << k).any()):
            raise ValueError(f"a {k}-bit lookup index out of range")
        return (torch.gather(t, 1, idx) * 2.0 ** -self.fxp_bits).reshape(d.shape).to(d.dtype)

    def slice_lookup(self, x, lo, k, table):
        if not 1 <= lo <= 64 - k or not 1 <= k <= 12:
            raise ValueError(f"slice_lookup: bits [{lo}, {lo + k}) of the encoding")
        t = self._table_ints([table], k)[0].to(torch.float64)
        enc = torch.floor(x.double() * 2.0 ** self.fxp_bits).to(torch.int64)
        idx = (enc >> lo) & ((1 << k) - 1)
        return (t[idx] * 2.0 ** -self.fxp_bits).to(x.dtype)

    def cat(self, xs, dim=0):
        return torch.cat(xs, dim)

    def stack(self, xs, dim=0):
        return torch.stack(xs, dim)


def extend_rows(old, new, cat):
    """Rows ``old`` [B0, ..., L, d] followed by ``new`` [B, ..., T, d] (``cat(xs, dim=...)`` of
    their kind): a KV cache grown. Old rows of batch one (a shared prefix's, computed once) first
    become every row's, as a view (the concatenation is the only copy)."""
    if len(old.shape) > 2 and old.shape[0] == 1 and new.shape[0] > 1:
        old = old.expand(new.shape[0], *old.shape[1:])
    return cat([old, new], dim=len(new.shape) - 2)


def _integral(c) -> bool:
    if torch.is_tensor(c):
        return bool(c.frac().eq(0).all())
    return float(c).is_integer()


def _round_coef(c, k: int):
    """A public coefficient on the 2^-k grid, as the ring integer round(c 2^k)."""
    if torch.is_tensor(c):
        return torch.round(c.double() * 2.0 ** k).long()
    return int(round(float(c) * 2.0 ** k))


def _acc(acc, v):
    return v if acc is None else acc + v


def _check_room(scale_bits: int, bound: float) -> None:
    """The exact truncation needs |value| 2^scale_bits < 2^62: operands on a larger scale than
    the standard one leave less room for the result."""
    if scale_bits + math.ceil(math.log2(max(bound, 1.0))) > 61:
        raise ValueError(f"a result bounded by {bound:g} at scale 2^{scale_bits} overflows the ring")
