"""Randomness and seed agreement, tried as an attacker would.

* The PRG is AES-128-CTR (a known-answer test), every bit of a seed matters, and its stream does
  not depend on how it is cut into draws.
* A curious client started the way `pmpc run` starts parties (one forkserver: inherited torch and
  numpy state) tries to predict the server's and the dealer's streams from its own process state
  and fails, while the streams that must be shared agree (and a Beaver product through the dealer
  is right).
* Masks and shares do not follow from torch's or numpy's global state (seeded alike twice).
* The key exchange: its transcript alone does not give the seeds; a wrong pre-shared key, a
  tampered configuration digest and an honest configuration mismatch each stop the parties with
  one line that says which; a party without a key refuses to start.
"""
from __future__ import annotations

import functools
import hashlib
import hmac
import os
import subprocess
import sys

import numpy as np
import pytest

from pmpc.mpc import parties
from tests import rand_jobs as rj

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -- the PRG ---------------------------------------------------------------------------------------
def test_prg_is_aes128_ctr_known_answer():
    """FIPS-197 appendix C.1: AES-128 with key 00..0f maps 00112233..ff to 69c4e0d8..c55a. The
    stream's block i is AES_k(i); word w is half of block w // 2, little-endian."""
    from pmpc.mpc.prg import PRG

    g = PRG(bytes(range(16)))
    g.set_state(2 * int("00112233445566778899aabbccddeeff", 16))
    assert g.words(2).tobytes().hex() == "69c4e0d86a7b0430d8cdb78070b4c55a"


@pytest.mark.parametrize("flip", [0, 31, 32, 45, 63, 64, 100, 127])
@pytest.mark.parametrize("n", [3, 4096, 100_003])
def test_every_seed_bit_changes_the_stream(flip, n):
    """Seeds that differ only in one bit — the high bits included (bits 32-63 and 64-127 were
    dropped by the old expansion) — give different streams, for small and bulk draws."""
    from pmpc.mpc.crypten_compat import ring_random
    from pmpc.mpc.prg import PRG

    base = int.from_bytes(os.urandom(16), "big")
    s0, s1 = base.to_bytes(16, "big"), (base ^ (1 << flip)).to_bytes(16, "big")
    a, b = ring_random(n, PRG(s0)), ring_random(n, PRG(s1))
    assert (a != b).float().mean() > 0.99
    assert not np.array_equal(PRG(s0).ring(n, bits=16).numpy(), PRG(s1).ring(n, bits=16).numpy())


def test_stream_is_position_based_and_rewinds():
    from pmpc.mpc.prg import PRG

    seed = os.urandom(16)
    whole = PRG(seed).words(30_001)
    g = PRG(seed)
    parts = np.concatenate([g.words(k) for k in (1, 2, 5, 1024, 4096, 3, 12_000, 12_870)])
    assert np.array_equal(parts, whole)
    g.set_state(7)
    assert np.array_equal(g.words(10), whole[7:17])
    bits = PRG(seed).ring(100_000, bits=1).numpy()
    assert set(np.unique(bits)) == {0, 1} and abs(bits.mean() - 0.5) < 0.01
    with pytest.raises(ValueError):
        PRG(seed[:8])                   # a 64-bit seed is refused


