"""Neighbour graph: symmetric, thresholded, unit self-weights; exact search equals brute force."""

import numpy as np
import pytest
import scipy.sparse as sp

import prune_core as pc
from prune_core.embeddings import normalize_embeddings
from prune_core.graph import auto_tau, validate_graph
from prune_core.knn import knn_search


def clustered(n=400, d=16, k=5, seed=0, spread=0.4):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d))
    return (centers[rng.integers(0, k, n)] + spread * rng.normal(size=(n, d))).astype(np.float32)


def dense_similarity(z):
    u = z / np.linalg.norm(z, axis=1, keepdims=True)
    return 0.5 + 0.5 * (u.astype(np.float64) @ u.T.astype(np.float64))


def test_graph_symmetric_thresholded_self_weight_one():
    z = clustered()
    g = pc.build_graph(z, k=20, tau=0.9)
    assert sp.isspmatrix_csr(g) or isinstance(g, sp.csr_array)
    assert g.dtype == np.float32
    assert abs(g - g.T).max() == 0
    assert np.all(g.diagonal() == 1.0)
    off = g - sp.diags(g.diagonal())
    off = off.tocsr()
    off.eliminate_zeros()
    assert off.data.min() > 0.9  # neighbour means s > tau
    s = dense_similarity(z)
    r, c = off.nonzero()
    np.testing.assert_allclose(off[r, c].A1, s[r, c], atol=1e-5)
    # at most k out-neighbours per row before symmetrisation: each edge is in someone's top-k
    assert (np.diff(off.indptr) >= 0).all()


def test_knn_graph_matches_brute_force_top_k():
    z = clustered(n=300, seed=3)
    k = 10
    u = normalize_embeddings(z)
    ids, cos, backend = knn_search(u, k, search="exact")
    assert backend in ("exact", "faiss-gpu", "torch-cuda")
    s = u @ u.T
    np.fill_diagonal(s, -np.inf)
    brute = np.argsort(-s, axis=1, kind="stable")[:, :k]
    # Same neighbour sets (order may differ only on exact ties).
    same = [set(a) == set(b) for a, b in zip(ids, brute)]
    assert np.mean(same) > 0.99
    np.testing.assert_allclose(cos, np.take_along_axis(s, brute, 1), atol=1e-5)


def test_untruncated_range_graph_equals_dense_threshold():
    z = clustered(n=250, seed=1)
    tau = 0.95
    g = pc.build_graph(z, k=None, tau=tau).toarray()
    s = dense_similarity(z)
    expect = np.where(s > tau, s, 0.0)
    np.fill_diagonal(expect, 1.0)
    assert ((g > 0) == (expect > 0)).mean() > 0.9999
    np.testing.assert_allclose(g, expect, atol=1e-5)


def test_knn_graph_with_large_k_equals_range_graph():
    """With k = N-1 the blockwise kNN graph equals the exact untruncated tau-graph."""
    z = clustered(n=120, seed=5)
    a = pc.build_graph(z, k=119, tau=0.9, search="exact").toarray()
    b = pc.build_graph(z, k=None, tau=0.9).toarray()
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_approximate_search_backends_agree_on_small_data():
    z = clustered(n=2000, d=16, k=8, seed=2)
    exact = pc.build_graph(z, k=15, tau=0.9, search="exact")
    for search in ("ivf", "hnsw"):
        approx = pc.build_graph(z, k=15, tau=0.9, search=search, nprobe=64)
        agree = (exact.multiply(approx) > 0).sum() / exact.nnz
        assert agree > 0.9, (search, agree)


def test_auto_tau_gives_median_target_neighbours():
    z = clustered(n=500, seed=4)
    g, info = pc.build_graph(z, k=30, tau="auto", target_neighbours=10, return_info=True)
    assert info.tau_requested == "auto"
    # median out-degree in the kNN lists is the target; symmetrisation only adds edges
    assert info.median_degree >= 10
    cos = np.sort(np.random.default_rng(0).uniform(-1, 1, (50, 20)), axis=1)[:, ::-1]
    t = auto_tau(cos, 5)
    assert np.median((0.5 + 0.5 * cos) > t, axis=0).sum() >= 5


