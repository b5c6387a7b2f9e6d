"""The way in to crypten: every other module imports crypten through this one, or after it.

CrypTen 0.4.1 (2022) predates torch 2.9, whose ONNX internals moved; this module applies the
shims it needs on torch 2.13 and exposes a few helpers for the party processes:

* ``torch.onnx._internal.registration`` moved to ``...torchscript_exporter.registration``:
  alias it before ``import crypten`` (crypten's ONNX converter imports it at import time).
* The parties talk over direct TCP links with TLS 1.3 (:mod:`pmpc.mpc.transport`), not over
  torch.distributed process groups: :func:`init_party` makes CrypTen's communicator class build
  one on those links, where every wait ends after ``timeout_s``.
* ``crypten.load`` needs ``weights_only=False``; pmpc never uses it (checkpoints are safetensors).
* No pickle on the wire: CrypTen's ``send_obj``/``recv_obj``/``broadcast_obj`` pickle their
  payload (and ``torch.distributed``'s ``*_object*`` collectives unpickle whatever a peer sends).
  :func:`_no_pickle_on_the_wire` makes them raise, so any path still reaching one fails loudly;
  pmpc's control messages are JSON frames (:mod:`pmpc.mpc.wire`).
* CrypTen's arithmetic-to-binary conversion catches *every* ``RuntimeError`` (meant: out of
  memory) and retries another way: a retry after a failure in one party only (a peer out of
  step, a failure on one side) would desynchronise the parties (one retried, the other did not).
  :func:`_A2B` keeps the one-shot path and lets errors through.
* CrypTen seeds its generators with 64-bit values sent in the clear (the dealer's drawn from
  torch's global generator, which processes forked from one parent share) and expands them with
  Mersenne Twister: every process here keys AES-128-CTR streams (:mod:`pmpc.mpc.prg`) from the OS and
  from the authenticated key exchange that opens every link (:mod:`pmpc.mpc.handshake`) instead,
  and every draw goes through :func:`ring_random` (dropout's public masks: :func:`_prg_dropout`).
* :class:`solo_dry_run` runs CrypTen ops in one party with no peer (planning a query's tuples).
* Beaver code asks ``crypten.mpc.get_default_provider()`` for tuples at every call;
  :class:`use_provider` installs another provider there (the offline/online split,
  :mod:`pmpc.mpc.dealer`).
"""
from __future__ import annotations

import functools
import importlib
import os
import sys

import numpy as np
import torch

from pmpc.mpc.prg import PRG


def _alias_onnx_registration() -> None:
    old = "torch.onnx._internal.registration"
    if old in sys.modules:
        return
    try:
        importlib.import_module(old)
    except ImportError:
        new = importlib.import_module("torch.onnx._internal.torchscript_exporter.registration")
        sys.modules[old] = new


_alias_onnx_registration()

import crypten  # noqa: E402  (must follow the shim)
import crypten.communicator as comm  # noqa: E402
from crypten.mpc import MPCTensor  # noqa: E402
from crypten.mpc.ptype import ptype as Ptype  # noqa: E402

__all__ = ["crypten", "comm", "MPCTensor", "Ptype", "init_party", "shutdown_party",
           "use_provider", "crypten_provider", "comm_failure", "InitError", "solo_dry_run"]


def _A2B(arithmetic_tensor):
    """Arithmetic -> binary sharing: each party's share as a binary sharing, summed by the adder
    circuit (CrypTen's O(log P)-round path), without CrypTen's catch-all retry."""
    from crypten.mpc.primitives.binary import BinarySharedTensor

    shares = [BinarySharedTensor(arithmetic_tensor.share, src=i) for i in range(comm.get().get_world_size())]
    binary_tensor = BinarySharedTensor.stack(shares).sum(dim=0)
    binary_tensor.encoder = arithmetic_tensor.encoder
    return binary_tensor


import crypten.mpc.primitives.converters as _converters  # noqa: E402
from pmpc.mpc import handshake
from pmpc.mpc.primitives import PRIMITIVES

_converters._A2B = _A2B


def _lean_dispatch() -> None:
    """CrypTen routes EVERY attribute access of a CrypTensor through a Python ``__getattribute__``
    that (1) reads ``cfg.debug.validation_mode`` through OmegaConf (a wrapper: measured on a tiny
    Llama's bolt prefill, 55% of a party's wall time) and (2) with its autograd on (the default),
    wraps every method in an autograd closure that scans the arguments for CrypTensors, and reads
    class constants through a metaclass ``__getattribute__`` of its own: ~2 million calls per
    SmolLM2 decoded token. pmpc never differentiates through MPC and never turns validation on, so
    CrypTen's autograd is switched off here and the dispatch is replaced by one that does what the
    original does in that state (protected names and methods straight from the object; an in-place
    name runs the out-of-place method and copies; a name only an autograd function defines runs
    its forward), with the class constants bound once. Validation mode set, or autograd turned back
    on, the original dispatch runs."""
    from crypten.cryptensor import CrypTensor
    from crypten.gradients import get_grad_fn

    original = CrypTensor.__dict__["__getattribute__"]
    unwrapped = getattr(original, "__wrapped__", original)
    if crypten.cfg.debug.validation_mode:
        return
    CrypTensor.set_grad_enabled(False)
    attrs = CrypTensor.__dict__  # a live view: set_grad_enabled writes AUTOGRAD_ENABLED here
    protected = frozenset(CrypTensor.PROTECTED_ATTRIBUTES) | {"copy_"}
    builtin, required = dict(CrypTensor.PYTHON_BUILTIN), frozenset(CrypTensor.REQUIRED_FUNCTIONS)
    get = object.__getattribute__

    def __getattribute__(self, name):
        if name in protected:
            return get(self, name)
        if attrs["AUTOGRAD_ENABLED"]:
            return unwrapped(self, name)
        name = builtin.get(name, name)
        if name.endswith("_") and not name.endswith("__"):  # in place: out of place, then copy_
            func = __getattribute__(self, name[:-1])

            def oop_and_copy(*args, **kwargs):
                self.copy_(func(*args, **kwargs))
                return self

            return oop_and_copy
        try:
            return get(self, name)
        except AttributeError:
            grad_fn = get_grad_fn(name)
            if grad_fn is None or name in required:
                raise
            return self._get_forward_function_no_ctx(grad_fn)

    CrypTensor.__getattribute__ = __getattribute__


_lean_dispatch()


_CONFIG_WRITES = [0]  # bumped by every write to CrypTen's configuration (see _cached_config_reads)


