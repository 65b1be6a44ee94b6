"""Baseline selection methods: budgets, quotas, seeds, score directions, nesting, k-center, CCS."""

import threading

import numpy as np
import pytest

import prune_core as pc
from prune_core.baselines import el2n_score, grand_score, kcenter_greedy, moderate_score
from prune_core.errors import Cancelled, InputError
from prune_core.registry import class_target_sequence

ALL_METHODS = ["prune4rel", "uniform", "small_loss", "margin", "least_confidence", "entropy",
               "forgetting", "el2n", "grand", "kcenter", "moderate", "ccs"]
BASELINES = [m for m in ALL_METHODS if m != "prune4rel"]
BALANCES = ["none", "equal", "proportional"]
N, C, D, NOISE = 600, 4, 8, 0.4


def make_data(seed=0):
    """Imbalanced 4-class data with 40% symmetric noise (ground truth known).

    Embeddings are Gaussian clusters around the true-class means. The warm-up model has
    learned the TRUE class: probs = 0.5 dirichlet + 0.5 onehot(true), so the CE loss vs the
    noisy label is small for clean examples and large for mislabelled ones.
    """
    rng = np.random.default_rng(seed)
    y_true = rng.choice(C, size=N, p=[0.45, 0.25, 0.2, 0.1])
    flip = rng.random(N) < NOISE
    y = y_true.copy()
    y[flip] = (y_true[flip] + rng.integers(1, C, flip.sum())) % C  # a different class, uniformly
    means = rng.normal(scale=4.0, size=(C, D))
    emb = means[y_true] + rng.normal(size=(N, D))
    probs = 0.5 * rng.dirichlet(np.ones(C), N) + 0.5 * np.eye(C)[y_true]
    losses = -np.log(probs[np.arange(N), y])
    forgetting = rng.integers(0, 3, N) + 2 * flip
    return dict(probs=probs, embeddings=emb, labels=y.astype(np.int64), losses=losses,
                forgetting=forgetting.astype(np.int64)), y_true


DATA, Y_TRUE = make_data()


def run(method, budget, balance="none", seed=0, data=None, **params):
    return pc.select(method, budget=budget, seed=seed, balance=balance, **(data or DATA), **params)


def test_list_methods_has_all_twelve():
    names = pc.list_methods()
    assert set(ALL_METHODS) <= set(names)
    assert len(names) == len(set(names))


@pytest.mark.parametrize("balance", BALANCES)
@pytest.mark.parametrize("method", BASELINES)
def test_budget_distinct_quotas_and_determinism(method, balance):
    labels = DATA["labels"]
    sizes = np.bincount(labels, minlength=C)
    for budget in (1, 97, 480, N):
        sel = run(method, budget, balance, seed=3)
        idx = sel.indices
        assert idx.dtype == np.int64 and idx.shape == (budget,)
        assert len(np.unique(idx)) == budget
        assert idx.min() >= 0 and idx.max() < N
        assert sel.scores is None or sel.scores.shape == (budget,)
        counts = np.bincount(labels[idx], minlength=C)
        if balance == "equal":
            open_classes = counts < sizes
            if open_classes.any():
                assert counts.max() - counts[open_classes].min() <= 1, counts
        elif balance == "proportional":
            assert np.all(np.abs(counts - budget * sizes / N) < 1), counts
        # Same seed, same result.
        again = run(method, budget, balance, seed=3)
        np.testing.assert_array_equal(idx, again.indices)
    assert sel.params["balance"] == balance


def test_budget_480_exhausts_a_class_under_equal():
    # The smallest noisy-label class has fewer than 120 examples: equal quotas must spill over.
    sizes = np.bincount(DATA["labels"], minlength=C)
    assert sizes.min() < 120
    counts = np.bincount(DATA["labels"][run("el2n", 480, "equal").indices], minlength=C)
    assert counts[sizes.argmin()] == sizes.min() and counts.sum() == 480


