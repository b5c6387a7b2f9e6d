"""Fixed-operand Beaver triples: a private weight is masked and opened ONCE per session.

A secret product x @ W with a Beaver triple (A, B, C = A @ B) opens x - A and W - B. When W is a
weight the server secret-shared at start-up, W is the same at every token, so its opening need
not be repeated: the dealer draws ONE uniform mask B per weight for the session, the parties open
D = W - B once (at setup), and every product with W afterwards consumes a *fixed-operand triple*
(A, C = A @ B) against that same B, with a fresh A. A product then opens E = x - A only: the
activations' bytes, not the weights'. Online, with E opened,

    [x W] = [C] + E @ [W] + [A] @ D        since  E W + A (W - B) + A B = (E + A) W,

so each party keeps its share of W and the public D, and drops its share of B after the opening
(it is [W] - D anyway). One round (the opening of E) and one truncation per product, as before.

Security (semi-honest; the ``ttp`` dealer colludes with neither party): B is uniform and
independent of everything else, so D = W - B, opened once, is uniform. Each E = x - A is masked by
a fresh uniform A. Reusing B across tokens reveals nothing new, because the only value ever opened
against B is W - B, once: a second opening of the same W - B would be the same number. What must
never happen is B used against a DIFFERENT value W' (W - B and W' - B give W - W'). So a mask
belongs to one registration: every :func:`prepare` draws fresh masks under fresh ids (a serial
number per provider plus the weight's name), and the dealer refuses a second mask under an id it
holds. With the ``local`` dealer party 0 draws B and so learns W from D (as it learns every
triple today): private weights there are cost-only runs.

Where the tuples come from (the same providers as every other tuple, :mod:`pmpc.mpc.dealer`):
  * ``ttp``: party 1 draws its shares of B, A and C from the seed it shares with the dealer; party 0
    draws its shares of B and A from its own seed and gets C's correction term from the dealer,
    which keeps B (the sum of both parties' draws) for the session. Requests name the weight id
    and its shape; the dealer checks both against the B it holds and caps what it stores.
  * ``local``: party 0 draws B, A in plaintext and shares them, keeping B for the session.
  * ``--preprocess``: the dry run records a ``fixed_operand_triple`` request per product (the
    plan's new kind); the offline phase deals them against the B established at setup.
"""
from __future__ import annotations

import math
import weakref

import torch

from pmpc.mpc import crypten_compat as cc  # first: it shims crypten before anything imports it
from crypten.mpc.primitives.arithmetic import ArithmeticSharedTensor  # noqa: E402,I001
from crypten.mpc.provider.tfp_provider import TrustedFirstParty  # noqa: E402
from crypten.mpc.provider.ttp_provider import TrustedThirdParty, TTPClient, TTPServer  # noqa: E402

from pmpc.mpc import wire  # noqa: E402
from pmpc.mpc.primitives import PRIMITIVES  # noqa: E402
from pmpc.ops import extend_rows  # noqa: E402
from pmpc.mpc.roles import talking_to  # noqa: E402

KIND = "fixed_operand_triple"  # the provider method and the plan's request kind
ID_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._/-")
MAX_ID = 96                    # characters of a weight id
MAX_MASKS = 1 << 14            # masks one dealer session holds
MAX_MASK_ELEMENTS = 1 << 29    # ring elements of all masks one dealer session holds (4 GiB)
OPEN_ELEMENTS = 1 << 22        # ring elements opened in one round at setup (bounds the transient memory)


class FixedOperand:
    """A private weight ready for fixed-operand products: its shares ``w`` (a CrypTensor), the
    public opening ``d`` = W - B (ring integers on W's scale) and the id of B at the dealer.
    ``transposed``: the operand is W's transpose, read from the same shares and opening (a tied
    output layer is the embedding table transposed: held once, one mask B, opened once)."""

    def __init__(self, wid: str, w, d: torch.Tensor, transposed: bool = False):
        self.wid, self.w, self.d, self.transposed = wid, w, d, transposed

    @property
    def shape(self):
        return torch.Size(reversed(self.w.shape)) if self.transposed else self.w.shape

    def size(self):
        return self.shape

    def t(self) -> "FixedOperand":
        # the dealer tells W from its transpose by the shape a triple names: a square one could be either
        if self.w.shape[0] == self.w.shape[1]:
            raise ValueError("a square fixed operand is not used transposed (its triples would be ambiguous)")
        return FixedOperand(self.wid, self.w, self.d, not self.transposed)


