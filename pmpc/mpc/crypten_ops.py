"""The op set on secret-shared values: :class:`CrypTenOps`, every op the real 2-party protocol.

The interface and the plaintext backend are :mod:`pmpc.ops`; this backend is the only one that
needs crypten, so it lives in the MPC runtime.
"""
from __future__ import annotations

import math
import threading

import torch

from pmpc.mpc.crypten_compat import MPCTensor, active_provider, b2a_bits, crypten, lane_ltz, ring_bits, log2_scale as _log2_scale, ring_ints  # crypten_compat first: it shims crypten
from crypten.encoder import FixedPointEncoder  # noqa: E402,I001
from crypten.mpc.primitives import beaver  # noqa: E402
from crypten.mpc.primitives.arithmetic import ArithmeticSharedTensor  # noqa: E402

from pmpc.mpc import concurrent, fixed_operand, gates  # noqa: E402
from pmpc.ops import ACT_BOUND, BITS_SCALE_FRAC, WEIGHT_EXTRA_BITS, Ops, _check_room, _round_coef


SHARE_ELEMENTS = 1 << 22  # ring elements secret-shared at once (bounds the transient memory of sharing)


class CrypTenOps(Ops):
    """Secret-shared values: every op below is the real 2-party protocol."""

    kind = "crypten"

    def __init__(self, tracker=None):
        super().__init__(tracker)
        self.crypten = crypten
        self.fxp_bits = crypten.cfg.encoder.precision_bits

    def share(self, t, src=0):
        if t.dim() >= 2 and getattr(active_provider(), "dry_run", False):
            # planning a query (a solo dry run on zeros): only the shapes matter, so a matrix's
            # share is a zero-stride view, no memory (a private model's dry run would otherwise
            # hold a second copy of every weight's shares beside the session's)
            return MPCTensor.from_shares(torch.zeros((), dtype=torch.long).expand(t.shape), precision=self.fxp_bits)
        if t.dim() < 2 or t.numel() <= SHARE_ELEMENTS:
            return self.crypten.cryptensor(t.float(), src=src)
        # a large matrix (a private model's embedding table) a block of rows at a time, into one
        # share: encoding and zero-sharing it whole would hold ~4 more copies of it at once
        step = max(1, SHARE_ELEMENTS // t[0].numel())
        share = torch.empty(t.shape, dtype=torch.long)
        for i in range(0, t.shape[0], step):
            share[i:i + step] = self.crypten.cryptensor(t[i:i + step].float(), src=src)._tensor.share
        return MPCTensor.from_shares(share, precision=self.fxp_bits)

    def reveal(self, x, dst=None):
        return x.get_plain_text(dst=dst)

    def is_secret(self, x):
        return isinstance(x, self.crypten.CrypTensor)

    def _lift(self, a):
        """crypten returns comparison bits with encoder scale 1, which silently rounds a public
        float factor (``bit * 0.25``) to an integer. Rescale to the standard fixed point (local)."""
        a._tensor.share = a._tensor.share * (2 ** self.fxp_bits)
        a._tensor.encoder = FixedPointEncoder(self.fxp_bits)
        return a

    def _ltz_ring(self, x):
        return self._lift(self._ltz_ring_int(x))

    def _ltz_ring_int(self, x):
        """The sign over the whole ring: a dealer-keyed DCF on the opened x + r (one round,
        :mod:`pmpc.mpc.gates`), or (larger calls, or ``PMPC_COMPARISON=bitwise``: the rule in
        :mod:`pmpc.mpc.gates`) CrypTen's comparison (A2B of the whole ring, the sign bit) with
        the bit opened packed."""
        if gates.use_dcf(x._tensor.share.numel(), 64):
            return gates.ltz(x, 64, 0)
        return self.bits(x, [63], lift=False)[0]

    def _ltz_lane(self, x, lane, drop):
        if gates.use_dcf(x._tensor.share.numel(), lane):
            return gates.ltz(x, lane, drop)
        return lane_ltz(x, lane, drop)

    def as_int(self, x):
        v = x.clone()
        v._tensor.encoder = FixedPointEncoder(0)
        return v

    def one_round_comparisons(self, elements: int, lane: int) -> bool:
        return gates.use_dcf(elements, lane)

    def comparison_rule(self) -> str:
        return gates.comparison_mode()

    def scale_bits(self, x) -> int:
        return _log2_scale(x)

    def rescale(self, x):
        up = _log2_scale(x) - self.fxp_bits
        return x if up <= 0 else self.from_int(self.idiv(self.as_int(x), 2 ** up), self.fxp_bits)

    def idiv(self, v, d):
        out = v.clone()
        out._tensor.div_(int(d))  # 2PC: crypten_compat's exact truncation (error 1 unit)
        return out

    def lift(self, b):
        return self._lift(b)

    def parallel(self, *fns) -> list:
        return concurrent.parallel(fns)

    def matmul(self, x, y, truncate: bool = True):
        """A secret x times a PUBLIC matrix y (a linear layer's weights): y is read on
        ``WEIGHT_EXTRA_BITS`` more fraction bits than the values (:class:`PublicMatrix`; CrypTen's
        encoding truncates it to 2^-16 toward zero: a weight of 0.01 loses 0.3% of itself, and
        folding a norm's weight or 1/sqrt(d) into it shrinks it further), and the product is
        truncated once, as before. Room: |x y| < 2^(61 - 2f - extra) = 2^21, far above any linear
        layer's output here. ``truncate=False`` (a public matrix): the product stays on the
        scale 2^(f + frac) it has before that truncation — the same ring value, revealed as it is
        (no round). A private weight readied by :meth:`fix_operands`: a fixed-operand product
        (opens x only), truncated. The KV cache (:meth:`kv_append`): a growing fixed operand."""
        if isinstance(y, (fixed_operand.GrowingOperand, fixed_operand.Transposed)):  # the KV cache
            transpose = isinstance(y, fixed_operand.Transposed)
            return fixed_operand.kv_matmul(x, y.of if transpose else y, transpose)
        if isinstance(y, fixed_operand.FixedOperand):
            if not self.is_secret(x):
                raise TypeError("a fixed operand multiplies a secret value")
            return fixed_operand.matmul(x, y)
        if torch.is_tensor(y) and self.is_secret(x) and not self.is_secret(y) and y.is_floating_point():
            y = PublicMatrix(y, self.fxp_bits + WEIGHT_EXTRA_BITS, compact=False)  # used once: no int32 copy
        if isinstance(y, PublicMatrix):
            raw = y.times(x._tensor.share) * (1 << (self.fxp_bits - _log2_scale(x)))
            if not truncate:
                return MPCTensor.from_shares(raw, precision=self.fxp_bits + y.frac_bits)
            out = ArithmeticSharedTensor.from_shares(raw, precision=0)
            out.div_(2 ** y.frac_bits)
            return MPCTensor.from_shares(out.share, precision=self.fxp_bits)
        return x.matmul(y)

    def matmul_residual(self, x, y, residual):
        """With y a public matrix: R = residual 2^e + x y on the product's raw scale 2^(f + e)
        (e = the weights' fraction bits) is truncated ONCE, by 2^e and by 2^(e + f/2) side by
        side (per-element divisors): h and its split for the norm, one round. Each truncation
        is off by at most a unit, so h - 2^(f/2) split stays a small exact remainder, all
        :meth:`sum_squares` needs."""
        if torch.is_tensor(y) and self.is_secret(x) and not self.is_secret(y) and y.is_floating_point():
            y = PublicMatrix(y, self.fxp_bits + WEIGHT_EXTRA_BITS, compact=False)
        if not isinstance(y, PublicMatrix) or _log2_scale(residual) != self.fxp_bits:
            return super().matmul_residual(x, y, residual)
        fb = self.fxp_bits  # the raw product on 2^(fb + y.frac_bits)
        raw = y.times(x._tensor.share) * (1 << (fb - _log2_scale(x)))
        R = raw + residual._tensor.share * (1 << (y.frac_bits))
        both = ArithmeticSharedTensor.from_shares(torch.stack([R, R]), precision=0)
        d = torch.tensor([2 ** y.frac_bits, 2 ** (y.frac_bits + fb // 2)], dtype=torch.long)
        both.div_(d.reshape(2, *[1] * R.dim()).expand(both.share.shape))  # the one round
        return (MPCTensor.from_shares(both.share[0], precision=fb), ring_ints(both.share[1]))

    def public_operands(self, W: dict, names) -> dict:
        """Each public weight matrix encoded ONCE (:class:`PublicMatrix`), not at every product:
        encoding SmolLM2's tied output layer alone took longer than the rest of a decoded token."""
        return {k: PublicMatrix(v, self.fxp_bits + WEIGHT_EXTRA_BITS) if k in names else v for k, v in W.items()}

    def fix_operands(self, W: dict, names) -> dict:
        return fixed_operand.prepare(W, names)

    def kv_append(self, cache, k, v, name: str):
        """The cache as two growing fixed operands (:class:`pmpc.mpc.fixed_operand.GrowingOperand`):
        a row is masked and opened once, with the first product that uses it."""
        if cache[0] is None:
            cache[1] = fixed_operand.GrowingOperand(name + ".v")
            cache[0] = fixed_operand.GrowingOperand(name + ".k", partner=cache[1])
        cache[0].append(k)
        cache[1].append(v)
        return cache[0], cache[1]

    def mul_many(self, pairs, scales=None, bound=ACT_BOUND, max_k: int | None = None) -> list:
        fb, n = self.fxp_bits, len(pairs)
        scales, bounds, ks = self._slots(pairs, scales, bound, max_k)
        shapes = [torch.broadcast_shapes(a.shape, b.shape) for a, b in pairs]
        stacked = all(sh == shapes[0] for sh in shapes)
        if stacked:  # one stacked tensor, each side on one scale
            sa = max(_log2_scale(a) for a, _ in pairs)
            sb = max(_log2_scale(b) for _, b in pairs)
            A = _stack_once([a for a, _ in pairs], shapes[0], sa)
            B = _stack_once([b for _, b in pairs], shapes[0], sb)
            raw = [sa + sb] * n
        else:  # flattened and concatenated: every pair keeps its own scales
            A = torch.cat([_raw(a, sh, _log2_scale(a)).reshape(-1) for (a, _), sh in zip(pairs, shapes)])
            B = torch.cat([_raw(b, sh, _log2_scale(b)).reshape(-1) for (_, b), sh in zip(pairs, shapes)])
            raw = [_log2_scale(a) + _log2_scale(b) for a, b in pairs]
        prod = beaver.mul(ArithmeticSharedTensor.from_shares(A, precision=0),
                          ArithmeticSharedTensor.from_shares(B, precision=0)).share
        if stacked and prod.shape[0] != n:  # every pair the same: one product, n times
            prod = prod.expand(n, *prod.shape[1:])
        tops = [max(fb, r) for r in raw]
        for t, k, b in zip(tops, ks, bounds):
            _check_room(t + k, b)
        coef = [_round_coef(c, k) * (1 << (t - r)) for c, k, t, r in zip(scales, ks, tops, raw)]
        divs = [2 ** (t + k - fb) for t, k in zip(tops, ks)]
        if stacked:
            per = lambda v: torch.tensor(v, dtype=torch.long).reshape(n, *[1] * len(shapes[0]))  # noqa: E731
        else:
            sizes = torch.tensor([math.prod(sh) for sh in shapes])
            per = lambda v: torch.repeat_interleave(torch.tensor(v, dtype=torch.long), sizes)  # noqa: E731
        out = ArithmeticSharedTensor.from_shares(prod * per(coef), precision=0)
        d = divs[0] if len(set(divs)) == 1 else per(divs).expand(prod.shape)
        if torch.is_tensor(d) or d > 1:
            out.div_(d)  # ONE truncation for all (per-element divisors where the scales differ)
        res = MPCTensor.from_shares(out.share, precision=fb)
        if stacked:
            return [res[i] for i in range(n)]
        outs, o = [], 0
        for sh in shapes:
            m = math.prod(sh)
            outs.append(res[o:o + m].reshape(sh))
            o += m
        return outs

    def combine(self, products=(), terms=(), const=0.0, bound: float = ACT_BOUND, coef_frac: int | None = None):
        fb = self.fxp_bits
        k = coef_frac if coef_frac is not None else \
            self.coef_bits([c for c, *_ in products] + [c for c, _ in terms], bool(products), bound)
        parts = []  # (raw share, its scale bits, public integer coefficient)
        if len(products) == 1:
            c, a, b = products[0]
            parts.append((beaver.mul(a._tensor, b._tensor).share, _log2_scale(a) + _log2_scale(b), c))
        elif products:  # one Beaver round for all pairs, each side on one common scale
            shape = torch.broadcast_shapes(*[torch.broadcast_shapes(a.shape, b.shape) for _, a, b in products])
            sa = max(_log2_scale(a) for _, a, _ in products)
            sb = max(_log2_scale(b) for _, _, b in products)
            A = _stack_once([a for _, a, _ in products], shape, sa)
            B = _stack_once([b for _, _, b in products], shape, sb)
            prod = beaver.mul(ArithmeticSharedTensor.from_shares(A, precision=0),
                              ArithmeticSharedTensor.from_shares(B, precision=0)).share
            parts += [(prod[min(i, prod.shape[0] - 1)], sa + sb, c) for i, (c, _, _) in enumerate(products)]
        parts += [(v._tensor.share, _log2_scale(v), d) for d, v in terms]
        if not parts:
            raise ValueError("combine needs at least one secret product or term")
        top = max(fb, max(sc for _, sc, _ in parts))  # every part on 2^top (coefficients on 2^k)
        share = None
        for raw, sc, c in parts:  # int64 products wrap: everything is modulo 2^64
            t = raw * _round_coef(c, k) * (1 << (top - sc))
            share = t if share is None else share + t
        out = ArithmeticSharedTensor.from_shares(share, precision=0)
        if not (isinstance(const, (int, float)) and const == 0):
            out = out + (torch.round(torch.as_tensor(const, dtype=torch.float64) * 2.0 ** (top + k)).long()
                         if torch.is_tensor(const) else int(round(float(const) * 2.0 ** (top + k))))
        _check_room(top + k, bound)
        d = 2 ** (top + k - fb)
        if d > 1:
            out.div_(d)  # the one truncation (crypten_compat's exact 2-party division)
        return MPCTensor.from_shares(out.share, precision=fb)

    def from_int(self, v, frac_bits):
        v = v.clone()
        v._tensor.encoder = FixedPointEncoder(frac_bits)
        return v

    def lookup(self, d, k, tables):
        return self.from_int(gates.lookup(d, k, self._table_ints(tables, k).numpy()), self.fxp_bits)

    def slice_lookup(self, x, lo, k, table):
        pos = lo + _log2_scale(x) - self.fxp_bits  # the same bits of x's own encoding
        if not 1 <= pos <= 64 - k or not 1 <= k <= gates.MAX_TABLE_BITS:
            raise ValueError(f"slice_lookup: bits [{lo}, {lo + k}) of the encoding")
        # the carry's comparison reads a (pos + 1)-bit lane; above 32 bits only the gate can
        dcf = pos >= 32 or gates.use_dcf(x._tensor.share.numel(), pos + 1)
        out = gates.slice_lookup(x, pos, k, self._table_ints([table], k).numpy()[0], dcf)
        return self.from_int(out, self.fxp_bits)

    def bits(self, x, positions, lift: bool = True, scale: float = 1.0, offset: float = 0.0):
        """Bits ``positions`` of the ring encoding of ``scale * x + offset`` as arithmetic 0/1
        shares: one A2B conversion (adder circuit) and one batched single-bit B2A for all positions
        (bits packed 64 to a word). ``lift=False``: as ring integers (scale 1).

        A public ``scale`` costs no truncation: the shares are multiplied by round(scale 2^K)
        (K = ``BITS_SCALE_FRAC``) and the positions read K bits higher, since
        floor(v 2^K / 2^K) = floor(v): the bits are those of the truncated product, exactly.
        Position 63 stays the sign bit."""
        if scale != 1.0:
            K = BITS_SCALE_FRAC
            v = x.clone()
            v._tensor.share = x._tensor.share * self.fixed(scale, K)
            v._tensor.encoder = type(x.encoder)(0)
            if offset:
                v._tensor = v._tensor + int(round(offset * 2.0 ** (self.fxp_bits + K)))
            positions = [p if p == 63 else p + K for p in positions]
            x = v
        elif offset:
            x = x + offset
        a = ring_ints(b2a_bits(ring_bits(x, positions)).share)   # A2B of the bits read only
        return self._lift(a) if lift else a

    def cat(self, xs, dim=0):
        return self.crypten.cat(xs, dim=dim)

    def stack(self, xs, dim=0):
        return self.crypten.stack(xs, dim=dim)


def _stack_once(xs, shape, scale) -> torch.Tensor:
    """The raw shares of one side of a batched Beaver product, stacked; a side that is one value
    in every pair is kept once ([1, ...]: the triple broadcasts), so it is masked and opened once."""
    if all(x is xs[0] for x in xs[1:]):
        return _raw(xs[0], shape, scale).unsqueeze(0)
    return torch.stack([_raw(x, shape, scale) for x in xs])


class PublicMatrix:
    """A public matrix as ring integers round(y 2^frac_bits), encoded once. y 2^frac_bits is exact in
    y's own float type (a power-of-two scale) and so is its rounding. ``compact`` (a matrix kept
    for the session): held as int32 when every entry fits (the same memory as the float32 weights
    it replaces), widened per product; otherwise int64 at once."""

    def __init__(self, y: torch.Tensor, frac_bits: int, compact: bool = True):
        ints = torch.round(y * 2.0 ** frac_bits)
        fits = compact and (bool(ints.abs().max() < 2 ** 31) if ints.numel() else True)
        self.ints = ints.to(torch.int32 if fits else torch.int64)
        self.frac_bits = frac_bits

    @property
    def shape(self):
        return self.ints.shape

    def ring(self) -> torch.Tensor:
        return self.ints.long()

    # entries of the int64 working copy of a compact matrix (4 MB a thread)
    CHUNK = 1 << 19

    def times(self, share: torch.Tensor) -> torch.Tensor:
        """share @ the matrix, on the ring. An int32 matrix is widened to int64 for the product;
        widened whole, every product of a decode step allocates (and page-faults) a fresh copy
        of the matrix, which costs more than the product itself (the vocabulary projection
        4x over, ~0.1 s a token). So a share of few rows (decode) or a large matrix goes
        through one reused int64 buffer, column block by column block."""
        k, n = self.ints.shape
        rows = share.numel() // max(k, 1)
        if self.ints.dtype == torch.int64 or (rows > 16 and k * n <= self.CHUNK):
            return share.matmul(self.ring())
        cols = max(1, min(n, self.CHUNK // k))
        buf = _scratch(k * cols)
        out = torch.empty(*share.shape[:-1], n, dtype=torch.long)
        for j in range(0, n, cols):
            w = min(cols, n - j)
            block = buf[:k * w].view(k, w)
            block.copy_(self.ints[:, j:j + w])
            out[..., j:j + w] = share.matmul(block)
        return out


_SCRATCH = threading.local()  # per thread: branches of Ops.parallel multiply side by side


def _scratch(n: int) -> torch.Tensor:
    """This thread's int64 working buffer for :meth:`PublicMatrix.times`, at least n words."""
    buf = getattr(_SCRATCH, "buf", None)
    if buf is None or buf.numel() < n:
        buf = _SCRATCH.buf = torch.empty(n, dtype=torch.long)
    return buf


def _raw(x, shape, scale_bits: int):
    """The share of a CrypTensor broadcast to ``shape`` and moved up to the scale 2^scale_bits
    (local: a share times a power of two)."""
    sh = x._tensor.share.expand(shape)
    up = scale_bits - _log2_scale(x)
    return sh * (1 << up) if up else sh