@pytest.mark.parametrize("method", ["uniform", "kcenter", "ccs"])
def test_seed_changes_randomised_methods(method):
    assert not np.array_equal(run(method, 100, seed=0).indices, run(method, 100, seed=1).indices)


def test_default_balance_is_none_for_all_baselines():
    for method in BASELINES:
        assert pc.select(method, budget=50, **DATA).params["balance"] == "none"


@pytest.mark.parametrize("balance", BALANCES)
@pytest.mark.parametrize("method", [m for m in BASELINES if m != "ccs"])
def test_nested_prefix(method, balance):
    big = run(method, 300, balance, seed=5)
    assert big.nested
    for budget in (1, 60, 150):
        small = run(method, budget, balance, seed=5)
        np.testing.assert_array_equal(big.indices[:budget], small.indices)
    np.testing.assert_array_equal(big.prefix(0.1).indices, run(method, 60, balance, seed=5).indices)


def test_ccs_is_not_nested():
    sel = run("ccs", 300)
    assert not sel.nested
    with pytest.raises(InputError, match="not nested"):
        sel.prefix(0.1)


def test_small_loss_keeps_less_noise_than_uniform():
    noisy = DATA["labels"] != Y_TRUE
    assert 0.3 < noisy.mean() < 0.5
    for budget in (150, 300):
        small = noisy[run("small_loss", budget).indices].mean()
        uniform = noisy[run("uniform", budget).indices].mean()
        assert small < uniform - 0.2, (small, uniform)
        assert small < 0.05


def test_small_loss_from_probs_equals_given_losses():
    data = {k: v for k, v in DATA.items() if k != "losses"}
    for balance in BALANCES:
        np.testing.assert_array_equal(run("small_loss", 200, balance).indices,
                                      run("small_loss", 200, balance, data=data).indices)


def _kept_vs_dropped(method, score, budget=200, larger_kept=True):
    idx = run(method, budget).indices
    kept = np.zeros(N, bool)
    kept[idx] = True
    if larger_kept:
        assert score[kept].min() >= score[~kept].max()
    else:
        assert score[kept].max() <= score[~kept].min()
    return idx


def test_score_directions():
    p, y, z = DATA["probs"], DATA["labels"], DATA["embeddings"]
    srt = np.sort(p, axis=1)
    _kept_vs_dropped("small_loss", DATA["losses"], larger_kept=False)
    _kept_vs_dropped("margin", srt[:, -1] - srt[:, -2], larger_kept=False)
    _kept_vs_dropped("least_confidence", srt[:, -1], larger_kept=False)
    _kept_vs_dropped("entropy", -(p * np.log(p)).sum(1), larger_kept=True)
    _kept_vs_dropped("forgetting", DATA["forgetting"].astype(float), larger_kept=True)
    el2n = np.linalg.norm(p - np.eye(C)[y], axis=1)
    _kept_vs_dropped("el2n", el2n, larger_kept=True)
    _kept_vs_dropped("grand", el2n * np.sqrt(1 + (z ** 2).sum(1)), larger_kept=True)
    gap, _ = moderate_score(z, y)
    _kept_vs_dropped("moderate", gap, larger_kept=False)


def test_scores_are_the_ranked_scores_in_order():
    sel = run("margin", 100)
    srt = np.sort(DATA["probs"], axis=1)
    np.testing.assert_allclose(sel.scores, (srt[:, -1] - srt[:, -2])[sel.indices])
    assert (np.diff(sel.scores) >= 0).all()
    sel = run("el2n", 100)
    assert (np.diff(sel.scores) <= 0).all()


def test_grand_is_the_last_layer_gradient_norm():
    rng = np.random.default_rng(1)
    p, y, z = DATA["probs"][:20], DATA["labels"][:20], DATA["embeddings"][:20]
    for i in rng.choice(20, 5, replace=False):
        err = p[i] - np.eye(C)[y[i]]
        grad = np.concatenate([np.outer(err, z[i]).ravel(), err])  # dL/dW and dL/db
        assert grand_score(p, y, z)[i] == pytest.approx(np.linalg.norm(grad))
        assert el2n_score(p, y)[i] == pytest.approx(np.linalg.norm(err))


