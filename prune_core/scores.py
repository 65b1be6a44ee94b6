"""Per-example scores computed from warm-up outputs (confidences, difficulty scores)."""

from __future__ import annotations

import numpy as np

from .errors import InputError
from .validation import check_probs

CONFIDENCE_KINDS = ("maxprob", "margin", "entropy")


def validate_probs(probs: np.ndarray, n: int | None = None) -> np.ndarray:
    """Softmax probabilities (N, C) as float64, checked by `validation.check_probs`."""
    return check_probs(probs, n)


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
