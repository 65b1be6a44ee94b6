"""Rank training examples by how likely their given label is wrong, and suggest a label.

Two pieces of evidence, both per example i with given label y_i:

- the warm-up model: p_i, its softmax (N, C); disagreement 1 - p_i[y_i];
- the neighbours: q_i, the similarity-weighted share of i's graph neighbours (self
  excluded) carrying each given label; disagreement 1 - q_i[y_i]. An example without
  neighbours has no vote: q_i = p_i.

The combined distribution m_i = alpha * p_i + (1 - alpha) * q_i gives

- score = 1 - m_i[y_i] in [0, 1] (higher = more likely a label error),
- suggested label = argmax m_i, with confidence m_i[suggested].

Out-of-sample probabilities are better (cleanlab's advice); warm-up probabilities taken
before the net memorises the noise (the point of a short warm-up) work well in practice,
and the neighbour vote corrects the model where it has already fitted a wrong label.

    issues = find_label_issues(probs, labels, graph=g)       # DataFrame, most suspect first
    ranking_precision_recall(issues["index"], is_noisy, ks=[50, 100, 200])
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .errors import InputError
from .validation import check_labels, check_probs, label_values_of


def _check(probs, labels, num_classes=None) -> tuple[np.ndarray, np.ndarray, int]:
    """(probs (N, C) float64, labels (N,) int64, C), checked by the shared input layer (never renormalised)."""
    p = check_probs(probs, num_classes=None if num_classes is None else int(num_classes))
    y = np.asarray(labels)
    if y.dtype.kind not in "iu":
        raise InputError(f"labels must be integers, got dtype {y.dtype}")
    c = p.shape[1]
    return p, check_labels(y, "labels", num_classes=c, n=len(p)), c


def neighbour_label_distribution(labels: np.ndarray, num_classes: int, graph=None, knn_ids=None,
                                 knn_weights=None) -> tuple[np.ndarray, np.ndarray]:
    """(q (N, C) weighted label shares of each example's neighbours, has_neighbours (N,) bool).

    graph: CSR (N, N) similarity weights (the diagonal is ignored); or knn_ids (N, k) with
    optional knn_weights (N, k) (default 1; ids < 0 and self entries are ignored).
    """
    y = np.asarray(labels, dtype=np.int64)
    n = len(y)
    if graph is not None:
        g = sp.csr_matrix(graph, dtype=np.float64)
        if g.shape != (n, n):
            raise InputError(f"graph shape {g.shape} does not match N={n}")
        g = g.tolil()
        g.setdiag(0.0)
        g = g.tocsr()
        g.eliminate_zeros()
    elif knn_ids is not None:
        ids = np.asarray(knn_ids, dtype=np.int64)
        if ids.ndim != 2 or ids.shape[0] != n:
            raise InputError(f"knn_ids must be (N={n}, k), got shape {ids.shape}")
        w = np.ones(ids.shape, dtype=np.float64) if knn_weights is None else np.asarray(knn_weights, dtype=np.float64)
        if w.shape != ids.shape:
            raise InputError(f"knn_weights shape {w.shape} does not match knn_ids {ids.shape}")
        rows = np.repeat(np.arange(n), ids.shape[1])
        keep = (ids.ravel() >= 0) & (ids.ravel() != rows) & np.isfinite(w.ravel()) & (w.ravel() > 0)
        g = sp.csr_matrix((w.ravel()[keep], (rows[keep], ids.ravel()[keep])), shape=(n, n))
    else:
        return np.zeros((n, num_classes)), np.zeros(n, dtype=bool)
    onehot = sp.csr_matrix((np.ones(n), (np.arange(n), y)), shape=(n, num_classes))
    votes = np.asarray((g @ onehot).todense())
    total = votes.sum(axis=1, keepdims=True)
    has = total[:, 0] > 0
    q = np.divide(votes, total, out=np.zeros_like(votes), where=total > 0)
    return q, has


def find_label_issues(probs, labels, graph=None, knn_ids=None, knn_weights=None, alpha: float = 0.5,
                      num_classes: int | None = None, y_clean=None) -> pd.DataFrame:
    """Rank examples by how likely their given label is wrong (most suspect first).

    probs: (N, C) warm-up softmax; labels: (N,) given labels; graph: CSR (N, N) similarity
    graph, or knn_ids (N, k) (+ knn_weights) for the neighbour vote (neither: model only).
    alpha: weight of the model (1 - alpha for the neighbours), in [0, 1].
    y_clean: optional ground truth, adds the column ``is_noisy``.

    Returns a DataFrame, one row per example sorted by ``score`` (ties by index), with
    columns: rank, index, given_label, suggested_label, confidence, score,
    model_disagreement, neighbour_disagreement, predicted_label (model argmax),
    neighbour_label (vote argmax, -1 without neighbours), n_neighbours, is_issue
    (suggested != given) [, is_noisy].
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise InputError(f"alpha must be in [0, 1], got {alpha}")
    p, y, c = _check(probs, labels, num_classes)
    n = len(y)
    q, has = neighbour_label_distribution(y, c, graph, knn_ids, knn_weights)
    q = np.where(has[:, None], q, p)
    m = alpha * p + (1.0 - alpha) * q
    rows = np.arange(n)
    model_dis = 1.0 - p[rows, y]
    neigh_dis = 1.0 - q[rows, y]
    score = 1.0 - m[rows, y]
    suggested = m.argmax(axis=1)
    if graph is not None:
        g = sp.csr_matrix(graph)
        degree = np.diff(g.indptr) - (g.diagonal() != 0)
    elif knn_ids is not None:
        ids = np.asarray(knn_ids)
        degree = ((ids >= 0) & (ids != rows[:, None])).sum(axis=1)
    else:
        degree = np.zeros(n, dtype=np.int64)
    df = pd.DataFrame({
        "index": rows,
        "given_label": y,
        "suggested_label": suggested,
        "confidence": m[rows, suggested],
        "score": score,
        "model_disagreement": model_dis,
        "neighbour_disagreement": np.where(has, neigh_dis, np.nan),
        "predicted_label": p.argmax(axis=1),
        "neighbour_label": np.where(has, q.argmax(axis=1), -1),
        "n_neighbours": degree.astype(np.int64),
        "is_issue": suggested != y,
    })
    if y_clean is not None:
        yc = np.asarray(y_clean)
        if yc.shape != y.shape:
            raise InputError(f"y_clean has shape {yc.shape}, labels {y.shape}")
        df["is_noisy"] = yc != y
    order = np.lexsort((rows, -score))
    df = df.iloc[order].reset_index(drop=True)
    df.insert(0, "rank", np.arange(n))
    return df


def ranking_precision_recall(ranking, is_noisy, ks=None) -> pd.DataFrame:
    """Precision and recall of the top-k of a ranking against the known noisy examples.

    ranking: example indices, most suspect first (e.g. ``find_label_issues(...)["index"]``).
    is_noisy: (N,) bool ground truth. ks: list of k (default: 10 points up to N, plus the
    number of noisy examples). precision@k = noisy in top k / k; recall@k = noisy in top k /
    all noisy. Returns a DataFrame with columns k, precision, recall, noisy_found.
    """
    r = np.asarray(ranking, dtype=np.int64)
    noisy = np.asarray(is_noisy, dtype=bool)
    n = len(noisy)
    if r.ndim != 1 or (r.size and (r.min() < 0 or r.max() >= n)):
        raise InputError(f"ranking must be 1-D indices in 0..{n - 1}")
    total = int(noisy.sum())
    if ks is None:
        ks = sorted({max(1, int(round(f * len(r)))) for f in np.linspace(0.1, 1.0, 10)}
                    | ({min(total, len(r))} if total else set()))
    hits = np.cumsum(noisy[r])
    out = []
    for k in ks:
        k = int(k)
        if k < 1 or k > len(r):
            raise InputError(f"k must be in 1..{len(r)}, got {k}")
        found = int(hits[k - 1])
        out.append({"k": k, "precision": found / k, "recall": found / total if total else float("nan"),
                    "noisy_found": found})
    return pd.DataFrame(out)


def average_precision(ranking, is_noisy) -> float:
    """Average precision of a ranking (mean precision at the rank of each noisy example)."""
    r = np.asarray(ranking, dtype=np.int64)
    noisy = np.asarray(is_noisy, dtype=bool)[r]
    if not noisy.any():
        return float("nan")
    hits = np.cumsum(noisy)
    return float((hits[noisy] / (np.flatnonzero(noisy) + 1)).mean())


def corrections_frame(issues: pd.DataFrame, decisions: dict, label_values=None) -> pd.DataFrame:
    """Accepted corrections as a DataFrame: index, given_label, corrected_label, confidence, score.

    decisions: {index (int or str): {"decision": "accept"|"reject", "label": int (optional)}}.
    The corrected label is the decision's label, else the suggested one. label_values: the
    dataset's original label values (`Dataset.label_values`, (C,)) when its labels were mapped
    to contiguous ids; both label columns are then written in those values.
    """
    by_index = issues.set_index("index")
    rows = []
    for key, d in sorted(decisions.items(), key=lambda kv: int(kv[0])):
        if d.get("decision") != "accept":
            continue
        i = int(key)
        if i not in by_index.index:
            continue
        r = by_index.loc[i]
        label = int(d["label"]) if d.get("label") is not None else int(r["suggested_label"])
        rows.append({"index": i, "given_label": int(r["given_label"]), "corrected_label": label,
                     "confidence": float(r["confidence"]), "score": float(r["score"])})
    out = pd.DataFrame(rows, columns=["index", "given_label", "corrected_label", "confidence", "score"])
    if label_values is not None and len(out):
        for column in ("given_label", "corrected_label"):
            out[column] = label_values_of(out[column].to_numpy(), label_values)
    return out