def test_moderate_uses_class_median_and_median_distance():
    z, y = DATA["embeddings"], DATA["labels"]
    gap, d = moderate_score(z, y)
    for c in range(C):
        m = y == c
        np.testing.assert_allclose(d[m], np.linalg.norm(z[m] - np.median(z[m], axis=0), axis=1))
    np.testing.assert_allclose(gap, np.abs(d - np.median(d)))


def test_forgetting_ties_go_to_higher_loss_then_lowest_index():
    data = dict(DATA, forgetting=np.zeros(N, np.int64))
    idx = run("forgetting", N, data=data).indices
    np.testing.assert_array_equal(idx, np.lexsort((np.arange(N), -DATA["losses"])))
    # Without losses or probs, only the index breaks ties.
    only = dict(forgetting=np.full(N, 2), labels=DATA["labels"])
    np.testing.assert_array_equal(run("forgetting", 10, data=only).indices, np.arange(10))


def _min_dist_radius(z, idx):
    d = np.sqrt(((z[:, None, :] - z[None, idx, :]) ** 2).sum(-1)).min(1)
    return d.max()


def _reference_kcenter(z, budget, first, seq=None, labels=None):
    """Plain k-center greedy over a full distance matrix (small N only)."""
    dist = np.sqrt(((z[:, None, :] - z[None, :, :]) ** 2).sum(-1))
    picks = [first]
    mind = dist[first].copy()
    for t in range(1, budget):
        cand = mind.copy()
        cand[picks] = -1
        if seq is not None:
            cand[labels != seq[t]] = -1
        x = int(np.argmax(cand))
        picks.append(x)
        mind = np.minimum(mind, dist[x])
    return np.array(picks), mind.max()


@pytest.mark.parametrize("balance", BALANCES)
def test_kcenter_matches_reference_greedy(balance):
    z = DATA["embeddings"].astype(np.float32).astype(np.float64)
    sel = run("kcenter", 80, balance, seed=2)
    labels = DATA["labels"]
    seq = class_target_sequence(labels, 80, balance)
    ref, radius = _reference_kcenter(z, 80, sel.indices[0], seq, labels)
    np.testing.assert_array_equal(sel.indices, ref)
    assert sel.extra["radius"] == pytest.approx(radius, rel=1e-5)
    assert np.isinf(sel.scores[0])
    if balance == "none":
        # Each pick is at the largest distance from the earlier ones, which only shrinks.
        assert (np.diff(sel.scores[1:]) <= 1e-5).all()


def test_kcenter_covers_better_than_uniform():
    z = DATA["embeddings"]
    for budget in (30, 120):
        k = _min_dist_radius(z, run("kcenter", budget).indices)
        u = _min_dist_radius(z, run("uniform", budget).indices)
        assert k < u, (k, u)


def test_kcenter_normalize_option():
    z = DATA["embeddings"]
    zn = z / np.linalg.norm(z, axis=1, keepdims=True)
    a = run("kcenter", 50, normalize=True).indices
    b = run("kcenter", 50, data=dict(DATA, embeddings=zn)).indices
    np.testing.assert_array_equal(a, b)


def test_kcenter_progress_and_cancel():
    seen = []
    kcenter_greedy(DATA["embeddings"], 250, progress=lambda f, msg, info: seen.append(f))
    assert seen and seen[-1] == 1.0 and seen == sorted(seen)
    ev = threading.Event()
    ev.set()
    with pytest.raises(Cancelled):
        kcenter_greedy(DATA["embeddings"], 50, cancel=ev)


