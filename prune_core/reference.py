"""Plain dense re-implementations of the greedy rules, for tests and benchmarks only.

They follow the definitions literally (no graph, no heap, no laziness) so the fast
sparse implementation in `prune4rel.py` can be checked against them.
"""

from __future__ import annotations

import time

import numpy as np

from .registry import class_target_sequence


def _tanh_increase(base, delta):
    """tanh(base + delta) - tanh(base), accurate when saturated (same formula as the kernel)."""
    e_base = np.exp(-2.0 * base)
    e_top = e_base * np.exp(-2.0 * delta)
    return 2.0 * e_base * -np.expm1(-2.0 * delta) / ((1.0 + e_top) * (1.0 + e_base))


def _argmax_lowest(score: np.ndarray, allowed: np.ndarray) -> int:
    masked = np.where(allowed, score, -np.inf)
    return int(np.argmax(masked))  # numpy argmax returns the first (lowest) index on ties


def dense_official_greedy(embeddings, conf, budget, tau, eta=1.0, labels=None, balance="none",
                          steps: int | None = None, step_times: list | None = None,
                          dot_dtype=np.float32):
    """The released code's loop, in fp32: every step re-scans all N embeddings (O(N D)).

    embeddings (N, D); conf (N,). Returns picks (steps or budget,) int64. Self-weight is 1
    (DESIGN 4.1); other weights are 0.5 + 0.5 cos where that exceeds tau. The unit vectors
    come from `embeddings.normalize_embeddings`, so they are bit-identical to the graph's.
    step_times: if a list is given, time.perf_counter() is appended once after the setup
    and once after every step (for benchmarks: per-step cost without the setup).
    dot_dtype=np.float64 computes the cosines in float64 and rounds them to float32 (the
    same as `graph.range_graph(..., dot_dtype=np.float64)`), for parity checks free of
    BLAS rounding differences; the default is the plain fp32 loop.
    """
    from .embeddings import normalize_embeddings

    z = normalize_embeddings(embeddings)
    if np.dtype(dot_dtype) != np.float32:
        z = z.astype(dot_dtype)
    conf = np.asarray(conf, dtype=np.float64)
    n = z.shape[0]
    seq = class_target_sequence(labels, budget, balance) if labels is not None else None
    cover = np.zeros(n)
    selected = np.zeros(n, dtype=bool)
    picks = []
    if step_times is not None:
        step_times.append(time.perf_counter())
    for t in range(budget if steps is None else min(steps, budget)):
        score = _tanh_increase(cover / eta, conf / eta)
        allowed = ~selected if seq is None else (~selected & (labels == seq[t]))
        p = _argmax_lowest(score, allowed)
        selected[p] = True
        picks.append(p)
        sim = 0.5 + 0.5 * (z @ z[p]).astype(np.float32, copy=False)
        w = np.where(sim > np.float32(tau), sim, np.float32(0.0))
        w[p] = 1.0
        cover += w * conf[p]
        if step_times is not None:
            step_times.append(time.perf_counter())
    return np.array(picks, dtype=np.int64)


def brute_force_greedy(weights, conf, budget, eta=1.0, mode="exact", labels=None, balance="none"):
    """Plain greedy on a dense weight matrix (N, N), recomputing every candidate's score.

    mode 'exact': the true marginal gain of F; 'official': the own-term score.
    Returns (picks (budget,), objective after each pick (budget,)).
    """
    w = np.asarray(weights, dtype=np.float64)
    conf = np.asarray(conf, dtype=np.float64)
    n = w.shape[0]
    seq = class_target_sequence(labels, budget, balance) if labels is not None else None
    cover = np.zeros(n)
    selected = np.zeros(n, dtype=bool)
    picks, curve = [], []
    for t in range(budget):
        if mode == "exact":
            # gain[x] = sum_v tanh((C_v + w[v, x] conf_x)/eta) - tanh(C_v/eta)
            score = _tanh_increase(cover[:, None] / eta, w * conf[None, :] / eta).sum(axis=0)
        else:
            score = _tanh_increase(cover / eta, np.diag(w) * conf / eta)
        allowed = ~selected if seq is None else (~selected & (labels == seq[t]))
        p = _argmax_lowest(score, allowed)
        selected[p] = True
        picks.append(p)
        cover += w[:, p] * conf[p]
        curve.append(np.tanh(cover / eta).sum())
    return np.array(picks, dtype=np.int64), np.array(curve)
