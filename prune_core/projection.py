"""2-D maps of the warm-up embeddings: PCA at once, UMAP reusing the precomputed kNN.

    coords = pca_2d(embeddings)                                  # (N, 2), well under a second
    ids, dists = knn_for_umap(embeddings, k=15)                  # faiss cosine kNN, self first
    coords = umap_2d(embeddings, knn_ids=ids, knn_dists=dists)   # (N, 2), no NN-descent

UMAP never searches neighbours itself here: the kNN lists come from faiss (the same search
the neighbour graph uses), passed as umap-learn's ``precomputed_knn``. umap-learn and its
kernels are numba-compiled; numba keeps the compiled code under ``NUMBA_CACHE_DIR``
(scripts/setup.sh sets ``.numba_cache`` and fills it once with ``python -m
prune_core.warm_cache``), with caching turned on for umap-learn's own uncached kernels too
(`import_umap`), so only the first map on a machine pays for the compilation. Any failure
inside UMAP falls back to the PCA map (``info["method"]`` says which).
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from .errors import InputError, check_cancel

DEFAULT_NEIGHBOURS = 15
# Above this many points UMAP runs fewer optimisation epochs (umap-learn's own rule is 200
# above 10k points, 500 below); the layout is settled long before that on kNN inputs.
LARGE_N = 10_000


def default_numba_cache_dir() -> str:
    """Set NUMBA_CACHE_DIR to <repo>/.numba_cache unless it is set; return the folder.

    Must run before numba compiles anything (the app calls it first thing).
    """
    if not os.environ.get("NUMBA_CACHE_DIR"):
        os.environ["NUMBA_CACHE_DIR"] = str(Path(__file__).resolve().parent.parent / ".numba_cache")
        numba = sys.modules.get("numba")
        if numba is not None:  # imported before us: its config has read the environment already
            numba.config.CACHE_DIR = os.environ["NUMBA_CACHE_DIR"]
    path = os.environ["NUMBA_CACHE_DIR"]
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        pass
    return path


# umap-learn (and pynndescent, which it imports) leave most of their numba kernels uncached,
# so each new process compiled them again: about 7 s before the first map of a server
# process even with a warm NUMBA_CACHE_DIR. Turning numba's file cache on for them, before
# their first compile, makes that 0.5 s from the second process on.
_UMAP_NUMBA_MODULES = ("umap.umap_", "umap.layouts", "umap.utils", "umap.spectral", "umap.sparse",
                       "umap.distances", "pynndescent.pynndescent_", "pynndescent.utils",
                       "pynndescent.distances", "pynndescent.sparse", "pynndescent.rp_trees")
_umap_caching_done = False


def import_umap():
    """`import umap` (lazy: slow, numba) with numba's file cache on for its kernels; returns the module."""
    global _umap_caching_done
    default_numba_cache_dir()
    import umap

    if not _umap_caching_done:
        _umap_caching_done = True
        enable_numba_caching(_UMAP_NUMBA_MODULES)
    return umap


def enable_numba_caching(module_names) -> int:
    """Turn numba's on-disk cache on for the uncompiled, uncached jit functions of these modules.

    Functions already compiled in this process, or that numba cannot cache, are left as they
    are. Returns how many functions now cache.
    """
    import importlib

    try:
        from numba.core.caching import NullCache
        from numba.core.dispatcher import Dispatcher
    except ImportError:  # a numba without these internals: compile per process, as before
        return 0
    count = 0
    for name in module_names:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        for obj in list(vars(module).values()):
            if (isinstance(obj, Dispatcher) and getattr(obj, "__module__", None) == name
                    and isinstance(getattr(obj, "_cache", None), NullCache) and not obj.overloads):
                try:
                    obj.enable_caching()
                    count += 1
                except Exception:  # noqa: BLE001 - e.g. no writable cache folder: stays uncached
                    pass
    return count


def _check_embeddings(embeddings) -> np.ndarray:
    z = np.asarray(embeddings)
    if z.ndim != 2:
        raise InputError(f"embeddings must be a 2-D array (N, D), got shape {z.shape}")
    if z.shape[0] < 2:
        raise InputError(f"a map needs at least two examples, got {z.shape[0]}")
    z = np.ascontiguousarray(z, dtype=np.float32)
    if not np.isfinite(z).all():
        raise InputError("embeddings have NaN or infinite values")
    return z


def pca_2d(embeddings, seed: int = 0) -> np.ndarray:
    """First two principal components of embeddings (N, D) -> (N, 2) float32.

    Computed from the D x D covariance (N x D^2 flops), so 50k x 512 takes well under a
    second. Signs are fixed (largest-magnitude loading positive) so reruns agree.
    """
    z = _check_embeddings(embeddings).astype(np.float64)
    z -= z.mean(axis=0)
    if z.shape[1] == 1:
        return np.column_stack([z[:, 0], np.zeros(len(z))]).astype(np.float32)
    cov = z.T @ z / max(1, len(z) - 1)
    vals, vecs = np.linalg.eigh(cov)
    top = vecs[:, np.argsort(vals)[::-1][:2]]
    flip = np.sign(top[np.abs(top).argmax(axis=0), [0, 1]])
    top = top * np.where(flip == 0, 1.0, flip)
    return (z @ top).astype(np.float32)


