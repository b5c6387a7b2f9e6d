"""Performance measurements of the secure engine.

* :mod:`eval.perf.bench` — models x protocols under real 2-party MPC: rounds, bytes, time, fidelity.
* :mod:`eval.perf.errors_fit` — each protocol's measured error, fitted (Gaussian / Laplace) as
  noise presets for the simulator.
* :mod:`eval.perf.peers` — the same prefill in pmpc, CrypTen as shipped and SecretFlow SPU.
* :mod:`eval.perf.ablate` — where a protocol's fidelity goes: its plaintext emulation with one
  function at a time exact, misses listed with the plaintext model's own margin.
"""
