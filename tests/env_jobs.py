"""A party started the way CrypTen's launchers start one (module level: the forkserver parties
import it): its rank, the number of parties and the rendezvous in the environment, then
:func:`pmpc.mpc.parties.join_from_env` where CrypTen's code calls ``crypten.init()``."""
from __future__ import annotations

import os

X = [1.5, -2.25, 3.0, 0.0]
Y = [2.0, 0.5, -4.0, 7.25]


def env_party(env: dict, provider: str, q) -> None:
    """One party: ``env`` its launcher variables, ``provider`` CrypTen's configured one (CrypTen's
    launchers hand their configuration to each process); puts ``(rank, what it saw)`` on ``q``."""
    os.environ.update(env)
    import torch

    from pmpc.mpc import crypten_compat as cc
    from pmpc.mpc import dealer, parties

    cc.crypten.cfg.mpc.provider = provider
    out = None
    try:
        rank, world_size = parties.join_from_env(timeout_s=30)
        if rank == world_size:
            out = {"dealer": dealer.serve()}
        else:
            c = cc.comm.get()
            x = cc.crypten.cryptensor(torch.tensor(X), src=0)
            y = cc.crypten.cryptensor(torch.tensor(Y), src=1)
            out = {"product": (x * y).get_plain_text().tolist(), "backend": c.get_distributed_backend(),
                   "provider": cc.crypten.cfg.mpc.provider}
            dealer.terminate()
    except Exception as e:  # the test reads it
        out = {"error": f"{type(e).__name__}: {e}"}
    finally:
        cc.shutdown_party()
        q.put((int(env["RANK"]), out))
