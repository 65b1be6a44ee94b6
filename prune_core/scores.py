"""Per-example scores computed from warm-up outputs (confidences, difficulty scores)."""

from __future__ import annotations

import numpy as np

from .errors import InputError

CONFIDENCE_KINDS = ("maxprob", "margin", "entropy")


def validate_probs(probs: np.ndarray, n: int | None = None) -> np.ndarray:
    """Check softmax probabilities (N, C): finite, non-negative, C >= 2. Returns float64."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise InputError(f"probs must be a 2-D array (N, C) with C >= 2, got shape {p.shape}")
    if n is not None and p.shape[0] != n:
        raise InputError(f"probs have {p.shape[0]} rows but there are {n} examples")
    if not np.isfinite(p).all() or (p < 0).any():
        raise InputError("probs must be finite and non-negative")
    return p


def confidence(probs: np.ndarray, kind: str = "maxprob") -> np.ndarray:
    """Prediction confidence (N,) in [0, 1] from softmax probabilities (N, C); higher = surer.

    maxprob: the largest probability. margin: top-1 minus top-2. entropy: 1 - H(p)/log C
    (the official code plugs in raw entropy, which inverts the meaning; we do not).
    """
    p = validate_probs(probs)
    if kind == "maxprob":
        conf = p.max(axis=1)
    elif kind == "margin":
        top2 = np.partition(p, p.shape[1] - 2, axis=1)[:, -2:]
        conf = top2[:, 1] - top2[:, 0]
    elif kind == "entropy":
        with np.errstate(divide="ignore", invalid="ignore"):
            h = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)
        conf = 1.0 - h / np.log(p.shape[1])
    else:
        raise InputError(f"unknown confidence {kind!r}; choose one of {', '.join(CONFIDENCE_KINDS)}")
    return np.clip(conf, 0.0, 1.0)
