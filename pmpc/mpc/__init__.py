"""The MPC runtime: how the parties talk, agree on keys and deal correlated randomness."""
