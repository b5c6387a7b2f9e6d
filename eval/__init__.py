"""Safety measurement: prompt sets, generation, judges, ASR, perplexity, analyses.

Nothing here imports crypten (directly or through pmpc.crypten_compat / pmpc.parties): it runs on
GPU machines with a different torch where crypten is absent.
"""
