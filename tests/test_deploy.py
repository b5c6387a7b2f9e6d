"""The MPC runtime as a deployment: dealer modes, the offline/online split, one party per host.

* ``local`` and ``ttp`` dealers give the same tokens as plaintext greedy decoding; with the split,
  the online phase has the same rounds and bytes in both modes (the dealer is not in it), the
  offline phase of ``ttp`` carries the dealer's traffic in a few batched rounds, and without the
  split the dealer's requests land in the query itself.
* The replaying provider refuses any request off the plan.
* Separate `pmpc party` processes (client, server, dealer) on loopback, and as separate hosts in
  network namespaces on an emulated 10 ms link, measured against the cost model.
"""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch

from pmpc.mpc import cost, dealer, netlab, parties, secure
from pmpc import models
from pmpc.engine import Engine
from pmpc.ops import TorchOps

MODEL = "tiny-random-llama"
IDS = torch.tensor([[1, 2, 3]])
REPO = pathlib.Path(__file__).resolve().parents[1]


def plain_greedy(n: int) -> list[int]:
    spec, _ = models.load(MODEL)
    ids = IDS.clone()
    out = []
    for _ in range(n):
        with torch.no_grad():
            nxt = int(Engine(spec, "plain", TorchOps()).prefill(ids, use_cache=False)[0, -1].argmax())
        out.append(nxt)
        ids = torch.cat([ids, torch.tensor([[nxt]])], 1)
    return out


@pytest.fixture(scope="module")
def runs():
    out = {}
    for name, dealer_mode, pre in [("local", "local", True), ("ttp", "ttp", True), ("ttp-live", "ttp", False),
                                   ("local-live", "local", False)]:
        cfg = secure.GenConfig(model=MODEL, protocol="exact", max_new_tokens=2, preprocess=pre)
        out[name] = (cfg, secure.run_generation(cfg, secure.ClientInput(IDS, torch.ones_like(IDS)), timeout_s=60,
                                                dealer=dealer_mode))
    return out


def test_dealer_modes_give_plaintext_tokens(runs):
    want = plain_greedy(2)
    for name, (_, (client, server)) in runs.items():
        assert client["tokens"][0] == want, name
        assert client["dealer"] == server["dealer"] == name.split("-")[0]
        assert "tokens" not in server and "logits" not in server


def test_online_phase_excludes_the_dealer(runs):
    for rank in (0, 1):
        ph = {name: r[1][rank]["phases"] for name, r in runs.items()}
        for phase in ("prefill", "decode"):
            assert ph["local"][phase]["rounds"] == ph["ttp"][phase]["rounds"] > 0
            assert ph["local"][phase]["bytes"] == ph["ttp"][phase]["bytes"] > 0
            # without the split the dealer still adds no round: each answer is read after the opening
            # that uses it, and it is counted as dealt traffic beside the computation's bytes
            assert ph["ttp-live"][phase]["rounds"] == ph["ttp"][phase]["rounds"]
            assert ph["ttp-live"][phase]["bytes"] == ph["ttp"][phase]["bytes"]
            assert ph["ttp"][phase]["dealer_bytes"] == 0
            assert ph["ttp-live"][phase]["dealer_bytes"] > 0
        assert "offline" not in ph["ttp-live"] and "plan" not in ph["ttp-live"]


def test_live_ttp_query_has_the_rounds_of_the_local_dealer(runs):
    """Without preprocessing, the secure default (the ttp dealer) costs the computing parties the
    same exchanges as the local dealer: every dealer answer is read after the opening that uses it,
    and the FSS keys' words travel beside the openings in both modes (dealt traffic, counted apart)."""
    for rank in (0, 1):
        ttp, local = (runs[n][1][rank]["phases"] for n in ("ttp-live", "local-live"))
        for phase in ("prefill", "decode"):
            assert ttp[phase]["rounds"] == local[phase]["rounds"] > 0, (rank, phase)
            assert ttp[phase]["bytes"] == local[phase]["bytes"] > 0, (rank, phase)
        # dealt traffic: party 0 gets every tuple's answer from the ttp dealer (and sends the key
        # words itself with the local one); party 1 gets the same key words from either
        if rank == 0:
            assert ttp["decode"]["dealer_bytes"] > local["decode"]["dealer_bytes"] > 0
        else:
            assert ttp["decode"]["dealer_bytes"] == local["decode"]["dealer_bytes"] > 0


def test_offline_phase_carries_the_dealers_traffic(runs):
    for name in ("local", "ttp"):
        off = runs[name][1][0]["phases"]["offline"]
        tuples = sum(n for n, _ in off["prefill"]["tuples"].values())
        assert tuples > 50
        # FSS comparison keys: their correction words go from party 0 to party 1 (a part of each
        # key's elements); every other tuple share party 1 derives from a seed
        keys = 8 * off["prefill"]["tuples"]["sign"][1]
        assert off["prefill"]["bytes"] == 0  # dealt material only, counted apart
        if name == "local":  # party 0 draws the tuples itself: only the keys' words are sent
            assert 0 < off["prefill"]["dealer_bytes"] < keys
        else:  # one batched request/reply per chunk, not a round trip per tuple
            elements = sum(e for _, e in off["prefill"]["tuples"].values())
            assert off["prefill"]["dealer_bytes"] > 8 * elements / 3  # at least the correction terms
            assert off["prefill"]["rounds"] <= 8 < tuples  # the chunks' barriers
            assert off["prefill"]["dealer_messages"] <= 8 < tuples
        server_off = runs[name][1][1]["phases"]["offline"]
        # the keys' words (from party 0, or from the dealer), nothing else
        assert server_off["prefill"]["bytes"] == 0 and 0 < server_off["prefill"]["dealer_bytes"] < keys