def test_pca_reduction_runs_and_keeps_shape():
    z = clustered(n=300, d=64, seed=6)
    g = pc.build_graph(z, k=10, tau=0.8, pca_dim=8)
    assert g.shape == (300, 300)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(k=400), "larger than N-1"),
        (dict(k=0), "positive integer"),
        (dict(tau=1.5), "tau must be in"),
        (dict(tau="high"), "tau must be a number"),
        (dict(tau=0.99999), "tau=0.99999 leaves no example any neighbour"),
        (dict(search="magic"), "unknown graph search"),
    ],
)
def test_bad_graph_arguments(kwargs, message):
    z = clustered(n=400)
    args = dict(k=10, tau=0.9)
    args.update(kwargs)
    with pytest.raises(pc.InputError, match=message):
        pc.build_graph(z, **args)


def test_bad_embeddings():
    with pytest.raises(pc.InputError, match="NaN"):
        z = clustered(n=50)
        z[3, 2] = np.nan
        pc.build_graph(z, k=5)
    with pytest.raises(pc.InputError, match="2-D"):
        pc.build_graph(np.zeros(10), k=5)


def test_precomputed_graph_validation():
    z = clustered(n=60)
    g = pc.build_graph(z, k=10, tau=0.8)
    g2 = validate_graph(g.toarray(), 60)
    assert abs(g2 - g).max() < 1e-6
    with pytest.raises(pc.InputError, match="symmetric"):
        a = g.toarray()
        a[0, 1], a[1, 0] = 0.9, 0.0
        validate_graph(a, 60)
    with pytest.raises(pc.InputError, match="does not match"):
        validate_graph(g, 61)


def test_large_random_graph_selection_finishes():
    """Selection on a 100k-node random sparse graph completes (no timing assertion)."""
    rng = np.random.default_rng(0)
    n, deg = 100_000, 10
    rows = np.repeat(np.arange(n), deg)
    cols = rng.integers(0, n, n * deg)
    w = rng.uniform(0.9, 1.0, n * deg).astype(np.float32)
    a = sp.csr_matrix((w, (rows, cols)), shape=(n, n))
    g = a.maximum(a.T).tolil()
    g.setdiag(1.0)
    g = g.tocsr()
    probs = rng.dirichlet(np.ones(10), size=n)
    for mode in ("exact", "official"):
        sel = pc.select("prune4rel", keep_ratio=0.5, probs=probs, graph=g, mode=mode)
        assert sel.budget == 50_000
        assert np.unique(sel.indices).size == 50_000


# --- blocked (cell) search, exact CPU search, torch top-k, symmetrisation -------------------

from prune_core import graph as graph_mod  # noqa: E402
from prune_core import knn as knn_mod  # noqa: E402
from prune_core.errors import Cancelled  # noqa: E402


def brute_knn(u, k):
    s = u.astype(np.float64) @ u.T.astype(np.float64)
    np.fill_diagonal(s, -np.inf)
    ids = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return ids, np.take_along_axis(s, ids, 1)


def test_blocked_search_exhaustive_equals_exact():
    """With nprobe >= the number of cells the blocked search compares every pair."""
    z = clustered(n=1500, d=24, k=12, seed=7)
    u = normalize_embeddings(z)
    ids, cos = knn_mod.blocked_knn(u, 12, cell_size=60, nprobe=10**6)
    bids, bcos = brute_knn(u, 12)
    np.testing.assert_allclose(cos, bcos, atol=1e-5)
    assert np.mean([set(a) == set(b) for a, b in zip(ids, bids)]) > 0.99
    a = pc.build_graph(z, k=12, tau=0.9, search="blocked", cell_size=60, nprobe=10**6)
    b = pc.build_graph(z, k=12, tau=0.9, search="exact")
    assert abs(a - b).max() < 1e-6
    assert (a != 0).sum() == (b != 0).sum()


def test_blocked_search_default_probes_recall_and_exact_similarities():
    z = clustered(n=4000, d=32, k=20, seed=8)
    u = normalize_embeddings(z)
    ids, cos, backend = knn_search(u, 15, search="blocked", cell_size=100)
    assert backend == "blocked"
    bids, _ = brute_knn(u, 15)
    recall = np.mean([len(set(a) & set(b)) / 15 for a, b in zip(ids, bids)])
    assert recall > 0.9
    # every returned similarity is the exact cosine of that pair
    found = ids >= 0
    rows = np.repeat(np.arange(len(u)), 15).reshape(-1, 15)
    exact = np.einsum("ij,ij->i", u[rows[found]].astype(np.float64), u[ids[found]].astype(np.float64))
    np.testing.assert_allclose(cos[found], exact, atol=1e-5)
    assert (np.diff(cos, axis=1) <= 1e-7).all()  # descending
    assert not (ids == np.arange(len(u))[:, None]).any()  # self excluded