class _ConfigReads:
    """CrypTen's configuration as its hot paths read it (``cfg.section.key``), from plain
    dictionaries instead of OmegaConf nodes. A read through OmegaConf costs ~12 us (~70 us on
    a loaded machine); CrypTen makes several per Beaver product (``mpc.active_security``,
    ``mpc.protocol``), per communication call (``communicator.verbose``) and per fixed-point
    encoder (``encoder.precision_bits``): thousands per decoded token. Each section is copied
    when first read and copied again after any write to the configuration, so a read always
    sees what a read of ``crypten.cfg`` would. Writes go to ``crypten.cfg`` itself."""

    __slots__ = ("_real", "_seen", "_sections")

    def __init__(self, real):
        self._real, self._seen, self._sections = real, -1, {}

    def __getattr__(self, name):
        if self._seen != _CONFIG_WRITES[0]:
            self._sections.clear()
            self._seen = _CONFIG_WRITES[0]
        try:
            return self._sections[name]
        except KeyError:
            pass
        from omegaconf import DictConfig, OmegaConf

        node = getattr(self._real, name)
        if not isinstance(node, DictConfig):
            return node
        section = _ConfigSection(OmegaConf.to_container(node, resolve=True), node)
        if self._seen == _CONFIG_WRITES[0]:  # no write while it was copied
            self._sections[name] = section
        return section


class _ConfigSection:
    __slots__ = ("_values", "_node")

    def __init__(self, values: dict, node):
        self._values, self._node = values, node

    def __getattr__(self, key):
        v = self._values.get(key, self)
        if v is self or isinstance(v, dict):  # missing (OmegaConf's own error) or a deeper section
            return getattr(self._node, key)
        return v


def _cached_config_reads() -> None:
    """Give CrypTen's per-operation modules a :class:`_ConfigReads` view of ``crypten.cfg``.
    Every way of writing the configuration bumps :data:`_CONFIG_WRITES`: ``CrypTenConfig``'s own
    ``__setattr__`` (``cfg.config = ...``, ``temp_override``, ``load_config``) and the OmegaConf
    node setters (``crypten.cfg.mpc.provider = "TTP"`` writes into a node)."""
    import crypten.communicator.communicator as communicator
    import crypten.encoder as encoder
    import crypten.mpc.mpc as mpc
    import crypten.mpc.primitives.arithmetic as arithmetic
    import crypten.mpc.primitives.beaver as beaver
    from crypten.config.config import CrypTenConfig
    from omegaconf import DictConfig, ListConfig
    from omegaconf.basecontainer import BaseContainer

    def bumping(fn):
        @functools.wraps(fn)
        def write(*args, **kwargs):
            _CONFIG_WRITES[0] += 1
            try:
                return fn(*args, **kwargs)
            finally:
                _CONFIG_WRITES[0] += 1

        return write

    for cls, names in ((CrypTenConfig, ("__setattr__", "load_config", "set_config")),
                       (DictConfig, ("__setattr__", "__setitem__", "__delattr__", "__delitem__", "setdefault", "pop")),
                       (ListConfig, ("__setitem__", "__delitem__", "append", "insert", "pop", "extend")),
                       (BaseContainer, ("merge_with", "merge_with_cli", "merge_with_dotlist"))):
        for name in names:
            fn = cls.__dict__.get(name)
            if fn is not None and not getattr(fn, "_pmpc_bumps", False):
                w = bumping(fn)
                w._pmpc_bumps = True
                setattr(cls, name, w)
    for mod in (communicator, encoder, mpc, arithmetic, beaver):
        if mod.cfg is crypten.cfg:
            mod.cfg = CFG


CFG = _ConfigReads(crypten.cfg)  # read crypten's configuration through this in per-operation code
_cached_config_reads()


def _fast_empty_mpctensor() -> None:
    """``MPCTensor([])`` (every clone / shallow_copy / from_shares) means "an empty shell whose
    ``_tensor`` the caller sets"; CrypTen tests that with ``tensor is []``, which is never true, so
    each shell secret-shares an empty tensor (a pseudo-random zero sharing): 0.5 ms a copy, 30% of
    a tiny model's party time once the debug wrapper is gone. Build the shell directly."""
    from crypten.cryptensor import CrypTensor

    orig = MPCTensor.__init__

    def __init__(self, tensor, ptype=Ptype.arithmetic, device=None, *args, **kwargs):
        if isinstance(tensor, list) and not tensor and not args and not kwargs:
            CrypTensor.__init__(self, requires_grad=False)
            self._tensor = torch.tensor([], device=device)
            self.ptype = ptype
            return
        orig(self, tensor, ptype, device, *args, **kwargs)

    MPCTensor.__init__ = __init__


_fast_empty_mpctensor()


def _lean_beaver() -> None:
    """CrypTen's Beaver product, on the share tensors: with two parties (no active security) it
    is one batched opening of x - a and y - b and z = c + eps b + a delta (+ eps delta at
    party 0), which CrypTen computes through four ``ArithmeticSharedTensor`` operations and an
    encoding override around them (each a clone, type checks and encoder objects: ~1,500
    products a decoded token). The same triple request, the same opening (one round, the same
    bytes), the same shares out."""
    import crypten.mpc.primitives.beaver as beaver

    name = "__beaver_protocol"
    original = getattr(beaver, name)
    ops = {"mul", "matmul", "conv1d", "conv2d", "conv_transpose1d", "conv_transpose2d"}

    def protocol(op, x, y, *args, **kwargs):
        c0 = comm.get()
        if CFG.mpc.active_security or c0.get_world_size() != 2 or op not in ops:
            return original(op, x, y, *args, **kwargs)
        if x.device != y.device:
            raise ValueError(f"x lives on device {x.device} but y on device {y.device}")
        a, b, c = crypten.mpc.get_default_provider().generate_additive_triple(
            x.size(), y.size(), op, device=x.device, *args, **kwargs)
        eps, delta = c0.all_reduce([x.share - a.share, y.share - b.share], batched=True)  # the round
        f = getattr(torch, op)
        z = c.share + f(eps, b.share, *args, **kwargs)
        z += f(a.share, delta, *args, **kwargs)
        if c0.get_rank() == 0:
            z += f(eps, delta, *args, **kwargs)
        c.share = z
        return c

    protocol.crypten_original = original
    setattr(beaver, name, protocol)


_lean_beaver()