def test_ccs_drops_hardest_and_spreads_over_strata():
    rng = np.random.default_rng(0)
    n = 1000
    score = rng.permutation(n) / n  # EL2N-like difficulty, evenly spread on [0, 1)
    # Build probs whose EL2N is a known increasing function of `score`.
    labels = np.zeros(n, np.int64)
    probs = np.stack([1 - score, score], axis=1)  # el2n = sqrt(2) * score
    data = dict(probs=probs, labels=labels)
    sel = run("ccs", 100, data=data, beta=0.1, strata=10)
    assert len(np.unique(sel.indices)) == 100
    hardest = np.argsort(-score, kind="stable")[:100]
    assert not np.isin(sel.indices, hardest).any()
    # 10 equal-width strata over [0, 0.9): 10 picks each.
    kept = score[sel.indices]
    counts = np.histogram(kept, bins=10, range=(0, score[score < 0.9].max()))[0]
    np.testing.assert_array_equal(counts, np.full(10, 10))
    np.testing.assert_allclose(sel.scores, np.sqrt(2) * kept)


def test_ccs_small_strata_give_all_and_budget_is_exact():
    # 3 strata: sizes 2, 50, 500. Budget 60: 2 from the first, then 29 and 29.
    score = np.concatenate([np.full(2, 0.05), np.full(50, 0.5), np.linspace(0.9, 1.0, 500)])
    n = score.size
    probs = np.stack([1 - score, score], axis=1)
    data = dict(probs=probs, labels=np.zeros(n, np.int64))
    sel = run("ccs", 60, data=data, beta=0.0, strata=3)
    kept = score[sel.indices]
    assert (kept < 0.1).sum() == 2
    assert ((kept > 0.1) & (kept < 0.8)).sum() == 29
    assert (kept > 0.8).sum() == 29
    # A budget above N (1 - beta) still gets exactly `budget` picks (fewer are dropped).
    sel = run("ccs", n - 5, data=data, beta=0.5, strata=3)
    assert len(np.unique(sel.indices)) == n - 5


def test_ccs_forgetting_score_and_per_class_balance():
    sel = run("ccs", 200, "equal", score="forgetting")
    assert sel.params["score"] == "forgetting"
    np.testing.assert_array_equal(sel.scores, DATA["forgetting"][sel.indices])
    # Within each class the hardest 10% (by EL2N) is never kept under balance.
    sel = run("ccs", 200, "proportional")
    el2n = el2n_score(DATA["probs"], DATA["labels"])
    for c in range(C):
        members = np.flatnonzero(DATA["labels"] == c)
        cut = members[np.argsort(-el2n[members])[: int(0.1 * members.size)]]
        assert not np.isin(sel.indices, cut).any()


@pytest.mark.parametrize("method,data,params,match", [
    ("small_loss", dict(labels=DATA["labels"]), {}, "needs losses"),
    ("margin", dict(labels=DATA["labels"]), {}, "needs probs"),
    ("el2n", dict(probs=DATA["probs"]), {}, "needs labels"),
    ("grand", dict(probs=DATA["probs"], labels=DATA["labels"]), {}, "needs embeddings"),
    ("kcenter", dict(labels=DATA["labels"]), {}, "needs embeddings"),
    ("kcenter", dict(embeddings=DATA["embeddings"][:, 0]), {}, "2-D"),
    ("forgetting", dict(forgetting=np.full(N, -1.0)), {}, "non-negative"),
    ("margin", dict(probs=DATA["probs"]), {"balance": "equal"}, "needs labels"),
    ("uniform", dict(probs=DATA["probs"]), {"balance": "proportional"}, "needs labels"),
    ("ccs", DATA, {"beta": 1.5}, "beta"),
    ("ccs", DATA, {"strata": 0}, "strata"),
    ("ccs", DATA, {"score": "loss"}, "unknown score"),
    ("ccs", dict(labels=DATA["labels"], probs=DATA["probs"]), {"score": "forgetting"}, "needs forgetting"),
    ("moderate", DATA, {"balance": "classwise"}, "unknown class balance"),
])
def test_missing_or_malformed_inputs_raise(method, data, params, match):
    with pytest.raises(InputError, match=match):
        pc.select(method, budget=10, **data, **params)
