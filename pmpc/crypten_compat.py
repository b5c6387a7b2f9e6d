"""The one module that imports crypten.

CrypTen 0.4.1 (2022) predates torch 2.9, whose ONNX internals moved; this module applies the
shims it needs on torch 2.13 and exposes a few helpers for the party processes:

* ``torch.onnx._internal.registration`` moved to ``...torchscript_exporter.registration``:
  alias it before ``import crypten`` (crypten's ONNX converter imports it at import time).
* ``torch.distributed`` process groups default to a 30-minute timeout and crypten has no knob:
  :func:`init_party` wraps ``init_process_group``/``new_group`` so a stalled peer raises after
  ``timeout_s`` instead of hanging.
* ``crypten.load`` needs ``weights_only=False``; pmpc never uses it (checkpoints are safetensors).
"""
from __future__ import annotations

import datetime
import functools
import importlib
import os
import sys

import torch


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

__all__ = ["crypten", "comm", "MPCTensor", "Ptype", "init_party", "shutdown_party", "is_crypten"]


def is_crypten(x) -> bool:
    return isinstance(x, crypten.CrypTensor)


def _with_timeout(fn, timeout):
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        kwargs.setdefault("timeout", timeout)
        return fn(*args, **kwargs)

    return wrapped


def init_party(rank: int, world_size: int, rendezvous: str, timeout_s: float = 60.0,
               provider: str = "TFP", verbose_stats: bool = True) -> None:
    """Join a CrypTen session as ``rank`` of ``world_size`` parties.

    ``rendezvous`` is a torch.distributed init URL (``tcp://host:port``, ``file:///path``).
    Every collective (and the start-up itself) raises after ``timeout_s`` if a peer stalls.
    ``provider`` selects the Beaver-triple source: ``TFP`` (party 0 deals: fast, insecure
    against party 0) or ``TTP`` (a separate dealer process of rank ``world_size``).
    """
    import torch.distributed as dist

    os.environ["RANK"] = str(rank)
    os.environ["WORLD_SIZE"] = str(world_size)
    os.environ["RENDEZVOUS"] = rendezvous
    os.environ.setdefault("DISTRIBUTED_BACKEND", "gloo")
    td = datetime.timedelta(seconds=timeout_s)
    if not getattr(dist.init_process_group, "_pmpc_wrapped", False):
        dist.init_process_group = _with_timeout(dist.init_process_group, td)
        dist.new_group = _with_timeout(dist.new_group, td)
        dist.init_process_group._pmpc_wrapped = True
    crypten.cfg.mpc.provider = provider
    crypten.cfg.communicator.verbose = verbose_stats
    crypten.init()


def shutdown_party() -> None:
    try:
        crypten.uninit()
    except Exception:  # a peer may already be gone; nothing left to release cleanly
        pass


def torch_threads(n: int | None) -> None:
    if n:
        torch.set_num_threads(n)
