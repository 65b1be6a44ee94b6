"""2-D toy data for teaching, and a step-by-step trace of the real Prune4ReL greedy.

    toy = make_toy(n=240, classes=3, noise_rate=0.3, seed=0)      # points, labels, probs
    g = toy_graph(toy.x, tau=0.5)                                 # sparse similarity graph
    tr = greedy_trace(g, toy.probs, budget=30, eta=1.0)           # picks, C(x) per step, F per step

The trace runs the library's own selection (`prune_core.select("prune4rel", graph=...)`)
once for the whole budget; since greedy picks are nested, the state after step t is the
prefix of length t: C(x; S_t) comes from `prune4rel.neighbourhood_confidence` on that
prefix and F(S_t) is the running sum of the selection's marginal gains (checked against
`prune4rel.objective`).

On the plane the similarity is a Gaussian kernel s = exp(-d^2 / (2 h^2)) in (0, 1]
(neighbours when s > tau) rather than the cosine of the real embeddings: cosine between
2-D points only measures their angle from the origin. Everything after the graph is the
code the app runs on real data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .errors import InputError


@dataclass
class ToyData:
    """x (N, 2) float; y_clean, y_noisy (N,) int64; is_noisy (N,) bool; probs (N, C) from a
    logistic regression fitted on the noisy labels (the toy's "warm-up model")."""

    x: np.ndarray
    y_clean: np.ndarray
    y_noisy: np.ndarray
    is_noisy: np.ndarray
    probs: np.ndarray
    num_classes: int


def make_toy(n: int = 240, classes: int = 3, noise_rate: float = 0.3, spread: float = 1.0,
             seed: int = 0) -> ToyData:
    """Gaussian blobs on a circle of radius 4 with `noise_rate` symmetric label noise.

    spread: the blobs' standard deviation (larger = more overlap).
    """
    from sklearn.linear_model import LogisticRegression

    from .noise import inject_noise

    if not 2 <= int(classes) <= 10:
        raise InputError(f"classes must be in 2..10, got {classes}")
    if int(n) < 2 * int(classes):
        raise InputError(f"n must be at least 2 per class ({2 * int(classes)}), got {n}")
    if spread <= 0:
        raise InputError(f"spread must be positive, got {spread}")
    rng = np.random.default_rng(seed)
    angles = 2 * np.pi * np.arange(classes) / classes + np.pi / 2
    centres = 4.0 * np.column_stack([np.cos(angles), np.sin(angles)])
    y = np.arange(int(n)) % int(classes)
    rng.shuffle(y)
    x = centres[y] + rng.normal(scale=spread, size=(int(n), 2))
    y_noisy = inject_noise(y, "sym", noise_rate, num_classes=classes, seed=seed)
    model = LogisticRegression(C=1.0, max_iter=500).fit(x, y_noisy)
    probs = np.zeros((int(n), int(classes)))
    probs[:, model.classes_] = model.predict_proba(x)
    return ToyData(x=x, y_clean=y.astype(np.int64), y_noisy=y_noisy, is_noisy=y_noisy != y,
                   probs=probs, num_classes=int(classes))


def toy_graph(x: np.ndarray, tau: float = 0.5, bandwidth: float | None = None) -> sp.csr_matrix:
    """Similarity graph of 2-D points: s = exp(-d^2 / (2 h^2)), edges where s > tau, unit diagonal.

    bandwidth h: default the median distance to the 5th nearest neighbour. Dense O(N^2):
    for toy sizes (up to a few thousand points).
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise InputError(f"x must be (N, D) with N >= 2, got shape {x.shape}")
    if not 0.0 <= float(tau) < 1.0:
        raise InputError(f"tau must be in [0, 1), got {tau}")
    d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    if bandwidth is None:
        kth = np.sort(d2, axis=1)[:, min(5, len(x) - 1)]
        bandwidth = float(np.sqrt(np.median(kth))) or 1.0
    s = np.exp(-d2 / (2.0 * float(bandwidth) ** 2))
    s[s <= tau] = 0.0
    np.fill_diagonal(s, 1.0)
    return sp.csr_matrix(s.astype(np.float32))


@dataclass
class GreedyTrace:
    """The greedy run step by step (budget b, N points).

    picks (b,) pick order; gains (b,) marginal gain of each pick in F; scores (b,) the greedy
    score; objective (b+1,) F(S_t) for t = 0..b; cover (b+1, N) C(x; S_t) after t picks;
    conf (N,) confidences; neighbours: list of b arrays, the graph neighbours of each pick.
    """

    picks: np.ndarray
    gains: np.ndarray
    scores: np.ndarray
    objective: np.ndarray
    cover: np.ndarray
    conf: np.ndarray
    neighbours: list
    eta: float
    mode: str

    @property
    def budget(self) -> int:
        return int(len(self.picks))


def greedy_trace(graph, probs: np.ndarray, budget: int, eta: float = 1.0, mode: str = "exact",
                 confidence: str = "maxprob", labels=None, balance: str = "none") -> GreedyTrace:
    """Trace the real Prune4ReL greedy for `budget` picks (see the module docstring)."""
    from .prune4rel import neighbourhood_confidence
    from .prune4rel import objective as objective_of
    from .scores import confidence as confidence_of
    from .selection import select

    probs = np.asarray(probs)
    n = probs.shape[0]
    if not 1 <= int(budget) <= n:
        raise InputError(f"budget must be in 1..{n}, got {budget}")
    sel = select("prune4rel", budget=int(budget), probs=probs, graph=graph, labels=labels,
                 eta=eta, mode=mode, confidence=confidence, balance=balance)
    conf = confidence_of(probs, confidence)
    picks = sel.indices
    cover = np.zeros((len(picks) + 1, n))
    for t in range(1, len(picks) + 1):
        cover[t] = neighbourhood_confidence(graph, conf, picks[:t])
    obj = np.concatenate([[0.0], np.cumsum(sel.gains)])
    # The running sum of gains is F(S_t); check it once against a direct evaluation.
    direct = objective_of(graph, conf, picks, eta)
    if not np.isclose(obj[-1], direct, rtol=1e-6, atol=1e-6):
        raise AssertionError(f"trace objective {obj[-1]} differs from F(S) = {direct}")
    g = sp.csr_matrix(graph)
    neighbours = [g.indices[g.indptr[p]:g.indptr[p + 1]].copy() for p in picks]
    return GreedyTrace(picks=picks, gains=np.asarray(sel.gains), scores=np.asarray(sel.scores), objective=obj,
                       cover=cover, conf=conf, neighbours=neighbours, eta=float(eta), mode=mode)