def test_summary_names_the_dealer_mode(runs):
    spec, _ = models.load(MODEL)
    for name in ("local", "ttp", "ttp-live"):
        cfg, (client, server) = runs[name]
        fid = secure.fidelity(spec, IDS, torch.ones_like(IDS), client["tokens"], client["logits"])
        mode = name.split("-")[0]
        r = secure.summary(cfg, spec, mode, client, server, fid, 1.0)
        text = secure.format_summary(r)
        assert f"dealer: {mode} — {dealer.TRUST[mode]}" in text
        if name == "ttp-live":
            assert r["offline"] is None and "offline: none" in text
        else:
            assert f"offline ({mode} dealer)" in text and r["offline"]["prefill"]["seconds"] > 0
    assert "NOT secure against the client" in dealer.TRUST["local"]


def test_replay_refuses_requests_off_the_plan():
    key = dealer.request_key
    plan = dealer.Plan([key("square", ((2, 3),), {}), key("generate_binary_triple", ((4,), (4,)), {})],
                       {"prefill": 0, "decode": 1})
    assert plan.span("prefill") == (0, 1) and plan.span("decode") == (1, 2)
    assert plan.counts() == {"square": [1, 12], "and": [1, 12]}
    r = dealer.Replay(plan, ["t0", "t1"])
    assert r.square(torch.Size([2, 3]), device="cpu") == "t0"
    with pytest.raises(dealer.PlanMismatch, match="the plan has"):
        r.generate_binary_triple(torch.Size([5]), torch.Size([5]))
    r = dealer.Replay(plan, ["t0", "t1"])
    r.square((2, 3))
    assert r.generate_binary_triple((4,), (4,)) == "t1" and r.left() == 0
    with pytest.raises(dealer.PlanMismatch, match="beyond the plan"):
        r.square((2, 3))
    with pytest.raises(dealer.PlanMismatch):
        dealer.Replay(plan, ["only one"])


def _party(rank, port, extra=(), timeout=60):
    cmd = [sys.executable, "-m", "cli.main", "party", "--rank", str(rank), "-m", MODEL, "-p", "exact", "-n", "2",
           "--dealer", "ttp", "--preprocess", "--timeout", str(timeout), "--rendezvous", f"tcp://127.0.0.1:{port}",
           *extra]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})


def test_separate_party_processes_with_a_dealer(tmp_path):
    """One `pmpc party` per role, started independently (as on three hosts)."""
    port = parties.free_port()
    out = tmp_path / "client.json"
    procs = [_party(0, port, ["--ids", "1,2,3", "--json", str(out)]), _party(1, port), _party(2, port)]
    res = [p.communicate(timeout=300) for p in procs]
    for p, (o, e) in zip(procs, res):
        assert p.returncode == 0, e[-2000:]
    got = json.loads(out.read_text())
    assert got["tokens"][0] == plain_greedy(2)
    assert got["dealer"] == "ttp" and got["phases"]["offline"]["prefill"]["dealer_bytes"] > 0


LINK = cost.Link("wan10", 100e6, 0.010)


def test_separate_hosts_on_an_emulated_link_match_the_cost_model():
    """Client, server and dealer in their own network namespaces; the same query with no delay,
    then on a 10 ms / 100 Mbit/s link. The link's cost must show, and land between the cost
    model's bounds: the model (no-delay time + rounds x RTT + bytes / bandwidth) charges a full
    RTT per round, an upper bound; on the direct links both parties send a round's message at
    once, so a round costs at least one one-way delay (RTT / 2)."""
    reason = netlab.unavailable()
    if reason:
        pytest.skip(f"separate-host test needs network namespaces: {reason}")
    res = netlab.measure([LINK], model=MODEL, protocol="exact", ids="1,2,3", new_tokens=2, dealer="ttp",
                         timeout_s=60)
    print("\n" + netlab.table(res))
    row = res["rows"][0]
    for phase in ("prefill", "decode"):
        r = row[phase]
        one_way = r["modelled_s"] - r["rounds"] * LINK.rtt_s / 2  # the model with RTT / 2 a round
        assert 0.7 * one_way < r["measured_s"] < 1.5 * r["modelled_s"], (phase, r)
    # the link's latency shows (summed over both phases: compute time on a shared machine is noisy)
    added = sum(row[p]["measured_s"] - row[p]["base_s"] for p in ("prefill", "decode"))
    assert added > 0.5 * sum(row[p]["rounds"] for p in ("prefill", "decode")) * LINK.rtt_s / 2, row
    assert row["offline_s"] > 0 and not subprocess.run(["ip", "netns", "list"], capture_output=True,
                                                        text=True).stdout.count(f"pmpc{os.getpid()}")
