"""Analyses built on eval: noise / layer sweeps, activation-space MDS, Table 2, the report page."""
