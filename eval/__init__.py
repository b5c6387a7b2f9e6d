"""Safety measurement: prompt sets, generation, judges, ASR, perplexity, analyses.

Nothing here imports crypten (directly or through pmpc.mpc.crypten_compat / pmpc.mpc.parties): it runs on
GPU machines with a different torch where crypten is absent.
"""