def test_blocked_search_is_deterministic_and_leaves_input_alone():
    z = clustered(n=3000, d=16, seed=9)
    u = normalize_embeddings(z)
    before = u.copy()
    a = knn_search(u, 10, search="blocked", cell_size=80, seed=3)
    b = knn_search(u, 10, search="blocked", cell_size=80, seed=3)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(u, before)
    z_before = z.copy()
    pc.build_graph(z, k=10, tau=0.9, search="blocked", cell_size=80)
    np.testing.assert_array_equal(z, z_before)  # build_graph works on its own copy


@pytest.mark.parametrize("search", ["blocked", "exact"])
def test_blocked_search_same_result_with_any_thread_counts(monkeypatch, search):
    """Producers and mergers (each merger owns the heaps of some cells) give the same lists
    as one producer and one merger, ties included (duplicated rows)."""
    z = clustered(n=2400, d=16, seed=11)
    z[1::7] = z[0::7][: len(z[1::7])]  # exact duplicates: equal similarities everywhere
    u = normalize_embeddings(z)
    results = []
    for producers, mergers in ((1, 1), (2, 2), (3, 4)):
        monkeypatch.setattr(knn_mod, "_BLOCK_WORKERS", producers)
        monkeypatch.setattr(knn_mod, "_MERGE_WORKERS", mergers)
        stats = {}
        monkeypatch.setattr(knn_mod, "EXACT_SEARCH_MAX_N", 10**9)
        ids, cos, _ = knn_search(u, 10, search=search, cell_size=70, stats=stats)
        assert stats["workers"] == producers and stats["mergers"] == mergers and stats["flops"] > 0
        results.append((ids, cos))
    for ids, cos in results[1:]:
        np.testing.assert_array_equal(ids, results[0][0])
        np.testing.assert_array_equal(cos, results[0][1])


def test_cells_are_numbered_in_coarse_group_order_whatever_order_the_kmeans_finish(monkeypatch):
    """make_cells runs the coarse groups' k-means largest first on several threads; the
    cells must still be numbered group by group (and so not depend on the thread count)."""
    import math

    rng = np.random.default_rng(4)
    # Uneven coarse groups: one dense blob of half the points beside many small ones.
    centres = rng.standard_normal((12, 40))
    sizes = [1800] + [160] * 11
    z = np.concatenate([c + 0.3 * rng.standard_normal((m, 40)) for c, m in zip(centres, sizes)])
    u = normalize_embeddings(z.astype(np.float32))
    results = []
    for workers in (1, 3):
        monkeypatch.setattr(knn_mod, "_BLOCK_WORKERS", workers)
        results.append(knn_mod.make_cells(u, cell_size=40, nprobe=4, seed=5))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)
    order, offsets = results[0][0], results[0][1]
    nlist = round(len(u) / 40)
    with knn_mod._single_thread_blas(None):
        y = knn_mod._cell_space(u, knn_mod.CELL_SPACE_DIM, 5)
        coarse, _ = knn_mod._kmeans(y, round(math.sqrt(nlist)), 5, 256)
    group_of_cell = []
    for c in range(len(offsets) - 1):
        groups = np.unique(coarse[order[offsets[c] : offsets[c + 1]]])
        assert len(groups) == 1  # a cell lies inside one coarse group
        group_of_cell.append(groups[0])
    assert np.all(np.diff(group_of_cell) >= 0)
    counts = np.bincount(coarse)
    assert counts.max() > 1.5 * np.median(counts)  # uneven groups: largest first is not group order
    assert np.argmax(counts) != 0