def test_running_cipher_gives_the_stream_of_fresh_ciphers():
    """Draws continue one CTR encryptor where the last stopped (odd positions, bulk and cached
    draws, rewinds and jumps in between): every word equals AES_k(block) of a fresh cipher."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    from pmpc.mpc.prg import PRG

    seed = os.urandom(16)
    ref = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor().update(bytes(8 * 80_000))
    ref = np.frombuffer(ref, dtype=np.uint64)
    g, pos = PRG(seed), 0
    rng = np.random.default_rng(0)
    for step in range(300):
        if step % 17 == 5:   # a rewind or a jump, to an odd or even word
            pos = int(rng.integers(0, 60_000))
            g.set_state(pos)
        n = int(rng.choice([1, 3, 1023, 1025, 4097, 5000]))
        assert np.array_equal(g.words(n), ref[pos:pos + n]), (step, pos, n)
        pos += n
        if pos > 70_000:
            pos = 1
            g.set_state(pos)


def test_ring_random_refuses_a_torch_generator():
    import torch

    from pmpc.mpc.crypten_compat import ring_random

    with pytest.raises(TypeError, match="AES PRG"):
        ring_random(4, torch.Generator().manual_seed(1))


# -- a curious client, started the way `pmpc run` starts it --------------------------------------
@pytest.mark.slow  # the first local launch of a session starts the forkserver (~10-20 s)
@pytest.mark.parametrize("dealer", ["ttp", "local"])
def test_curious_client_cannot_predict_server_or_dealer_streams(dealer):
    client, server = parties.run_local(rj.streams_and_predictions, dealer=dealer, timeout_s=60, deadline_s=180)
    # what must be shared is shared ...
    assert client["next"] == server["prev"] and client["prev"] == server["next"]
    assert client["global"] == server["global"]
    assert np.allclose(client["product"], [3.0, -1.0, -3.25], atol=1e-3)   # the dealer's streams agree
    # ... and nothing else: the server's own and dealer streams are not among the client's guesses
    guesses = {k: tuple(v) for k, v in client["predictions"].items()}
    guesses.update({f"client {k}": tuple(client[k]) for k in ("local", "next", "prev", "dealer") if k in client})
    secret = {"server local": server["local"]}
    if dealer == "ttp":
        secret["server dealer"] = server["dealer"]
        assert client["dealer"] != server["dealer"]
    for name, words in secret.items():
        hit = [g for g, v in guesses.items() if v == tuple(words)]
        assert not hit, f"the client predicted the {name} stream from {hit}"
        # not even one word in common (a shifted or partial prediction)
        assert not set(words) & {w for v in guesses.values() for w in v}, name


def test_masks_do_not_follow_from_global_seeds():
    """Two runs, torch/numpy/random seeded alike in each party: every share differs between the
    runs (the dealer's streams, too: they were predicted from inherited torch state before)."""
    runs = [parties.run_local(rj.shares_after_global_seeding, dealer="ttp", timeout_s=60, deadline_s=180)
            for _ in range(2)]
    for rank in (0, 1):
        for name in ("x", "a", "b", "c"):
            assert runs[0][rank][name] != runs[1][rank][name], (rank, name)


# -- the key exchange --------------------------------------------------------------------------------
def test_handshake_transcript_does_not_give_the_seeds():
    """Everything on the wire (two public keys, two confirmation tags) — even with the pre-shared
    key — does not reproduce the seed or the MAC key: no derivation that skips the X25519 secret
    matches, and neither key appears in the traffic. Both parties derive the same seed."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

    client, server = parties.run_local(rj.handshake_capture, timeout_s=60, deadline_s=120)
    assert client["seed"] == server["seed"] and client["mac"] == server["mac"] and len(client["seed"]) == 16
    traffic = b"".join(a + b for a, b in client["wire"] + server["wire"])
    assert len(traffic) == 4 * (32 + 32)  # each side: a 32-byte public key and a 32-byte tag
    for secret in (client["seed"], client["mac"]):
        assert secret not in traffic
    pk0, pk1 = client["wire"][0][0], client["wire"][0][1]
    psk = client["psk"]
    transcript = b"|".join([b"pmpc seed agreement v1", b"test", bytes([0, 1]), pk0, pk1])
    candidates = [pk0, pk1, bytes(a ^ b for a, b in zip(pk0, pk1)), bytes(32), psk]
    for ikm in candidates:
        prk = hmac.new(psk, ikm, hashlib.sha256).digest()
        guess = HKDFExpand(hashes.SHA256(), 16, info=transcript + b"|seed 0->1").derive(prk)
        assert guess != client["seed"]
    # the derivation itself is as stated: with the true secret's PRK it would match (checked by
    # both parties agreeing above); a second exchange gives fresh seeds
    again = parties.run_local(rj.handshake_capture, timeout_s=60, deadline_s=120)[0]
    assert again["seed"] != client["seed"]


def test_tampered_digest_is_not_authenticated():
    with pytest.raises(parties.PartyError) as ei:
        parties.run_local(functools.partial(rj.digest_check, "wire"), timeout_s=30, deadline_s=120)
    msg = str(ei.value)
    assert "\n" not in msg
    assert "party 0 (client) is not authenticated (wrong pre-shared key or a man in the middle)" in msg, msg


def test_differing_configurations_are_named_as_such():
    with pytest.raises(parties.PartyError) as ei:
        parties.run_local(functools.partial(rj.digest_check, "config"), timeout_s=30, deadline_s=120)
    msg = str(ei.value)
    assert "configurations differ" in msg and "not authenticated" not in msg and "\n" not in msg, msg


def _party(rank, port, psk_file, extra=()):
    env = {k: v for k, v in os.environ.items() if k != "PMPC_PSK_FILE"}
    return subprocess.Popen([sys.executable, "-m", "cli.main", "party", "--rank", str(rank), "-m", "tiny-random-llama",
                             "-p", "exact", "-n", "1", "--timeout", "30", "--dealer", "local", "--rendezvous", f"tcp://127.0.0.1:{port}",
                             "--psk-file", str(psk_file), *extra], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**env, "PYTHONWARNINGS": "ignore"})


@pytest.mark.slow  # two `pmpc party` processes start (~10 s each on a 2-core machine)
def test_wrong_psk_stops_both_parties_with_one_line(tmp_path):
    """Two `pmpc party` processes (as on two hosts) whose key files differ: each exits 2 with one
    line naming the other as not authenticated, before any stream is used."""
    k0, k1 = tmp_path / "k0", tmp_path / "k1"
    k0.write_bytes(os.urandom(32))
    k1.write_bytes(os.urandom(32))
    port = parties.free_port()
    procs = [_party(0, port, k0, ["--ids", "1,2,3"]), _party(1, port, k1)]
    res = [p.communicate(timeout=240) for p in procs]
    for rank, (p, (_, err)) in enumerate(zip(procs, res)):
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert p.returncode == 2 and len(lines) == 1, err[-2000:]
        peer = parties.who(1 - rank)
        assert lines[0].startswith(f"pmpc: error: {parties.who(rank)}: {peer} is not authenticated"), lines[0]


def test_party_without_a_key_refuses_with_the_recipe(tmp_path):
    from click.testing import CliRunner

    from cli.main import cli

    args = ["party", "--rank", "1", "-m", "tiny-random-llama", "-p", "exact", "--rendezvous", "tcp://127.0.0.1:1"]
    res = CliRunner().invoke(cli, args, env={"PMPC_PSK_FILE": None})
    assert res.exit_code == 2 and "no pre-shared key" in res.stderr and "head -c 32 /dev/urandom" in res.stderr, res.stderr
    short = tmp_path / "short"
    short.write_bytes(b"0123456789")
    res = CliRunner().invoke(cli, args + ["--psk-file", str(short)])
    assert res.exit_code == 2 and "holds 10 bytes" in res.stderr, res.stderr
