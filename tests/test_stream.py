"""`pmpc run` shows the answer as it is decoded: the client process relays each prefill layer and
each chosen token to the launcher as it happens, and the launcher's watcher sees them in order,
spread over the decode instead of all at once at the end."""
from __future__ import annotations

import time

import torch

from pmpc.mpc import secure


class Clock:
    """A launcher-side watcher that notes when each event arrives."""

    def __init__(self):
        self.events = []

    def layer(self, phase, i, n):
        self.events.append(("layer", i, time.monotonic()))

    def token(self, step, ids):
        self.events.append(("token", int(ids[0]), time.monotonic()))


def test_tokens_reach_the_launcher_as_they_are_decoded(stories_dir):
    from pmpc import models

    n = 6
    spec = models.load_shapes(str(stories_dir))
    ids = torch.tensor([[1, 403, 407, 261]])
    watch = Clock()
    cfg = secure.GenConfig(model=str(stories_dir), protocol="exact", max_new_tokens=n)
    client, _ = secure.run_generation(cfg, secure.ClientInput(ids, torch.ones_like(ids), watch=watch),
                                      timeout_s=120, dealer="local")
    t_end = time.monotonic()
    kinds = [(k, v) for k, v, _ in watch.events]
    assert kinds == [("layer", i) for i in range(spec.n_layers)] + [("token", t) for t in client["tokens"][0]]
    times = [t for k, _, t in watch.events if k == "token"]
    assert times == sorted(times) and times[-1] <= t_end
    # streamed: the tokens arrived over the decode, not in one burst at its end (the first one when
    # the prefill was done, each next one a decode step later)
    decode_s = client["phases"]["decode"]["seconds"]
    assert times[-1] - times[0] > 0.5 * decode_s > 0