def test_cell_bound_holds_and_skips_only_pairs_that_cannot_enter_a_heap(monkeypatch):
    """Far-apart tight clusters: the cap bound must bound every true similarity between two
    cells, pass 2 must skip most cross-cluster pairs, and the lists must still equal the
    unbounded search's up to ties in the last bit."""
    rng = np.random.default_rng(8)
    centres = rng.standard_normal((30, 64))
    z = np.concatenate([c + 0.05 * rng.standard_normal((100, 64)) for c in centres])
    u = normalize_embeddings(z.astype(np.float32))
    order, offsets, pptr, partners = knn_mod.make_cells(u, cell_size=25, nprobe=8, seed=1)
    zs = u[order]
    bounds = knn_mod._partner_bounds(*knn_mod._cell_balls(zs, offsets), pptr, partners)
    for c in range(len(offsets) - 1):
        for q in range(pptr[c], pptr[c + 1]):
            b = partners[q]
            true_max = (zs[offsets[c]:offsets[c + 1]].astype(np.float64)
                        @ zs[offsets[b]:offsets[b + 1]].astype(np.float64).T).max()
            assert true_max <= bounds[q] + 1e-9
    monkeypatch.setattr(knn_mod, "EXACT_SEARCH_MAX_N", 10)
    stats = {}
    ids, cos, _ = knn_search(u, 10, search="blocked", cell_size=25, nprobe=8, seed=1, stats=stats)
    assert stats["pairs_skipped"] > stats["pairs"] / 4
    monkeypatch.setattr(knn_mod, "_BOUND_MARGIN", np.inf)  # nothing is ever skipped
    stats_all = {}
    ids_all, cos_all, _ = knn_search(u, 10, search="blocked", cell_size=25, nprobe=8, seed=1, stats=stats_all)
    assert stats_all["pairs_skipped"] == 0
    np.testing.assert_allclose(cos, cos_all, atol=1e-6)
    kth = cos_all[:, -1:]
    for r in range(len(u)):  # a neighbour may differ only where it ties with the k-th
        diff = set(ids[r]) ^ set(ids_all[r])
        assert all(abs(float(u[r] @ u[j]) - float(kth[r, 0])) < 1e-6 for j in diff)
    bids, _ = brute_knn(u, 10)
    assert np.mean([set(a) == set(b) for a, b in zip(ids, bids)]) > 0.99


def test_auto_search_picks_blocked_above_the_exact_limit(monkeypatch):
    monkeypatch.setattr(knn_mod, "_faiss_gpu_available", lambda: False)
    monkeypatch.setattr(knn_mod, "_torch_cuda_available", lambda: False)
    assert knn_mod.resolve_search(knn_mod.EXACT_SEARCH_MAX_N, "auto") == "exact"
    assert knn_mod.resolve_search(knn_mod.EXACT_SEARCH_MAX_N + 1, "auto") == "blocked"
    with pytest.raises(pc.InputError, match="no CUDA device"):
        knn_mod.resolve_search(100, "auto", device="cuda")


def test_torch_blockwise_topk_on_cpu_matches_brute_force():
    """The CUDA exact path's code (torch_knn), run on CPU torch; duplicates test self-exclusion."""
    z = clustered(n=700, d=20, seed=10)
    z[5] = z[6]  # duplicate rows: each must still exclude itself, not its twin
    u = normalize_embeddings(z)
    ids, cos = knn_mod.torch_knn(u, 9, device="cpu", block_rows=64)
    bids, bcos = brute_knn(u, 9)
    np.testing.assert_allclose(cos, bcos, atol=1e-5)
    assert np.mean([set(a) == set(b) for a, b in zip(ids, bids)]) > 0.99
    assert not (ids == np.arange(len(u))[:, None]).any()
    assert ids[5, 0] == 6 and ids[6, 0] == 5


def test_gpu_backends_are_wired_through_build_graph(monkeypatch):
    """With CUDA 'present' (simulated: torch_knn redirected to CPU), auto is exact on the GPU
    path, and build_graph gives the same graph as the CPU exact search."""
    real = knn_mod.torch_knn
    calls = []

    def fake_torch_knn(z, k, device="cpu", **kw):
        calls.append(device)
        return real(z, k, device="cpu", block_rows=50)

    monkeypatch.setattr(knn_mod, "torch_knn", fake_torch_knn)
    monkeypatch.setattr(knn_mod, "_faiss_gpu_available", lambda: False)
    monkeypatch.setattr(knn_mod, "_torch_cuda_available", lambda: True)
    assert knn_mod.resolve_search(10**7, "auto") == "torch-cuda"
    assert knn_mod.resolve_search(10**7, "blocked") == "blocked"  # approximate stays on CPU
    z = clustered(n=400, seed=11)
    g, info = pc.build_graph(z, k=20, tau=0.9, return_info=True)
    assert info.search == "torch-cuda" and calls == ["cuda"]
    ref = pc.build_graph(z, k=20, tau=0.9, device="cpu")
    assert abs(g - ref).max() < 1e-6
    # faiss-gpu cannot select more than 2048 neighbours: larger k goes to torch
    monkeypatch.setattr(knn_mod, "_faiss_gpu_available", lambda: True)
    u = normalize_embeddings(clustered(n=2100, d=8, seed=12))
    ids, cos, backend = knn_search(u, 2049)
    assert backend == "torch-cuda" and ids.shape == (2100, 2049)


