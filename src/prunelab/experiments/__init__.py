"""Reproductions of papers' experiments, end to end (train, prune through the one prune path, evaluate, plot).

`train_aware`: the small-transformer experiment of training-aware pruning (`prunelab train-aware`).
"""
