"""The wire: a malicious peer cannot run code in a party nor make it allocate without bound.

Each position where one party sends another a control message (the configuration check, the
announcement of the prompt's shape, the plan exchanges, the dealer's requests and replies) is
attacked by a real peer (tests/wire_jobs.py: the protocol, except one hostile message) against real
``pmpc party`` processes: the receiver refuses with one line and exit code 2, and the shell command
in the pickle never runs. Each case starts 2-3 Python processes (about 10-20 s on a loaded 2-core
machine), hence ``slow``.
"""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import time

import pytest

from pmpc.mpc import parties, wire
from tests.test_badinput import error_lines

REPO = pathlib.Path(__file__).resolve().parents[1]
def _env() -> dict:  # read at call time: the session fixture sets PMPC_PSK_FILE after import
    return {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}

WHO = {"client": parties.who(0), "server": parties.who(1), "dealer": parties.who(2)}


# -- the frame itself (no processes) --------------------------------------------------------------
def test_a_pickle_is_not_a_message(tmp_path):
    import pickle

    from tests.wire_jobs import Shell

    marker = tmp_path / "ran"
    with pytest.raises(wire.WireError, match=r"malformed configuration from party 0 \(client\): not UTF-8"):
        wire.decode("configuration", pickle.dumps(Shell(str(marker))), 0)
    protocol0 = pickle.dumps({"a": "b"}, protocol=0)  # ASCII pickle: valid UTF-8, still not JSON
    with pytest.raises(wire.WireError, match="not JSON"):
        wire.decode("configuration", protocol0, 1)
    assert not marker.exists()


def test_strict_decoding_and_checks():
    assert wire.decode("plan", b"true", 0) is True
    for bad in (b"NaN", b"[Infinity]", b'{"a": -Infinity}', b"\xff\xfe", b"[" * 100_000):
        with pytest.raises(wire.WireError):
            wire.decode("plan", bad, 1)
    with pytest.raises(wire.WireError, match="must be an integer"):
        wire.decode("announcement", b'{"tokens": "3", "lengths": [3]}', 0,
                    lambda m: wire.is_int(m["tokens"], 1, 10, "tokens"))
    with pytest.raises(ValueError, match="exceeds its cap"):
        wire.encode("configuration", "x" * 5000)


def test_the_length_is_checked_before_the_buffer_exists():
    for n in (0, -5, wire.CAPS["announcement"] + 1, 1 << 40):
        with pytest.raises(wire.WireError, match="refused before allocating"):
            wire._length(n, "announcement", 0)
    assert wire._length(17, "announcement", 0) == 17


def test_crypten_and_torch_pickle_paths_refuse_in_a_party():
    """Every pickling call CrypTen or torch.distributed offers raises inside a party process."""
    from tests import wire_jobs

    got = parties.run_local(wire_jobs.raw_pickle_collective, timeout_s=20, deadline_s=120)
    for rank_out in got:
        assert set(rank_out) >= {"send_obj", "recv_obj", "broadcast_obj", "all_gather_object", "crypten.load",
                                 "size broadcast", "broadcast_object_list", "send_object_list", "recv_object_list"}
        for name, what in rank_out.items():
            assert what.startswith("PickleOnTheWire"), (name, what)


# -- a malicious peer against real parties -----------------------------------------------------------
# The configuration check is not among them: it is a fixed 64-byte exchange (digest and HMAC tag
# under the key exchange's MAC key, pmpc.mpc.handshake.agree_digest) that nothing parses;
# tests/test_randomness.py alters it on the wire and the receiver reports "not authenticated".
CASES = [  # (hostile role, message kind[:op or reply key], receiver, dealer, preprocess)
    ("client", "announcement", "server", "local", False),
    ("client", "plan", "server", "local", True),
    ("server", "plan", "client", "local", True),
    ("client", "dealer-request:keepalive", "dealer", "ttp", False),
    ("client", "dealer-request:batch", "dealer", "ttp", True),
    ("client", "dealer-request:tuple", "dealer", "ttp", False),
    ("dealer", "dealer-reply:shapes", "client", "ttp", True),
    ("dealer", "dealer-reply:shape", "client", "ttp", False),
]


def _session(hostile: str, what: str, receiver: str, dealer: str, preprocess: bool, marker, payload="pickle",
             wrap_server=False):
    """Start the hostile party and the real ``pmpc party`` processes; wait for the receiver. The
    timeout is generous because three processes start at once on a loaded machine; the receiver
    refuses as soon as the hostile message arrives, and the others are killed then."""
    port = parties.free_port()
    rdv = f"tcp://127.0.0.1:{port}"
    common = ["-m", "tiny-random-llama", "-p", "exact", "-n", "2", "--dealer", dealer, "--timeout", "30",
              "--rendezvous", rdv] + (["--preprocess"] if preprocess else [])
    roles = ["client", "server"] + (["dealer"] if dealer == "ttp" else [])
    procs = {}
    for rank, role in enumerate(roles):
        if role == hostile:
            cmd = [sys.executable, "-m", "tests.wire_jobs", role, what, rdv, str(marker), f"--payload={payload}"]
            cmd += (["--ttp"] if dealer == "ttp" else []) + (["--preprocess"] if preprocess else [])
        else:
            cmd = [sys.executable, "-m", "cli.main", "party", "--rank", str(rank), *common]
            cmd += ["--ids", "1,2,3"] if role == "client" else []
            if role == "server" and wrap_server:  # report the server's peak memory (its own ru_maxrss)
                cmd = [sys.executable, "-c", "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
                       "print('peak_kb', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
                       "sys.exit(r.returncode)", *cmd]
        procs[role] = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True)
    out = {}
    t0 = time.monotonic()
    try:
        p = procs[receiver]
        try:
            _, err = p.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the {receiver} did not end within 180 s") from None
        out[receiver] = (p.returncode, err)
        out["seconds"] = time.monotonic() - t0
    finally:  # the others are not under test: they end on their own within the timeout, or now
        for q in procs.values():
            if q.poll() is None:
                q.kill()
            q.communicate()
    return out


