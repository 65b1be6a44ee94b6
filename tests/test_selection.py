"""Prune4ReL selection: agreement with brute force, objective monotone, quotas, seeds."""

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import prune_core as pc
from prune_core.prune4rel import greedy_neighbourhood_confidence, objective
from prune_core.reference import brute_force_greedy, dense_official_greedy
from prune_core.registry import class_target_sequence, rank_by_score


def instance(seed, n=None, d=8, tau=0.7):
    rng = np.random.default_rng(seed)
    n = n or int(rng.integers(20, 201))
    z = rng.normal(size=(n, d))
    probs = rng.dirichlet(np.ones(4) * 0.5, size=n)
    labels = rng.integers(0, 4, n)
    g = pc.build_graph(z, k=None, tau=tau, allow_empty=True)
    return z, probs, labels, g


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("mode", ["exact", "official"])
def test_lazy_greedy_equals_brute_force(seed, mode):
    z, probs, labels, g = instance(seed)
    conf = pc.confidence(probs)
    rng = np.random.default_rng(100 + seed)
    budget = int(rng.integers(1, len(conf)))
    eta = float(rng.choice([0.3, 1.0, 3.0]))
    for balance in ("none", "equal", "proportional"):
        lab = None if balance == "none" else labels
        fast, gains, _, _ = greedy_neighbourhood_confidence(g, conf, budget, eta, mode, lab, balance)
        slow, curve = brute_force_greedy(g.toarray(), conf, budget, eta, mode, lab, balance)
        np.testing.assert_array_equal(fast, slow)
        np.testing.assert_allclose(np.cumsum(gains), curve, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("seed", range(6))
def test_official_mode_equals_dense_official_loop(seed):
    z, probs, labels, _ = instance(seed, n=150)
    tau = 0.8
    g = pc.build_graph(z, k=None, tau=tau, allow_empty=True)
    conf = pc.confidence(probs)
    for balance in ("none", "equal"):
        lab = None if balance == "none" else labels
        sel = pc.select("prune4rel", budget=60, probs=probs, labels=labels, graph=g,
                        mode="official", balance=balance)
        ref = dense_official_greedy(z, conf, 60, tau, 1.0, lab, balance)
        np.testing.assert_array_equal(sel.indices, ref)


def test_objective_never_decreases_and_matches_direct_value():
    z, probs, labels, g = instance(3, n=200)
    conf = pc.confidence(probs)
    for mode in ("exact", "official"):
        sel = pc.select("prune4rel", keep_ratio=0.6, probs=probs, graph=g, mode=mode)
        assert (sel.gains >= -1e-12).all()
        curve = sel.objective_curve
        assert (np.diff(curve) >= -1e-12).all()
        assert sel.objective == pytest.approx(objective(g, conf, sel.indices, 1.0), rel=1e-9)


def test_exact_objective_at_least_official_on_clustered_data():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(10, 32))
    z = centers[rng.integers(0, 10, 1500)] + 0.35 * rng.normal(size=(1500, 32))
    probs = rng.dirichlet(np.ones(10) * 0.3, size=1500)
    g = pc.build_graph(z, k=30, tau=0.9)
    for ratio in (0.05, 0.2, 0.5):
        e = pc.select("prune4rel", keep_ratio=ratio, probs=probs, graph=g, mode="exact")
        o = pc.select("prune4rel", keep_ratio=ratio, probs=probs, graph=g, mode="official")
        assert e.objective >= o.objective - 1e-9


def test_prefixes_are_selections_for_smaller_ratios():
    z, probs, labels, g = instance(7, n=180)
    full = pc.select("prune4rel", keep_ratio=1.0, probs=probs, labels=labels, graph=g, balance="equal")
    small = pc.select("prune4rel", keep_ratio=0.3, probs=probs, labels=labels, graph=g, balance="equal")
    np.testing.assert_array_equal(full.prefix(0.3).indices, small.indices)
    assert full.prefix(0.3).objective == pytest.approx(small.objective)
    assert np.unique(full.indices).size == 180