def test_symmetrisation_keeps_max_weight_unit_diagonal_int32():
    ids = np.array([[1, 2], [0, 2], [0, 1]])
    sim = np.array([[0.95, 0.91], [0.97, 0.5], [0.92, 0.5]], dtype=np.float32)
    g = graph_mod._csr_from_knn(ids, sim, 0.9, 3)
    expect = np.array([[1.0, 0.97, 0.92], [0.97, 1.0, 0.0], [0.92, 0.0, 1.0]], dtype=np.float32)
    np.testing.assert_array_equal(g.toarray(), expect)
    assert g.indices.dtype == np.int32 and g.data.dtype == np.float32
    assert g.has_sorted_indices and (np.diff(g.indices[g.indptr[0]:g.indptr[1]]) > 0).all()
    # threshold is strict and in float32, like the dense loop's `sim > tau`
    g = graph_mod._csr_from_knn(ids, sim, float(np.float32(0.95)), 3)
    assert g[0, 1] == np.float32(0.97) and g[0, 2] == 0


@pytest.mark.parametrize("chunks", [1, 2, 3, 7])
def test_knn_csr_equals_dense_max_symmetrisation_at_any_chunking(chunks):
    # Lists with repeats, -1 padding, self entries, mutual pairs and equal weights; the
    # parallel counting/fill (chunks of rows) must give the dense reference at any chunking.
    rng = np.random.default_rng(5)
    n, k = 203, 9
    ids = rng.integers(-1, n, size=(n, k))
    ids[::7, 0] = np.arange(0, n, 7)  # self entries are dropped
    ids[1::2, 1] = 3  # a hub: row 3 gets ~100 entries (the long-row sort path)
    sim = rng.choice(np.float32([0.5, 0.91, 0.93, 0.97, 0.99]), size=(n, k)).astype(np.float32)
    expect = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        for t in range(k):
            j = ids[i, t]
            if j >= 0 and j != i and sim[i, t] > np.float32(0.9):
                expect[i, j] = max(expect[i, j], sim[i, t])
                expect[j, i] = max(expect[j, i], sim[i, t])
    np.fill_diagonal(expect, 1.0)
    g = graph_mod._csr_from_knn(ids, sim, 0.9, n, chunks=chunks)
    np.testing.assert_array_equal(g.toarray(), expect)
    assert g.has_sorted_indices and all((np.diff(g.indices[g.indptr[i]:g.indptr[i + 1]]) > 0).all()
                                        for i in range(n))
    assert g.nnz == np.count_nonzero(expect)


def test_range_graph_fp64_dots_equals_dense_threshold():
    z = clustered(n=300, seed=13)
    u = normalize_embeddings(z)
    tau = 0.95
    g = graph_mod.range_graph(u, tau, dot_dtype=np.float64).toarray()
    cos = (u.astype(np.float64) @ u.T.astype(np.float64)).astype(np.float32)
    s = np.float32(0.5) + np.float32(0.5) * cos
    expect = np.where(s > np.float32(tau), s, 0)
    np.fill_diagonal(expect, 1.0)
    np.testing.assert_array_equal(g, expect)


def test_official_mode_on_range_graph_equals_dense_loop_whole_selection():
    """The sparse official mode picks exactly the dense loop's indices over a whole selection
    (both sides with fp64 dot products rounded to fp32, so BLAS order cannot matter)."""
    from prune_core.prune4rel import greedy_neighbourhood_confidence
    from prune_core.reference import dense_official_greedy

    rng = np.random.default_rng(14)
    z = clustered(n=1200, d=32, k=10, seed=14)
    conf = rng.beta(5, 1.5, len(z))
    tau = 0.96
    g = graph_mod.range_graph(normalize_embeddings(z), tau, dot_dtype=np.float64)
    fast, _, _, _ = greedy_neighbourhood_confidence(g, conf, 600, 1.0, "official")
    dense = dense_official_greedy(z, conf, 600, tau, dot_dtype=np.float64)
    np.testing.assert_array_equal(fast, dense)


