"""FSS gates on CrypTen shares, dealt like Beaver tuples: the one-online-round sign (comparison)
and the one-round table lookup.

The sign of an L-bit value y (two's complement, L = 64: the whole ring; L = 8/16/32: a lane of
the encoding, as :func:`pmpc.mpc.crypten_compat.lane_ltz` reads it) from a DCF (:mod:`pmpc.mpc.fss`):

  The dealer draws r uniform over L bits, shared additively modulo 2^L. The parties open
  y^ = y + r mod 2^L in ONE exchange. With primes for the low L-1 bits and m = MSB(r),
      MSB(y) = MSB(y^) XOR m XOR [y^' < r']        (the borrow of y^' - r' flips the top bit).
  The dealer keys a DCF on L-1 bits with alpha = r' and beta = 1 - 2m, so the parties' outputs
  are shares of (1 - 2m)[y^' < r'], and shares m: their sum z = m XOR [y^' < r'], and with
  the public p = MSB(y^), MSB(y) = p + (1 - 2p) z, a local step. Result: arithmetic 0/1 shares
  in Z/2^64 (no B2A), one round, L bits per element each way online (lanes packed in words).

Who deals (the same providers as Beaver tuples, :mod:`pmpc.mpc.dealer`):
  * ``local`` (CrypTen's TFP): party 0 makes the keys. Party 1's root seed, mask share and m share
    come from the stream the two parties share (so they cost nothing to send); party 0 knows
    them, hence every r, hence every opened y: NOT secure against party 0, like its tuples.
  * ``ttp``: the dealer process. Each party's seed and mask share come from the stream it
    shares with the dealer; party 0 receives the correction words and its m share in the
    dealer's reply (raw int64, its shape checked against the request), party 1 the same
    correction words from the dealer directly. Both read them after the opening of y^ (the
    request goes out before it): the dealer's round trip runs beside the opening, no round is added.
  In ``local`` mode the correction words (the same in both keys) reach party 1 from party 0,
  right behind party 0's part of the opening when the key is made on the spot (no extra round),
  or in the offline phase with ``--preprocess`` (:func:`complete_keys`). Either way they are
  dealt material, counted apart from the opening's bytes. They hide alpha and beta without a root seed.

Which comparison runs (``PMPC_COMPARISON``, read at every call; both parties decide alike,
from public shapes): ``auto`` (default) — this gate while a call's elements x (L - 1) tree levels
stay within ``DCF_MAX_LEVELS``, the packed bitwise adder circuit
(:func:`pmpc.mpc.crypten_compat.lane_ltz`, ~7 rounds for 32 bits, 8 for the ring, no keys) above;
``dcf`` or ``bitwise`` — always one (``PMPC_DCF_MAX_LEVELS`` moves ``auto``'s bound). Why that
measure: the gate trades rounds for work that grows with elements x levels — CPU (~0.01 us per element-level to evaluate, ~0.05 us to generate, in
:mod:`pmpc.mpc.fss`'s compiled kernels; the keys are made by party 0 in ``local`` mode and by
the dealer in ``ttp`` mode, on the same cores here) and above all key bytes (~25 bytes per
element-level, which the ``ttp`` dealer sends and party 0 reads beside the rounds) — while a
bitwise call's six or seven rounds cost ~0.5 ms each on the direct loopback links, whatever the
size. Up to ~16 K element-levels (~520 comparisons on a 32-bit lane, ~260 over the ring) the gate
costs less time and fewer rounds; above, on this 2-core CPU, the adder circuit is as fast or
faster though it takes more rounds: SmolLM2's bolt decode with the bound at 64 K saves 90 of
1,779 rounds a token at the same time and 15% more dealt bytes, at 256 K 210 rounds for 5x the
dealt bytes and 1.5x the time (results/fss). Decode-step norms and reciprocals run as gates,
decode activations and large prefill tensors as adder circuits. On a WAN, where a round costs
tens of ms, ``PMPC_COMPARISON=dcf`` is the better choice. Both paths compute the same bits (the
emulation needs no change).

Table lookups (:func:`lookup`, SIRNN's digit tables): for a secret k-bit index d (k <= 12) the
dealer shares r and the one-hot vector e_r (2^k ring words a lookup); the parties open
d + r mod 2^k and T[d] = sum_j e_r[j] T[(d^ - j) mod 2^k] is local. In ``local`` mode party 1's
one-hot share comes from the stream the parties share (nothing is sent); in ``ttp`` mode party 0
receives its share from the dealer. A DPF (:func:`pmpc.mpc.fss.dpf_gen`) would shrink that to
~k 18 bytes at 2^k PRG leaves of local work per lookup; the one-hot costs no AES at all.

Products of values the two parties hold apart (:func:`cross_and`, :func:`cross_and_words`): the
exact truncation's wrap bit is a + b - ab for party 0's bit a and party 1's bit b, and an adder
circuit's first AND is a & b of the parties' own addends. A Beaver product masks both operands
as shared values and opens two ring words (or two words) each way; here the dealer gives party 0
a uniform A, party 1 a uniform B and both shares of A B, and each party opens its own value XOR
its own mask: one bit (one word) each way, same round. In ``local`` mode party 1's mask and share
come from the stream the parties share (party 0 knows them, as every tuple of that mode); in
``ttp`` mode from the stream party 1 shares with the dealer, and party 0's share is the dealer's
answer, read after the opening.

A table on a bit slice of a fixed-point value (:func:`slice_lookup`, SIRNN's initial guesses for
reciprocal and rsqrt) composes the two gates: a sign gate reads the carry of the parties' low
share bits into the slice (round 1), the lookup reads the slice (round 2); exact, no new keys.
"""
from __future__ import annotations