@pytest.mark.parametrize("balance", ["equal", "proportional"])
def test_balance_quotas_hold_at_every_prefix(balance):
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(5), [300, 120, 40, 25, 15])
    rng.shuffle(labels)
    n = labels.size
    seq = class_target_sequence(labels, n, balance)
    sizes = np.bincount(labels)
    counts = np.zeros(5, int)
    for b, c in enumerate(seq, start=1):
        counts[c] += 1
        assert (counts <= sizes).all()
        if balance == "proportional":
            assert np.abs(counts - b * sizes / n).max() < 1.0 + 1e-9
        else:
            open_ = counts < sizes
            if open_.any():
                # open classes differ by at most one; exhausted classes are fully taken
                assert counts[open_].max() - counts[open_].min() <= 1
                assert (counts[~open_] == sizes[~open_]).all()
                assert counts[open_].min() >= counts[~open_].max() - 1 if (~open_).any() else True


def test_rank_by_score_respects_class_order_and_scores():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 3, 90)
    score = rng.normal(size=90)
    ranked = rank_by_score(score, 30, labels, "equal")
    assert np.bincount(labels[ranked], minlength=3).tolist() == [10, 10, 10]
    for c in range(3):
        members = ranked[labels[ranked] == c]
        assert (np.diff(score[members]) <= 0).all()
        best = np.sort(score[labels == c])[::-1][:10]
        np.testing.assert_allclose(score[members], best)


def test_same_seed_same_selection_and_uniform_seeds_differ():
    z, probs, labels, g = instance(9, n=200)
    a = pc.select("prune4rel", keep_ratio=0.4, probs=probs, graph=g, seed=1)
    b = pc.select("prune4rel", keep_ratio=0.4, probs=probs, graph=g, seed=1)
    np.testing.assert_array_equal(a.indices, b.indices)
    u1 = pc.select("uniform", keep_ratio=0.4, labels=labels, seed=1)
    u2 = pc.select("uniform", keep_ratio=0.4, labels=labels, seed=1)
    u3 = pc.select("uniform", keep_ratio=0.4, labels=labels, seed=2)
    np.testing.assert_array_equal(u1.indices, u2.indices)
    assert not np.array_equal(u1.indices, u3.indices)


def test_select_builds_graph_from_embeddings_when_missing():
    z, probs, labels, _ = instance(4, n=200)
    sel = pc.select("prune4rel", keep_ratio=0.25, probs=probs, embeddings=z, tau=0.7, k=20)
    assert sel.budget == 50
    assert sel.extra["graph"]["tau"] == pytest.approx(0.7)


def test_registry_lists_prune4rel_and_uniform():
    names = pc.list_methods()
    assert "prune4rel" in names and "uniform" in names


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(keep_ratio=0.0), "keep ratio must be in"),
        (dict(keep_ratio=1.5), "keep ratio must be in"),
        (dict(keep_ratio=-0.1), "keep ratio must be in"),
        (dict(keep_ratio=0.5, mode="fast"), "unknown prune4rel mode"),
        (dict(keep_ratio=0.5, balance="fair"), "unknown class balance"),
        (dict(keep_ratio=0.5, confidence="vibes"), "unknown confidence"),
        (dict(keep_ratio=0.5, eta=0.0), "eta must be positive"),
        (dict(keep_ratio=0.5, colour="red"), "no parameter"),
    ],
)
def test_bad_selection_arguments(kwargs, message):
    z, probs, labels, g = instance(0, n=50)
    with pytest.raises(pc.InputError, match=message):
        pc.select("prune4rel", probs=probs, graph=g, labels=labels, **kwargs)


def test_unknown_method_and_bad_arrays():
    z, probs, labels, g = instance(0, n=50)
    with pytest.raises(pc.InputError, match="unknown selection method"):
        pc.select("magic", keep_ratio=0.5, probs=probs)
    bad = probs.copy()
    bad[0, 0] = np.nan
    with pytest.raises(pc.InputError, match="NaN"):
        pc.select("prune4rel", keep_ratio=0.5, probs=bad, graph=g)
    with pytest.raises(pc.InputError, match="rows"):
        pc.select("prune4rel", keep_ratio=0.5, probs=probs, labels=labels[:10], graph=g)
    with pytest.raises(pc.InputError, match="out of range"):
        pc.select("prune4rel", keep_ratio=0.5, probs=probs, labels=labels + 10, graph=g, balance="equal")