def test_selection_accepts_int64_float64_graphs_identically():
    from prune_core.prune4rel import greedy_neighbourhood_confidence

    z = clustered(n=500, seed=15)
    conf = np.random.default_rng(15).beta(5, 1.5, 500)
    g32 = pc.build_graph(z, k=20, tau=0.9)
    g64 = sp.csr_matrix((g32.data.astype(np.float64), g32.indices.astype(np.int64),
                         g32.indptr.astype(np.int64)), shape=g32.shape)
    for mode in ("exact", "official"):
        a = greedy_neighbourhood_confidence(g32, conf, 250, 1.0, mode)
        b = greedy_neighbourhood_confidence(g64, conf, 250, 1.0, mode)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


def test_blocked_search_cancel_and_progress():
    import threading

    z = clustered(n=3000, d=16, seed=16)
    seen = []
    pc.build_graph(z, k=10, tau=0.9, search="blocked", cell_size=100,
                   progress=lambda f, msg, extra: seen.append(f))
    assert seen and seen[-1] == 1.0 and all(0 <= f <= 1 for f in seen)
    token = threading.Event()
    token.set()
    with pytest.raises(Cancelled):
        pc.build_graph(z, k=10, tau=0.9, search="blocked", cell_size=100, cancel=token)
    with pytest.raises(Cancelled):
        pc.build_graph(z, k=10, tau=0.9, search="exact", cancel=token)


def test_normalize_embeddings_copies_and_handles_zero_rows():
    z = np.array([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]], dtype=np.float32)
    before = z.copy()
    u = normalize_embeddings(z)
    np.testing.assert_array_equal(z, before)
    np.testing.assert_allclose(u, [[0.6, 0.8], [0, 0], [1, 0]], atol=1e-7)
    assert u.dtype == np.float32
    np.testing.assert_allclose(normalize_embeddings(np.array([[1, 1], [2, 0]], dtype=np.int64)),
                               [[2**-0.5, 2**-0.5], [1, 0]], atol=1e-7)


def test_blocked_search_tiles_huge_cells(monkeypatch):
    """Many duplicates land in one cell k-means cannot split; products are tiled (bounded
    memory) and the result still equals the exhaustive search's similarities."""
    monkeypatch.setattr(knn_mod, "_TILE_ROWS", 64)
    monkeypatch.setattr(knn_mod, "_TILE_COLUMNS", 96)
    rng = np.random.default_rng(17)
    z = np.concatenate([np.tile(rng.normal(size=(1, 12)), (700, 1)), clustered(n=800, d=12, seed=17)])
    z = z.astype(np.float32)
    u = normalize_embeddings(z)
    _, cos = knn_mod.blocked_knn(u, 10, cell_size=50, nprobe=10**6)
    _, bcos = brute_knn(u, 10)
    np.testing.assert_allclose(cos, bcos, atol=1e-5)
    _, cos_exact, _ = knn_search(u, 10, search="exact")
    np.testing.assert_allclose(cos_exact, bcos, atol=1e-5)


def _best_k(offers, k):
    """Reference: the k best (similarity descending, then original id ascending) of a list
    of (similarity, id) offers, padded with (-inf, -1)."""
    best = sorted(offers, key=lambda o: (-o[0], o[1]))[:k]
    return best + [(-np.inf, -1)] * (k - len(best))