import dataclasses
import math
import os

import numpy as np
import torch

from pmpc.mpc import fss

MODES = ("auto", "dcf", "bitwise")
DCF_MAX_LEVELS = 1 << 14  # ``auto``: the DCF gate while elements x (lane bits - 1) stays within this


def comparison_mode() -> str:
    """``PMPC_COMPARISON``: ``auto`` (default), ``dcf`` or ``bitwise`` (see the module's docstring)."""
    mode = os.environ.get("PMPC_COMPARISON", "auto")
    if mode not in MODES:
        raise ValueError(f"PMPC_COMPARISON must be one of {', '.join(MODES)}, not {mode!r}")
    return mode


def max_levels() -> int:
    """``auto``'s bound: ``PMPC_DCF_MAX_LEVELS`` (element-levels), default :data:`DCF_MAX_LEVELS`."""
    v = os.environ.get("PMPC_DCF_MAX_LEVELS")
    if v is None:
        return DCF_MAX_LEVELS
    try:
        return int(v)
    except ValueError:
        raise ValueError(f"PMPC_DCF_MAX_LEVELS must be an integer, not {v!r}") from None


def use_dcf(elements: int, lane: int) -> bool:
    """Whether a comparison of ``elements`` values on an L = ``lane``-bit lane runs as the DCF gate
    (the rule above)."""
    mode = comparison_mode()
    return mode == "dcf" or (mode == "auto" and elements * (lane - 1) <= max_levels())


def key_words(lane: int) -> int:
    """int64 words of the correction part of one sign key on an L-bit lane."""
    return fss.words_per_key(lane - 1)


def answer_width(lane: int) -> int:
    """Words per element of the dealer's answer to party 0: correction words + its m share."""
    return key_words(lane) + 1


@dataclasses.dataclass
class SignKey:
    """One party's material for N sign gates on an L-bit lane: its mask share ``r`` (uint64,
    < 2^L), its share ``m`` of MSB(r) (uint64), its DCF root ``seed`` [N, 2] and the correction
    ``words`` [N, W] (None at party 1 until party 0 sends them). ``fresh``: made on the spot by
    party 0 (``local``), party 1 does not hold the words yet (both parties know it from the
    provider's kind). ``late``: the dealer's answer (``ttp``), read after the opening —
    party 0's [N, W + 1] (words, m share), party 1's [N, W] (words); :meth:`take_late` unpacks it."""
    lane: int
    r: np.ndarray
    m: np.ndarray | None
    seed: np.ndarray
    words: np.ndarray | None
    fresh: bool = False
    late: torch.Tensor | None = None

    def take_late(self) -> None:
        if self.late is None:
            return
        a = self.late.numpy().view(np.uint64)
        if self.m is None:  # party 0: the m share rides in the last column
            self.words, self.m = a[:, :-1].copy(), a[:, -1].copy()
        else:
            self.words = a.copy()
        self.late = None

    @property
    def size(self) -> int:
        return self.r.shape[0]

    def nbytes(self) -> int:
        return self.size * (8 + 8 + 16 + 8 * key_words(self.lane))


