"""A malicious peer for tests/test_wire.py: a party that follows the protocol except that, at one
control-message position, it sends a pickle whose loading would run a shell command (touch a
marker file). Run as ``python -m tests.wire_jobs ROLE KIND[:OP] RENDEZVOUS MARKER [--ttp]
[--preprocess] [--payload=pickle|huge-prompt|huge-frame]``; its real peers are ``pmpc party`` processes.

The payload goes out in pmpc's own frame (an int64 length header, then the bytes) through raw
torch.distributed sends: the position in the protocol is right, only the content is hostile.
Module level so that the forkserver can import the jobs by name."""
from __future__ import annotations

import os
import pickle
import shlex
import struct
import sys

import torch


class Shell:
    """Unpickling this runs ``touch MARKER`` (what an attacker would replace with anything)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.system, ("touch " + shlex.quote(self.marker),)


HUGE_PROMPT = {"tokens": 12_000, "lengths": [12_000]}  # on a model with a 64-token context


def hostile(kind: str, op: str | None, marker: str, payload: str = "pickle") -> None:
    """From now on, the first message of ``kind`` (and dealer op or reply key ``op``) is hostile:
    ``pickle`` (runs a shell command when unpickled), ``huge-prompt`` (a well-formed announcement
    of 12,000 tokens) or ``huge-frame`` (a header announcing 1 TiB, then a few bytes)."""
    from pmpc.mpc import wire

    honest_encode, honest_frame = wire.encode, wire._frame
    fired = []

    def target(k, obj) -> bool:
        return k == kind and not fired and (op is None or (isinstance(obj, dict) and (obj.get("op") == op or op in obj)))

    def encode(k, obj):
        if target(k, obj):
            fired.append(1)
            if payload == "pickle":
                return pickle.dumps(Shell(marker))
            if payload == "huge-prompt":
                return honest_encode(k, HUGE_PROMPT)
            fired.append("frame")
        return honest_encode(k, obj)

    def frame(data):
        head, body = honest_frame(data)
        if fired[-1:] == ["frame"]:
            fired.append(1)
            head = struct.pack("<q", 1 << 40)
        return head, body

    wire.encode, wire._frame = encode, frame


def raw_pickle_collective(rank, world_size):
    """Each pickling path CrypTen or torch offers, called in a party: every one must refuse."""
    import torch.distributed as dist

    from crypten.mpc.primitives import ArithmeticSharedTensor

    from pmpc.mpc.crypten_compat import comm, crypten

    c = comm.get()
    calls = {
        "send_obj": lambda: c.send_obj({"x": 1}, 1 - rank),
        "recv_obj": lambda: c.recv_obj(1 - rank),
        "broadcast_obj": lambda: c.broadcast_obj({"x": 1}, 0),
        "all_gather_object": lambda: dist.all_gather_object([None, None], {"x": 1}),
        "broadcast_object_list": lambda: dist.broadcast_object_list([{"x": 1}], src=0),
        "send_object_list": lambda: dist.send_object_list([{"x": 1}], dst=1 - rank),
        "recv_object_list": lambda: dist.recv_object_list([None], src=1 - rank),
        "crypten.load": lambda: crypten.load("/nonexistent"),
        "size broadcast": lambda: ArithmeticSharedTensor(torch.ones(2) if rank == 0 else None, src=0,
                                                         broadcast_size=True),
    }
    out = {}
    for name, call in calls.items():
        try:
            call()
            out[name] = "sent"
        except Exception as e:
            out[name] = f"{type(e).__name__}: {e}"
    return out


def main(argv):
    role, what, rendezvous, marker = argv[:4]
    kind, _, op = what.partition(":")
    dealer = "ttp" if "--ttp" in argv else "local"
    from pmpc.mpc import handshake, parties, secure

    rank = {"client": 0, "server": 1, "dealer": 2}[role]
    cfg = secure.GenConfig(model="tiny-random-llama", protocol="exact", max_new_tokens=2,
                           preprocess="--preprocess" in argv)
    payload = next((a.split("=", 1)[1] for a in argv if a.startswith("--payload=")), "pickle")
    hostile(kind.replace("-", " "), op or None, marker, payload)
    ids = torch.tensor([[1, 2, 3]])
    inp = secure.ClientInput(ids, torch.ones_like(ids)) if rank == 0 else None
    import functools

    try:
        # an authenticated but malicious peer: it holds the session's pre-shared key
        parties.run_party(functools.partial(secure.generate_party, cfg), rank, 2, rendezvous, 30.0, dealer,
                          1, inp, has_input=True, psk=handshake.read_psk(os.environ["PMPC_PSK_FILE"]))
    except Exception as e:  # the peer refused us: expected
        print(f"hostile {role}: {type(e).__name__}: {str(e)[:200]}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