@pytest.mark.slow
@pytest.mark.parametrize("hostile,what,receiver,dealer,preprocess", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_a_pickle_in_any_control_message_runs_nothing(hostile, what, receiver, dealer, preprocess, tmp_path):
    marker = tmp_path / "code-ran"
    out = _session(hostile, what, receiver, dealer, preprocess, marker)
    code, err = out[receiver]
    lines = [ln for ln in error_lines(err) if not ln.startswith("peak_kb")]
    kind = what.split(":")[0].replace("-", " ")
    assert not marker.exists(), "the peer's pickle ran a shell command in a party"
    assert code == 2, (code, err)
    assert len(lines) == 1, err
    assert lines[0].startswith(f"pmpc: error: malformed {kind} from {WHO[hostile]}: not UTF-8"), lines[0]


def _server_peak_mb(err: str) -> float:
    """The server's peak RSS, as its wrapper (``wrap_server``) reports it on stderr."""
    return int(next(ln for ln in err.splitlines() if ln.startswith("peak_kb")).split()[1]) / 1024


@pytest.mark.slow
def test_an_oversized_announcement_is_refused_before_allocation(tmp_path):
    """12,000 tokens announced for a 64-token model: refused at once, memory flat (it grew by GBs)."""
    out = _session("client", "announcement", "server", "local", False, tmp_path / "unused", payload="huge-prompt",
                   wrap_server=True)
    code, err = out["server"]
    lines = [ln for ln in error_lines(err) if not ln.startswith("peak_kb")]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("pmpc: error: malformed announcement from party 0 (client): prompt of 12000 "
                               "tokens"), lines[0]
    assert "context of 64" in lines[0] or "limit" in lines[0], lines[0]
    peak_mb = _server_peak_mb(err)
    assert peak_mb < 1000, f"the server grew to {peak_mb:.0f} MB on a refused announcement"


@pytest.mark.slow
def test_a_frame_announcing_a_terabyte_is_refused_before_allocation(tmp_path):
    out = _session("client", "announcement", "server", "local", False, tmp_path / "unused", payload="huge-frame",
                   wrap_server=True)
    code, err = out["server"]
    lines = [ln for ln in error_lines(err) if not ln.startswith("peak_kb")]
    assert code == 2 and len(lines) == 1, err
    assert lines[0] == (f"pmpc: error: announcement from party 0 (client) announces {1 << 40} bytes (allowed "
                        f"1..{wire.CAPS['announcement']}); refused before allocating"), lines[0]
    peak_mb = _server_peak_mb(err)
    assert peak_mb < 1000, peak_mb


def test_a_cached_dealer_request_follows_its_shapes():
    """Party 0 keeps each live tuple request encoded: the frame is what the dealer accepts, the
    expected answer shape is the request's own, another shape or keyword is another frame, and the
    reply it takes without decoding is one the dealer's check accepts for that shape only."""
    import torch

    from pmpc.mpc import crypten_compat, dealer  # noqa: F401  (the dealer's checks import crypten)

    def frame(fn, *args, **kw):
        return dealer._request_for(fn, args, kw)

    a = frame("additive", torch.Size([1, 576]), torch.Size([576, 192]), "matmul")
    assert frame("additive", torch.Size([1, 576]), torch.Size([576, 192]), "matmul") is a
    b = frame("additive", torch.Size([2, 576]), torch.Size([576, 192]), "matmul")
    c = frame("additive", torch.Size([1, 576]), torch.Size([1, 576]), "mul")
    d = frame("additive", torch.Size([1, 1, 3, 5]), torch.Size([2, 1, 3, 3]), "conv2d", padding=1)
    e = frame("additive", torch.Size([1, 1, 3, 5]), torch.Size([2, 1, 3, 3]), "conv2d", padding=0)
    assert len({a[0], b[0], c[0], d[0], e[0]}) == 5
    assert (a[1], b[1], c[1], d[1], e[1]) == ([1, 192], [2, 192], [1, 576], [1, 2, 3, 5], [1, 2, 1, 3])
    for fr, shape, reply in (a, b, c, d, e):
        msg = wire.decode("dealer request", fr, 0, dealer._check_message)
        assert dealer.answer_shape(msg["function"], msg["args"], msg["kwargs"]) == shape
        assert wire.decode("dealer reply", reply, 2) == {"shape": shape}
    assert a[2] != b[2]


def test_remembered_messages_are_bounded_and_keyed_by_their_bytes():
    memo = wire.Memo()
    memo.remember(b'{"op":"keepalive"}', {"op": "keepalive"})
    memo.remember(b"x" * (wire.Memo.MAX_BYTES + 1), {"op": "big"})
    assert list(memo) == [b'{"op":"keepalive"}']
    for i in range(wire.Memo.MAX_ENTRIES + 10):
        memo.remember(str(i).encode(), i)
    assert len(memo) == wire.Memo.MAX_ENTRIES
