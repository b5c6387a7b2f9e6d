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
    if wid in masks:
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


def _install() -> None:
    TrustedFirstParty.fixed_operand_mask, TrustedFirstParty.fixed_operand_triple = _tfp_mask, _tfp_triple
    TrustedThirdParty.fixed_operand_mask, TrustedThirdParty.fixed_operand_triple = _ttp_mask, _ttp_triple
    TTPServer.fixed_mask, TTPServer.fixed = _dealer_mask, _dealer_triple


_install()
