"""Label-error ranking: noisy examples first, suggested labels, precision/recall."""

import numpy as np
import pandas as pd
import pytest

from prune_core.errors import InputError
from prune_core.graph import build_graph
from prune_core.label_errors import (
    average_precision,
    corrections_frame,
    find_label_issues,
    neighbour_label_distribution,
    ranking_precision_recall,
)
from prune_core.noise import inject_noise


def synthetic(n=600, c=4, noise=0.25, seed=0):
    """Blobs in 16-d; a 'model' that mostly knows the clean class but has partly fitted the noise."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(c, 16)) * 4
    y = np.arange(n) % c
    z = centres[y] + rng.normal(size=(n, 16))
    y_noisy = inject_noise(y, "sym", noise, num_classes=c, seed=seed)
    logits = 3.0 * np.eye(c)[y] + 1.5 * np.eye(c)[y_noisy]  # knows the class, fitted some noise
    memorised = (y_noisy != y) & (rng.random(n) < 0.3)  # and a few wrong labels for good
    logits[memorised, y_noisy[memorised]] += 5.0
    logits += rng.normal(scale=1.0, size=logits.shape)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    return z.astype(np.float32), y, y_noisy, p


def test_noisy_examples_rank_higher_and_get_the_clean_label():
    z, y, y_noisy, p = synthetic()
    g = build_graph(z, k=30, tau="auto")
    df = find_label_issues(p, y_noisy, graph=g, y_clean=y)
    noisy = y_noisy != y
    assert len(df) == len(y) and list(df["rank"]) == list(range(len(y)))
    assert df["score"].is_monotonic_decreasing
    by_index = df.set_index("index").loc[np.arange(len(y))]
    assert by_index["score"][noisy].mean() > by_index["score"][~noisy].mean() + 0.3
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(noisy, by_index["score"]) > 0.95
    top = df.head(int(noisy.sum()))
    assert top["is_noisy"].mean() > 0.85
    flagged = df[df["is_noisy"] & df["is_issue"]]
    assert len(flagged) > 0.6 * noisy.sum()
    assert (flagged["suggested_label"] == y[flagged["index"]]).mean() > 0.9
    # The neighbour vote helps: combined beats the model alone.
    model_only = find_label_issues(p, y_noisy, alpha=1.0)
    assert average_precision(df["index"], noisy) >= average_precision(model_only["index"], noisy)


def test_knn_lists_match_the_graph_vote():
    z, y, y_noisy, p = synthetic(200)
    g = build_graph(z, k=20, tau=0.0)  # every kNN pair is an edge
    q_graph, has = neighbour_label_distribution(y_noisy, 4, graph=g)
    gg = g.tocsr()
    width = int(np.diff(gg.indptr).max())
    ids = np.full((200, width), -1)
    w = np.zeros((200, width))
    for i in range(200):
        cols = gg.indices[gg.indptr[i]:gg.indptr[i + 1]]
        vals = gg.data[gg.indptr[i]:gg.indptr[i + 1]]
        ids[i, :len(cols)] = cols
        w[i, :len(cols)] = vals
    q_knn, has2 = neighbour_label_distribution(y_noisy, 4, knn_ids=ids, knn_weights=w)
    np.testing.assert_allclose(q_graph, q_knn, atol=1e-6)
    assert has.all() and has2.all()


def test_without_neighbours_the_model_decides():
    p = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    df = find_label_issues(p, np.array([0, 0, 1]))
    assert list(df["index"]) == [1, 2, 0]
    assert list(df["suggested_label"]) == [1, 0, 0]
    assert df["neighbour_disagreement"].isna().all() and (df["neighbour_label"] == -1).all()


def test_precision_recall():
    ranking = np.array([4, 2, 0, 1, 3])
    is_noisy = np.array([False, False, True, True, True])
    pr = ranking_precision_recall(ranking, is_noisy, [1, 2, 3, 5])
    assert list(pr["precision"]) == [1.0, 1.0, pytest.approx(2 / 3), 0.6]
    assert list(pr["recall"]) == [pytest.approx(1 / 3), pytest.approx(2 / 3), pytest.approx(2 / 3), 1.0]
    default = ranking_precision_recall(ranking, is_noisy)
    assert 3 in set(default["k"]) and default["k"].max() == 5
    assert average_precision(ranking, is_noisy) == pytest.approx((1 + 1 + 3 / 5) / 3)
    with pytest.raises(InputError):
        ranking_precision_recall(ranking, is_noisy, [0])


def test_bad_input():
    with pytest.raises(InputError):
        find_label_issues(np.ones((3, 1)), np.zeros(3, dtype=int))
    with pytest.raises(InputError):
        find_label_issues(np.full((3, 2), 0.5), np.array([0, 1, 2]))
    with pytest.raises(InputError):
        find_label_issues(np.full((3, 2), 0.5), np.array([0, 1]))
    with pytest.raises(InputError):
        find_label_issues(np.full((3, 2), 0.5), np.array([0, 1, 1]), alpha=2)


def test_corrections_frame():
    p = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    df = find_label_issues(p, np.array([0, 0, 1]))
    out = corrections_frame(df, {"1": {"decision": "accept", "label": 1}, "2": {"decision": "reject"},
                                 "0": {"decision": "accept"}})
    assert isinstance(out, pd.DataFrame)
    assert list(out["index"]) == [0, 1] and list(out["corrected_label"]) == [0, 1]