def knn_for_umap(embeddings, k: int = DEFAULT_NEIGHBOURS, search: str = "auto", seed: int = 0,
                 cancel=None) -> tuple[np.ndarray, np.ndarray]:
    """Cosine kNN lists in umap-learn's layout: (ids (N, k) int64, dists (N, k) float32).

    Column 0 is the example itself (distance 0), then its k-1 nearest others by cosine
    distance 1 - cos. Uses `knn.knn_search` (exact up to 20k points, the blocked cell
    search above). Missing neighbours (approximate search) are -1 with distance inf.
    """
    from .embeddings import normalize_embeddings
    from .knn import knn_search

    z = normalize_embeddings(_check_embeddings(embeddings))
    n = z.shape[0]
    k = int(min(max(2, k), n))
    ids, cos, _ = knn_search(z, k - 1, search=search, seed=seed, cancel=cancel)
    dists = np.clip(1.0 - cos, 0.0, 2.0).astype(np.float32)
    dists[ids < 0] = np.inf
    ids = np.concatenate([np.arange(n, dtype=np.int64)[:, None], ids.astype(np.int64)], axis=1)
    dists = np.concatenate([np.zeros((n, 1), np.float32), dists], axis=1)
    return ids, dists


def knn_from_graph(graph, k: int = DEFAULT_NEIGHBOURS) -> tuple[np.ndarray, np.ndarray]:
    """kNN lists (self first) from a similarity graph (CSR, weights s = 0.5 + 0.5 cos).

    Rows with fewer than k-1 neighbours are padded with -1 / inf (UMAP treats those as
    missing). Distances are cosine distances 1 - cos = 2 (1 - s).
    """
    g = graph.tocsr()
    n = g.shape[0]
    ids = np.full((n, k), -1, dtype=np.int64)
    dists = np.full((n, k), np.inf, dtype=np.float32)
    ids[:, 0] = np.arange(n)
    dists[:, 0] = 0.0
    for i in range(n):
        lo, hi = g.indptr[i], g.indptr[i + 1]
        cols, w = g.indices[lo:hi], g.data[lo:hi]
        keep = cols != i
        cols, w = cols[keep], w[keep]
        order = np.argsort(-w, kind="stable")[: k - 1]
        ids[i, 1 : 1 + len(order)] = cols[order]
        dists[i, 1 : 1 + len(order)] = np.clip(2.0 * (1.0 - w[order]), 0.0, 2.0)
    return ids, dists


def umap_2d(
    embeddings,
    knn_ids: np.ndarray | None = None,
    knn_dists: np.ndarray | None = None,
    graph=None,
    n_neighbors: int = DEFAULT_NEIGHBOURS,
    seed: int = 0,
    min_dist: float = 0.1,
    n_epochs: int | None = None,
    fallback: bool = True,
    return_info: bool = False,
    cancel=None,
):
    """UMAP layout (N, 2) float32 of embeddings (N, D), reusing a precomputed kNN.

    knn_ids, knn_dists: (N, k) lists as from `knn_for_umap` (self in column 0, cosine
        distances); k >= n_neighbors, extra columns are dropped.
    graph: used instead when no lists are given (`knn_from_graph`); with neither, the
        faiss search runs here.
    n_epochs: None = 200 below LARGE_N points, 100 above.
    fallback: on any error inside umap-learn return the PCA map instead (info["method"]
        is then "pca (umap failed: ...)"); False re-raises.
    Returns coords, or (coords, info) with info = {method, seconds, n_neighbors, n_epochs}.
    """
    start = time.perf_counter()
    z = _check_embeddings(embeddings)
    n = z.shape[0]
    info = {"n_neighbors": None, "n_epochs": None}
    try:
        check_cancel(cancel)
        if n <= 3:
            raise InputError(f"UMAP needs more than 3 examples, got {n}")
        nn = int(min(n_neighbors, n - 1))
        if knn_ids is None:
            if graph is not None:
                knn_ids, knn_dists = knn_from_graph(graph, nn)
            else:
                knn_ids, knn_dists = knn_for_umap(z, nn, seed=seed, cancel=cancel)
        if knn_dists is None:
            raise InputError("knn_ids given without knn_dists")
        knn_ids = np.asarray(knn_ids)
        knn_dists = np.asarray(knn_dists)
        if knn_ids.ndim != 2 or knn_ids.shape != knn_dists.shape or knn_ids.shape[0] != n:
            raise InputError(f"kNN lists must both be (N={n}, k); got {knn_ids.shape} and {np.shape(knn_dists)}")
        nn = min(nn, knn_ids.shape[1])
        ids = np.ascontiguousarray(knn_ids[:, :nn], dtype=np.int32)
        dists = np.ascontiguousarray(knn_dists[:, :nn], dtype=np.float32)
        epochs = n_epochs or (100 if n > LARGE_N else 200)
        info.update(n_neighbors=nn, n_epochs=epochs)
        check_cancel(cancel)
        umap = import_umap()

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "no search index", "n_jobs overridden by seed"
            reducer = umap.UMAP(
                n_neighbors=nn, n_components=2, metric="cosine", min_dist=min_dist,
                n_epochs=epochs, random_state=seed, precomputed_knn=(ids, dists),
                force_approximation_algorithm=True, low_memory=True, verbose=False,
            )
            coords = reducer.fit_transform(z)
        coords = np.asarray(coords, dtype=np.float32)
        if not np.isfinite(coords).all():
            raise RuntimeError("UMAP produced non-finite coordinates")
        info["method"] = "umap"
    except Exception as e:  # noqa: BLE001 - any UMAP failure falls back to PCA
        from .errors import Cancelled

        if isinstance(e, Cancelled) or not fallback:
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        coords = pca_2d(z, seed)
        info["method"] = f"pca (umap failed: {type(e).__name__}: {first})"
    info["seconds"] = time.perf_counter() - start
    return (coords, info) if return_info else coords
