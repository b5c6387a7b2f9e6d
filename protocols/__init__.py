"""Non-linear protocols of private-inference systems, one module each, behind one registry.

``get(name)`` returns a :class:`protocols.base.Protocol`; ``names()`` lists what is available.
"""
from __future__ import annotations

import importlib

from pmpc.errors import UserError
from protocols.base import FnSpec, Protocol

# name -> "module:Class". Modules are imported on first use.
_REGISTRY = {
    "exact": "protocols.exact:Exact",
    "crypten": "protocols.crypten_default:CrypTenDefault",
    "iron": "protocols.iron:Iron",
    "bolt": "protocols.bolt:Bolt",
    "bumblebee": "protocols.bumblebee:BumbleBee",
    "puma": "protocols.puma:Puma",
    "nexus": "protocols.nexus:Nexus",
    "mpcformer": "protocols.mpcformer:MPCFormer",
    "plain": "protocols.plain:Plain",  # the floating-point reference (plaintext only)
}
_CACHE: dict[str, Protocol] = {}


def names() -> list[str]:
    """Registered protocols whose module is present."""
    out = []
    for n, target in _REGISTRY.items():
        if importlib.util.find_spec(target.split(":")[0]) is not None:
            out.append(n)
    return out


def get(name: str) -> Protocol:
    if isinstance(name, Protocol):
        return name
    if name not in _REGISTRY or name not in names():
        raise UserError(f"unknown protocol {name!r}; choose from: {', '.join(names())}")
    if name not in _CACHE:
        mod, cls = _REGISTRY[name].split(":")
        _CACHE[name] = getattr(importlib.import_module(mod), cls)()
    return _CACHE[name]


__all__ = ["FnSpec", "Protocol", "get", "names"]