def _mask(lane: int) -> np.uint64:
    return np.uint64((1 << lane) - 1) if lane < 64 else np.uint64(0xFFFFFFFFFFFFFFFF)


def _os_words(n: int, bits: int = 64) -> np.ndarray:
    """n words from the OS for filler (padding that carries no secret)."""
    return np.frombuffer(os.urandom(8 * n), dtype=np.uint64).copy() & _mask(bits)


def _words(gen, n: int, bits: int = 64) -> np.ndarray:
    """n uniform ``bits``-bit words from a :class:`pmpc.mpc.prg.PRG` (the one way pmpc draws)."""
    from pmpc.mpc.crypten_compat import ring_random

    return ring_random(n, gen, bits).numpy().view(np.uint64).copy()


def draw_own(gen, n: int, lane: int, party: int) -> tuple:
    """What a party draws from the stream it shares with the dealer, in this order: root seed,
    mask share, and (party 1 only) its m share. The dealer draws the same from its copy."""
    seed = _words(gen, 2 * n).reshape(n, 2)
    r = _words(gen, n, lane)
    m = _words(gen, n) if party == 1 else None
    return seed, r, m


def deal(lane: int, seed0, r0, seed1, r1, m1) -> tuple[np.ndarray, np.ndarray]:
    """The dealer's computation: from both parties' draws, the common correction words [N, W]
    and party 0's m share."""
    mask = _mask(lane)
    r = (r0 + r1) & mask
    m = (r >> np.uint64(lane - 1)) & np.uint64(1)
    low = r & _mask(lane - 1)
    words = fss.dcf_gen_words(lane - 1, low, np.uint64(1) - np.uint64(2) * m, seed0, seed1)
    # the two control-bit words use L-1 bits: the rest get OS-random filler, so every word on
    # the wire is uniform (the evaluation reads bits below L-1 only)
    if lane - 1 < 64:
        words[:, -3:-1] |= _os_words(words.shape[0] * 2).reshape(-1, 2) & ~_mask(lane - 1)
    return words, m - m1


def evaluate(party: int, key: SignKey, yhat: np.ndarray) -> np.ndarray:
    """This party's arithmetic share (uint64) of MSB(y) from the opened y^ = y + r mod 2^L."""
    lane = key.lane
    c = fss.dcf_eval_words(party, lane - 1, key.seed, key.words, yhat & _mask(lane - 1))
    z = key.m + c
    p = (yhat >> np.uint64(lane - 1)) & np.uint64(1)
    out = z * (np.uint64(1) - np.uint64(2) * p)
    return out + p if party == 0 else out


# -- providers ---------------------------------------------------------------------------------
def _n(size) -> int:
    return math.prod(size) if size else 1


def tfp_generate_sign(self, size, lane, device=None):
    """``local`` mode: party 0 deals (see the module's docstring)."""
    from pmpc.mpc.crypten_compat import comm, crypten

    n = _n(size)
    rank = comm.get().get_rank()
    pair = crypten.generators["next" if rank == 0 else "prev"][torch.device("cpu")]
    seed1, r1, m1 = draw_own(pair, n, lane, 1)
    if rank == 1:
        return SignKey(lane, r1, m1, seed1, None, fresh=True)
    seed0, r0, _ = draw_own(crypten.generators["local"][torch.device("cpu")], n, lane, 0)
    words, m0 = deal(lane, seed0, r0, seed1, r1, m1)
    return SignKey(lane, r0, m0, seed0, words, fresh=True)


def ttp_generate_sign(self, size, lane, device=None):
    """``ttp`` mode: the dealer deals; party 0 asks it for the correction words."""
    from crypten.mpc.provider.ttp_provider import TTPClient

    from pmpc.mpc.crypten_compat import comm

    from pmpc.mpc import dealer

    n = _n(size)
    rank = comm.get().get_rank()
    client = TTPClient.get()
    seed, r, m = draw_own(client.get_generator(device="cpu"), n, lane, rank)
    if rank == 1:  # the words come from the dealer, after the opening
        late = torch.empty(n, key_words(lane), dtype=torch.long)
        dealer.expect_words(late)
    else:  # the request goes now, its answer is read after the opening
        late = client.ttp_request("sign", device, list(size), lane).reshape(n, answer_width(lane))
    # unpacked after the opening (:func:`ltz`), or offline by :func:`complete_keys`
    return SignKey(lane, r, m, seed, None, late=late)


