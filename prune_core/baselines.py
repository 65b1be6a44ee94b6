"""Baseline selection methods, registered beside prune4rel in the one registry."""

from __future__ import annotations

import numpy as np

from .selection import MethodOutput, rank_by_score, register_method


@register_method(
    "uniform",
    "Uniform: a random subset (seeded); with balance, random within each class",
    needs=(),
    nested=True,
)
def _uniform(inputs, budget, seed, progress, cancel, balance):
    rng = np.random.default_rng(seed)
    # A random permutation ranked as a score keeps the same class-balance policy as the others.
    score = rng.permutation(inputs.n).astype(np.float64)
    labels = inputs.labels if balance != "none" else None
    return MethodOutput(rank_by_score(score, budget, labels, balance, descending=False))
