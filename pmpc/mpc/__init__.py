"""The MPC runtime: everything beneath the protocols that makes two parties compute together.

* :mod:`pmpc.mpc.crypten_compat` — the way in to crypten (imported before any of it): torch-2.x shims, exact
  truncation, lane comparisons, the provider switch, timeouts.
* :mod:`pmpc.mpc.crypten_ops` — :class:`CrypTenOps`, the op set on secret-shared values.
* :mod:`pmpc.mpc.prg` — OS seeds expanded by AES-128-CTR; the one source of randomness.
* :mod:`pmpc.mpc.transport` — the links: one TCP connection per pair of parties, TLS 1.3 pinned by the key agreement, under CrypTen's communicator.
* :mod:`pmpc.mpc.handshake` — the authenticated key exchange at start-up (X25519 + HKDF).
* :mod:`pmpc.mpc.wire` — fixed-format JSON control frames; nothing from the wire is unpickled.
* :mod:`pmpc.mpc.roles` — who a party is and whom it is talking to: the names every failure message uses.
* :mod:`pmpc.mpc.primitives` — what a forward is made of (Ops-level counts per scope, CrypTen-level
  tallies) and its cost priced as OT-based 2PC.
* :mod:`pmpc.mpc.cost` — CrypTen's counters, the LAN/WAN link model, cost tables.
* :mod:`pmpc.mpc.fss` — function secret sharing: DCF and DPF keys over whole tensors (fixed-key AES).
* :mod:`pmpc.mpc.gates` — one-round comparisons (DCF on the opened x + r) and table lookups, dealt like tuples.
* :mod:`pmpc.mpc.fixed_operand` — private weights masked and opened once per session; per-product triples against that mask.
* :mod:`pmpc.mpc.dealer` — the trusted dealer: correlated randomness (triples) from its own process.
* :mod:`pmpc.mpc.parties` — start the parties (local processes or one per host), watch them.
* :mod:`pmpc.mpc.secure` — secure generation: plan, offline (tuples), online (the forward).
* :mod:`pmpc.mpc.netlab` — a network lab: network namespaces and a shaped wire between parties.
"""