@pytest.mark.parametrize("seed", range(6))
def test_heap_kernels_keep_the_k_best_of_their_offers_in_any_order(seed):
    """Pass 1's bulk build (`_own_heaps`, selection + heapify) and pass 2's screened offers
    (`_update_heaps`) leave each heap holding the k best of everything offered, ties broken
    by the lower original id, whatever the tiling: checked against a sort of all offers,
    with quantised similarities (many ties), negatives and -0.0, cells smaller than k, and
    an own block split into two column tiles (the second merges into held entries)."""
    from prune_core import knn_heaps

    rng = np.random.default_rng(seed)
    n, k = 90, 7 if seed % 2 else 40  # k = 40: more than a cell's candidates
    ids = rng.permutation(n).astype(np.int64)  # original id of each position
    sims = np.round(rng.uniform(-1, 1, (n, n)), 1).astype(np.float32)  # ties everywhere
    sims[rng.random((n, n)) < 0.05] = np.float32(-0.0)
    cells = [(0, 30), (30, 55), (55, 90)]
    hs = np.full((n, k), -np.inf, dtype=np.float32)
    hi = np.full((n, k), -1, dtype=np.int32)
    offers = {p: [] for p in range(n)}
    for a0, a1 in cells:  # pass 1, the own block in two column tiles
        mid = (a0 + a1) // 2
        for lo, hi_ in ((a0, mid), (mid, a1)):
            block = np.ascontiguousarray(sims[a0:a1, lo:hi_])
            knn_heaps._own_heaps(block, a0, np.arange(lo, hi_), ids, hs, hi)
            for r in range(a1 - a0):
                offers[a0 + r] += [(block[r, c], ids[lo + c]) for c in range(hi_ - lo) if lo + c != a0 + r]
    owned = np.ones(n, dtype=np.bool_)
    for (a0, a1), (b0, b1) in (((0, 30), (55, 90)), ((30, 55), (0, 30))):  # pass 2, both sides
        cols = rng.permutation(np.arange(b0, b1))
        block = np.ascontiguousarray(sims[a0:a1][:, cols])
        knn_heaps._update_heaps(block, a0, cols, ids, hs, hi, True, owned)
        for r in range(a1 - a0):
            for c, p in enumerate(cols):
                offers[a0 + r].append((block[r, c], ids[p]))
                offers[p].append((block[r, c], ids[a0 + r]))
    out_ids = np.empty((n, k), dtype=np.int64)
    out_cos = np.empty((n, k), dtype=np.float32)
    knn_heaps._lists_from_heaps(np.arange(n), hs, hi, out_ids, out_cos)
    for p in range(n):
        want = _best_k(offers[p], k)
        assert out_ids[p].tolist() == [j for _, j in want], p
        np.testing.assert_array_equal(out_cos[p], np.array([s for s, _ in want], dtype=np.float32))


@pytest.mark.parametrize("shape", ["random", "sorted", "reversed", "organ", "few"])
def test_quickselect_finds_every_rank(shape):
    from prune_core import knn_heaps

    rng = np.random.default_rng(3)
    base = {"random": rng.permutation(300), "sorted": np.arange(300), "reversed": np.arange(300)[::-1],
            "organ": np.r_[np.arange(0, 300, 2), np.arange(299, 0, -2)], "few": np.array([5, 2])}[shape]
    keys = base.astype(np.uint64) * np.uint64(2**33) + np.uint64(7)
    for target in range(len(keys)):
        work = keys.copy()
        got = knn_heaps._kth_smallest(work, len(work), target)
        assert got == np.sort(keys)[target]
        assert (work[:target] < got).all() and (work[target:] >= got).all()  # the k largest lie above


@pytest.mark.parametrize("seed", range(4))
def test_knn_rows_merge_equals_the_generic_row_sort(seed):
    """`_csr_from_knn`'s head-sort-and-merge of each row gives the generic sort's rows (any
    fill order) bit for bit: long lists, repeats, mutual pairs, -1 padding, equal weights."""
    rng = np.random.default_rng(seed)
    n, k = 150, 60
    ids = rng.integers(-1, n, size=(n, k))
    ids[:, :20] = rng.integers(0, 12, size=(n, 20))  # rows 0..11 get hundreds of entries
    sim = rng.choice(np.float32([0.5, 0.91, 0.93, 0.97, 0.99]), size=(n, k)).astype(np.float32)
    sim[rng.random((n, k)) < 0.3] = rng.uniform(0.9, 1.0, 1).astype(np.float32)
    for chunks in (1, 3):
        g = graph_mod._csr_from_knn(ids, sim, 0.9, n, chunks=chunks)
        keep = (ids >= 0) & (ids != np.arange(n)[:, None]) & (sim > np.float32(0.9))
        rows, cols = np.nonzero(keep)
        generic = graph_mod._csr_from_pairs(rows, ids[rows, cols], sim[rows, cols], n)
        np.testing.assert_array_equal(g.indptr, generic.indptr)
        np.testing.assert_array_equal(g.indices, generic.indices)
        np.testing.assert_array_equal(g.data, generic.data)
