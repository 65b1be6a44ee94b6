"""Baseline selection methods, registered beside prune4rel in the one registry.

Every method reads the warm-up outputs in `SelectionInputs` (probs (N, C) softmax,
embeddings (N, D), labels (N,) given/noisy labels, losses (N,) CE vs the given label,
forgetting (N,) event counts) and returns a ranking: `budget` distinct indices in pick
order plus the score each pick was ranked by.

Class balance is one explicit policy for all baselines: the default is ``none`` for
every method (so comparisons are uniform), and ``balance="equal"`` or
``balance="proportional"`` applies the same quotas (by noisy label) to any of them.
The official code is inconsistent here (Forgetting is always proportional, SmallLoss
and Moderate ignore the flag, Uniform and GraNd crash); ``balance="proportional"``
reproduces the official Forgetting and Margin/Uncertainty behaviour.

Score-based methods rank with `rank_by_score`: ties go to the lowest index, and the
ranking for a budget is the prefix of the ranking for any larger budget (nested).

| method | score | kept first |
|---|---|---|
| uniform | seeded random permutation | random |
| small_loss | CE loss vs the noisy label | smallest |
| margin | top-1 minus top-2 softmax probability | smallest |
| least_confidence | max softmax probability | smallest |
| entropy | predictive entropy H(p) | largest |
| forgetting | forgetting events (then CE loss) | largest |
| el2n | ||p - onehot(noisy label)||_2 | largest |
| grand | ||p - y||_2 * sqrt(1 + ||z||^2) (last-layer gradient norm) | largest |
| kcenter | distance to the nearest kept example (greedy) | farthest |
| moderate | |d - median(d)|, d = distance to the class median | smallest |
| ccs | EL2N difficulty, stratified coverage sampling | (not nested) |
"""

from __future__ import annotations

import math

import numba
import numpy as np

from .errors import InputError, check_cancel
from .registry import MethodOutput, class_target_sequence, rank_by_score, register_method
from .validation import check_labels, check_probs

CCS_SCORES = ("el2n", "forgetting")


# ---------------------------------------------------------------------------
# Input helpers


def _balance_labels(inputs, balance: str, method: str):
    """The labels to balance on, or None for balance 'none'."""
    if balance == "none":
        return None
    if inputs.labels is None:
        raise InputError(f"{method}: class balance {balance!r} needs labels")
    return np.asarray(inputs.labels, dtype=np.int64)


def _probs(inputs, method: str) -> np.ndarray:
    if inputs.probs is None:
        raise InputError(f"{method} needs probs (softmax probabilities, N x C)")
    return check_probs(inputs.probs, inputs.n)


def _labels(inputs, method: str, num_classes: int | None = None) -> np.ndarray:
    if inputs.labels is None:
        raise InputError(f"{method} needs labels (the given, possibly noisy, labels)")
    y = np.asarray(inputs.labels)
    if y.dtype.kind not in "iu":
        raise InputError(f"{method}: labels must be a 1-D integer array; got dtype {y.dtype}")
    return check_labels(y, f"{method}: labels", num_classes=num_classes)


def _vector(inputs, name: str, method: str) -> np.ndarray:
    value = getattr(inputs, name)
    if value is None:
        raise InputError(f"{method} needs {name}, which was not given")
    v = np.asarray(value)
    if v.ndim != 1 or v.dtype.kind not in "iuf":
        raise InputError(f"{method}: {name} must be a 1-D numeric array of length N, got shape {v.shape}")
    v = v.astype(np.float64)
    if not np.isfinite(v).all():
        raise InputError(f"{method}: {name} has NaN or infinite values")
    return v


def _embeddings(inputs, method: str) -> np.ndarray:
    if inputs.embeddings is None:
        raise InputError(f"{method} needs embeddings (N x D features)")
    z = np.asarray(inputs.embeddings)
    if z.ndim != 2 or z.shape[1] < 1 or z.dtype.kind not in "iuf":
        raise InputError(f"{method}: embeddings must be a 2-D numeric array (N, D), got shape {z.shape}")
    if not np.isfinite(z).all():
        raise InputError(f"{method}: embeddings have NaN or infinite values")
    return z


