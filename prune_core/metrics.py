"""Metrics of a selection: noise kept, class counts, objective, re-labeling accuracy."""

from __future__ import annotations

import numpy as np

from .prune4rel import neighbourhood_confidence


def noise_rate(y_noisy: np.ndarray, y_clean: np.ndarray | None, subset=None) -> float | None:
    """Share of wrong labels over all examples, or over `subset` (indices); None without truth."""
    if y_clean is None:
        return None
    wrong = np.asarray(y_noisy) != np.asarray(y_clean)
    if subset is not None:
        wrong = wrong[np.asarray(subset)]
    return float(wrong.mean()) if wrong.size else None


def relabel_accuracy(predicted: np.ndarray, y_clean: np.ndarray | None, subset=None) -> float | None:
    """Share of examples whose label after re-labeling equals the ground truth (None without it)."""
    if y_clean is None:
        return None
    right = np.asarray(predicted) == np.asarray(y_clean)
    if subset is not None:
        right = right[np.asarray(subset)]
    return float(right.mean()) if right.size else None


def class_counts(labels: np.ndarray, subset, num_classes: int) -> list[int]:
    """Kept examples per (noisy-label) class."""
    return np.bincount(np.asarray(labels)[np.asarray(subset)], minlength=num_classes).astype(int).tolist()


def selection_metrics(sel, y_noisy, y_clean, num_classes, graph=None, conf=None, eta=1.0, cover=None) -> dict:
    """JSON-able summary of a selection.

    sel: a Selection over N examples. y_noisy (N,), y_clean (N,) or None. With a graph (N, N)
    and confidences (N,), or with `cover` (N,) = C(x; S) computed elsewhere (the Ray engine's
    partitions), also the Prune4ReL objective F of the kept subset and the mean
    neighbourhood confidence C(x; S) of all and of the noisy examples.
    """
    idx = sel.indices
    out = {
        "method": sel.method,
        "N": int(sel.n),
        "budget": int(sel.budget),
        "keep_ratio": float(sel.keep_ratio),
        "prune_ratio": float(1.0 - sel.budget / sel.n),
        "noise_rate_data": noise_rate(y_noisy, y_clean),
        "noise_rate_subset": noise_rate(y_noisy, y_clean, idx),
        "class_counts_data": np.bincount(y_noisy, minlength=num_classes).astype(int).tolist(),
        "class_counts_kept": class_counts(y_noisy, idx, num_classes),
        "select_seconds": float(sel.seconds),
    }
    if cover is None and graph is not None and conf is not None:
        cover = neighbourhood_confidence(graph, conf, idx)
    if cover is not None:
        out["objective_F"] = float(np.tanh(cover / eta).sum())
        out["mean_neighbourhood_confidence"] = float(cover.mean())
        out["uncovered_fraction"] = float((cover == 0).mean())
        if y_clean is not None:
            noisy = np.asarray(y_noisy) != np.asarray(y_clean)
            if noisy.any():
                out["mean_neighbourhood_confidence_noisy"] = float(cover[noisy].mean())
    return out
