"""Cosine k-nearest-neighbour search over unit embeddings (N, D), behind `knn_search`.

Backends (``search``; `resolve_search` picks one):

- ``exact``: brute force, every pair (the default up to EXACT_SEARCH_MAX_N): on the CPU the
  blocked machinery below with all pairs of row blocks (each pair once, exact fp32 products);
  on a CUDA machine faiss-gpu or torch (see below).
- ``blocked`` (the default above that): the examples are clustered into cells of about
  ``cell_size`` points (k-means in a small PCA space of the unit embeddings, so the
  clustering is cheap); each cell is compared with itself and its ``nprobe`` nearest cells
  by exact fp32 matrix products in the ORIGINAL space, each unordered pair of cells once
  (both sides take their neighbours from the same product). Only the candidate set is
  approximate: every similarity it returns is exact, and with ``nprobe`` >= the number
  of cells it is an exhaustive (exact) search.
- ``ivf``, ``hnsw``: faiss IVFFlat / HNSW indexes (kept as alternatives).
- On a machine with CUDA, ``exact``/``auto`` run on the GPU: faiss-gpu when installed,
  else blockwise torch matmuls with top-k (`torch_knn`, the same code runs on CPU torch).

Why a cell search of our own next to faiss IVF: it computes each pair of cells once for
both sides, as single-threaded BLAS products merged into numba heaps (`knn_heaps`); when
the condition below was set it measured 1.7x faster than faiss IVF with the same cells and
probes at equal recall (50k x 512). It is kept only as long as `bench/selection.py`,
whose kNN table prints that comparison, shows it at least 1.5x faster; below that,
``blocked`` should give way to ``ivf``.

No N x N matrix is formed: every search works in blocks or tiles of bounded size. This
module does not build graphs (`graph` does, from the lists returned here).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

from .embeddings import _ROW_BLOCK
from .errors import InputError, check_cancel
from .knn_bounds import _cell_balls, _partner_bounds
from .knn_heaps import _lists_from_heaps, _own_heaps, _update_heaps

# Below this many examples the kNN search is exact (every pair; on the GPU when present).
EXACT_SEARCH_MAX_N = 20_000
# Rows per block in blockwise searches (tiles are BLOCK_ROWS x BLOCK_ROWS in graph.range_graph).
BLOCK_ROWS = 4096
# Blocked search defaults: points per cell, cells compared with each cell (itself included),
# dimension of the PCA space the cells are clustered in.
CELL_SIZE = 128
CELL_PROBES = 8
CELL_SPACE_DIM = 32
# Threads computing similarity blocks in the blocked search, and threads merging them into the
# heaps (`_MERGE_WORKERS`, the calling thread included); None: one per core the process may
# use, at most 4. With one merger the merges (a third of the CPU time) ran on one core while
# the products waited for them (see docs/benchmarks.md, "both cores").
_BLOCK_WORKERS: int | None = None
_MAX_BLOCK_WORKERS = 4


_MERGE_WORKERS: int | None = None


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def merge_workers() -> int:
    """Threads merging blocks into the kNN heaps: `_MERGE_WORKERS`, else the usable cores (<= 4)."""
    if _MERGE_WORKERS is not None:
        return max(1, int(_MERGE_WORKERS))
    return max(1, min(_MAX_BLOCK_WORKERS, _usable_cores()))


def block_workers() -> int:
    """Producer threads of the blocked search: `_BLOCK_WORKERS`, else the usable cores (<= 4)."""
    if _BLOCK_WORKERS is not None:
        return max(1, int(_BLOCK_WORKERS))
    return max(1, min(_MAX_BLOCK_WORKERS, _usable_cores()))
# Exact CPU search: rows per block. Blocked/exact products are tiles of at most
# _TILE_ROWS x _TILE_COLUMNS (64 MB in fp32).
_EXACT_BLOCK = 1024
_TILE_ROWS = 2048
_TILE_COLUMNS = 8192
# faiss GPU k-selection limit.
_FAISS_GPU_MAX_K = 2048


def _no_nvidia_driver() -> bool:
    """True only where CUDA certainly cannot work: Linux without the NVIDIA kernel driver
    (nor WSL's GPU device). Lets CPU-only runs skip importing torch (~4 s, ~0.7 GiB) just
    to learn that there is no GPU."""
    return (sys.platform.startswith("linux") and not os.path.exists("/proc/driver/nvidia")
            and not os.path.exists("/dev/dxg"))


def _torch_cuda_available() -> bool:
    if "torch" not in sys.modules and _no_nvidia_driver():
        return False
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # torch missing or broken CUDA: CPU path
        return False


def _faiss_gpu_available() -> bool:
    try:
        import faiss

        return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    except Exception:
        return False


SEARCHES = ("auto", "exact", "blocked", "ivf", "hnsw")
# faiss IVF trains one inverted list per 39 examples at least; below that the search is exact.
IVF_MIN_N = 39


def small_data_fallback(n: int, search: str) -> str | None:
    """Why `search` cannot serve N examples (the search then runs exact), or None when it can."""
    if search == "ivf" and n < IVF_MIN_N:
        return f"ivf search needs at least {IVF_MIN_N} examples (N={n}); using exact search"
    return None


def resolve_search(n: int, search: str, device: str = "auto") -> str:
    """Pick the kNN backend: 'exact', 'blocked', 'ivf', 'hnsw', 'torch-cuda' or 'faiss-gpu'.

    With CUDA present (device 'auto' or 'cuda'), 'auto' and 'exact' run exact on the GPU
    (faiss-gpu when installed, else torch); the approximate CPU backends stay on the CPU.
    """
    if search not in SEARCHES:
        raise InputError(f"unknown graph search {search!r}; choose one of {', '.join(SEARCHES)}")
    if device not in ("auto", "cpu", "cuda"):
        raise InputError(f"unknown graph device {device!r}; choose auto, cpu or cuda")
    if device in ("auto", "cuda"):
        if search in ("auto", "exact"):
            if _faiss_gpu_available():
                return "faiss-gpu"
            if _torch_cuda_available():
                return "torch-cuda"
        if device == "cuda" and not (_faiss_gpu_available() or _torch_cuda_available()):
            raise InputError("graph device 'cuda' asked for, but no CUDA device is available")
    if search == "auto":
        return "exact" if n <= EXACT_SEARCH_MAX_N else "blocked"
    if small_data_fallback(n, search):
        return "exact"
    return search


def _drop_self(ids: np.ndarray, sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Remove each row's own index from (N, k+1) search results, keep k columns."""
    n = ids.shape[0]
    is_self = ids == np.arange(n)[:, None]
    # Rows where self was not returned (duplicates ahead of it): drop the last column.
    no_self = ~is_self.any(axis=1)
    is_self[no_self, -1] = True
    # Rows where self came back twice cannot happen (ids are distinct per row).
    keep = ~is_self
    return ids[keep].reshape(n, k), sims[keep].reshape(n, k)


def torch_knn(z: np.ndarray, k: int, device="cpu", block_rows: int | None = None,
              progress=None, cancel=None) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine kNN of unit rows z (N, D), self excluded, by blockwise torch matmuls.

    Each block of rows is multiplied with all of z on `device` (fp32, TF32 off), its own
    diagonal is masked with -inf (so self is excluded by index, even among duplicates),
    and torch.topk keeps the k largest. Memory on the device: z plus one block of
    block_rows x N floats (by default about 1 GiB). This is the CUDA path when faiss-gpu
    is absent; the same code runs on CPU torch (tests).
    Returns (ids (N, k) int64, cos (N, k) float32, descending).
    """
    import torch

    n = z.shape[0]
    if not 1 <= k < n:
        raise InputError(f"k={k} must be in [1, N-1={n - 1}]")
    rows = int(block_rows or max(1, min(n, (1 << 28) // n)))
    ids = np.empty((n, k), dtype=np.int64)
    cos = np.empty((n, k), dtype=np.float32)
    dev = torch.device(device)
    precision = torch.get_float32_matmul_precision()
    if precision != "highest":  # TF32 would move cosines by ~1e-3: threshold decisions change
        torch.set_float32_matmul_precision("highest")
    try:
        with torch.inference_mode():
            zt = torch.from_numpy(np.ascontiguousarray(z, dtype=np.float32)).to(dev)
            for start in range(0, n, rows):
                check_cancel(cancel)
                end = min(n, start + rows)
                sim = zt[start:end] @ zt.T  # (b, N)
                local = torch.arange(end - start, device=dev)
                sim[local, local + start] = -math.inf
                top = torch.topk(sim, k, dim=1, largest=True, sorted=True)
                cos[start:end] = top.values.cpu().numpy()
                ids[start:end] = top.indices.cpu().numpy()
                del sim, top
                if progress:
                    progress(end / n, f"kNN search (torch {dev.type})", {})
    finally:
        if precision != "highest":
            torch.set_float32_matmul_precision(precision)
    return ids, cos


# ---------------------------------------------------------------------------------------
# Blocked (cell) search: exact fp32 products between nearby cells, per-row top-k heaps.


@numba.njit(cache=True)
def _permute_rows_inplace(z, order):
    """z[i] <- z[order[i]] for all i, following cycles (one row of extra memory)."""
    n = z.shape[0]
    done = np.zeros(n, dtype=np.bool_)
    tmp = np.empty(z.shape[1], dtype=z.dtype)
    for start in range(n):
        if done[start]:
            continue
        tmp[:] = z[start]
        i = start
        while True:
            done[i] = True
            src = order[i]
            if src == start:
                z[i] = tmp
                break
            z[i] = z[src]
            i = src


def _top_axes(sample: np.ndarray, dim: int, seed: int) -> np.ndarray:
    """The `dim` leading principal axes (D, dim) of a centred sample (randomised subspace
    iteration on its D x D covariance: a few small matmuls instead of a full eigensolver)."""
    cov = sample.T @ sample
    rng = np.random.default_rng(seed)
    q = np.linalg.qr(cov @ rng.standard_normal((cov.shape[0], dim + 8)).astype(cov.dtype))[0]
    for _ in range(4):
        q = np.linalg.qr(cov @ q)[0]
    vals, vecs = np.linalg.eigh(q.T @ cov @ q)
    return np.ascontiguousarray((q @ vecs)[:, np.argsort(vals)[::-1][:dim]], dtype=np.float32)


def _cell_space(z: np.ndarray, dim: int, seed: int) -> np.ndarray:
    """Unit rows (N, D) projected on their top `dim` principal axes (float32), for clustering."""
    n, d = z.shape
    if d <= dim:
        return z
    rng = np.random.default_rng(seed)
    # 4096 rows in float32 find 32 axes good enough to cluster by (the cells only decide
    # which pairs are compared); 8192 rows in float64 cost 0.04 s of a 0.6 s graph at 50k.
    sample = z[np.sort(rng.choice(n, min(n, 4096), replace=False))].astype(np.float32)
    sample -= sample.mean(axis=0)
    basis = _top_axes(sample, dim, seed)
    y = np.empty((n, dim), dtype=np.float32)

    def project(start):
        np.matmul(z[start : start + _ROW_BLOCK], basis, out=y[start : start + _ROW_BLOCK])

    # Row blocks on `block_workers` threads (numpy releases the GIL): the callers hold BLAS
    # to one thread, and this product is 2 N D dim flops (33 GFLOP at 1M x 512).
    with ThreadPoolExecutor(max_workers=block_workers()) as pool:
        list(pool.map(project, range(0, n, _ROW_BLOCK)))
    return y


def _kmeans(y: np.ndarray, n_centroids: int, seed: int, per_centroid: int):
    """faiss k-means (10 iterations, trained on <= per_centroid points per centroid).

    Returns (labels (N,) int64, centroids (n_centroids, d) float32)."""
    import faiss

    n = y.shape[0]
    if n_centroids <= 1:
        return np.zeros(n, dtype=np.int64), y.mean(axis=0, keepdims=True).astype(np.float32)
    rng = np.random.default_rng(seed)
    n_train = min(n, per_centroid * n_centroids)
    train = y if n_train == n else y[np.sort(rng.choice(n, n_train, replace=False))]
    km = faiss.Kmeans(y.shape[1], n_centroids, niter=10, seed=int(seed) % (2**31), verbose=False,
                      min_points_per_centroid=1, max_points_per_centroid=n_train)
    km.train(np.ascontiguousarray(train, dtype=np.float32))
    labels = np.empty(n, dtype=np.int64)
    step = 16 * _ROW_BLOCK
    for start in range(0, n, step):
        labels[start : start + step] = km.index.search(np.ascontiguousarray(y[start : start + step]), 1)[1][:, 0]
    return labels, km.centroids


def make_cells(z: np.ndarray, cell_size: int = CELL_SIZE, nprobe: int = CELL_PROBES,
               seed: int = 0):
    """Cluster unit rows into cells and pair each cell with its nprobe nearest cells.

    Returns (order, offsets, partner_ptr, partners): the points of cell c are
    order[offsets[c]:offsets[c+1]]; the cells compared with c are partners[partner_ptr[c]:
    partner_ptr[c+1]], all > c (each unordered pair of cells once; the relation "b is
    among a's nprobe nearest cells" is symmetrised). Each cell is also compared with itself.
    """
    import faiss

    n = z.shape[0]
    nlist = max(1, int(round(n / max(1, int(cell_size)))))
    if nlist == 1:
        return (np.arange(n, dtype=np.int64), np.array([0, n], dtype=np.int64),
                np.zeros(2, dtype=np.int64), np.zeros(0, dtype=np.int64))
    y = _cell_space(z, CELL_SPACE_DIM, seed)
    # Two-level k-means: ~sqrt(nlist) coarse groups, each split into cells of ~cell_size
    # points. Costs O(N sqrt(nlist)) instead of O(N nlist) and keeps cells balanced.
    coarse, _ = _kmeans(y, max(1, int(round(math.sqrt(nlist)))), seed, 256)
    labels = np.empty(n, dtype=np.int64)
    centroids = []
    base = 0
    members_of = np.argsort(coarse, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(coarse))])
    groups = [(g, members_of[bounds[g] : bounds[g + 1]]) for g in range(len(bounds) - 1)
              if bounds[g + 1] > bounds[g]]

    def split(group):
        g, members = group
        sub = max(1, int(round(len(members) / max(1, int(cell_size)))))
        # OpenMP's thread count is a per-thread setting: limit this thread's own. (BLAS
        # limits are process-wide: set once below, never from two threads at a time.)
        with _single_thread_blas("openmp"):
            return members, sub, _kmeans(y[members], sub, seed + 1 + g, 32)

    # The groups' k-means are independent and seeded by group, so running them on a few
    # threads (faiss releases the GIL; each call single-threaded) gives the same cells.
    # Largest groups first: a k-means costs about size^2 / cell_size, and coarse groups are
    # uneven (tight 50k: two of 10k points, 25 ms each, among 20 of 2.5k on average); in
    # group order one of them started last and the pool's wall time went 0.07 -> 0.08-0.17 s.
    # Cells are numbered in group order whatever order the k-means finish in.
    by_size = sorted(range(len(groups)), key=lambda q: -len(groups[q][1]))
    with _single_thread_blas(), ThreadPoolExecutor(max_workers=block_workers()) as pool:
        futures = {q: pool.submit(split, groups[q]) for q in by_size}
        for q in range(len(groups)):
            members, sub, (sub_labels, sub_centroids) = futures.pop(q).result()
            labels[members] = base + sub_labels
            centroids.append(sub_centroids)
            base += sub
    del y
    nlist = base
    cent = np.ascontiguousarray(np.concatenate(centroids), dtype=np.float32)
    order = np.argsort(labels, kind="stable").astype(np.int64)
    offsets = np.zeros(nlist + 1, dtype=np.int64)
    np.cumsum(np.bincount(labels, minlength=nlist), out=offsets[1:])
    near = faiss.knn(cent, cent, min(int(nprobe), nlist), metric=faiss.METRIC_L2)[1]
    a = np.repeat(np.arange(nlist), near.shape[1])
    b = near.ravel()
    ok = (b >= 0) & (a != b)
    lo, hi = np.minimum(a[ok], b[ok]), np.maximum(a[ok], b[ok])
    key = np.unique(lo * nlist + hi)
    lo, hi = key // nlist, key % nlist
    partner_ptr = np.zeros(nlist + 1, dtype=np.int64)
    np.cumsum(np.bincount(lo, minlength=nlist), out=partner_ptr[1:])
    return order, offsets, partner_ptr, hi.astype(np.int64)


# A pair of cells is skipped when the bound on its similarities lies this far below every
# heap floor on both sides: fp32 products of D <= a few thousand unit rows err by at most
# about D x 6e-8 (3e-5 at D = 512), so no product that could enter a heap is ever skipped.
_BOUND_MARGIN = 1e-3


def _single_thread_blas(user_api: str | None = "blas"):
    """Context limiting BLAS (user_api=None: also OpenMP, i.e. faiss) to one thread.

    Uses threadpoolctl (a scikit-learn dependency); without it, a no-op. Many small
    multi-threaded calls (k-means iterations, small matmuls) stall on a few shared cores:
    every barrier waits for a thread the OS has not scheduled yet.
    """
    try:
        from threadpoolctl import threadpool_limits

        return threadpool_limits(1, user_api=user_api)
    except Exception:  # threadpoolctl missing: run with the default threads
        return contextlib.nullcontext()


def blocked_knn(z: np.ndarray, k: int, cell_size: int = CELL_SIZE, nprobe: int = CELL_PROBES,
                seed: int = 0, progress=None, cancel=None):
    """Approximate cosine kNN of unit rows z (N, D), self excluded; exact similarities.

    See the module docstring ('blocked'). z is not modified.
    Returns (ids (N, k) int64, cos (N, k) float32 descending); -1 / -inf where a cell and
    its partners hold fewer than k other points.
    """
    order, hs, hi = _blocked_heaps(z, k, cell_size, nprobe, seed, False, progress, cancel)
    return _heaps_to_lists(order, hs, hi)


def _heaps_to_lists(order, hs, hi):
    n, k = hs.shape
    ids = np.empty((n, k), dtype=np.int64)
    cos = np.empty((n, k), dtype=np.float32)
    _lists_from_heaps(order, hs, hi, ids, cos)
    return ids, cos


def _blocked_heaps(z, k, cell_size, nprobe, seed, inplace, progress=None, cancel=None,
                   exhaustive: bool = False, stats: dict | None = None):
    """The blocked search up to its heaps: (order, hs (N, k), hi (N, k)) in cell order.

    inplace=True reorders z's rows in place (cell order) instead of making a sorted copy;
    the caller must not use z afterwards. exhaustive=True compares every pair (the exact
    CPU search): cells are then plain runs of _EXACT_BLOCK consecutive rows, no clustering.

    The heaps (hs similarities, hi original ids) are in cell order; each ends as the k best
    of its offers under `knn_heaps._worse`'s total order, so results do not depend on the order of
    the offers, hence not on timing or thread counts.

    Threading: pass 1 (each cell with itself) runs on `block_workers` threads, each taking
    whole cells (a BLAS product and `_own_heaps`, GIL released), since it touches only the
    cell's own heaps. In pass 2 (cells with their partners), producer threads compute the
    blocks (one single-threaded BLAS matmul per block) while merger threads
    (`merge_workers`, the calling thread among them) merge them into the heaps (numba, GIL
    released): each owns the heaps of the cells whose id mod the merger count is its number
    and takes every block in task order, so no two threads write one heap. Coarse threads
    instead of BLAS's or faiss's own pools, because small multi-threaded calls alternating
    with other work stall badly on a 2-core machine shared with other processes (every
    barrier waits for a descheduled thread).

    Pass 2 skips a partner cell b of cell c when the bound on their similarities
    (`_partner_bounds`: each cell's rows lie in a cap around its mean direction) lies
    `_BOUND_MARGIN` below the floor (k-th best) of every heap of c's rows and of b's: none of
    their products could enter a heap, now or later (floors only rise), so the lists hold
    the same candidates as without the bound, except where two tie with the k-th to the
    last bit (a block's products may round differently once its columns change).
    Neighbouring cells of other clusters are skipped that way (tight 50k: 54% of the
    pairs; see docs/benchmarks.md).

    stats: when a dict, filled with what the search cost: `cells_seconds` (clustering),
    `search_seconds` (products and merges; `own_seconds` of it the reordering and pass 1),
    `pairs` (similarities computed), `pairs_skipped` (pass-2 similarities the bound
    skipped), `flops`
    (2 D pairs, the products' floating-point operations), `workers` (producer threads) and
    `mergers` (merger threads).
    """
    started = time.perf_counter()
    n = z.shape[0]
    if exhaustive:
        order = np.arange(n, dtype=np.int64)
        offsets = np.append(np.arange(0, n, _EXACT_BLOCK, dtype=np.int64), n)
        pptr = partners = None
    else:
        with _single_thread_blas(None):
            order, offsets, pptr, partners = make_cells(z, cell_size, nprobe, seed)
    cells_done = time.perf_counter()
    if exhaustive:
        zs = z
    elif inplace:
        _permute_rows_inplace(z, order)
        zs = z
    else:
        zs = z[order]
    hs = np.full((n, k), -np.inf, dtype=np.float32)
    hi = np.full((n, k), -1, dtype=np.int32)
    nlist = len(offsets) - 1
    # Pass 1, each cell with itself (row side only): the heaps start from the nearest
    # candidates, so fewer insertions happen (and are undone) in pass 2, each cell with its
    # partner cells (exhaustive: with all later rows), where both sides are updated. Tiles
    # are at most _TILE_ROWS x _TILE_COLUMNS, so memory stays bounded even for a huge cell
    # (e.g. thousands of duplicate points that k-means cannot split).
    bounds = None if exhaustive else _partner_bounds(*_cell_balls(zs, offsets), pptr, partners)
    own_tasks = []  # per cell, its tiles: pass 1 touches only the cell's own heaps
    for c in range(nlist):
        a0, a1 = int(offsets[c]), int(offsets[c + 1])
        own_tasks.append([(r0, min(a1, r0 + _TILE_ROWS), lo, min(a1, lo + _TILE_COLUMNS))
                          for r0 in range(a0, a1, _TILE_ROWS) for lo in range(a0, a1, _TILE_COLUMNS)])

    def pass2_tasks(pptr, partners):
        tasks = []
        for c in range(nlist):
            a0, a1 = int(offsets[c]), int(offsets[c + 1])
            if exhaustive:
                kind, first, total = "range", a1, n
            elif pptr[c + 1] > pptr[c]:
                others = partners[pptr[c] : pptr[c + 1]]
                kind, first, total = "partners", 0, int((offsets[others + 1] - offsets[others]).sum())
            else:
                continue
            for r0 in range(a0, a1, _TILE_ROWS):
                for lo in range(first, total, _TILE_COLUMNS):
                    tasks.append((r0, min(a1, r0 + _TILE_ROWS), kind, lo, min(total, lo + _TILE_COLUMNS), c))
        return tasks

    def kept_partners():
        """(pptr, partners) without the partner cells whose bound lies `_BOUND_MARGIN`
        below the floor of every heap on both sides after pass 1. Deciding once, from the
        floors pass 1 leaves (the same whatever the threads), keeps every block's columns,
        hence every product's rounding, independent of timing."""
        floor = np.full(nlist, np.inf)
        filled = np.diff(offsets) > 0
        floor[filled] = np.minimum.reduceat(hs[:, 0], offsets[:-1][filled])
        owner = np.repeat(np.arange(nlist), np.diff(pptr))
        keep = ~(bounds + _BOUND_MARGIN < np.minimum(floor[owner], floor[partners]))
        kept_ptr = np.zeros(nlist + 1, dtype=np.int64)
        np.cumsum(np.bincount(owner[keep], minlength=nlist), out=kept_ptr[1:])
        return kept_ptr, partners[keep]

    kept_ptr, kept = pptr, partners  # pass 2's partner cells (fewer after pass 1, bound)
    tasks = pass2_tasks(pptr, partners)  # before the bound: for the progress shares

    def own_cells(cells):
        for c in cells:
            for r0, r1, lo, hi_ in own_tasks[c]:
                _own_heaps(zs[r0:r1] @ zs[lo:hi_].T, r0, np.arange(lo, hi_), order, hs, hi)

    def block(task):
        r0, r1, kind, lo, hi_, c = task
        if kind == "range":
            return r0, np.arange(lo, hi_), zs[r0:r1] @ zs[lo:hi_].T, c
        others = kept[kept_ptr[c] : kept_ptr[c + 1]]
        cols = np.concatenate([np.arange(offsets[b], offsets[b + 1]) for b in others])[lo:hi_]
        return r0, cols, zs[r0:r1] @ zs[cols].T, c

    # Pass 1 on `block_workers` threads, cells in chunks: each cell's heaps are touched by
    # the one thread that owns the chunk, and a heap's result does not depend on the order
    # of its offers (`knn_heaps._worse` is a total order), so the chunks may finish in any order.
    # Pass 2's mergers: heap rows are split by cell among `mergers` threads (cell id mod
    # mergers); every merger walks all blocks in task order and offers only to the heaps it
    # owns, so no two threads write one heap. The calling thread is merger 0.
    mergers = merge_workers()
    cell_of_pos = np.repeat(np.arange(nlist, dtype=np.int64), np.diff(offsets))
    owned = [(cell_of_pos % mergers) == w for w in range(mergers)]
    del cell_of_pos
    done: dict = {}
    cond = threading.Condition()
    state = {"next": [0] * mergers, "stop": False, "error": None}
    unseen: dict = {}

    def produce(first, stride):
        for t in range(first, len(tasks), stride):
            with cond:  # stay at most `ahead` blocks ahead of the slowest merger (memory bound)
                while not state["stop"] and t >= min(state["next"]) + ahead:
                    cond.wait()
                if state["stop"]:
                    return
            try:
                item = block(tasks[t])
            except BaseException as exc:  # handed to the mergers, re-raised by merger 0
                item = exc
            with cond:
                done[t] = item
                unseen[t] = mergers
                cond.notify_all()

    def take(w, t):
        """Block t for merger w (None when stopping), waiting for it."""
        with cond:
            while t not in done and not state["stop"]:
                cond.wait()
            if state["stop"] and t not in done:
                return None
            item = done[t]
            unseen[t] -= 1
            if unseen[t] == 0:
                del done[t], unseen[t]
            state["next"][w] = t + 1
            cond.notify_all()
            return item

    def merge(w, item):
        r0, cols, sim, c = item
        _update_heaps(sim, r0, cols, order, hs, hi, c % mergers == w, owned[w])

    def merge_thread(w):
        try:
            for t in range(len(tasks)):
                item = take(w, t)
                if item is None or isinstance(item, BaseException):
                    return
                merge(w, item)
                del item
        except BaseException as exc:  # re-raised by merger 0
            with cond:
                state["error"] = exc
                state["stop"] = True
                cond.notify_all()

    workers = block_workers()
    ahead = 2 * workers + mergers
    report = max(1, len(tasks) // 50)
    own_pairs = sum((r1 - r0) * (hi_ - lo) for tiles in own_tasks for r0, r1, lo, hi_ in tiles)
    pairs = own_pairs + sum((t[1] - t[0]) * (t[4] - t[3]) for t in tasks)
    own_share = own_pairs / max(1, pairs)
    with _single_thread_blas():
        chunk = 16
        chunks = [range(c, min(nlist, c + chunk)) for c in range(0, nlist, chunk)]
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="blocked-knn-own") as pool:
            futures = [pool.submit(own_cells, cells) for cells in chunks]
            try:
                for q, fut in enumerate(futures):
                    fut.result()
                    if q % max(1, len(chunks) // 10) == 0:
                        check_cancel(cancel)
                        if progress:
                            progress(own_share * q / len(chunks), "kNN search (blocked)", {})
            finally:
                for fut in futures:
                    fut.cancel()
        own_done = time.perf_counter()
        planned = pairs - own_pairs
        if bounds is not None:
            kept_ptr, kept = kept_partners()
            tasks = pass2_tasks(kept_ptr, kept)
            report = max(1, len(tasks) // 50)
        skipped = planned - sum((t[1] - t[0]) * (t[4] - t[3]) for t in tasks)
        threads = [threading.Thread(target=produce, args=(w, workers), name=f"blocked-knn-{w}",
                                    daemon=True) for w in range(workers)]
        threads += [threading.Thread(target=merge_thread, args=(w,), name=f"blocked-knn-merge-{w}",
                                     daemon=True) for w in range(1, mergers)]
        for th in threads:
            th.start()
        try:
            for t in range(len(tasks)):
                item = take(0, t)
                if state["error"] is not None:
                    raise state["error"]
                if item is None:  # stopped without an error: cannot happen, but never hang
                    raise RuntimeError("blocked kNN search stopped early")
                if isinstance(item, BaseException):
                    raise item
                merge(0, item)
                del item
                if t % report == 0:
                    check_cancel(cancel)
                    if progress:
                        progress(own_share + (1 - own_share) * t / len(tasks), "kNN search (blocked)", {})
            for th in threads[workers:]:
                th.join()
            if state["error"] is not None:
                raise state["error"]
        finally:
            with cond:
                state["stop"] = True
                cond.notify_all()
            for th in threads:
                th.join()
    if progress:
        progress(1.0, "kNN search (blocked)", {})
    if stats is not None:
        computed = int(pairs - skipped)
        stats.update(cells_seconds=cells_done - started, search_seconds=time.perf_counter() - cells_done,
                     pairs=computed, pairs_skipped=int(skipped), flops=2.0 * zs.shape[1] * computed,
                     own_seconds=own_done - cells_done, workers=workers, mergers=mergers)
    return order, hs, hi


def knn_search(
    z: np.ndarray,
    k: int,
    search: str = "auto",
    nprobe: int | None = None,
    device: str = "auto",
    seed: int = 0,
    progress=None,
    cancel=None,
    cell_size: int | None = None,
    stats: dict | None = None,
) -> tuple[np.ndarray, np.ndarray, str]:
    """Cosine kNN of unit rows z (N, D), self excluded.

    Returns (ids (N, k) int64, cos (N, k) float32 in descending order, backend).
    Approximate backends may return -1 ids (with -inf cos) where fewer than k were found.
    nprobe: cells compared per cell ('blocked') or lists visited per query ('ivf').
    stats: a dict the 'blocked' and 'exact' backends fill with their cost (see `_blocked_heaps`).
    z is not modified. Raises InputError when k is not within 1..N-1.
    """
    import faiss

    n, d = z.shape
    if not 1 <= k < n:
        raise InputError(f"k={k} is larger than N-1={n - 1}" if k >= n else f"k must be positive, got {k}")
    backend = resolve_search(n, search, device)
    if backend == "faiss-gpu" and k + 1 > _FAISS_GPU_MAX_K:
        backend = "torch-cuda" if _torch_cuda_available() else "exact"
    if backend == "torch-cuda":
        ids, cos = torch_knn(z, k, "cuda", progress=progress, cancel=cancel)
        return ids, cos, backend
    if backend in ("blocked", "exact"):
        order, hs, hi = _blocked_heaps(z, k, cell_size or CELL_SIZE, nprobe or CELL_PROBES, seed,
                                       False, progress, cancel, exhaustive=backend == "exact", stats=stats)
        ids, cos = _heaps_to_lists(order, hs, hi)
        return ids, cos, backend
    kk = k + 1
    gpu_resources = None  # held for as long as the GPU index lives
    if backend == "faiss-gpu":
        gpu_resources = faiss.StandardGpuResources()
        index = faiss.index_cpu_to_gpu(gpu_resources, 0, faiss.IndexFlatIP(d))
    elif backend == "ivf":
        nlist = int(min(max(16, 4 * math.sqrt(n)), 16384, n // 39))
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        n_train = min(n, max(64 * nlist, 50_000))
        train = z if n_train == n else z[np.sort(rng.choice(n, n_train, replace=False))]
        index.cp.seed = seed
        index.train(np.ascontiguousarray(train))
        index.nprobe = nprobe or max(8, nlist // 64)
    else:  # hnsw
        index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 64
        index.hnsw.efSearch = max(2 * kk, 64)
    check_cancel(cancel)
    index.add(z)
    ids = np.empty((n, kk), dtype=np.int64)
    sims = np.empty((n, kk), dtype=np.float32)
    block = 16 * BLOCK_ROWS
    for start in range(0, n, block):
        check_cancel(cancel)
        s, i = index.search(z[start : start + block], kk)
        sims[start : start + block] = s
        ids[start : start + block] = i
        if progress:
            progress(min(1.0, (start + block) / n), f"kNN search ({backend})", {})
    del index, gpu_resources
    sims[ids < 0] = -np.inf
    ids_out, sims_out = _drop_self(ids, sims, k)
    return ids_out, sims_out, backend