def _ranked(score: np.ndarray, budget: int, labels, balance: str, descending: bool) -> MethodOutput:
    """MethodOutput of a score ranking (ties to the lowest index) under a balance policy."""
    idx = rank_by_score(score, budget, labels, balance, descending=descending)
    return MethodOutput(idx, scores=np.asarray(score, dtype=np.float64)[idx])


# ---------------------------------------------------------------------------
# Per-example scores (public: the app shows them beside a selection)


def ce_loss(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(N,) cross-entropy -log p[label] from softmax probs (N, C); p is floored at the smallest float."""
    p = probs[np.arange(labels.shape[0]), labels]
    return -np.log(np.maximum(p, np.finfo(np.float64).tiny))


def margin_score(probs: np.ndarray) -> np.ndarray:
    """(N,) top-1 minus top-2 softmax probability."""
    top2 = np.partition(probs, probs.shape[1] - 2, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def entropy_score(probs: np.ndarray) -> np.ndarray:
    """(N,) predictive entropy -sum p log p (natural log; 0 log 0 = 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(probs > 0, probs * np.log(probs), 0.0).sum(axis=1)


def el2n_score(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(N,) EL2N: ||p - onehot(label)||_2 with softmax probs (N, C) and labels (N,)."""
    err = np.array(probs, dtype=np.float64, copy=True)
    err[np.arange(labels.shape[0]), labels] -= 1.0
    return np.sqrt((err * err).sum(axis=1))


def grand_score(probs: np.ndarray, labels: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
    """(N,) last-layer GraNd: the norm of the CE gradient w.r.t. the last linear layer.

    With logits W z + b, dL/dW = (p - y) z^T and dL/db = p - y, so the norm of the
    whole gradient is ||p - y||_2 * sqrt(1 + ||z||_2^2).
    """
    z = np.asarray(embeddings, dtype=np.float64)
    return el2n_score(probs, labels) * np.sqrt(1.0 + np.einsum("ij,ij->i", z, z))


def moderate_score(embeddings: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Moderate-DS distances: (|d - median(d)| (N,), d (N,)).

    d is the Euclidean distance of each example to the coordinate-wise median embedding
    of its (noisy-label) class; median(d) is taken over all N examples.
    """
    z = np.asarray(embeddings, dtype=np.float64)
    d = np.empty(z.shape[0], dtype=np.float64)
    order = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    for members in np.split(order, bounds):
        if members.size:
            centre = np.median(z[members], axis=0)
            diff = z[members] - centre
            d[members] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    return np.abs(d - np.median(d)), d


# ---------------------------------------------------------------------------
# Uniform and score-ranking baselines


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
    labels = _balance_labels(inputs, balance, "uniform")
    return MethodOutput(rank_by_score(score, budget, labels, balance, descending=False))


@register_method(
    "small_loss",
    "SmallLoss: keep the smallest cross-entropy loss vs the noisy label (likely clean); default balance none",
    needs=("labels",),
    nested=True,
)
def _small_loss(inputs, budget, seed, progress, cancel, balance):
    """Keep the examples with the SMALLEST CE loss against the given (noisy) label.

    Uses `losses` when given, else -log p[label] from `probs`. Ties to the lowest index.
    """
    if inputs.losses is not None:
        loss = _vector(inputs, "losses", "small_loss")
    elif inputs.probs is not None:
        p = _probs(inputs, "small_loss")
        loss = ce_loss(p, _labels(inputs, "small_loss", p.shape[1]))
    else:
        raise InputError("small_loss needs losses, or probs and labels to compute them")
    return _ranked(loss, budget, _balance_labels(inputs, balance, "small_loss"), balance, descending=False)


@register_method(
    "margin",
    "Margin (Coleman et al.): keep the smallest top-1 minus top-2 softmax margin (hardest first); default balance none",
    needs=("probs",),
    nested=True,
)
def _margin(inputs, budget, seed, progress, cancel, balance):
    """Keep the SMALLEST margin p_top1 - p_top2 (most uncertain first)."""
    score = margin_score(_probs(inputs, "margin"))
    return _ranked(score, budget, _balance_labels(inputs, balance, "margin"), balance, descending=False)


@register_method(
    "least_confidence",
    "LeastConfidence: keep the smallest max softmax probability (softmax, not raw logits); default balance none",
    needs=("probs",),
    nested=True,
)
def _least_confidence(inputs, budget, seed, progress, cancel, balance):
    """Keep the SMALLEST max softmax probability.

    The official Uncertainty baseline ranks the raw max logit, which is not comparable
    across examples (logits are shift-invariant under softmax); we use the probability.
    """
    score = _probs(inputs, "least_confidence").max(axis=1)
    return _ranked(score, budget, _balance_labels(inputs, balance, "least_confidence"), balance, descending=False)


@register_method(
    "entropy",
    "Entropy: keep the highest predictive entropy of the softmax; default balance none",
    needs=("probs",),
    nested=True,
)
def _entropy(inputs, budget, seed, progress, cancel, balance):
    """Keep the LARGEST entropy -sum p log p."""
    score = entropy_score(_probs(inputs, "entropy"))
    return _ranked(score, budget, _balance_labels(inputs, balance, "entropy"), balance, descending=True)


@register_method(
    "forgetting",
    "Forgetting (Toneva et al.): keep the most forgetting events, ties by higher loss; default balance none "
    "(the official code is always proportional: pass balance='proportional' for parity)",
    needs=("forgetting",),
    nested=True,
)
def _forgetting(inputs, budget, seed, progress, cancel, balance):
    """Keep the MOST forgetting events (correct -> incorrect w.r.t. the noisy label in warm-up).

    Ties are broken by the higher CE loss vs the noisy label (from `losses`, else from
    probs and labels; skipped when neither is given), then by the lowest index. The loss
    tie-break also puts never-learned examples (0 events, high loss), which Toneva et al.
    count as forgotten infinitely often, ahead of well-learned ones with 0 events.
    """
    counts = _vector(inputs, "forgetting", "forgetting")
    if (counts < 0).any():
        raise InputError("forgetting: counts must be non-negative")
    if inputs.losses is not None:
        loss = _vector(inputs, "losses", "forgetting")
    elif inputs.probs is not None and inputs.labels is not None:
        p = _probs(inputs, "forgetting")
        loss = ce_loss(p, _labels(inputs, "forgetting", p.shape[1]))
    else:
        loss = np.zeros(inputs.n)
    # Rank position under (counts desc, loss desc, index asc) as the score to rank by.
    order = np.lexsort((np.arange(inputs.n), -loss, -counts))
    position = np.empty(inputs.n, dtype=np.float64)
    position[order] = np.arange(inputs.n)
    idx = rank_by_score(position, budget, _balance_labels(inputs, balance, "forgetting"), balance, descending=False)
    return MethodOutput(idx, scores=counts[idx])


@register_method(
    "el2n",
    "EL2N (Paul et al.): keep the largest ||softmax - onehot(noisy label)||_2; default balance none",
    needs=("probs", "labels"),
    nested=True,
)
def _el2n(inputs, budget, seed, progress, cancel, balance):
    """Keep the LARGEST error-vector norm ||p - onehot(y)||_2 (y the noisy label)."""
    p = _probs(inputs, "el2n")
    score = el2n_score(p, _labels(inputs, "el2n", p.shape[1]))
    return _ranked(score, budget, _balance_labels(inputs, balance, "el2n"), balance, descending=True)


@register_method(
    "grand",
    "GraNd (Paul et al.): keep the largest last-layer CE gradient norm ||p - y|| * sqrt(1 + ||z||^2); "
    "default balance none",
    needs=("probs", "labels", "embeddings"),
    nested=True,
)
def _grand(inputs, budget, seed, progress, cancel, balance):
    """Keep the LARGEST norm of the CE gradient w.r.t. the last layer (weights and bias).

    Computed from the end-of-warm-up probs and embeddings, as in the official code
    (so it is EL2N-like, not the at-initialisation GraNd of the paper).
    """
    p = _probs(inputs, "grand")
    y = _labels(inputs, "grand", p.shape[1])
    score = grand_score(p, y, _embeddings(inputs, "grand"))
    return _ranked(score, budget, _balance_labels(inputs, balance, "grand"), balance, descending=True)


# ---------------------------------------------------------------------------
# k-center greedy


@numba.njit(cache=True, fastmath=True)
def _sq_distances(x, centre, out):
    """out[i] = ||x[i] - centre||^2 in float32 (a plain loop LLVM vectorises)."""
    n, d = x.shape
    for i in range(n):
        s = np.float32(0.0)
        for k in range(d):
            diff = x[i, k] - centre[k]
            s += diff * diff
        out[i] = s


@numba.njit(cache=True)
def _kcenter_steps(t_start, t_end, x, labels, seq, num_classes, selected, mind, picks, scores, state, buf):
    """k-center greedy picks t_start..t_end-1 in place.

    state[0] is the next pick and state[1] its squared distance to the nearest earlier
    pick; mind (N,) is the squared distance of every example to its nearest pick. Each
    pick costs one pass over x (the distances to the new centre, into buf), then one
    over N to update mind and find, per class, the unselected example farthest from all
    picks (ties to the lowest index). Returns the squared covering radius: the largest
    mind over unselected examples after the last pick.
    """
    n = x.shape[0]
    best = np.empty(num_classes, dtype=np.int64)
    bestd = np.empty(num_classes, dtype=np.float64)
    radius = 0.0
    for t in range(t_start, t_end):
        cur = np.int64(state[0])
        picks[t] = cur
        scores[t] = state[1]
        selected[cur] = True
        mind[cur] = 0.0
        for c in range(num_classes):
            best[c] = -1
            bestd[c] = -1.0
        _sq_distances(x, x[cur], buf)
        for i in range(n):
            if selected[i]:
                continue
            if buf[i] < mind[i]:
                mind[i] = buf[i]
            c = labels[i]
            if mind[i] > bestd[c]:
                bestd[c] = mind[i]
                best[c] = i
        radius = 0.0
        for c in range(num_classes):
            if bestd[c] > radius:
                radius = bestd[c]
        if t + 1 < seq.shape[0]:
            nxt = seq[t + 1]
            state[0] = best[nxt]
            state[1] = bestd[nxt]
    return radius


def kcenter_greedy(
    embeddings: np.ndarray,
    budget: int,
    seed: int = 0,
    labels: np.ndarray | None = None,
    balance: str = "none",
    normalize: bool = False,
    progress=None,
    cancel=None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """k-center greedy (Sener & Savarese) with Euclidean distance.

    embeddings (N, D); normalize=True L2-normalises the rows first. The first pick is a
    seeded random point (of the first quota class under balance); each next pick is the
    unselected example farthest from its nearest pick. With balance the class of every
    pick follows `class_target_sequence` and the farthest example of that class is taken
    (distances are to ALL picks, of any class). Memory is O(N): only the (N,)
    min-distance vector is kept, never an N x budget matrix.

    Returns (picks (budget,) int64, scores (budget,) distance of each pick to the nearest
    earlier pick (inf for the first), radius: the max distance of any example to its
    nearest pick after the last pick).
    """
    z = np.asarray(embeddings)
    if normalize:
        z = z.astype(np.float64)
        norms = np.linalg.norm(z, axis=1, keepdims=True)
        z = z / np.where(norms > 0, norms, 1.0)
    x = np.ascontiguousarray(z, dtype=np.float32)  # distances in float32: half the memory traffic
    n = x.shape[0]
    seq = class_target_sequence(labels, budget, balance) if labels is not None else None
    if seq is None:
        cls = np.zeros(n, dtype=np.int64)
        seq = np.zeros(budget, dtype=np.int64)
    else:
        cls = np.ascontiguousarray(labels, dtype=np.int64)
    num_classes = int(cls.max()) + 1
    rng = np.random.default_rng(seed)
    first = int(rng.choice(np.flatnonzero(cls == seq[0])))
    selected = np.zeros(n, dtype=np.bool_)
    mind = np.full(n, np.inf)
    picks = np.empty(budget, dtype=np.int64)
    scores = np.empty(budget, dtype=np.float64)
    state = np.array([first, np.inf], dtype=np.float64)
    buf = np.empty(n, dtype=np.float32)
    chunk = max(1, budget // 100)
    radius = 0.0
    for start in range(0, budget, chunk):
        check_cancel(cancel)
        end = min(budget, start + chunk)
        radius = _kcenter_steps(start, end, x, cls, seq, num_classes, selected, mind, picks, scores, state, buf)
        if progress:
            progress(end / budget, f"kcenter: {end}/{budget} picked", {})
    return picks, np.sqrt(scores), math.sqrt(radius)


@register_method(
    "kcenter",
    "kCenterGreedy (Sener & Savarese): greedily keep the example farthest from the kept ones "
    "(Euclidean, raw embeddings unless normalize=True, seeded start); default balance none",
    needs=("embeddings",),
    nested=True,
    defaults={"normalize": False},
)
def _kcenter(inputs, budget, seed, progress, cancel, balance, normalize):
    """k-center greedy on raw (default, as in the official code) or L2-normalised embeddings.

    Keeps the FARTHEST example from the kept set at each step; see `kcenter_greedy`.
    """
    z = _embeddings(inputs, "kcenter")
    labels = _balance_labels(inputs, balance, "kcenter")
    picks, scores, radius = kcenter_greedy(z, budget, seed, labels, balance, bool(normalize), progress, cancel)
    return MethodOutput(picks, scores=scores, extra={"radius": radius})


@register_method(
    "moderate",
    "Moderate-DS (Xia et al.): keep distances to the class median closest to the median distance; "
    "default balance none",
    needs=("embeddings", "labels"),
    nested=True,
)
def _moderate(inputs, budget, seed, progress, cancel, balance):
    """Keep examples of moderate difficulty.

    d_i = ||z_i - median of z over i's noisy-label class||_2 (coordinate-wise median);
    keep the SMALLEST |d_i - median over all examples of d|, ties to the lowest index.
    Ranking by this gap (not the official middle band of global distance ranks) keeps
    the subsets nested; the kept set is the same middle band up to ties.
    """
    z = _embeddings(inputs, "moderate")
    y = _labels(inputs, "moderate", inputs.num_classes)
    gap, _ = moderate_score(z, y)
    return _ranked(gap, budget, _balance_labels(inputs, balance, "moderate"), balance, descending=False)


# ---------------------------------------------------------------------------
# CCS


def _ccs_one(score: np.ndarray, members: np.ndarray, quota: int, beta: float, strata: int,
             rng: np.random.Generator) -> np.ndarray:
    """CCS within one group: members (int64 indices), their scores, pick `quota` of them.

    Drops the hardest floor(beta * m) (highest score, ties to the higher index), but never
    so many that fewer than `quota` remain; splits the rest's score range into `strata`
    equal-width bins; visits the non-empty bins from the smallest up, giving each
    min(its size, floor(what is left / bins left)) random examples.
    """
    m = members.size
    if quota <= 0:
        return np.empty(0, dtype=np.int64)
    s = score[members]
    # Easiest first (score ascending, ties to the lowest index).
    order = np.lexsort((members, s))
    n_cut = min(int(math.floor(beta * m)), m - quota)
    keep = order[: m - n_cut]
    ks = s[keep]
    lo, hi = float(ks.min()), float(ks.max())
    if hi > lo:
        bins = np.minimum(((ks - lo) / (hi - lo) * strata).astype(np.int64), strata - 1)
    else:
        bins = np.zeros(ks.size, dtype=np.int64)
    sizes = np.bincount(bins, minlength=strata)
    nonempty = np.flatnonzero(sizes)
    visit = nonempty[np.argsort(sizes[nonempty], kind="stable")]  # smallest first, ties by bin
    left = quota
    out = []
    for j, b in enumerate(visit):
        share = left // (visit.size - j)
        take = min(int(sizes[b]), share)
        if take:
            pool = keep[bins == b]
            out.append(members[rng.choice(pool, size=take, replace=False)])
            left -= take
    picked = np.concatenate(out) if out else np.empty(0, dtype=np.int64)
    assert picked.size == quota
    return picked.astype(np.int64)


@register_method(
    "ccs",
    "CCS (Zheng et al.): drop the hardest beta fraction by EL2N, then sample the budget evenly over "
    "equal-width score strata (not nested); default balance none",
    needs=("labels",),
    nested=False,
    defaults={"beta": 0.1, "score": "el2n", "strata": 50},
)
def _ccs(inputs, budget, seed, progress, cancel, balance, beta, score, strata):
    """Coverage-centric coreset selection.

    1. Difficulty: `score` = "el2n" (default: ||p - onehot(noisy label)||, from probs)
       or "forgetting" (the forgetting counts); higher = harder.
    2. Hard cutoff: drop the hardest floor(beta * N) examples (beta in [0, 1)); if fewer
       than `budget` would remain, drop only N - budget.
    3. Split the remaining score range into `strata` equal-width strata; visit the
       non-empty ones from the smallest up, each taking min(its size, floor(budget left /
       strata left)) examples, drawn at random (seeded) within the stratum.

    With balance "equal" or "proportional", the class quotas are those of
    `class_target_sequence` and steps 2-3 run within each noisy-label class with its
    quota; picks are then interleaved in the quota order. A smaller budget is not a
    prefix of a larger one (nested=False). Picks are returned stratum by stratum.
    """
    if score not in CCS_SCORES:
        raise InputError(f"ccs: unknown score {score!r}; choose one of {', '.join(CCS_SCORES)}")
    try:
        beta = float(beta)
        strata_ok = int(strata) == strata and int(strata) >= 1
    except (TypeError, ValueError):
        raise InputError("ccs: beta must be a number and strata a positive integer") from None
    if not (0.0 <= beta < 1.0):
        raise InputError(f"ccs: beta must be in [0, 1), got {beta}")
    if not strata_ok:
        raise InputError(f"ccs: strata must be a positive integer, got {strata!r}")
    strata = int(strata)
    if score == "el2n":
        p = _probs(inputs, "ccs")
        difficulty = el2n_score(p, _labels(inputs, "ccs", p.shape[1]))
    else:
        difficulty = _vector(inputs, "forgetting", "ccs")
    rng = np.random.default_rng(seed)
    labels = _balance_labels(inputs, balance, "ccs")
    if labels is None:
        picks = _ccs_one(difficulty, np.arange(inputs.n, dtype=np.int64), budget, beta, strata, rng)
    else:
        seq = class_target_sequence(labels, budget, balance)
        k = int(labels.max()) + 1
        quotas = np.bincount(seq, minlength=k)
        per_class = [
            _ccs_one(difficulty, np.flatnonzero(labels == c).astype(np.int64), int(quotas[c]), beta, strata, rng)
            for c in range(k)
        ]
        # The t-th pick comes from class seq[t]: its next pick in that class's order.
        pos = np.argsort(seq, kind="stable")
        picks = np.empty(budget, dtype=np.int64)
        picks[pos] = np.concatenate(per_class)
    return MethodOutput(picks, scores=difficulty[picks], extra={"score": score})