# -- the two parties ----------------------------------------------------------------------------
_SERIAL: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _serial(provider) -> int:
    """How many registrations this provider has served: the same count at both parties (they
    run the same program), so a dry run's ids (a fresh planning provider) name what the real
    session's do."""
    n = _SERIAL.get(provider, 0)
    _SERIAL[provider] = n + 1
    return n


def weight_id(serial: int, name: str) -> str:
    return check_id(f"{serial}/{name}")


def check_id(wid) -> str:
    wire.is_str(wid, MAX_ID, "weight id")
    if not wid or not set(wid) <= ID_CHARS:
        raise ValueError(f"weight id {wid[:40]!r}: letters, digits and . _ / - only")
    return wid


def prepare(W: dict, names) -> dict:
    """``W`` with each weight in ``names`` (secret-shared matrices used as the right operand of a
    product) turned into a :class:`FixedOperand`: a fresh mask per weight from the session's
    provider, and D = W - B opened once, in rounds of at most ``OPEN_ELEMENTS`` ring elements."""

    serial = _serial(cc.active_provider())
    names = sorted(names)  # one order at both parties (and the dealer): the masks are drawn in it
    out = dict(W)
    if getattr(cc.active_provider(), "dry_run", False):
        # planning a query (dealer.ShapeOnly): only the shapes matter, and the setup is no part of
        # the plan; a zero-stride D holds no memory
        for name in names:
            out[name] = FixedOperand(weight_id(serial, name), W[name],
                                     torch.zeros((), dtype=torch.long).expand(W[name].shape))
        return out
    provider = cc.crypten.mpc.get_default_provider()  # the same provider, its tuples counted
    blocks = []  # row blocks of the masked weights, each opened in place: D takes the mask's memory
    for name in names:
        wid = weight_id(serial, name)
        d = provider.fixed_operand_mask(wid, W[name].size()).share  # this party's share of B: drawn fresh
        d.neg_().add_(W[name]._tensor.share)                        # its share of W - B, in place
        out[name] = FixedOperand(wid, W[name], d)
        step = max(1, OPEN_ELEMENTS // max(1, d[0].numel()))
        blocks += [d[i:i + step] for i in range(0, d.shape[0], step)]
    while blocks:  # rounds of at most OPEN_ELEMENTS ring elements (a whole matrix when it fits)
        group, n = [], 0
        while blocks and (not group or n + blocks[0].numel() <= OPEN_ELEMENTS):
            group.append(blocks.pop(0))
            n += group[-1].numel()
        for view, opened in zip(group, cc.comm.get().all_reduce(group, batched=True)):
            view.copy_(opened)
    return out


def matmul(x, f: FixedOperand):
    """[x @ W] for a secret x against the fixed operand ``f``: one opening of x - A (one round),
    two local ring products, one truncation back to the standard fixed point."""
    provider = cc.crypten.mpc.get_default_provider()
    a, c = getattr(provider, KIND)(f.wid, x.size(), f.size())
    e = cc.comm.get().all_reduce(x._tensor.share - a.share)  # the activations' opening: one round
    z = c.share + _mm(e, f.w._tensor.share, f.transposed) + _mm(a.share, f.d, f.transposed)
    PRIMITIVES.add("products", z.numel())
    fb = cc.crypten.cfg.encoder.precision_bits
    out = ArithmeticSharedTensor.from_shares(z, precision=0)
    shift = cc.log2_scale(x) + cc.log2_scale(f.w) - fb
    if shift > 0:
        out.div_(2 ** shift)  # the one truncation (crypten_compat's exact 2-party division)
    return cc.MPCTensor.from_shares(out.share, precision=fb)


def _mm(a: torch.Tensor, m: torch.Tensor, transposed: bool) -> torch.Tensor:
    """a @ m, or a @ m.T with ``transposed``: computed as m @ a.T, reading m's rows in order (an
    int64 product that walks a transposed view column by column is ~10x slower)."""
    if not transposed:
        return a.matmul(m)
    rows = a.reshape(-1, a.shape[-1])
    if rows.shape[0] == 1:  # a decoded token: one matrix-vector product
        out = torch.mv(m, rows[0])[None]
    else:
        out = m.matmul(rows.t().contiguous()).t()
    return out.reshape(*a.shape[:-1], m.shape[0])


def out_size(size_x, size_w) -> list:
    a = torch.empty(tuple(size_x), device="meta")
    b = torch.empty(tuple(size_w), device="meta")
    return list(torch.matmul(a, b).shape)


def _arith(t, size):
    """Party 0's plaintext ``t`` shared with a pseudo-random zero sharing (``size``: at the others)."""

    return ArithmeticSharedTensor(t, size=size, precision=0, src=0)


# ``local`` (CrypTen's trusted first party): party 0 draws and keeps B ------------------------------
_TFP_MASKS: dict = {}  # weight id -> B (party 0's process only)


def _tfp_mask(self, wid, size, device=None):
    if cc.comm.get().get_rank() != 0:
        return _arith(None, tuple(size))
    b = cc.ring_random(tuple(size))
    _TFP_MASKS[wid] = b
    return _arith(b, size)


def _tfp_triple(self, wid, size_x, size_w, device=None):
    if cc.comm.get().get_rank() != 0:
        return _arith(None, tuple(size_x)), _arith(None, tuple(out_size(size_x, size_w)))
    b, transposed = _mask_for(_TFP_MASKS, wid, size_w)
    a = cc.ring_random(tuple(size_x))
    return _arith(a, None), _arith(_mm(a, b, transposed), None)


def _mask_for(masks: dict, wid, size_w) -> tuple:
    """The session's mask ``wid`` and whether the product reads it transposed: the shape of the
    operand the triple names says which (a square operand is never transposed)."""
    b = masks.get(wid)
    if b is None:
        raise ValueError(f"no mask {wid[:40]!r} in this session")
    if list(b.shape) == list(size_w):
        return b, False
    if list(b.shape[::-1]) == list(size_w):
        return b, True
    raise ValueError(f"mask {wid[:40]!r} is {list(b.shape)}, not {list(size_w)} nor its transpose")


# ``ttp``: the parties' side -----------------------------------------------------------------------
def _ttp_mask(self, wid, size, device=None):
    client = TTPClient.get()
    b = cc.ring_random(size, client.get_generator())
    c = cc.comm.get()
    if c.get_rank() == 0:  # the dealer draws the same shares (and keeps their sum): told in order
        c.settle()  # answers still owed come first on the link
        ttp = c.get_ttp_rank()
        with talking_to(ttp):
            wire.send("dealer request", {"op": "fixed_mask", "id": wid, "shape": list(size)}, ttp, client.ttp_group)
            wire.recv("dealer reply", ttp, client.ttp_group, check=lambda m: _check_ack(m, wid))
    return ArithmeticSharedTensor.from_shares(b, precision=0)


def _check_ack(m, wid):
    wire.is_dict(m, {"id"}, "dealer reply")
    if m["id"] != wid:
        raise ValueError("the dealer acknowledged another mask")


def _ttp_triple(self, wid, size_x, size_w, device=None):
    client = TTPClient.get()
    gen = client.get_generator()
    a = cc.ring_random(size_x, gen)
    if cc.comm.get().get_rank() == 0:
        c = client.ttp_request("fixed", device, wid, list(size_x), list(size_w))
    else:
        c = cc.ring_random(out_size(size_x, size_w), gen)
    return (ArithmeticSharedTensor.from_shares(a, precision=0), ArithmeticSharedTensor.from_shares(c, precision=0))


# ``ttp``: the dealer's side (methods of its TTPServer) -------------------------------------------
def _dealer_mask(self, wid, size):
    """Draw B as the sum of both parties' draws and keep it for the session; never twice per id."""
    masks = self.__dict__.setdefault("fixed_masks", {})
    check_id(wid)
    if wid in masks or wid.startswith("kv/"):
        raise ValueError(f"a mask under id {wid!r} was dealt already: a mask serves one weight only")
    n = math.prod(size)
    held = sum(b.numel() for b in masks.values())
    if len(masks) >= MAX_MASKS or held + n > MAX_MASK_ELEMENTS:
        raise ValueError(f"fixed-operand masks beyond the session's limit ({MAX_MASKS} masks, "
                         f"{MAX_MASK_ELEMENTS} ring elements)")
    masks[wid] = self._get_additive_PRSS(list(size))


def _dealer_triple(self, wid, size_x, size_w):
    """Party 0's correction term of C = A @ B: A fresh (both parties' draws), B the session's."""
    b, transposed = _mask_for(self.__dict__.get("fixed_masks", {}), wid, size_w)
    a = self._get_additive_PRSS(list(size_x))
    c = _mm(a, b, transposed)
    return c - self._get_additive_PRSS(c.size(), remove_rank=True)


def check_request(args: list, max_elements: int) -> list:
    """A dealer request for one fixed-operand triple, ``[weight id, shape of x, shape of W]``;
    returns the answer's shape."""
    wire.is_list(args, 3, "args")
    if len(args) != 3:
        raise ValueError("a fixed-operand triple takes a weight id and two shapes")
    check_id(args[0])
    wire.is_shape(args[1], max_elements)
    wire.is_shape(args[2], max_elements)
    if len(args[2]) != 2:
        raise ValueError("a fixed operand is a matrix")
    try:
        return out_size(args[1], args[2])
    except RuntimeError as e:
        raise ValueError(f"matmul of {args[1]} by {args[2]}: {str(e).splitlines()[0][:80]}") from None


# -- a fixed operand that grows: the KV cache --------------------------------------------------------
# A layer's cached keys K and values V are right operands of every later attention product. Opened
# as ordinary Beaver operands they would be masked and opened again at every token (L rows a
# product); as fixed operands each row's D = K - B is opened ONCE, when it is appended — in the same
# round as the product that first uses it — and the dealer keeps the mask rows B, dealing each
# product's C = A B^T (or A B) against all of them with a fresh A. A decoded token then opens its
# query's and its probabilities' masks and its own new key and value rows, not the cache.
# Security as above: every mask row is opened against one row, once; a restart (a new query's
# prefill) draws fresh rows under a fresh id.
# A batch that shares a prefix (:meth:`pmpc.engine.Engine.prefill`) computes the prefix as a batch
# of ONE: its rows are masked and opened once, as one row's. When the rows of the whole batch
# join them, that row's cache — shares, opening and mask rows alike — becomes every row's (a
# broadcast along the batch, :func:`pmpc.ops.extend_rows`): every batch row's prefix holds the
# same value under the same mask, so a mask row is still opened against one value only, and
# every later product opens its query side and the new rows alone.
KV_MASK, KV_TRIPLE = "fixed_operand_kv_mask", "fixed_operand_kv_triple"  # provider methods and plan kinds


class GrowingOperand:
    """A secret KV cache [B, H, L, d] as a fixed operand that grows along L: its shares ``w`` (a
    CrypTensor), the public D = W - B of the rows opened so far (``d``), rows appended but not yet
    opened (``pending``: (rows, mask shares)) and the id of B at the dealer."""

    def __init__(self, name: str, partner: "GrowingOperand | None" = None):
        # one id per cache: a query's first append restarts it (fresh rows), so the id needs no
        # serial number, and a planned query names what the real one does
        self.wid = check_id(f"kv/{name}")
        self.w, self.d, self.pending = None, None, []
        self.partner = partner  # appended in step with this one: its rows open with this one's product

    def transpose(self, d0: int, d1: int) -> "Transposed":
        if sorted((d0 % 4, d1 % 4)) != [2, 3]:
            raise ValueError("a growing operand transposes its last two dims only")
        return Transposed(self)

    @property
    def shape(self):
        return self.w.shape

    def size(self):
        return self.w.size()

    def append(self, rows) -> None:
        """Rows [B, H, T, d] join the operand under fresh mask rows; their D opens with the next product."""
        provider = cc.crypten.mpc.get_default_provider()
        b = getattr(provider, KV_MASK)(self.wid, list(rows.size()), self.w is None)
        self.pending.append((rows, b))
        self.w = rows if self.w is None else extend_rows(self.w, rows, cc.crypten.cat)


class Transposed:
    """W^T of a growing operand, as the right operand of a product (the scores' keys)."""

    def __init__(self, of: GrowingOperand):
        self.of = of


def kv_matmul(x, f: GrowingOperand, transpose: bool):
    """[x @ W^T] (``transpose``: the scores against the keys) or [x @ W] (the values) for a secret
    x against the growing operand ``f``: ONE round opens x - A and the D of every pending row of
    ``f`` and of its partner (a layer's values, appended with its keys)."""
    provider = cc.crypten.mpc.get_default_provider()
    a, c = getattr(provider, KV_TRIPLE)(f.wid, list(x.size()), list(f.size()), transpose)
    grown = [g for g in (f, f.partner) if g is not None and g.pending]
    rows = [(g, r, b) for g in grown for r, b in g.pending]
    opened = cc.comm.get().all_reduce([x._tensor.share - a.share] + [r._tensor.share - b.share for _, r, b in rows],
                                      batched=True)                       # the one round
    for (g, _, _), dnew in zip(rows, opened[1:]):
        g.d = dnew if g.d is None else extend_rows(g.d, dnew, torch.cat)
    for g in grown:
        g.pending = []
    e = opened[0]
    w, d = f.w._tensor.share, f.d
    if transpose:
        w, d = w.transpose(-1, -2), d.transpose(-1, -2)
    z = c.share + e.matmul(w) + a.share.matmul(d)
    PRIMITIVES.add("products", z.numel())
    fb = cc.crypten.cfg.encoder.precision_bits
    out = ArithmeticSharedTensor.from_shares(z, precision=0)
    shift = cc.log2_scale(x) + cc.log2_scale(f.w) - fb
    if shift > 0:
        out.div_(2 ** shift)
    return cc.MPCTensor.from_shares(out.share, precision=fb)


def kv_out_size(size_x, size_w, transpose: bool) -> list:
    if list(size_x[:-2]) != list(size_w[:-2]):  # a product per cache row: no broadcast
        raise ValueError(f"a product of {list(size_x)} with a cache of {list(size_w)}")
    w = list(size_w[:-2]) + ([size_w[-1], size_w[-2]] if transpose else list(size_w[-2:]))
    return out_size(size_x, w)


def _grown_size(masks: dict, wid, size, start: bool) -> list:
    """The shape of mask ``wid`` once rows of ``size`` join it (a restart: ``size`` itself). Rows
    extend the mask held: the same dims but the rows, or (a shared prefix's mask, batch 1) the
    same dims but the batch and the rows. Nothing else."""
    old = None if start else masks.get(wid)  # a restart (a new query's cache) drops the old rows
    if old is None and not start:
        raise ValueError(f"no mask {wid[:40]!r} to grow in this session")
    if old is None:
        return list(size)
    lead, held = list(size[:-2]), list(old.shape[:-2])
    if held[:1] == [1]:  # a shared prefix's mask takes the batch of the rows that join it
        held[0] = lead[0] if lead else 1
    if held != lead or old.shape[-1] != size[-1]:
        raise ValueError(f"rows {list(size)} do not extend mask {wid[:40]!r} of {list(old.shape)}")
    return [*lead, old.shape[-2] + size[-2], size[-1]]


def _grow(masks: dict, wid, b: torch.Tensor, start: bool) -> None:
    """Keep the new mask rows ``b`` under ``wid`` (a restart replaces what was held)."""
    _grown_size(masks, wid, list(b.shape), start)
    masks[wid] = b if start else extend_rows(masks[wid], b, torch.cat)


def _kv_c(b: torch.Tensor, a: torch.Tensor, wid, size_w, transpose: bool) -> torch.Tensor:
    if list(b.shape) != list(size_w):
        raise ValueError(f"mask {wid[:40]!r} is {list(b.shape)}, not {list(size_w)}")
    kv_out_size(list(a.shape), size_w, transpose)  # a product per cache row: the same batch and heads
    return a.matmul(b.transpose(-1, -2) if transpose else b)


def _tfp_kv_mask(self, wid, size, start, device=None):
    if cc.comm.get().get_rank() != 0:
        return _arith(None, tuple(size))
    b = cc.ring_random(tuple(size))
    _grow(_TFP_MASKS, wid, b, start)
    return _arith(b, size)


def _tfp_kv_triple(self, wid, size_x, size_w, transpose, device=None):
    if cc.comm.get().get_rank() != 0:
        return _arith(None, tuple(size_x)), _arith(None, tuple(kv_out_size(size_x, size_w, transpose)))
    a = cc.ring_random(tuple(size_x))
    return _arith(a, None), _arith(_kv_c(_TFP_MASKS.get(wid), a, wid, size_w, transpose), None)


def _ttp_kv_mask(self, wid, size, start, device=None):
    """Each party draws its share of the new rows from the stream it shares with the dealer; the
    dealer draws both (and keeps their sum) when party 0's request reaches it, in order."""
    client = TTPClient.get()
    b = cc.ring_random(tuple(size), client.get_generator())
    if cc.comm.get().get_rank() == 0:
        client.ttp_request("kv_mask", device, wid, list(size), bool(start))  # an empty answer
    return ArithmeticSharedTensor.from_shares(b, precision=0)


def _ttp_kv_triple(self, wid, size_x, size_w, transpose, device=None):
    client = TTPClient.get()
    gen = client.get_generator()
    a = cc.ring_random(tuple(size_x), gen)
    if cc.comm.get().get_rank() == 0:
        c = client.ttp_request("kv_triple", device, wid, list(size_x), list(size_w), bool(transpose))
    else:
        c = cc.ring_random(tuple(kv_out_size(size_x, size_w, transpose)), gen)
    return ArithmeticSharedTensor.from_shares(a, precision=0), ArithmeticSharedTensor.from_shares(c, precision=0)


def _dealer_kv_mask(self, wid, size, start):
    masks = self.__dict__.setdefault("fixed_masks", {})
    if not wid.startswith("kv/"):  # a weight's mask never grows (nor is it replaced)
        raise ValueError(f"{wid[:40]!r} is not a KV cache's id")
    held = sum(b.numel() for k, b in masks.items() if k != wid)  # and wid's own, as it will be:
    if len(masks) >= MAX_MASKS or held + math.prod(_grown_size(masks, wid, size, start)) > MAX_MASK_ELEMENTS:
        raise ValueError(f"fixed-operand masks beyond the session's limit ({MAX_MASKS} masks, "
                         f"{MAX_MASK_ELEMENTS} ring elements)")
    _grow(masks, wid, self._get_additive_PRSS(list(size)), start)
    return torch.empty(0, dtype=torch.long)


def _dealer_kv_triple(self, wid, size_x, size_w, transpose):
    b = self.__dict__.get("fixed_masks", {}).get(wid) if wid.startswith("kv/") else None
    if b is None:
        raise ValueError(f"no mask {wid[:40]!r} in this session")
    a = self._get_additive_PRSS(list(size_x))
    c = _kv_c(b, a, wid, size_w, transpose)
    return c - self._get_additive_PRSS(c.size(), remove_rank=True)


def check_kv_request(fn: str, args: list, max_elements: int) -> list:
    """A dealer request ``kv_mask`` [id, shape, restart] or ``kv_triple`` [id, shape of x, shape
    of W, transpose]; returns the answer's shape."""
    wire.is_list(args, 4, "args")
    if len(args) != (3 if fn == "kv_mask" else 4) or type(args[-1]) is not bool:
        raise ValueError(f"{fn} takes an id, {'a shape' if fn == 'kv_mask' else 'two shapes'} and a flag")
    check_id(args[0])
    for shape in args[1:-1]:
        wire.is_shape(shape, max_elements)
        if len(shape) < 2:
            raise ValueError("a growing operand has at least two dims")
    if fn == "kv_mask":
        return [0]
    try:
        return kv_out_size(args[1], args[2], args[3])
    except RuntimeError as e:
        raise ValueError(f"matmul of {args[1]} by {args[2]}: {str(e).splitlines()[0][:80]}") from None


def _install() -> None:
    TrustedFirstParty.fixed_operand_mask, TrustedFirstParty.fixed_operand_triple = _tfp_mask, _tfp_triple
    TrustedThirdParty.fixed_operand_mask, TrustedThirdParty.fixed_operand_triple = _ttp_mask, _ttp_triple
    TTPServer.fixed_mask, TTPServer.fixed = _dealer_mask, _dealer_triple
    for cls, mask, triple in ((TrustedFirstParty, _tfp_kv_mask, _tfp_kv_triple),
                              (TrustedThirdParty, _ttp_kv_mask, _ttp_kv_triple)):
        setattr(cls, KV_MASK, mask)
        setattr(cls, KV_TRIPLE, triple)
    TTPServer.kv_mask, TTPServer.kv_triple = _dealer_kv_mask, _dealer_kv_triple


_install()