# --- selection by connected component (exact mode's default without class balance) ------


def clustered_components(seed, n_groups=12, per=40, d=6, tau=0.95):
    """A graph of many components: tight groups far apart, plus isolated points."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_groups, d)) * 10
    z = np.concatenate([centres[g] + 0.6 * rng.normal(size=(int(rng.integers(1, per)), d))
                        for g in range(n_groups)])
    z = np.concatenate([z, rng.normal(size=(15, d)) * 30])  # mostly isolated
    probs = rng.dirichlet(np.ones(4) * 0.5, size=len(z))
    return pc.build_graph(z, k=None, tau=tau, allow_empty=True), pc.confidence(probs)


def assert_components_equal_one_heap(g, conf, budget, eta, mode) -> dict:
    """Selection by component gives one heap's picks, gains, scores and cover bit for bit."""
    st = {}
    one = greedy_neighbourhood_confidence(g, conf, budget, eta, mode, components=False)
    many = greedy_neighbourhood_confidence(g, conf, budget, eta, mode, components=True, stats=st)
    for a, b in zip(one, many):
        np.testing.assert_array_equal(a, b)
    assert st["picks_computed"] >= budget
    return st


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("mode", ["exact", "official"])
def test_selection_by_component_equals_one_heap(seed, mode):
    g, conf = clustered_components(seed)
    n = len(conf)
    for budget in (1, n // 10, n // 2, n - 1, n):
        for eta in (0.5, 2.0):
            assert assert_components_equal_one_heap(g, conf, budget, eta, mode)["components"] > 5


def test_selection_by_component_with_ties_equals_one_heap():
    """Equal confidences and triplicated points: exact ties everywhere, broken the same way
    (lower index first) by the components' merge as by one heap."""
    rng = np.random.default_rng(5)
    z = np.repeat(rng.normal(size=(30, 4)) * 5, 3, axis=0)
    g = pc.build_graph(z, k=None, tau=0.9, allow_empty=True)
    conf = np.full(len(z), 0.7)
    for mode in ("exact", "official"):
        for budget in (5, 40, 89):
            assert_components_equal_one_heap(g, conf, budget, 1.0, mode)
    # official scores have no rounding of their own: the brute force agrees exactly
    fast, _, _, _ = greedy_neighbourhood_confidence(g, conf, 89, 1.0, "official", components=True)
    slow, _ = brute_force_greedy(g.toarray(), conf, 89, 1.0, "official", None, "none")
    np.testing.assert_array_equal(fast, slow)


def test_selection_by_component_keeps_examples_sharing_a_column_together():
    """A pattern that is not symmetric (the kernels accept one): rows 0 and 45 share column
    0 only through the one-sided entry (45, 0), so picking either changes the other's gain
    (a search along rows from 0 would not find 45); the grouping must keep them in one
    group, and the result must equal one heap's."""
    from prune_core.prune4rel import _component_labels

    rng = np.random.default_rng(5)
    z = rng.normal(size=(90, 4)) * 5
    g = pc.build_graph(z, k=None, tau=0.97, allow_empty=True).tolil()
    _, apart = _component_labels(g.tocsr().indptr.astype(np.int64), g.tocsr().indices, 90)
    assert apart[0] != apart[45]
    g[45, 0] = 0.5
    g = g.tocsr()
    _, together = _component_labels(g.indptr.astype(np.int64), g.indices, 90)
    assert together[0] == together[45]
    conf = rng.uniform(0.2, 1.0, len(z))
    for mode in ("exact", "official"):
        for budget in (5, 40, 89):
            assert_components_equal_one_heap(g, conf, budget, 1.0, mode)


def test_component_labels_agree_with_scipy():
    from scipy.sparse.csgraph import connected_components

    from prune_core.prune4rel import _component_labels

    for seed in range(4):
        g, conf = clustered_components(seed, tau=0.9)
        count, labels = _component_labels(g.indptr.astype(np.int64), g.indices, g.shape[0])
        ref_count, ref = connected_components(g, directed=False)
        assert count == ref_count
        # the same partition, numbered by each group's lowest example
        pairs = np.unique(np.stack([labels, ref], 1), axis=0)
        assert len(pairs) == count
        first = np.array([np.flatnonzero(labels == c)[0] for c in range(count)])
        assert (np.diff(first) > 0).all()
    # random one-sided patterns, both index dtypes (the union-find's parent takes theirs)
    rng = np.random.default_rng(11)
    for trial in range(30):
        n = int(rng.integers(2, 400))
        g = sp.random(n, n, density=float(rng.uniform(0.0005, 0.02)), format="csr", random_state=trial)
        for dtype in (np.int32, np.int64):
            count, labels = _component_labels(g.indptr.astype(np.int64), g.indices.astype(dtype), n)
            ref_count, ref = connected_components(g, directed=True, connection="weak")
            assert count == ref_count
            assert len(np.unique(np.stack([labels, ref], 1), axis=0)) == count
            first = np.array([np.flatnonzero(labels == c)[0] for c in range(count)])
            assert (np.diff(first) > 0).all() and first[0] == 0


def test_selection_by_component_same_for_any_thread_count():
    import numba

    g, conf = clustered_components(3, n_groups=30)
    before = numba.get_num_threads()
    try:
        results = []
        for threads in sorted({1, before}):
            numba.set_num_threads(threads)
            results.append(greedy_neighbourhood_confidence(g, conf, len(conf) // 3, 1.0, "exact"))
    finally:
        numba.set_num_threads(before)
    for a, b in zip(results[0], results[-1]):
        np.testing.assert_array_equal(a, b)


def test_selection_by_component_cancel_and_progress():
    import threading

    from prune_core.errors import Cancelled

    g, conf = clustered_components(1, n_groups=30)
    seen = []
    greedy_neighbourhood_confidence(g, conf, len(conf) // 2, 1.0, "exact",
                                    progress=lambda f, msg, extra: seen.append((f, msg)))
    assert seen and seen[-1][0] == 1.0 and "components" in seen[-1][1]
    assert all(b >= a for (a, _), (b, _) in zip(seen, seen[1:]))
    token = threading.Event()
    token.set()
    with pytest.raises(Cancelled):
        greedy_neighbourhood_confidence(g, conf, len(conf) // 2, 1.0, "exact", cancel=token)


@pytest.mark.parametrize("mode", ["exact", "official"])
def test_selection_by_component_where_initial_keys_met_their_first_refresh_by_an_ulp(mode):
    """Isolated points with one confidence, or confidences a few ulps apart: the initial keys
    came from np.tanh and the first refresh from the refresh formula, 1 ulp apart, so a key was
    not an upper bound and ties fell differently per component (a reviewer's reproducers)."""
    g = sp.identity(5, format="csr")
    for c, eta in ((0.2514331438351931, 1.0), (0.7, 1.0), (0.5, 0.3)):
        conf = np.full(5, c)
        assert_components_equal_one_heap(g, conf, 5, eta, mode)
        np.testing.assert_array_equal(  # equal gains: lowest index first
            greedy_neighbourhood_confidence(g, conf, 5, eta, mode, components=True)[0], np.arange(5))
    conf = np.array([0.7281990397824373, 0.7281990397824368, 0.7281990397824366,
                     0.7281990397824365, 0.7281990397824367, 0.7281990397824367])
    for budget in (1, 2, 6):
        assert_components_equal_one_heap(sp.identity(6, format="csr"), conf, budget, 0.3, mode)


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_selection_by_component_equals_one_heap_on_random_graphs(data):
    """Random sparse symmetric graphs with unit diagonal (many components), confidences drawn
    from a few values or a few ulps apart (ties everywhere), any eta and budget."""
    n = data.draw(st.integers(2, 40), label="n")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    edges = rng.random((n, n)) < data.draw(st.sampled_from([0.0, 0.03, 0.1, 0.3]), label="density")
    w = np.where(edges | edges.T, rng.choice([0.5, 0.8, 1.0], size=(n, n)).astype(np.float32), 0)
    w = np.maximum(w, w.T)
    np.fill_diagonal(w, 1.0)
    kind = data.draw(st.sampled_from(["equal", "ulps", "few", "uniform"]), label="conf")
    base = rng.uniform(0.05, 1.0)
    conf = {"equal": np.full(n, base),
            "ulps": np.nextafter(np.full(n, base), 2.0) + rng.integers(0, 4, n) * np.spacing(base),
            "few": rng.choice([0.3, 0.5, 0.9], n),
            "uniform": rng.uniform(0, 1, n)}[kind]
    eta = data.draw(st.sampled_from([0.3, 1.0, 3.0]), label="eta")
    budget = data.draw(st.integers(1, n), label="budget")
    for mode in ("exact", "official"):
        assert_components_equal_one_heap(sp.csr_matrix(w), conf, budget, eta, mode)


def test_budget_outside_zero_to_n_is_refused():
    g, conf = clustered_components(0)
    for budget in (-1, len(conf) + 1, 2.5):
        with pytest.raises(pc.InputError, match="budget must be"):
            greedy_neighbourhood_confidence(g, conf, budget, 1.0, "exact")


def test_fused_edge_factors_and_initial_keys_equal_the_separate_kernels_bit_for_bit():
    """Exact mode computes its edge factors and first keys in one pass; they must be the
    refresh's arithmetic to the last bit (keys are upper bounds of every refresh)."""
    from prune_core.prune4rel import _edge_factors, _edge_factors_and_keys, initial_keys, prepare_graph

    rng = np.random.default_rng(7)
    for n, eta in ((300, 1.0), (120, 0.3), (50, 2.5)):
        z = rng.normal(size=(n, 5))
        g = pc.build_graph(z, k=None, tau=0.8, allow_empty=True)
        indptr, indices, weights = prepare_graph(g, n)
        conf = rng.uniform(0.0, 1.0, n)
        conf[: n // 10] = 0.7281990397824373  # equal confidences: ties
        m1, keys = _edge_factors_and_keys(indptr, weights, conf, 1.0 / eta)
        ref_m1 = _edge_factors(indptr, weights, conf, 1.0 / eta)
        ref_keys = initial_keys(indptr, indices, conf, 1.0 / eta, True, ref_m1, np.ones(n))
        np.testing.assert_array_equal(m1, ref_m1)
        np.testing.assert_array_equal(keys, ref_keys)


def test_rows_in_order_renames_examples_and_keeps_each_rows_entry_order():
    from prune_core.components import _rows_in_order

    g, _ = clustered_components(1)
    n = g.shape[0]
    perm = np.random.default_rng(3).permutation(n).astype(np.int64)
    indptr, indices, weights = _rows_in_order(perm, g.indptr.astype(np.int64), g.indices, g.data)
    renamed = sp.csr_matrix((weights, indices, indptr), shape=(n, n))
    assert indices.dtype == g.indices.dtype and weights.dtype == g.data.dtype
    assert (renamed != g[perm][:, perm]).nnz == 0
    inv = np.argsort(perm)
    for p in range(n):  # same entries in the same stored order: row sums keep their bits
        row = slice(g.indptr[perm[p]], g.indptr[perm[p] + 1])
        np.testing.assert_array_equal(indices[indptr[p]:indptr[p + 1]], inv[g.indices[row]])
        np.testing.assert_array_equal(weights[indptr[p]:indptr[p + 1]], g.data[row])


@pytest.mark.parametrize("seed", range(4))
def test_selection_by_component_on_interleaved_components_equals_one_heap(seed):
    """Components whose examples are interleaved (shuffled rows), so the selection renames
    them into component order; ties (equal confidences, duplicated points) must still go
    to the lowest of the caller's indices, across components as well."""
    from prune_core.components import component_order
    from prune_core.prune4rel import _component_labels

    rng = np.random.default_rng(seed)
    g, conf = clustered_components(seed)
    z = np.repeat(rng.normal(size=(30, 4)) * 5, 3, axis=0)
    tied = pc.build_graph(z, k=None, tau=0.9, allow_empty=True)
    for graph, c in ((g, conf), (tied, np.full(tied.shape[0], 0.7))):
        n = graph.shape[0]
        perm = rng.permutation(n)
        graph, c = graph[perm][:, perm].tocsr(), c[perm]
        _, labels = _component_labels(graph.indptr.astype(np.int64), graph.indices, n)
        assert component_order(labels) is not None  # the renaming path runs
        for mode in ("exact", "official"):
            for budget in (1, n // 7, n // 2, n - 1):
                assert_components_equal_one_heap(graph, c, budget, 1.0, mode)