def _free_integral_products() -> None:
    """A public factor with integral values (``x * 2.0``, a 0/1 mask tensor) multiplies the shares
    directly. CrypTen encodes every public float factor at 2^16 and truncates the product again:
    under pmpc's exact 2-party truncation that is a communication round for a product that is
    exact and local. Python ints already took the local path; integral floats and tensors now do."""
    from crypten.mpc.primitives.arithmetic import ArithmeticSharedTensor

    orig = ArithmeticSharedTensor.mul

    def mul(self, y):
        if isinstance(y, float) and y.is_integer() and abs(y) < 2 ** 62:
            y = int(y)
        elif torch.is_tensor(y) and y.is_floating_point() and not y.is_cuda and bool(y.frac().eq(0).all()) \
                and bool(y.abs().lt(2 ** 62).all()):
            y = y.long()
        if isinstance(y, int) or (torch.is_tensor(y) and not y.is_floating_point() and y.dtype != torch.bool):
            result = self.clone()
            result.share = self.share * y
            return result
        return orig(self, y)

    ArithmeticSharedTensor.mul = mul
    ArithmeticSharedTensor.__mul__ = mul
    ArithmeticSharedTensor.__rmul__ = mul


class PickleOnTheWire(RuntimeError):
    """A pickling communication call: refused (a peer's pickle could run code in this party)."""


def _refuse(name: str):
    def refused(*args, **kwargs):
        raise PickleOnTheWire(f"{name} sends or receives pickles, which can run a peer's code; pmpc sends "
                              "control messages with pmpc.mpc.wire")

    refused._pmpc_refused = True
    return refused


def _no_pickle_on_the_wire() -> None:
    """CrypTen's object messages (its TTP requests and replies, size broadcasts, shutdown) are
    replaced by :mod:`pmpc.mpc.wire` frames; the pickling methods themselves now raise."""
    from crypten.communicator.distributed_communicator import DistributedCommunicator

    for name in ("send_obj", "recv_obj", "broadcast_obj", "all_gather_object"):
        setattr(DistributedCommunicator, name, _refuse(f"CrypTen's {name}"))
    crypten.load = crypten.load_from_party = _refuse("crypten.load")


def no_pickle_collectives() -> None:
    """In a party process: torch.distributed's object collectives unpickle what the peer sends."""
    import torch.distributed as dist

    for name in ("all_gather_object", "broadcast_object_list", "gather_object", "recv_object_list",
                 "scatter_object_list", "send_object_list"):
        if hasattr(dist, name):
            setattr(dist, name, _refuse(f"torch.distributed.{name}"))


_no_pickle_on_the_wire()
_free_integral_products()


# -- randomness -------------------------------------------------------------------------------------
def ring_random(size, generator=None, bits: int = 64) -> torch.Tensor:
    """Uniform ``bits``-bit words (64: the whole ring Z_2^64) from ``generator``, a
    :class:`pmpc.mpc.prg.PRG` (default: this party's "local" stream).

    Every mask, zero sharing, Beaver tuple and share of a party is drawn here, from AES-128-CTR
    streams keyed by OS seeds or by the start-up key exchange (:func:`_setup_prng`,
    :func:`_ttp_client_generators`, :func:`_ttp_server_generators`). Anything else handed in as
    a generator (a ``torch.Generator``: Mersenne Twister, 64-bit seed) is refused rather than
    silently used."""
    if generator is None:
        generator = crypten.generators["local"][torch.device("cpu")]
    if not isinstance(generator, PRG):
        raise TypeError(f"pmpc draws ring elements only from its AES PRG (pmpc.mpc.prg.PRG), not {type(generator).__name__}")
    return generator.ring(size, bits)


def _prg_sampling() -> None:
    """Route CrypTen's two samplers (and the modules that imported them by name) to
    :func:`ring_random`, on every device (a CUDA draw is made on the CPU and moved)."""
    import crypten.common.rng as rng
    import crypten.mpc.primitives.arithmetic as arithmetic
    import crypten.mpc.primitives.binary as binary
    import crypten.mpc.provider.tfp_provider as tfp
    import crypten.mpc.provider.ttp_provider as ttp
    from crypten.cuda import CUDALongTensor

    def draw(size, generator, device, bits):
        device = torch.device("cpu" if device is None else device)
        if generator is None:
            generator = crypten.generators["local"][device]
        out = ring_random(size, generator, bits)
        return CUDALongTensor(out) if out.is_cuda else out

    def generate_random_ring_element(size, ring_size=(2 ** 64), generator=None, device=None):
        if ring_size != 2 ** 64:
            raise NotImplementedError("pmpc's ring is Z/2^64")
        return draw(size, generator, device, 64)

    def generate_kbit_random_tensor(size, bitlength=None, generator=None, device=None):
        return draw(size, generator, device, bitlength or 64)

    for mod in (rng, arithmetic, binary, tfp, ttp):
        if hasattr(mod, "generate_random_ring_element"):
            mod.generate_random_ring_element = generate_random_ring_element
        if hasattr(mod, "generate_kbit_random_tensor"):
            mod.generate_kbit_random_tensor = generate_kbit_random_tensor


_prg_sampling()


def _prg_dropout() -> None:
    """CrypTen's dropout (``crypten.gradients``: ``dropout``, ``_feature_dropout``) draws its public
    mask with ``torch.rand(size, generator=crypten.generators["global"][device])``, and torch takes
    only its own generators. In that module ``torch.rand`` also takes a :class:`PRG`: uniform
    floats in [0, 1) from 24-bit words of the stream. Both parties hold the same "global" stream,
    so they draw the same mask, as with CrypTen's. Every other name there is torch's own."""
    import crypten.gradients as gradients

    def rand(*size, generator=None, device=None, **kwargs):
        if not isinstance(generator, PRG):
            return torch.rand(*size, generator=generator, device=device, **kwargs)
        size = tuple(size[0]) if len(size) == 1 and not isinstance(size[0], int) else size
        out = generator.ring(size, 24).float() / (1 << 24)
        return out if device is None else out.to(device)

    class _Torch:
        def __getattr__(self, name):
            return getattr(torch, name)

    shim = _Torch()
    shim.rand = rand
    gradients.torch = shim


_prg_dropout()


def _devices() -> list:
    """The devices CrypTen keeps generators for: the CPU, and each CUDA device if there is one."""
    devs = [torch.device("cpu")]
    if torch.cuda.is_available():
        devs += [torch.device("cuda")] + [torch.device(f"cuda:{i}") for i in range(torch.cuda.device_count())]
    return devs