def dealer_sign(self, size, lane):
    """The dealer process's answer to a ``sign`` request (a method of its TTP server): party 0's
    correction words and m share as one int64 tensor [N, W + 1]."""
    n = _n(size)
    seed0, r0, _ = draw_own(self.generators[0], n, lane, 0)
    seed1, r1, m1 = draw_own(self.generators[1], n, lane, 1)
    words, m0 = deal(lane, seed0, r0, seed1, r1, m1)
    return torch.from_numpy(np.concatenate([words, m0[:, None]], axis=1).view(np.int64))


def junk_sign(gen, size, lane) -> SignKey:
    """A planning dry run's key (:class:`pmpc.mpc.dealer.ShapeOnly`): random words from a local
    stream, complete (nothing to send), evaluating to garbage."""
    n = _n(size)
    seed, r, m = draw_own(gen, n, lane, 1)
    return SignKey(lane, r, m, seed, _words(gen, n * key_words(lane)).reshape(n, key_words(lane)))


# -- table lookups: dealer one-hot vectors ---------------------------------------------------------
MAX_TABLE_BITS = 12


@dataclasses.dataclass
class OneHot:
    """One party's material for N lookups in 2^k-entry tables: its share ``r`` of the index mask
    (k bits) and its share ``e`` [N, 2^k] of the one-hot vector e_r (uint64)."""
    k: int
    r: np.ndarray
    e: np.ndarray

    def nbytes(self) -> int:
        return 8 * self.r.size + 8 * self.e.size


def draw_onehot(gen, n: int, k: int, party: int) -> tuple:
    """A party's draws from the stream it shares with the dealer: its mask share, and (party 1)
    its one-hot share."""
    r = _words(gen, n, k)
    e = _words(gen, n << k).reshape(n, 1 << k) if party == 1 else None
    return r, e


def deal_onehot(k: int, r0, r1, e1) -> np.ndarray:
    """Party 0's one-hot share e_r - e1, r = r0 + r1 mod 2^k."""
    return fss.onehot_gen(k, (r0 + r1) & _mask(k), e1)[0]


def tfp_generate_onehot(self, size, k, device=None):
    """``local`` mode: party 0 deals; party 1's shares come from the stream the parties share
    (nothing is sent)."""
    from pmpc.mpc.crypten_compat import comm, crypten

    n = _n(size)
    rank = comm.get().get_rank()
    r1, e1 = draw_onehot(crypten.generators["next" if rank == 0 else "prev"][torch.device("cpu")], n, k, 1)
    if rank == 1:
        return OneHot(k, r1, e1)
    r0, _ = draw_onehot(crypten.generators["local"][torch.device("cpu")], n, k, 0)
    return OneHot(k, r0, deal_onehot(k, r0, r1, e1))


def ttp_generate_onehot(self, size, k, device=None):
    """``ttp`` mode: party 0 gets its one-hot share from the dealer."""
    from crypten.mpc.provider.ttp_provider import TTPClient

    from pmpc.mpc.crypten_compat import comm

    n = _n(size)
    rank = comm.get().get_rank()
    client = TTPClient.get()
    r, e = draw_onehot(client.get_generator(device="cpu"), n, k, rank)
    if rank == 1:
        return OneHot(k, r, e)
    ans = client.ttp_request("onehot", device, list(size), k)
    # a view, not a copy: the answer is read into ``ans`` after the opening of d + r
    return OneHot(k, r, ans.reshape(n, 1 << k).numpy().view(np.uint64))


def dealer_onehot(self, size, k):
    """The dealer's answer to a ``onehot`` request: party 0's share [N, 2^k] (int64)."""
    n = _n(size)
    r0, _ = draw_onehot(self.generators[0], n, k, 0)
    r1, e1 = draw_onehot(self.generators[1], n, k, 1)
    return torch.from_numpy(deal_onehot(k, r0, r1, e1).view(np.int64))


def junk_onehot(gen, size, k) -> OneHot:
    n = _n(size)
    r, e = draw_onehot(gen, n, k, 1)
    return OneHot(k, r, e)


