"""Party jobs for tests/test_randomness.py (module level: the forkserver parties import them).

They use only what any version of the runtime offers (crypten's generators, ``get_state`` /
``set_state``, ``ring_random``), so the same jobs also show the attacks on a runtime whose
seeds come from torch's global state."""
from __future__ import annotations

N = 4  # words peeked from each stream


def _peek(gen, n: int = N) -> list:
    """The next ``n`` ring words of a generator, which is then rewound (nothing is consumed)."""
    from pmpc.mpc.crypten_compat import ring_random

    st = gen.get_state()
    out = ring_random(n, gen).tolist()
    gen.set_state(st)
    return out


def _torch_words(gen, n: int = N) -> list:
    """Words as CrypTen's own sampler draws them from a torch generator (its small-draw path)."""
    import torch

    return torch.randint(-(2 ** 63), 2 ** 63 - 1, (n,), generator=gen, dtype=torch.long).tolist()


def _predictions() -> dict:
    """What a curious party can compute from the state its process inherited: torch's and numpy's
    global generators (replaying the dealer's seed draws from them), without consuming them."""
    import numpy as np
    import torch

    preds = {}
    g = torch.Generator()
    g.set_state(torch.get_rng_state())
    preds["torch global"] = _torch_words(g)
    g.set_state(torch.get_rng_state())
    for i in range(2):  # CrypTen's TTP server drew one seed per party with torch.randint
        seed = int(torch.randint(-(2 ** 63), 2 ** 63 - 1, size=(), generator=g))
        preds[f"dealer seed {i} replayed"] = _torch_words(torch.Generator().manual_seed(seed))
    rs = np.random.RandomState()
    rs.set_state(np.random.get_state())
    raw = rs.randint(0, 2 ** 63, size=(2 * N,), dtype=np.int64)
    preds["numpy global"] = raw[:N].tolist()
    preds["numpy global pcg64"] = np.random.PCG64DXSM(raw[N:].view(np.uint64)).random_raw(N).view(np.int64).tolist()
    return preds


def streams_and_predictions(rank, world_size):
    """Each party: the first words of each of its streams; the client also its predictions. A
    Beaver product checks that the streams shared with the dealer agree."""
    import torch

    from pmpc.mpc.crypten_compat import MPCTensor, crypten

    out = {"predictions": _predictions() if rank == 0 else {}}
    cpu = torch.device("cpu")
    for key in ("next", "prev", "local", "global"):
        out[key] = _peek(crypten.generators[key][cpu])
    if crypten.mpc.ttp_required():
        from crypten.mpc.provider.ttp_provider import TTPClient

        out["dealer"] = _peek(TTPClient.get().get_generator())
    x, y = MPCTensor(torch.tensor([1.5, -2.0, 3.25])), MPCTensor(torch.tensor([2.0, 0.5, -1.0]))
    out["product"] = (x * y).get_plain_text().tolist()
    return out


def shares_after_global_seeding(rank, world_size):
    """Seed torch, numpy and random globally to the same values, then secret-share a constant and
    draw a Beaver triple: this party's shares (which must not follow from the global seeds)."""
    import random

    import numpy as np
    import torch

    from pmpc.mpc.crypten_compat import MPCTensor, comm, crypten

    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    x = MPCTensor(torch.ones(8))
    a, b, c = crypten.mpc.get_default_provider().generate_additive_triple((8,), (8,), "mul")
    # the dealer's answer (party 0's c) is read after the opening that uses it; with no opening
    # here, read it now
    comm.get().settle()
    return {"x": x._tensor.share.tolist(), "a": a.share.tolist(), "b": b.share.tolist(), "c": c.share.tolist()}


def handshake_capture(rank, world_size):
    """A fresh key exchange between the computing parties, with every byte on the wire recorded:
    (the messages this party sent and received, the seed and MAC key it derived)."""
    from pmpc.mpc import handshake
    from pmpc.mpc.crypten_compat import comm

    wire = []
    swap = handshake._swap

    def recording(data, peer, group):
        got = swap(data, peer, group)
        wire.append((data, got))
        return got

    handshake._swap = recording
    try:
        ln = handshake.pair(rank, 1 - rank, comm.get().main_group, "test")
    finally:
        handshake._swap = swap
    return {"wire": wire, "seed": ln.seed("0->1"), "mac": ln.mac_key, "psk": handshake._PSK[0]}


def digest_check(tamper: str, rank, world_size):
    """The configuration check with a man in the middle (``tamper="wire"``: the client's digest is
    altered after it was tagged, as on the link) or an honest mismatch (``"config"``: the server
    has another configuration)."""
    import hashlib

    from pmpc.mpc import handshake

    digest = hashlib.sha256(b"configuration").digest()
    if tamper == "config" and rank == 1:
        digest = hashlib.sha256(b"another configuration").digest()
    if tamper == "wire" and rank == 0:
        swap = handshake._swap

        def altered(data, peer, group):
            return swap(bytes([data[0] ^ 1]) + data[1:], peer, group)

        handshake._swap = altered
    handshake.agree_digest(digest, "the test configuration")
    return "agreed"
