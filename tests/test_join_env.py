"""Joining from CrypTen's launcher variables (:func:`pmpc.mpc.parties.join_from_env`): parties
started with ``RANK``/``WORLD_SIZE``/``RENDEZVOUS``/``PMPC_PSK_FILE`` in their environment compute
on pmpc's links with either provider (the dealer process too), and a missing or wrong variable
stops the party with one line before it tries to join."""
from __future__ import annotations

import pytest

from pmpc.errors import UserError
from pmpc.mpc import handshake, parties
from tests import env_jobs


@pytest.mark.parametrize("provider", ["TFP", "TTP"])
def test_parties_named_by_the_environment_compute_a_product(provider, tmp_path):
    psk = tmp_path / "psk"
    psk.write_bytes(handshake.new_psk())
    n = 2 + (provider == "TTP")
    ctx = parties._ctx()
    q = ctx.Queue()
    base = {"WORLD_SIZE": "2", "RENDEZVOUS": f"file://{tmp_path}/rendezvous", "PMPC_PSK_FILE": str(psk)}
    procs = []
    for r in range(n):
        env = dict(base, RANK=str(r))
        procs.append(ctx.Process(target=env_jobs.env_party, args=(env, provider, q), daemon=True))
    for p in procs:
        p.start()
    got = dict(q.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(30)
    for r in range(2):
        assert "error" not in got[r], got[r]
        assert got[r]["backend"] == "pmpc-tls" and got[r]["provider"] == provider
        want = [a * b for a, b in zip(env_jobs.X, env_jobs.Y)]
        assert got[r]["product"] == pytest.approx(want, abs=1e-3)
    if provider == "TTP":  # the dealer served party 0's requests until party 0 ended its session
        assert got[2]["dealer"]["ended_by"] == "terminate" and got[2]["dealer"]["requests"] > 0


def test_a_missing_or_wrong_variable_is_one_line(monkeypatch, tmp_path):
    for v in parties.ENV_VARS:
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(UserError, match="not set: WORLD_SIZE, RENDEZVOUS, PMPC_PSK_FILE"):
        parties.join_from_env()
    psk = tmp_path / "psk"
    psk.write_bytes(handshake.new_psk())
    monkeypatch.setenv("RENDEZVOUS", f"file://{tmp_path}/r")
    monkeypatch.setenv("PMPC_PSK_FILE", str(psk))
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(UserError, match="pmpc runs 2 computing parties"):
        parties.join_from_env(provider="TFP")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(UserError, match="rank 2 as the dealer with the TTP provider"):
        parties.join_from_env(provider="TFP")
    monkeypatch.setenv("RANK", "one")
    with pytest.raises(UserError, match="RANK and WORLD_SIZE are integers"):
        parties.join_from_env()
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(UserError, match="provider 'ABY'"):
        parties.join_from_env(provider="ABY")