def _setup_prng() -> None:
    """Replaces CrypTen's seed set-up (64-bit OS seeds sent in the clear, expanded by Mersenne
    Twister). Each computing party keys four AES-128-CTR streams per device: "local" from its own
    OS seed; "next"/"prev" (party 0's next = party 1's prev and vice versa: the pairwise zero
    sharings) and "global" from the authenticated X25519 exchange with the other party
    (:mod:`pmpc.mpc.handshake`). A CUDA device gets streams of its own (keys derived per device), so
    no two devices reuse a stream. The exchange ran when the link opened."""
    c = comm.get()
    rank, ws = c.get_rank(), c.get_world_size()
    if ws == 1:
        seeds = {"next": handshake.local_seed(), "global": handshake.local_seed()}
        seeds["prev"] = seeds["next"]
    elif ws == 2:
        peer = 1 - rank
        ln = handshake.link(peer)
        seeds = {"next": ln.seed(f"{rank}->{peer}"), "prev": ln.seed(f"{peer}->{rank}"), "global": ln.seed("global")}
    else:
        raise NotImplementedError("pmpc's seed agreement covers 2 computing parties")
    seeds["local"] = handshake.local_seed()
    for key, seed in seeds.items():
        for dev in _devices():
            crypten.generators[key][dev] = PRG.for_device(seed, dev)


def _ttp_client_generators(self) -> None:
    """A computing party's side of its stream with the dealer: keyed by the exchange with it."""
    seed = handshake.link(comm.get().get_ttp_rank()).seed("tuples")
    self.generator = PRG.for_device(seed, "cpu")
    self.generator_cuda = PRG.for_device(seed, "cuda") if torch.cuda.is_available() else None


def _ttp_server_generators(self) -> None:
    """The dealer's side: the exchange with each computing party (run when the links opened)."""
    seeds = [handshake.link(r).seed("tuples") for r in range(comm.get().get_world_size())]
    self.generators = [PRG.for_device(s, "cpu") for s in seeds]
    self.generators_cuda = [PRG.for_device(s, "cuda") if torch.cuda.is_available() else None for s in seeds]


def _install_seed_agreement() -> None:
    from crypten.mpc.provider.ttp_provider import TTPClient, TTPServer

    crypten._setup_prng = _setup_prng  # crypten.init() calls it by its module-global name
    TTPClient._TTPClient__TTPClient._setup_generators = _ttp_client_generators  # the name-mangled singleton
    TTPServer._setup_generators = _ttp_server_generators


_install_seed_agreement()


def _two_party_zero_sharing() -> None:
    """CrypTen's pseudo-random zero sharing (PRZS) gives each party two draws per element, one
    from the generator it shares with each neighbour, for any number of parties. With two parties
    one draw does: party 0's "next" generator and party 1's "prev" generator were seeded with the
    same seed, so both draw the same r and hold (r, -r) (binary: (r, r)). Half the draws of every
    re-randomisation and dealt tuple; same distribution. More parties keep CrypTen's code."""
    from crypten.mpc.primitives import ArithmeticSharedTensor, BinarySharedTensor
    from crypten.mpc.primitives.arithmetic import SENTINEL

    arith0, bin0 = ArithmeticSharedTensor.PRZS, BinarySharedTensor.PRZS

    def _pair_draw(size, device):  # (rank, r), or (None, None) where CrypTen's code applies
        c = comm.get()
        if c.get_world_size() != 2 or len(size) != 1:
            return None, None
        device = torch.device(device or "cpu")
        if device.type != "cpu":
            return None, None
        rank = c.get_rank()
        g = crypten.generators["next" if rank == 0 else "prev"][device]
        return rank, ring_random(size[0], g)

    def arith_przs(*size, device=None):
        rank, r = _pair_draw(size, device)
        if r is None:
            return arith0(*size, device=device)
        t = ArithmeticSharedTensor(src=SENTINEL)
        t.share = r if rank == 0 else -r
        return t

    def bin_przs(*size, device=None):
        rank, r = _pair_draw(size, device)
        if r is None:
            return bin0(*size, device=device)
        t = BinarySharedTensor(src=SENTINEL)
        t.share = r
        return t

    ArithmeticSharedTensor.PRZS = staticmethod(arith_przs)
    BinarySharedTensor.PRZS = staticmethod(bin_przs)


_two_party_zero_sharing()


def _exact_decode() -> None:
    """CrypTen's ``FixedPointEncoder.decode`` floors negative values by ``scale - 1`` instead of
    ``scale``: a negative value within |k| units above an integer k (x = k 2^16 + d, 0 < d < |k|)
    decodes as k - 1 + d 2^-16, wrong by exactly -1.0. Measured on SmolLM2's 16-token prefill: 6 of
    786,432 revealed logits, each off by 1.00 (the "~1.0 max |logit diff|" every protocol showed
    with CrypTen's decode, exact included). Decode as floor(x / 2^f) + (x mod 2^f) 2^-f, which is exact."""
    from crypten.encoder import FixedPointEncoder

    orig = FixedPointEncoder.decode

    def decode(self, tensor):
        if tensor is None or self._scale <= 1:
            return orig(self, tensor)
        q = tensor.div(self._scale, rounding_mode="floor")
        return (q.float() + (tensor - q * self._scale).float() / self._scale).data

    FixedPointEncoder.decode = decode


_exact_decode()


# -- exact 2-party truncation ----------------------------------------------------------------------
_OFFSET = 1 << 62  # for |x| < 2^62 (|v| < 2^30 at a product's 2^32 scale) x + 2^62 has MSB 0


def _unsigned(d: torch.Tensor):
    """For int64 divisors 0 < d < 2^62: (q, r) with 2^63 = q d + r, 0 <= r < d (q wraps to
    -2^63 for d = 1: every use is modulo 2^64)."""
    q, r = ((1 << 63) - 1) // d, ((1 << 63) - 1) % d + 1
    carry = (r == d).long()
    return q + carry, r - carry * d


