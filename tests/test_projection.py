"""2-D maps: PCA at once, UMAP from the precomputed faiss kNN, PCA fallback."""

import time

import numpy as np
import pytest

from prune_core.projection import default_numba_cache_dir, knn_for_umap, knn_from_graph, pca_2d, umap_2d

default_numba_cache_dir()


def blobs(n=300, d=16, k=3, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * 6
    y = np.arange(n) % k
    return (centres[y] + rng.normal(size=(n, d))).astype(np.float32), y


def test_pca_is_instant_and_correct():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(50_000, 64)).astype(np.float32) * np.linspace(3, 0.1, 64)
    t = time.perf_counter()
    p = pca_2d(z)
    assert time.perf_counter() - t < 5.0
    assert p.shape == (50_000, 2) and p.dtype == np.float32
    from sklearn.decomposition import PCA

    ref = PCA(2).fit_transform(z[:5000].astype(np.float64))
    mine = pca_2d(z[:5000])
    for j in range(2):
        assert abs(np.corrcoef(ref[:, j], mine[:, j])[0, 1]) > 0.999
    np.testing.assert_array_equal(pca_2d(z[:5000]), mine)  # deterministic signs


def test_knn_lists_have_self_first():
    z, _ = blobs(200)
    ids, dists = knn_for_umap(z, k=10)
    assert ids.shape == dists.shape == (200, 10)
    np.testing.assert_array_equal(ids[:, 0], np.arange(200))
    assert (dists[:, 0] == 0).all() and (np.diff(dists, axis=1) >= -1e-6).all()


def test_umap_from_precomputed_knn_separates_blobs():
    z, y = blobs(300)
    ids, dists = knn_for_umap(z, k=15)
    coords, info = umap_2d(z, ids, dists, n_neighbors=10, seed=0, return_info=True)
    assert info["method"] == "umap", info
    assert info["n_neighbors"] == 10
    assert coords.shape == (300, 2) and np.isfinite(coords).all()
    from sklearn.metrics import silhouette_score

    assert silhouette_score(coords, y) > 0.5


def test_umap_from_a_graph():
    from prune_core.graph import build_graph

    z, _ = blobs(200)
    g = build_graph(z, k=30, tau="auto")
    ids, dists = knn_from_graph(g, 8)
    assert ids.shape == (200, 8) and (ids[:, 0] == np.arange(200)).all()
    coords, info = umap_2d(z, graph=g, n_neighbors=8, return_info=True)
    assert coords.shape == (200, 2)


def test_failure_falls_back_to_pca():
    z, _ = blobs(100)
    bad_ids = np.zeros((100, 5), dtype=np.int64)
    coords, info = umap_2d(z, bad_ids, np.ones((100, 4)), return_info=True)
    assert info["method"].startswith("pca (umap failed")
    np.testing.assert_allclose(coords, pca_2d(z))
    with pytest.raises(Exception):
        umap_2d(z, bad_ids, np.ones((100, 4)), fallback=False)
    tiny, info = umap_2d(z[:3], return_info=True)
    assert tiny.shape == (3, 2) and info["method"].startswith("pca")


UMAP_IN_A_FRESH_PROCESS = """
import json, numpy as np
from prune_core.projection import knn_for_umap, umap_2d
import umap.umap_ as U
z = np.random.default_rng(0).normal(size=(200, 8)).astype(np.float32)
ids, dists = knn_for_umap(z, 15)
coords, info = umap_2d(z, ids, dists, return_info=True)
stats = U.smooth_knn_dist.stats
print(json.dumps({"method": info["method"], "hits": sum(stats.cache_hits.values()),
                  "misses": sum(stats.cache_misses.values())}))
"""


def test_umap_kernels_are_cached_across_processes(tmp_path):
    """umap-learn's own uncached kernels compile once per machine, not once per server process."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "NUMBA_CACHE_DIR": default_numba_cache_dir()}
    runs = []
    for _ in range(2):
        res = subprocess.run([sys.executable, "-c", UMAP_IN_A_FRESH_PROCESS], env=env, cwd=root,
                             capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-2000:]
        runs.append(json.loads(res.stdout.strip().splitlines()[-1]))
    assert all(r["method"] == "umap" for r in runs), runs
    # The second process loads smooth_knn_dist (uncached in umap-learn) from the cache.
    assert runs[1]["hits"] >= 1 and runs[1]["misses"] == 0, runs
