"""The MPC runtime beneath the protocols: randomness, wire, dealer keys and tuples, primitives."""