# -- the product of a bit party 0 holds and a bit party 1 holds ------------------------------------
@dataclasses.dataclass
class CrossBits:
    """One party's material for N products a b, ``a`` a bit party 0 holds in the clear and ``b``
    one party 1 holds (the exact truncation's wrap bit, :func:`cross_and`): the party's own
    uniform mask bits (A at party 0, B at party 1; int64 0/1, known to it alone) and its
    arithmetic share ``c`` of A B in Z/2^64 (int64; at party 0 under ``ttp`` the dealer's
    answer, read after the opening)."""
    mask: torch.Tensor
    c: torch.Tensor


def draw_cross(gen, size, party: int) -> tuple:
    """A party's draws from the stream it shares with the dealer: its mask bits and (party 1)
    its share of A B."""
    mask = _ring_bits(gen, size, 1)
    return mask, (_ring_bits(gen, size, 64) if party == 1 else None)


def _ring_bits(gen, size, bits: int) -> torch.Tensor:
    from pmpc.mpc.crypten_compat import ring_random

    return ring_random(tuple(size), gen, bits)


def tfp_generate_cross_bits(self, size, device=None):
    """``local`` mode: party 0 deals; party 1's mask and share come from the stream the parties
    share (nothing is sent; party 0 knows B, as it knows every tuple in this mode)."""
    from pmpc.mpc.crypten_compat import comm, crypten

    rank = comm.get().get_rank()
    m1, c1 = draw_cross(crypten.generators["next" if rank == 0 else "prev"][torch.device("cpu")], size, 1)
    if rank == 1:
        return CrossBits(m1, c1)
    m0, _ = draw_cross(crypten.generators["local"][torch.device("cpu")], size, 0)
    return CrossBits(m0, m0 * m1 - c1)


def _ttp_cross(kind: str, draw, size, device) -> CrossBits:
    """``ttp`` mode: each party draws its mask (and party 1 its share) from the stream it shares
    with the dealer; party 0's share is the dealer's answer to ``kind``, read after the opening."""
    from crypten.mpc.provider.ttp_provider import TTPClient

    from pmpc.mpc.crypten_compat import comm

    client = TTPClient.get()
    rank = comm.get().get_rank()
    mask, c = draw(client.get_generator(device="cpu"), size, rank)
    if rank == 0:
        c = client.ttp_request(kind, device, list(size))
    return CrossBits(mask, c)


def ttp_generate_cross_bits(self, size, device=None):
    """Party 0's share A B - c1 from the dealer (:func:`_ttp_cross`)."""
    return _ttp_cross("cross_bits", draw_cross, size, device)


def dealer_cross_bits(self, size):
    """The dealer's answer to a ``cross_bits`` request: party 0's share of A B (int64, ``size``)."""
    m0, _ = draw_cross(self.generators[0], size, 0)
    m1, c1 = draw_cross(self.generators[1], size, 1)
    return m0 * m1 - c1


def junk_cross_bits(gen, size) -> CrossBits:
    return CrossBits(*draw_cross(gen, size, 1))


# the same for binary words: XOR shares of a & b, a party 0's words and b party 1's (the first AND
# of an adder circuit, the parties' own addends' generate bits)
def draw_cross_words(gen, size, party: int) -> tuple:
    mask = _ring_bits(gen, size, 64)
    return mask, (_ring_bits(gen, size, 64) if party == 1 else None)


def tfp_generate_cross_words(self, size, device=None):
    from pmpc.mpc.crypten_compat import comm, crypten

    rank = comm.get().get_rank()
    m1, c1 = draw_cross_words(crypten.generators["next" if rank == 0 else "prev"][torch.device("cpu")], size, 1)
    if rank == 1:
        return CrossBits(m1, c1)
    m0, _ = draw_cross_words(crypten.generators["local"][torch.device("cpu")], size, 0)
    return CrossBits(m0, (m0 & m1) ^ c1)


def ttp_generate_cross_words(self, size, device=None):
    """Party 0's XOR share (A & B) ^ c1 from the dealer (:func:`_ttp_cross`)."""
    return _ttp_cross("cross_words", draw_cross_words, size, device)


def dealer_cross_words(self, size):
    """The dealer's answer to a ``cross_words`` request: party 0's XOR share of A & B."""
    m0, _ = draw_cross_words(self.generators[0], size, 0)
    m1, c1 = draw_cross_words(self.generators[1], size, 1)
    return (m0 & m1) ^ c1


def junk_cross_words(gen, size) -> CrossBits:
    return CrossBits(*draw_cross_words(gen, size, 1))