@functools.lru_cache(maxsize=256)
def _int_divisor(d: int) -> tuple[int, int, int]:
    """:func:`_unsigned` and floor(2^64 / d) modulo 2^64 for a Python int 1 < d < 2^62, as the
    int64 values the tensor expressions give (a truncation by a fixed-point scale then costs no
    tensor operations on the divisor)."""
    q, r = ((1 << 63) - 1) // d, ((1 << 63) - 1) % d + 1
    if r == d:
        q, r = q + 1, 0
    return q, r, _int64(2 * q + (2 * r) // d)


def _udiv(s: torch.Tensor, d: torch.Tensor, q: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """floor(s / d), the int64 pattern ``s`` read as an unsigned word: with s = hi 2^63 + lo,
    floor(s / d) = floor(lo / d) + hi q + floor((lo mod d + hi r) / d), each term inside int64."""
    hi = (s < 0).long()
    lo = s & ((1 << 63) - 1)
    return lo // d + hi * q + (lo % d + hi * r) // d


def _exact_div_(self, y):
    """2PC ``ArithmeticSharedTensor.div_`` by a public nonzero integer, without CrypTen's wrap error.

    CrypTen divides each party's share locally in 2PC (SecureML), which is wrong by ~2^64 / y
    whenever the two shares wrap around the ring: probability ~|x| / 2^64 per element (measured:
    ~1 in 4 M products of 4096 x 1; it garbled 1 of 50 encrypted generations). Here the wrap is
    computed ("truncation with known MSB", as in Cheetah and SIRNN): with x' = x + 2^62 in
    [0, 2^63), the unsigned shares s0 + s1 = x' + w 2^64 wrap (w = 1) iff the MSB of s0 OR of s1 is
    set — x' < 2^63 rules out the other cases. Party 0 knows a = msb(s0), party 1 knows b =
    msb(s1), and [w] = a + b - [ab] costs one product of a bit each party holds
    (:func:`pmpc.mpc.gates.cross_and`): ONE round of one masked bit each way (nothing about x
    leaks). Then
    x'/y = floor(s0/y) + floor(s1/y) + 1 - [w] floor(2^64/y), and the offset comes off again.
    The shares are first re-randomised with a zero sharing (local: CrypTen's pairwise PRZS), so
    the floors' lost carry is uniform and the + 1 makes the result x/y stochastically rounded to
    a unit, unbiased, like CrypTen's truncation (y a power of two; other y add a unit or two).

    Cost: one round and one bit per element each way; measured, it doubles the rounds of
    a forward pass (bench/results). ``PMPC_TRUNCATION=local`` measures the difference."""
    from crypten.mpc.primitives.arithmetic import ArithmeticSharedTensor

    from pmpc.mpc import gates

    if isinstance(y, float) and int(y) == y:
        y = int(y)
    if torch.is_tensor(y) and y.is_floating_point() and y.frac().eq(0).all():
        y = y.long()
    integral = isinstance(y, int) or (torch.is_tensor(y) and not y.is_floating_point())
    if not integral or comm.get().get_world_size() != 2:
        return _crypten_div_(self, y)
    if type(y) is int and 1 < y < _OFFSET:  # the common case (a fixed-point scale): constants as ints
        d, sign = y, None
        q, r, ring_over_d = _int_divisor(y)
    else:
        d = torch.as_tensor(y, dtype=torch.long, device=self.share.device)
        if bool((d == 0).any()) or bool((d >= _OFFSET).any()) or bool((d <= -_OFFSET).any()):
            raise ValueError("pmpc: secret division by a public integer needs 0 < |y| < 2^62")
        # a negative divisor (CrypTen allows one): x / y = -(x / |y|), the negation local to each share
        sign = torch.where(d < 0, -1, 1) if bool((d < 0).any()) else None
        d = d.abs()
        if sign is None and d.numel() == 1 and int(d) == 1:
            return self
        q, r = _unsigned(d)
        ring_over_d = 2 * q + (2 * r) // d               # floor(2^64 / d), modulo 2^64
    rank = comm.get().get_rank()
    # a fresh zero sharing first: shares of public-looking values (x * 0 after a mask: both 0)
    # would round with a bias of a unit each (the + 1 below assumes uniform shares)
    s = self.share + ArithmeticSharedTensor.PRZS(self.share.size(), device=self.share.device).share
    s = s + _OFFSET if rank == 0 else s
    msb = (s < 0).long()
    w = msb - gates.cross_and(msb)                        # a + b - ab: the one round, a bit each way
    out = _udiv(s, d, q, r) - w * ring_over_d
    if rank == 0:
        # + 1: the two floors lose the carry of their fractional parts, on average one unit for
        # uniform shares; with it the result is x/y stochastically rounded, unbiased (as CrypTen's
        # truncation towards zero of one positive and one negative share is). Without it, a
        # tiny model's secure-vs-plain logit error grew 3-25x.
        out = out - _OFFSET // d + (1 if type(d) is int else (d > 1).long())   # y = 1 divides exactly
    self.share = out if sign is None else out * sign
    return self


def truncation_mode() -> str:
    """``PMPC_TRUNCATION``: ``exact`` (default, :func:`_exact_div_`) or ``local`` (CrypTen's own:
    one round less per truncation, wrong w.p. ~|x|/2^64 per element; only to measure what
    exactness costs). Read when a party starts: the forkserver imports this module earlier."""
    mode = os.environ.get("PMPC_TRUNCATION", "exact")
    if mode not in ("exact", "local"):
        raise ValueError(f"PMPC_TRUNCATION must be 'exact' or 'local', not {mode!r}")
    return mode


_TRUNCATION = ["exact"]


def _div_(self, y):
    return (_exact_div_ if _TRUNCATION[0] == "exact" else _crypten_div_)(self, y)


def _install_truncation() -> None:
    from crypten.mpc.primitives.arithmetic import ArithmeticSharedTensor

    global _crypten_div_
    _crypten_div_ = ArithmeticSharedTensor.div_
    ArithmeticSharedTensor.div_ = _div_


_install_truncation()


def _int64(v: int) -> int:
    """A 64-bit pattern as the signed value torch.int64 holds."""
    v &= (1 << 64) - 1
    return v - (1 << 64) if v >= 1 << 63 else v


def ring_ints(share: torch.Tensor) -> "MPCTensor":
    """Arithmetic shares as an ``MPCTensor`` of ring integers (encoder scale 1: no fraction bits)."""
    res = MPCTensor.from_shares(share, precision=0)
    res.encoder._scale = 1
    return res


def log2_scale(x) -> int:
    """The fixed-point scale of a CrypTensor as a power of two (1 for ring integers)."""
    return int(x.encoder.scale).bit_length() - 1


def b2a_bits(xb):
    """Single-bit binary shares (0/1 in bit 0) -> arithmetic shares of the same bits, precision 0.

    CrypTen's ``B2A_single_bit``: with a dealt random bit r shared both ways, open z = x ^ r and
    return r + z - 2 z r. CrypTen opens z as one int64 per bit (8 bytes); here the masked bits
    are packed 64 to a word before the opening — XOR shares pack linearly — so a bit costs one
    bit on the wire. Same round, same security (z is uniformly random either way)."""
    from crypten.mpc.primitives.arithmetic import ArithmeticSharedTensor
    from crypten.mpc.primitives.binary import BinarySharedTensor

    provider = crypten.mpc.get_default_provider()
    ra, rb = provider.B2A_rng(xb.size(), device=xb.device)
    m = ((xb.share ^ rb.share) & 1).reshape(-1)
    n = m.numel()
    if n % 64:  # pad with each party's own random bits (its "local" stream), so every opened word is
        # uniform over 2^64: equal padding at both parties would cancel in the XOR
        m = torch.cat([m, ring_random(64 - n % 64, crypten.generators["local"][m.device], bits=1)])
    shifts = torch.arange(64, dtype=torch.long)
    words = (m.view(-1, 64) << shifts).sum(-1)          # disjoint bits: sum = OR (bit 63 wraps)
    z = BinarySharedTensor.from_shares(words).reveal()
    z = ((z.unsqueeze(-1) >> shifts) & 1).reshape(-1)[:n].reshape(xb.size())
    out = ra * (1 - 2 * z) + z
    assert isinstance(out, ArithmeticSharedTensor)
    return out


_SHIFTS64 = torch.arange(64, dtype=torch.long)


def _bit_planes(v: torch.Tensor, lane: int) -> torch.Tensor:
    """The low ``lane`` bits of each value as bit planes: [lane, W] int64, plane j holding bit j
    of values 64 t .. 64 t + 63 in word t (the last word padded with zeros)."""
    n = v.numel()
    u = np.zeros(-(-n // 64) * 64, dtype=np.int64)
    u[:n] = v.numpy()
    bits = np.unpackbits(u.view(np.uint8).reshape(-1, 8), axis=1, bitorder="little")[:, :lane]
    return torch.from_numpy(np.packbits(np.ascontiguousarray(bits.T), axis=1, bitorder="little").view(np.int64))


def _and_shares(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """XOR shares of x & y from XOR shares x, y (raw int64 words; shapes broadcast, so an operand
    used twice is masked and opened once): one Beaver AND, one round."""
    return _and_many([(x, y)])[0]


def _and_many(pairs: list) -> list:
    """:func:`_and_shares` of every (x, y) pair, all opened in ONE round."""
    from torch.distributed import ReduceOp

    provider = crypten.mpc.get_default_provider()
    triples = [provider.generate_binary_triple(x.size(), y.size(), device=x.device) for x, y in pairs]
    masked = [t for (x, y), (a, b, _) in zip(pairs, triples) for t in (x ^ a.share, y ^ b.share)]
    opened = comm.get().all_reduce(masked, op=ReduceOp.BXOR, batched=True)
    first = comm.get().get_rank() == 0
    out = []
    for j, (a, b, c) in enumerate(triples):
        eps, rho = opened[2 * j], opened[2 * j + 1]
        z = c.share ^ (eps & b.share) ^ (a.share & rho)
        out.append(z ^ (eps & rho) if first else z)
        PRIMITIVES.add("and_words", z.numel())
    return out


@functools.lru_cache(maxsize=64)
def _prefix_plan(positions: tuple) -> tuple:
    """For :func:`ring_bits`: the planes whose generate bit the first AND computes, and per
    Kogge-Stone level d the nodes whose G (and P) it updates — pruned backwards from the carries
    into ``positions`` (a pure function of the positions: computed once per set)."""
    outs = sorted({p - 1 for p in positions if p >= 1})
    levels, d = [], 1
    while outs and d <= outs[-1]:
        levels.append(d)
        d *= 2
    need_g, need_p, plan = set(outs), set(), []
    for d in reversed(levels):
        upd_g = sorted(i for i in need_g if i >= d)
        upd_p = sorted(i for i in need_p if i >= d)
        both, only_g = [i for i in upd_g if i in upd_p], [i for i in upd_g if i not in upd_p]
        only_p = [i for i in upd_p if i not in upd_g]
        plan.append((d, *(torch.tensor(v, dtype=torch.long) for v in (both, only_g, only_p))))
        need_g = need_g | {i - d for i in upd_g}
        need_p = need_p | set(upd_g) | {i - d for i in upd_p}
    plan.reverse()
    return sorted(need_g), plan


def ring_bits(x: "MPCTensor", positions) -> "BinarySharedTensor":
    """Bits ``positions`` of the ring encoding of a secret value as XOR shares, 0/1 in bit 0,
    stacked [len(positions), *shape]: the A2B conversion restricted to what the caller reads.

    Bit p of s0 + s1 is a_p ^ b_p ^ c_p, c_p the carry into p: the generate of bits [0, p). A
    Kogge-Stone prefix over bit planes (level d: G_i ^= P_i G_(i-d), P_i &= P_(i-d)) computes
    every carry in log2(64) levels after the first AND (g = a b); here it is pruned backwards
    from the carries asked for, and each level's two products of a node share its P_i opening.
    Same rounds as CrypTen's whole-word adder (1 + 6 ANDs, then the caller's B2A), a fraction of
    its bytes: 17 bits and the sign open ~600 bits each way where the word adder opens 1,664."""
    from crypten.mpc.primitives.binary import BinarySharedTensor

    from pmpc.mpc import gates

    share = x._tensor.share
    shape = share.shape
    n = share.numel()
    positions = list(positions)
    planes = _bit_planes(share.reshape(-1), 64)             # [64, W] this party's own bits
    low, plan = _prefix_plan(tuple(positions))
    G = torch.zeros_like(planes)                               # generate of each node's span
    if low:
        G[low] = gates.cross_and_words(planes[low])            # round 1: a & b, one word each way
    P = planes.clone()                                         # propagate: a ^ b, each party's own bits
    for d, both, only_g, only_p in plan:                       # one round a level
        pairs = []
        if both.numel():
            pairs.append((P[both].unsqueeze(0), torch.stack([G[both - d], P[both - d]])))
        if only_g.numel():
            pairs.append((P[only_g], G[only_g - d]))
        if only_p.numel():
            pairs.append((P[only_p], P[only_p - d]))
        res = iter(_and_many(pairs))
        if both.numel():
            r = next(res)
            G[both] ^= r[0]
            P[both] = r[1]
        if only_g.numel():
            G[only_g] ^= next(res)
        if only_p.numel():
            P[only_p] = next(res)
    words = torch.stack([planes[p] ^ G[p - 1] if p >= 1 else planes[p] for p in positions])  # [k, W]: a ^ b ^ carry
    bits = ((words.unsqueeze(-1) >> _SHIFTS64) & 1).reshape(len(positions), -1)[:, :n]
    PRIMITIVES.add("comparisons.64", n)
    return BinarySharedTensor.from_shares(bits.reshape(len(positions), *shape))


def lane_ltz(x: "MPCTensor", lane: int, drop: int) -> "MPCTensor":
    """Sign of a secret value read on a ring slice: 0/1 as ring integers (encoder scale 1).

    Bits [drop, drop + lane) of each party's share, taken locally, are additive shares modulo
    2^lane of floor(x / 2^drop) (minus 1 when the dropped low bits carried): wrap-around of the
    64-bit shares vanishes modulo 2^lane. The sign bit of that lane-bit value is
    a_top ^ b_top ^ carry into the top bit, and the carry is the group "generate" of the low
    lane-1 bits of the two parties' words — a log2(lane)-level tree of Beaver ANDs on binary
    shares.

    The tree runs on bit planes (bit j of every value, 64 values to a word): a level combines
    the planes pairwise, (G, P) = (g_hi ^ p_hi g_lo, p_hi p_lo), so each AND opens exactly the
    bits it needs — 15, 8, 4, 2, 1 pairs after the first level for a 32-bit lane — and p_hi,
    needed by both products of a pair, is opened once (one broadcast AND). A 32-bit comparison
    opens ~120 bits each way (a word-packed tree of shifted words opened ~640) in the same
    rounds: 7 for 32 bits, 6 for 16, 5 for 8.

    Party i's own bits are a valid XOR sharing (itself, and 0 at the other party) of its addend:
    the generate bits g = a & b are one cross-word product of the two
    (:func:`pmpc.mpc.gates.cross_and_words`: one word each way per plane word), the propagate
    bits p = a ^ b are local (each party's share is its own plane)."""
    from crypten.mpc.primitives.binary import BinarySharedTensor

    from pmpc.mpc import gates

    assert lane in (8, 16, 32) and 0 <= drop <= 64 - lane
    share = x._tensor.share
    shape = share.shape
    n = share.numel()
    planes = _bit_planes((share >> drop).reshape(-1), lane)    # [lane, W] this party's own bits
    own, top = planes[:-1], planes[-1]
    g = gates.cross_and_words(own)                             # round 1: a & b, one word each way
    p = own
    while g.shape[0] > 1:
        k = g.shape[0]
        m = k // 2
        g_lo, g_hi, p_lo, p_hi = g[0:2 * m:2], g[1:2 * m:2], p[0:2 * m:2], p[1:2 * m:2]
        if k == 2:  # the last pair: only its generate is needed
            g = g_hi ^ _and_shares(p_hi, g_lo)
            break
        both = _and_shares(p_hi.unsqueeze(0), torch.stack([g_lo, p_lo]))
        # an odd top plane waits for the next level as it is
        g = torch.cat([g_hi ^ both[0], g[2 * m:]])
        p = torch.cat([both[1], p[2 * m:]])
    sign = top ^ g[0]
    bits = ((sign.unsqueeze(-1) >> _SHIFTS64) & 1).reshape(-1)[:n].reshape(shape)
    return ring_ints(b2a_bits(BinarySharedTensor.from_shares(bits)).share)   # last round: one opened bit per value


class InitError(RuntimeError):
    """Joining the session failed (port in use, a peer that never came, a bad address)."""


def init_party(rank: int, world_size: int, rendezvous: str, timeout_s: float = 60.0,
               provider: str = "TFP", verbose_stats: bool = True, psk: bytes | None = None) -> None:
    """Join a CrypTen session as ``rank`` of ``world_size`` parties.

    ``rendezvous`` is where party 0 hosts the rendezvous store (``tcp://host:port``, or
    ``file:///path`` on one host); the parties then open direct links to each other
    (:mod:`pmpc.mpc.transport`). Every wait (and the start-up itself) raises after ``timeout_s``
    if a peer stalls.
    ``provider`` selects the Beaver-triple source: ``TFP`` (party 0 deals: fast, insecure
    against party 0) or ``TTP`` (a separate dealer process of rank ``world_size``).
    ``psk``: the pre-shared key that authenticates the start-up key exchange (:mod:`pmpc.mpc.handshake`).
    Failures to join raise :class:`InitError` with one line that says why.
    """
    handshake.use_psk(psk)
    try:
        _init_party(rank, world_size, rendezvous, timeout_s, provider, verbose_stats)
    except handshake.HandshakeError as e:  # its own line: a wrong key or a man in the middle
        raise InitError(str(e)) from e
    except Exception as e:  # torch raises several types (DistStoreError, DistNetworkError, ...)
        raise InitError(_init_reason(e, rendezvous, timeout_s)) from e


def _init_reason(e: BaseException, rendezvous: str, timeout_s: float) -> str:
    msg = " ".join(str(e).split())
    low = msg.lower()
    if "eaddrinuse" in low or "address already in use" in low:
        return f"the rendezvous address {rendezvous} is in use (another process listens on that port)"
    if "clients joined" in low or "timed out" in low or "timeout" in low or "connect" in low:
        return (f"no session at {rendezvous} within {timeout_s:.0f} s: a peer did not start, or uses another "
                f"address, --dealer or number of parties ({msg[:160]})")
    return f"cannot join the session at {rendezvous}: {msg[:200]}"


def _init_party(rank, world_size, rendezvous, timeout_s, provider, verbose_stats) -> None:
    from pmpc.mpc import transport

    os.environ["RANK"] = str(rank)
    os.environ["WORLD_SIZE"] = str(world_size)
    transport.prepare(rendezvous, timeout_s)
    _TRUNCATION[0] = truncation_mode()
    no_pickle_collectives()
    crypten.cfg.mpc.provider = provider
    crypten.cfg.communicator.verbose = verbose_stats
    crypten.init()
    # CrypTen reads the provider from its OmegaConf config at EVERY tuple request (tens of
    # microseconds each, thousands a token); it is fixed for the session: read it once
    _session_provider[:] = [_orig_get_default_provider()]


def shutdown_party() -> None:
    try:
        crypten.uninit()
    except Exception:  # a peer may already be gone; nothing left to release cleanly
        pass
    # whatever crypten.uninit left (it stops early when a peer is gone): the links and the store
    # go, so a process that joins again (tests, long evaluations) starts clean
    from crypten.communicator import DistributedCommunicator

    from pmpc.mpc import transport

    transport.leave()
    DistributedCommunicator.instance = None
    _session_provider.clear()


# -- triple providers ----------------------------------------------------------------------------
_provider_override = []
_session_provider = []  # CrypTen's provider of the joined session (set by init, cleared by shutdown)


def crypten_provider():
    """CrypTen's own provider for the configured ``cfg.mpc.provider`` (TFP or TTP)."""
    return _session_provider[0] if _session_provider else _orig_get_default_provider()


_orig_get_default_provider = crypten.mpc.get_default_provider


def active_provider():
    """The provider tuple requests go to now (an installed one, else CrypTen's own)."""
    return _provider_override[-1] if _provider_override else crypten_provider()


def _get_default_provider():
    return _Counted(active_provider())


class _Counted:
    """A provider seen through :data:`pmpc.mpc.primitives.PRIMITIVES`: every tuple it hands out is
    counted as ``tuple_bytes`` (8 bytes a ring word)."""

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name):
        fn = getattr(self._inner, name)
        if not name.startswith(("generate_", "B2A_rng", "wrap_rng", "fixed_operand_")) or not callable(fn):
            return fn

        def counted(*a, **k):
            out = fn(*a, **k)

            for t in out if isinstance(out, (tuple, list)) else (out,):
                sh = getattr(t, "share", t)
                if torch.is_tensor(sh):
                    PRIMITIVES.add("tuple_bytes", 8 * sh.numel())
            return out

        return counted


def _count_primitives() -> None:
    """Counts for ``pmpc bench``: products, truncations, comparisons by bit width, B2A bits, AND
    words (:class:`pmpc.mpc.primitives.Primitives`). Wraps the call sites; the arithmetic is untouched."""
    import crypten.mpc.primitives.beaver as beaver
    import crypten.mpc.primitives.converters as converters
    from crypten.mpc.primitives.arithmetic import ArithmeticSharedTensor

    def wrap(mod, name, kind, size):
        fn = getattr(mod, name)

        @functools.wraps(fn)
        def counted(*a, **k):
            out = fn(*a, **k)
            PRIMITIVES.add(kind(*a) if callable(kind) else kind, size(out, *a))
            return out

        setattr(mod, name, counted)
        return counted

    numel_out = lambda out, *a: getattr(out, "share", out).numel()  # noqa: E731
    for name in ("mul", "matmul", "square"):
        wrap(beaver, name, "products", numel_out)
    wrap(beaver, "AND", "and_words", numel_out)
    converters._A2B = wrap(converters, "_A2B", "comparisons.64", lambda out, x: x.share.numel())
    g = globals()
    g["b2a_bits"] = wrap(sys.modules[__name__], "b2a_bits", "b2a_bits", lambda out, x: x.share.numel())
    g["lane_ltz"] = wrap(sys.modules[__name__], "lane_ltz", lambda x, lane, drop: f"comparisons.{lane}",
                         lambda out, x, *a: x._tensor.share.numel())
    div = ArithmeticSharedTensor.div_

    def div_(self, y):
        PRIMITIVES.add("truncations", self.share.numel())
        return div(self, y)

    ArithmeticSharedTensor.div_ = div_


# crypten's Beaver code looks the provider up at every call (crypten.mpc.get_default_provider()),
# so installing a provider here reaches every multiplication, comparison and conversion.
crypten.mpc.get_default_provider = _get_default_provider


_count_primitives()


def _install_fss() -> None:
    """The providers' FSS request (:mod:`pmpc.mpc.gates`): one-round comparisons."""
    from pmpc.mpc import gates

    gates.install()


_install_fss()


class use_provider:
    """``with use_provider(p): ...`` — every tuple request inside goes to ``p``."""

    def __init__(self, provider):
        self.provider = provider

    def __enter__(self):
        _provider_override.append(self.provider)
        return self.provider

    def __exit__(self, *exc):
        _provider_override.remove(self.provider)
        return False


class _SoloComm(comm.Communicator):
    """Stands in for the real communicator during a party's solo dry run (planning a query): every
    collective returns tensors of the right shape at once, as if the peer's shares were zero.
    Nothing is sent, so a dry run needs no peer and costs no network time."""

    BYTES_PER_ELEMENT = 8

    def __init__(self, real):
        self.rank, self.world_size = real.get_rank(), real.get_world_size()
        self._name = real.get_name()
        self.reset_communication_stats()
        for attr in ("main_group", "ttp_group", "ttp_comm_group", "ttp_initialized"):
            if hasattr(real, attr):
                setattr(self, attr, getattr(real, attr))

    def get_rank(self):
        return self.rank

    def get_world_size(self):
        return self.world_size

    def get_ttp_rank(self):
        return self.world_size

    def get_name(self):
        return self._name

    def send(self, tensor, dst):
        return None

    def isend(self, tensor, dst):
        return None

    def recv(self, tensor, src=None):
        return tensor.clone()

    def irecv(self, tensor, src=None):
        return None

    def scatter(self, scatter_list, src, size=None, device=None):
        if src == self.rank:
            return scatter_list[self.rank]
        size = scatter_list[self.rank].size() if size is None else size
        return torch.zeros(size, dtype=torch.long, device=device)

    def reduce(self, input, dst, op=None, batched=False):
        if dst != self.rank:
            return None
        return [x.clone() for x in input] if batched else input.clone()

    def all_reduce(self, input, op=None, batched=False):
        return [x.clone() for x in input] if batched else input.clone()

    def gather(self, tensor, dst):
        return [tensor.clone() for _ in range(self.world_size)] if dst == self.rank else [None]

    def all_gather(self, tensor):
        return [tensor.clone() for _ in range(self.world_size)]

    def broadcast(self, input, src, group=None, batched=False):
        return input

    def barrier(self):
        return None

    send_obj = recv_obj = broadcast_obj = staticmethod(_refuse("send_obj/recv_obj/broadcast_obj"))


class solo_dry_run:
    """``with solo_dry_run(): ...`` — CrypTen ops run against :class:`_SoloComm` (no peer, no
    traffic), and CrypTen's shared random generators are put back as they were afterwards, so
    the dry run leaves the parties' pseudo-random zero sharings in step."""

    def __enter__(self):
        from crypten.communicator import DistributedCommunicator

        self.cls = DistributedCommunicator
        self.real = DistributedCommunicator.instance
        self.states = {(k, d): g.get_state() for k, gens in crypten.generators.items() for d, g in gens.items()}
        DistributedCommunicator.instance = _SoloComm(self.real)
        return self.real

    def __exit__(self, *exc):
        self.cls.instance = self.real
        for (k, d), st in self.states.items():
            crypten.generators[k][d].set_state(st)
        return False


def comm_failure(e: BaseException) -> str | None:
    """Classify a communication error: ``"closed"`` (the peer's connection went away: it died or
    exited), ``"timeout"`` (the peer stopped answering) or None (not a communication error)."""
    low = str(e).lower()
    if "timed out" in low or "timeout" in low:
        return "timeout"
    for needle in ("connection reset", "connection closed", "closed by peer", "broken pipe", "connection refused",
                   "socket closed", "end of file", "eof", "pair closure", "read error", "write error"):
        if needle in low:
            return "closed"
    return None
