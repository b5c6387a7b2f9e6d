"""The MPC runtime: the pieces that run inside the party and dealer processes."""