def cross_and_words(mine: torch.Tensor) -> torch.Tensor:
    """XOR shares of a & b, ``mine`` this party's own int64 words (party 0: a, party 1: b): ONE
    round of one word each way (a Beaver AND of the same words opens two each way). With the
    dealer's A (party 0's), B (party 1's) and [A & B], the parties open e = a ^ A and f = b ^ B
    (one-time pads) and a & b = e f ^ A f ^ e B ^ A B, each term local to who knows it."""
    from pmpc.mpc.crypten_compat import comm, crypten
    from pmpc.mpc.primitives import PRIMITIVES

    c = comm.get()
    rank = c.get_rank()
    t = crypten.mpc.get_default_provider().generate_cross_words(tuple(mine.shape))
    opened = mine ^ t.mask
    words = c.all_gather(opened)                      # the one round; then the dealt share is read
    if rank == 0:
        f = words[1]
        out = (opened & f) ^ (t.mask & f) ^ t.c
    else:
        out = (words[0] & t.mask) ^ t.c
    PRIMITIVES.add("and_words", mine.numel())
    PRIMITIVES.add("tuple_bytes", 16 * mine.numel())
    return out


def _pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """0/1 values, 8 to a byte, as whole int64 words. The last word is padded with OS-random
    bits: zero padding would open as a small integer, which looks like a plaintext value."""
    v = bits.reshape(-1).numpy().astype(np.uint8)
    pad = (-v.size) % 64
    if pad:
        v = np.concatenate([v, np.unpackbits(np.frombuffer(os.urandom(-(-pad // 8)), dtype=np.uint8))[:pad]])
    return torch.from_numpy(np.packbits(v).view(np.int64))


def _unpack_bits(words: torch.Tensor, n: int) -> torch.Tensor:
    return torch.from_numpy(np.unpackbits(words.numpy().view(np.uint8))[:n].astype(np.int64))


def cross_and(mine: torch.Tensor) -> torch.Tensor:
    """Arithmetic shares (int64, Z/2^64) of a b, where ``mine`` is this party's own 0/1 int64
    tensor (party 0: a, party 1: b): ONE round of ONE bit each way per element.

    With the dealer's (A, B, [A B]) — A a uniform bit only party 0 knows, B one only party 1
    knows — party 0 opens e = a ^ A and party 1 opens f = b ^ B (each a one-time pad of one bit:
    uniform, independent of a and b). Then a = e + (1 - 2e) A, b = f + (1 - 2f) B and
        a b = e f + f (1 - 2e) A + e (1 - 2f) B + (1 - 2e)(1 - 2f) [A B],
    each term local to the party that knows it. A Beaver product of the same bits as ring
    elements opens two 64-bit words each way: 128 times the bytes, for the same round."""
    from pmpc.mpc.crypten_compat import comm, crypten
    from pmpc.mpc.primitives import PRIMITIVES

    c = comm.get()
    rank = c.get_rank()
    shape = mine.shape
    t = crypten.mpc.get_default_provider().generate_cross_bits(tuple(shape))
    n = mine.numel()
    opened = mine.reshape(-1) ^ t.mask.reshape(-1)
    words = c.all_gather(_pack_bits(opened))          # the one round; then the dealt share is read
    e, f = (opened, _unpack_bits(words[1], n)) if rank == 0 else (_unpack_bits(words[0], n), opened)
    k = (1 - 2 * e) * (1 - 2 * f) * t.c.reshape(-1)
    out = e * f + f * (1 - 2 * e) * t.mask.reshape(-1) + k if rank == 0 else e * (1 - 2 * f) * t.mask.reshape(-1) + k
    PRIMITIVES.add("tuple_bytes", 16 * n)
    return out.reshape(shape)


def install() -> None:
    """Give CrypTen's two providers the FSS requests (idempotent)."""
    from crypten.mpc.provider.tfp_provider import TrustedFirstParty
    from crypten.mpc.provider.ttp_provider import TrustedThirdParty

    TrustedFirstParty.generate_sign = tfp_generate_sign
    TrustedThirdParty.generate_sign = ttp_generate_sign
    TrustedFirstParty.generate_onehot = tfp_generate_onehot
    TrustedThirdParty.generate_onehot = ttp_generate_onehot
    TrustedFirstParty.generate_cross_bits = tfp_generate_cross_bits
    TrustedThirdParty.generate_cross_bits = ttp_generate_cross_bits
    TrustedFirstParty.generate_cross_words = tfp_generate_cross_words
    TrustedThirdParty.generate_cross_words = ttp_generate_cross_words


def complete_keys(material: list) -> None:
    """Offline (``--preprocess``): party 1 gets the correction words of every sign key in
    ``material`` — from party 0 in one message (``local``), or the dealer's already sent
    (``ttp``) — so the online phase opens y^ and nothing else."""
    from pmpc.mpc.crypten_compat import comm

    c = comm.get()
    c.settle()  # ``ttp``: the dealer's words for party 1
    for k in material:
        if isinstance(k, SignKey):
            k.take_late()
    keys = [k for k in material if isinstance(k, SignKey) and k.fresh]
    if not keys:
        return
    rank = c.get_rank()
    total = sum(k.size * key_words(k.lane) for k in keys)
    if rank == 0:
        c.send_dealt(torch.from_numpy(np.concatenate([k.words.reshape(-1) for k in keys]).view(np.int64)), 1)
    else:
        flat = torch.empty(total, dtype=torch.long)
        c.recv_dealt(flat, 0)
    if rank == 1:
        w = flat.numpy().view(np.uint64)
        o = 0
        for k in keys:
            m = k.size * key_words(k.lane)
            k.words = w[o:o + m].reshape(k.size, key_words(k.lane)).copy()
            o += m
    for k in keys:
        k.fresh = False


# -- the opening: lanes packed into ring words ----------------------------------------------------
def pack(v: np.ndarray, lane: int) -> np.ndarray:
    """``lane``-bit values, 64 // lane to a word (lane <= 32), so the opening costs the lane's bits.
    A short last word is padded with this party's own OS-random fields (equal padding at both
    parties would open as a visible pattern)."""
    per = 64 // lane
    if per == 1:
        return v.copy()
    pad = (-v.size) % per
    v = np.concatenate([v, _os_words(pad, lane)]).reshape(-1, per)
    w = np.zeros(v.shape[0], dtype=np.uint64)
    for j in range(per):
        w |= v[:, j] << np.uint64(j * lane)
    return w


def unpack(total: np.ndarray, mine: np.ndarray, lane: int) -> np.ndarray:
    """(y0 + y1) mod 2^lane per value from the SUM of both parties' packed words and this party's
    own values: a field's sum may carry into the next field, and the carry is known locally
    (the sum wrapped iff it is below this party's own addend; a carry in makes 2^lane - 1 carry on)."""
    per = 64 // lane
    mask = _mask(lane)
    if per == 1:
        return total & mask
    n = mine.size
    own = np.concatenate([mine, np.zeros((-n) % per, dtype=np.uint64)]).reshape(-1, per)
    out = np.empty_like(own)
    cin = np.zeros(own.shape[0], dtype=np.uint64)
    for j in range(per):
        s = (((total >> np.uint64(j * lane)) & mask) - cin) & mask
        out[:, j] = s
        cin = ((s < own[:, j]) | ((s == mask) & (cin == 1))).astype(np.uint64)
    return out.reshape(-1)[:n]


# -- the online gate -----------------------------------------------------------------------------
def ltz(x, lane: int, drop: int):
    """Sign of a secret ``MPCTensor`` read on bits [drop, drop + lane) of its encoding (lane 64,
    drop 0: the whole ring), as ring-integer 0/1 shares (encoder scale 1): ONE online round.
    Reads exactly the value :func:`pmpc.mpc.crypten_compat.lane_ltz` reads."""
    from pmpc.mpc.primitives import PRIMITIVES
    from pmpc.mpc.crypten_compat import comm, crypten, ring_ints

    assert 2 <= lane <= 64 and 0 <= drop <= 64 - lane
    c = comm.get()
    rank = c.get_rank()
    share = x._tensor.share
    shape = share.shape
    n = share.numel()
    key = crypten.mpc.get_default_provider().generate_sign(tuple(shape), lane)
    mask = _mask(lane)
    y = (share.reshape(-1).numpy().view(np.uint64) >> np.uint64(drop)) & mask
    mine = (y + key.r) & mask
    opened = torch.from_numpy(pack(mine, lane).view(np.int64))
    if key.fresh:  # ``local``, made on the spot: party 0 deals the words right behind its opening
        words = torch.empty(n, key_words(lane), dtype=torch.long)
        if rank == 0:
            c.ride(1, torch.from_numpy(key.words.view(np.int64)))
        else:
            c.expect(lambda: c.recv_dealt(words, 0))
    opened = c.all_reduce(opened)  # the one round; then what is dealt late is read
    if key.fresh:
        if rank == 1:
            key.words = words.numpy().view(np.uint64)
        key.fresh = False
    key.take_late()
    yhat = unpack(opened.numpy().view(np.uint64), mine, lane)
    out = evaluate(rank, key, yhat)
    PRIMITIVES.add(f"comparisons.{lane}", n)
    PRIMITIVES.add(f"dcf.{lane - 1}", n)
    PRIMITIVES.add("key_bytes", key.nbytes())
    return ring_ints(torch.from_numpy(out.view(np.int64)).reshape(shape))


def lookup(x, k: int, tables: np.ndarray):
    """Row g of the secret ring integers ``x`` ([G, ...], each in [0, 2^k)) looked up in the
    public table ``tables[g]`` (int64 ring words, [G, 2^k]): ring-integer shares of T_g[x].
    ONE online round: the parties open x + r mod 2^k (k bits each, packed) and take the inner
    product of their one-hot share with the table rotated by the opened value."""
    from pmpc.mpc.primitives import PRIMITIVES
    from pmpc.mpc.crypten_compat import comm, crypten, ring_ints

    assert 1 <= k <= MAX_TABLE_BITS
    c = comm.get()
    share = x._tensor.share
    shape = share.shape
    n = share.numel()
    mat = crypten.mpc.get_default_provider().generate_onehot(tuple(shape), k)
    mask = _mask(k)
    mine = ((share.reshape(-1).numpy().view(np.uint64) & mask) + mat.r) & mask
    xhat = unpack(c.all_reduce(torch.from_numpy(pack(mine, k).view(np.int64))).numpy().view(np.uint64), mine, k)
    tables = np.asarray(tables, dtype=np.int64).reshape(shape[0], 1 << k)
    per = n // shape[0]
    out = np.concatenate([fss.rotate_lookup(mat.e[g * per:(g + 1) * per], xhat[g * per:(g + 1) * per], tables[g])
                          for g in range(shape[0])])
    PRIMITIVES.add(f"lookups.{k}", n)
    PRIMITIVES.add("key_bytes", mat.nbytes())
    return ring_ints(torch.from_numpy(out.view(np.int64)).reshape(shape))


def slice_lookup(x, lo: int, k: int, table: np.ndarray, dcf: bool):
    """``table[s]`` for s = bits [lo, lo + k) of the ring encoding of the secret ``MPCTensor``
    ``x`` (public int64 ring words, 2^k of them): ring-integer shares, TWO online rounds.

    With each party's share s_i = h_i 2^lo + u_i (u_i < 2^lo, the share read as an unsigned
    word), x = s_0 + s_1 mod 2^64 and 2^64 a multiple of 2^(lo + k), so
        s = (h_0 + h_1 + c) mod 2^k,   c = [u_0 + u_1 >= 2^lo]
    EXACTLY (no off-by-one at a slice boundary or at the wrap). The carry c is the top bit of
    u_0 + u_1 < 2^(lo + 1): the sign of the parties' low parts moved up to a lane's top bit
    (round 1): the DCF gate on a (lo + 1)-bit lane (``dcf``), else the adder circuit on the next
    8/16/32-bit lane (the caller's rule, :func:`use_dcf`). Then h_0 + h_1 + c is a local sum and :func:`lookup` of it is round 2. Both rounds
    open masked values only (y + r on the lane, the index + r mod 2^k): uniform, whatever x is."""
    from pmpc.mpc.primitives import PRIMITIVES
    from pmpc.mpc.crypten_compat import lane_ltz, ring_ints

    assert 1 <= lo and lo + k <= 64 and 1 <= k <= MAX_TABLE_BITS and (dcf or lo < 32)
    share = x._tensor.share
    low = share & ((1 << lo) - 1)
    lane = lo + 1 if dcf else next(b for b in (8, 16, 32) if b > lo)
    v = ring_ints(low << (lane - 1 - lo))
    carry = ltz(v, lane, 0) if dcf else lane_ltz(v, lane, 0)  # round 1
    idx = ring_ints((share >> lo) + carry._tensor.share)     # h_i (+ c): mod 2^k all that counts
    PRIMITIVES.add(f"slice_lookups.{k}", share.numel())
    return lookup(idx.reshape(1, *share.shape), k, table.reshape(1, 1 << k))[0]  # round 2
