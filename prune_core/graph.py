"""Neighbour graphs over warm-up embeddings.

The graph is a symmetric scipy CSR matrix (N, N) of float32 similarity weights
s = 0.5 + 0.5 * cos(z_i, z_j) in [0, 1], kept only where s > tau, with every
example its own neighbour (diagonal weight 1), int32 column indices. It is built from a
cosine k-nearest-neighbour search, or from an exact blockwise range search when ``k=None``
(the untruncated tau-graph that the official dense loop implicitly uses).

kNN backends (``search``):

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

No N x N dense matrix is ever formed: searches and range graphs work in tiles, and the
symmetrisation is a numba pass over the edge list (no scipy transpose copies).
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from dataclasses import asdict, dataclass

import numba
import numpy as np
import scipy.sparse as sp

from .errors import InputError, check_cancel

# Below this many examples the kNN search is exact (every pair; on the GPU when present).
EXACT_SEARCH_MAX_N = 20_000
# Rows per block in blockwise searches (tiles are BLOCK_ROWS x BLOCK_ROWS in range search).
BLOCK_ROWS = 4096
# Blocked search defaults: points per cell, cells compared with each cell (itself included),
# dimension of the PCA space the cells are clustered in.
CELL_SIZE = 128
CELL_PROBES = 8
CELL_SPACE_DIM = 32
# Rows per block when normalising / projecting (bounds temporaries to ~32 MB at D = 512).
_ROW_BLOCK = 16384
# Threads computing similarity blocks in the blocked search (the calling thread merges).
_BLOCK_WORKERS = 1
# Exact CPU search: rows per block. Blocked/exact products are tiles of at most
# _TILE_ROWS x _TILE_COLUMNS (64 MB in fp32).
_EXACT_BLOCK = 1024
_TILE_ROWS = 2048
_TILE_COLUMNS = 8192
# faiss GPU k-selection limit.
_FAISS_GPU_MAX_K = 2048


@dataclass(frozen=True)
class GraphInfo:
    """How a graph was built, for manifests and the app."""

    n: int
    k: int | None
    tau: float
    tau_requested: str
    search: str
    pca_dim: int | None
    edges: int  # stored off-diagonal entries (each undirected edge counts twice)
    mean_degree: float  # neighbours per example, self excluded
    median_degree: float
    isolated_fraction: float  # share of examples with no neighbour but themselves
    seconds: float
    fallback: str | None = None  # why another backend than the one asked for was used

    def to_dict(self) -> dict:
        return asdict(self)


def similarity_from_cosine(cos: np.ndarray) -> np.ndarray:
    """Map cosine similarity in [-1, 1] to the method's similarity 0.5 + 0.5 cos in [0, 1]."""
    return (0.5 + 0.5 * np.asarray(cos, dtype=np.float32)).astype(np.float32, copy=False)


@numba.njit(parallel=True, cache=True)
def _normalize_rows(src, out, bad):
    """out[i] = float32(src[i]) / ||float32(src[i])|| (norm accumulated in float64)."""
    n, d = src.shape
    for i in numba.prange(n):
        total = 0.0
        for j in range(d):
            v = np.float32(src[i, j])
            out[i, j] = v
            total += np.float64(v) * np.float64(v)
        if not np.isfinite(total):
            bad[i] = True
        elif total > 0.0:
            norm = np.float32(np.sqrt(total))
            for j in range(d):
                out[i, j] = out[i, j] / norm


def normalize_embeddings(embeddings: np.ndarray) -> np.ndarray:
    """Validate and L2-normalise embeddings (N, D) to a new float32 array of unit rows.

    Rows of zero norm stay zero (they are nobody's neighbour but their own). The input
    is never modified; the only large allocation is the float32 result. The dense
    reference loop (`reference.dense_official_greedy`) normalises with this function too,
    so both see bit-identical unit vectors.
    """
    z = np.asarray(embeddings)
    if z.ndim != 2:
        raise InputError(f"embeddings must be a 2-D array (N, D), got shape {z.shape}")
    if z.shape[0] < 2:
        raise InputError(f"need at least two embeddings to build a graph, got {z.shape[0]}")
    if not (np.issubdtype(z.dtype, np.number) or z.dtype == np.bool_) or np.iscomplexobj(z):
        raise InputError(f"embeddings must be real numbers, got dtype {z.dtype}")
    if z.dtype not in (np.float32, np.float64):
        z = z.astype(np.float32)
    z = np.ascontiguousarray(z)
    out = np.empty(z.shape, dtype=np.float32)
    bad = np.zeros(z.shape[0], dtype=np.bool_)
    if z.size:
        _normalize_rows(z, out, bad)
    if bad.any():
        raise InputError(f"embeddings have NaN or infinite values ({int(bad.sum())} rows)")
    return out


def _pca_reduce(z: np.ndarray, dim: int, seed: int) -> np.ndarray:
    """Project unit rows (N, D) to `dim` principal axes and re-normalise (faiss PCA)."""
    import faiss

    if dim >= z.shape[1]:
        return z
    pca = faiss.PCAMatrix(z.shape[1], dim)
    rng = np.random.default_rng(seed)
    sample = z if z.shape[0] <= 200_000 else z[np.sort(rng.choice(z.shape[0], 200_000, replace=False))]
    pca.train(np.ascontiguousarray(sample))
    reduced = np.empty((z.shape[0], dim), dtype=np.float32)
    for start in range(0, z.shape[0], _ROW_BLOCK):
        reduced[start : start + _ROW_BLOCK] = pca.apply(z[start : start + _ROW_BLOCK])
    return normalize_embeddings(reduced)


def _torch_cuda_available() -> bool:
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


@numba.njit(cache=True, inline="always")
def _heap_replace_top(hs, hi, row, s, j):
    """Replace the smallest entry of row `row`'s min-heap (size k) by (s, j) and sift down."""
    k = hs.shape[1]
    pos = 0
    while True:
        child = 2 * pos + 1
        if child >= k:
            break
        if child + 1 < k and hs[row, child + 1] < hs[row, child]:
            child += 1
        if hs[row, child] < s:
            hs[row, pos] = hs[row, child]
            hi[row, pos] = hi[row, child]
            pos = child
        else:
            break
    hs[row, pos] = s
    hi[row, pos] = j


@numba.njit(cache=True, nogil=True)
def _update_heaps(sim, row0, cols, c0, hs, hi):
    """Offer the similarities of one cell's block to the kNN heaps of both sides.

    sim (m, C): rows are the cell's points (positions row0 + r), columns the candidates at
    positions cols[c]; the first c0 columns are the cell itself. Each row's heap gets every
    column (itself excluded); each candidate outside the cell (c >= c0) gets every row (its
    side of the same pair). Serial on purpose: see `blocked_knn` for the threading.
    """
    m, c_total = sim.shape
    for r in range(m):
        i = row0 + r
        floor = hs[i, 0]  # the heap's smallest kept similarity, cached in a register
        for c in range(c_total):
            s = sim[r, c]
            if s > floor:
                j = cols[c]
                if j != i:
                    _heap_replace_top(hs, hi, i, s, j)
                    floor = hs[i, 0]
    # Columns in chunks of 16 so each pass over the rows reads whole cache lines.
    floors = np.empty(16, dtype=hs.dtype)
    for a in range(c0, c_total, 16):
        b = min(c_total, a + 16)
        for c in range(a, b):
            floors[c - a] = hs[cols[c], 0]
        for r in range(m):
            for c in range(a, b):
                s = sim[r, c]
                if s > floors[c - a]:
                    j = cols[c]
                    _heap_replace_top(hs, hi, j, s, row0 + r)
                    floors[c - a] = hs[j, 0]


@numba.njit(parallel=True, cache=True)
def _lists_from_heaps(order, hs, hi, ids, cos):
    """Sort each heap by similarity (descending) and write it to the row of the original
    example: ids[order[p]] = order[hi[p]], cos[order[p]] = hs[p] (-1 where empty)."""
    n, k = hs.shape
    for p in numba.prange(n):
        srt = np.argsort(-hs[p], kind="mergesort")
        i = order[p]
        for t in range(k):
            j = hi[p, srt[t]]
            ids[i, t] = order[j] if j >= 0 else -1
            cos[i, t] = hs[p, srt[t]]


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
    sample = z[np.sort(rng.choice(n, min(n, 8192), replace=False))].astype(np.float64)
    sample -= sample.mean(axis=0)
    basis = _top_axes(sample, dim, seed)
    y = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, _ROW_BLOCK):
        np.matmul(z[start : start + _ROW_BLOCK], basis, out=y[start : start + _ROW_BLOCK])
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
    for g in range(len(bounds) - 1):
        members = members_of[bounds[g] : bounds[g + 1]]
        if len(members) == 0:
            continue
        sub = max(1, int(round(len(members) / max(1, int(cell_size)))))
        sub_labels, sub_centroids = _kmeans(y[members], sub, seed + 1 + g, 32)
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
                   exhaustive: bool = False):
    """The blocked search up to its heaps: (order, hs (N, k), hi (N, k)) in cell order.

    inplace=True reorders z's rows in place (cell order) instead of making a sorted copy;
    the caller must not use z afterwards. exhaustive=True compares every pair (the exact
    CPU search): cells are then plain runs of _EXACT_BLOCK consecutive rows, no clustering.

    Threading: a producer thread computes the blocks of similarities (one single-threaded
    BLAS matmul per block, GIL released), while the calling thread merges finished blocks
    into the heaps in a fixed order (numba, GIL released), so results do not depend on
    timing. Coarse threads instead of BLAS's or faiss's own pools, because small
    multi-threaded calls alternating with other work stall badly on a 2-core machine
    shared with other processes (every barrier waits for a descheduled thread).
    """
    n = z.shape[0]
    if exhaustive:
        order = np.arange(n, dtype=np.int64)
        offsets = np.append(np.arange(0, n, _EXACT_BLOCK, dtype=np.int64), n)
        pptr = partners = None
    else:
        with _single_thread_blas(None):
            order, offsets, pptr, partners = make_cells(z, cell_size, nprobe, seed)
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
    # partner cells (exhaustive: with all later rows), where both sides are updated. Tasks
    # are tiles of at most _TILE_ROWS x _TILE_COLUMNS, so memory stays bounded even for a
    # huge cell (e.g. thousands of duplicate points that k-means cannot split).
    tasks = []
    for c in range(nlist):
        a0, a1 = int(offsets[c]), int(offsets[c + 1])
        for r0 in range(a0, a1, _TILE_ROWS):
            for lo in range(a0, a1, _TILE_COLUMNS):
                tasks.append((r0, min(a1, r0 + _TILE_ROWS), "own", lo, min(a1, lo + _TILE_COLUMNS), c))
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

    def block(task):
        r0, r1, kind, lo, hi_, c = task
        if kind == "own":
            return r0, np.arange(lo, hi_), hi_ - lo, zs[r0:r1] @ zs[lo:hi_].T
        if kind == "range":
            return r0, np.arange(lo, hi_), 0, zs[r0:r1] @ zs[lo:hi_].T
        others = partners[pptr[c] : pptr[c + 1]]
        cols = np.concatenate([np.arange(offsets[b], offsets[b + 1]) for b in others])[lo:hi_]
        return r0, cols, 0, zs[r0:r1] @ zs[cols].T

    done: dict = {}
    cond = threading.Condition()
    state = {"next": 0, "stop": False}

    def produce(first, stride):
        for t in range(first, len(tasks), stride):
            with cond:  # stay at most `ahead` blocks ahead of the consumer (memory bound)
                while not state["stop"] and t >= state["next"] + ahead:
                    cond.wait()
                if state["stop"]:
                    return
            try:
                item = block(tasks[t])
            except BaseException as exc:  # handed to the consumer, re-raised there
                item = exc
            with cond:
                done[t] = item
                cond.notify_all()

    workers = _BLOCK_WORKERS
    ahead = 2 * workers
    report = max(1, len(tasks) // 50)
    with _single_thread_blas():
        threads = [threading.Thread(target=produce, args=(w, workers), name=f"blocked-knn-{w}",
                                    daemon=True) for w in range(workers)]
        for th in threads:
            th.start()
        try:
            for t in range(len(tasks)):
                with cond:
                    while t not in done:
                        cond.wait()
                    item = done.pop(t)
                    state["next"] = t + 1
                    cond.notify_all()
                if isinstance(item, BaseException):
                    raise item
                r0, cols, c0, sim = item
                # Blocks are merged in task order, so the result does not depend on timing.
                _update_heaps(sim, r0, cols, c0, hs, hi)
                del item, sim
                if t % report == 0:
                    check_cancel(cancel)
                    if progress:
                        progress(t / len(tasks), "kNN search (blocked)", {})
        finally:
            with cond:
                state["stop"] = True
                cond.notify_all()
            for th in threads:
                th.join()
    if progress:
        progress(1.0, "kNN search (blocked)", {})
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
) -> tuple[np.ndarray, np.ndarray, str]:
    """Cosine kNN of unit rows z (N, D), self excluded.

    Returns (ids (N, k) int64, cos (N, k) float32 in descending order, backend).
    Approximate backends may return -1 ids (with -inf cos) where fewer than k were found.
    nprobe: cells compared per cell ('blocked') or lists visited per query ('ivf').
    z is not modified.
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
                                       False, progress, cancel, exhaustive=backend == "exact")
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


def auto_tau(knn_cos: np.ndarray, target_neighbours: int = 10) -> float:
    """The tau at which the median example keeps `target_neighbours` neighbours.

    knn_cos: (N, k) cosine similarities sorted descending per row, k >= target.
    Returns a similarity threshold on the 0.5 + 0.5 cos scale, slightly below the
    median of each row's target-th similarity (neighbour means s > tau).
    """
    target = min(max(1, int(target_neighbours)), knn_cos.shape[1])
    col = similarity_from_cosine(knn_cos[:, target - 1])
    col = col[np.isfinite(col)]
    if col.size == 0:
        raise InputError("tau=auto found no neighbours at all")
    # The lower median, so at least half of the examples keep the target count.
    return float(np.nextafter(np.float32(np.quantile(col, 0.5, method="lower")), np.float32(0)))


def _parse_tau(tau) -> tuple[float | None, str]:
    if isinstance(tau, str):
        if tau.strip().lower() == "auto":
            return None, "auto"
        try:
            tau = float(tau)
        except ValueError:
            raise InputError(f"tau must be a number in [0, 1) or 'auto', got {tau!r}") from None
    tau = float(tau)
    if not (0.0 <= tau < 1.0) or math.isnan(tau):
        raise InputError(f"tau must be in [0, 1) or 'auto', got {tau}")
    return tau, repr(tau)


# ---------------------------------------------------------------------------------------
# Symmetric CSR assembly (numba): both directions of every edge, max on duplicates,
# unit diagonal, sorted int32 columns. Memory O(edges); no scipy transpose copies.


@numba.njit(cache=True)
def _knn_degrees(ids, sim, tau, deg):
    n, k = ids.shape
    for i in range(n):
        for t in range(k):
            j = ids[i, t]
            if j >= 0 and j != i and sim[i, t] > tau:
                deg[i] += 1
                deg[j] += 1


@numba.njit(cache=True)
def _knn_fill(ids, sim, tau, fill, cols, vals):
    n, k = ids.shape
    for i in range(n):
        for t in range(k):
            j = ids[i, t]
            s = sim[i, t]
            if j >= 0 and j != i and s > tau:
                cols[fill[i]] = j
                vals[fill[i]] = s
                fill[i] += 1
                cols[fill[j]] = i
                vals[fill[j]] = s
                fill[j] += 1


@numba.njit(cache=True)
def _pairs_degrees(rows, cols_in, deg):
    for e in range(rows.shape[0]):
        deg[rows[e]] += 1
        deg[cols_in[e]] += 1


@numba.njit(cache=True)
def _pairs_fill(rows, cols_in, vals_in, fill, cols, vals):
    for e in range(rows.shape[0]):
        i = rows[e]
        j = cols_in[e]
        cols[fill[i]] = j
        vals[fill[i]] = vals_in[e]
        fill[i] += 1
        cols[fill[j]] = i
        vals[fill[j]] = vals_in[e]
        fill[j] += 1


@numba.njit(parallel=True, cache=True)
def _sort_merge_rows(ptr, cols, vals, lengths):
    """Sort each row segment by column, keep the max weight of duplicates (compact in place)."""
    n = ptr.shape[0] - 1
    for i in numba.prange(n):
        a, b = ptr[i], ptr[i + 1]
        if b - a == 0:
            lengths[i] = 0
            continue
        order = np.argsort(cols[a:b], kind="mergesort")
        c_sorted = cols[a:b][order]
        v_sorted = vals[a:b][order]
        m = 0
        for t in range(b - a):
            if m > 0 and c_sorted[t] == cols[a + m - 1]:
                if v_sorted[t] > vals[a + m - 1]:
                    vals[a + m - 1] = v_sorted[t]
            else:
                cols[a + m] = c_sorted[t]
                vals[a + m] = v_sorted[t]
                m += 1
        lengths[i] = m


@numba.njit(parallel=True, cache=True)
def _compact(ptr, cols, vals, new_ptr, out_cols, out_vals):
    n = ptr.shape[0] - 1
    for i in numba.prange(n):
        a = ptr[i]
        o = new_ptr[i]
        for t in range(new_ptr[i + 1] - o):
            out_cols[o + t] = cols[a + t]
            out_vals[o + t] = vals[a + t]


def _assemble(n: int, deg: np.ndarray, fill_fn) -> sp.csr_matrix:
    """Build the symmetric CSR from per-row degrees (self excluded) and a fill callback."""
    deg += 1  # the diagonal
    ptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(deg, out=ptr[1:])
    cols = np.empty(ptr[-1], dtype=np.int32)
    vals = np.empty(ptr[-1], dtype=np.float32)
    fill = ptr[:-1].copy()
    cols[fill] = np.arange(n, dtype=np.int32)
    vals[fill] = 1.0
    fill += 1
    fill_fn(fill, cols, vals)
    lengths = np.empty(n, dtype=np.int64)
    _sort_merge_rows(ptr, cols, vals, lengths)
    new_ptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_ptr[1:])
    nnz = int(new_ptr[-1])
    if nnz == ptr[-1]:
        out_cols, out_vals = cols, vals
    else:
        out_cols = np.empty(nnz, dtype=np.int32)
        out_vals = np.empty(nnz, dtype=np.float32)
        _compact(ptr, cols, vals, new_ptr, out_cols, out_vals)
    del cols, vals
    index_dtype = np.int64 if nnz >= 2**31 else np.int32
    g = sp.csr_matrix((out_vals, out_cols, new_ptr.astype(index_dtype)), shape=(n, n))
    # scipy may pick int64 indices from indptr's dtype; keep int32 columns where they fit.
    if index_dtype == np.int32:
        g.indices = g.indices.astype(np.int32, copy=False)
        g.indptr = g.indptr.astype(np.int32, copy=False)
    g.has_sorted_indices = True
    return g


def _csr_from_knn(ids: np.ndarray, sim: np.ndarray, tau: float, n: int) -> sp.csr_matrix:
    """Thresholded, symmetrised (by max) graph with unit diagonal from kNN lists (N, k)."""
    ids = np.ascontiguousarray(ids)
    sim = np.ascontiguousarray(sim, dtype=np.float32)
    tau32 = np.float32(tau)  # compared in float32, like numpy's `sim > tau` on float32 arrays
    deg = np.zeros(n, dtype=np.int64)
    _knn_degrees(ids, sim, tau32, deg)
    return _assemble(n, deg, lambda fill, cols, vals: _knn_fill(ids, sim, tau32, fill, cols, vals))


def _csr_from_pairs(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, n: int) -> sp.csr_matrix:
    """Symmetric graph with unit diagonal from unordered pairs (i != j) and their weights."""
    deg = np.zeros(n, dtype=np.int64)
    _pairs_degrees(rows, cols, deg)
    return _assemble(n, deg, lambda fill, c, v: _pairs_fill(rows, cols, vals, fill, c, v))


def range_graph(z: np.ndarray, tau: float, progress=None, cancel=None,
                dot_dtype=np.float32) -> sp.csr_matrix:
    """Exact, untruncated tau-graph: every pair with 0.5 + 0.5 cos > tau (tiled, fp32).

    Only the upper triangle of tiles is computed (each pair once, both directions get the
    same weight). Memory is O(BLOCK_ROWS^2) for a tile plus O(edges) for the result.
    dot_dtype=np.float64 computes the cosines in float64 and rounds them to float32, so
    they do not depend on the BLAS kernel's summation order (parity checks against
    `reference.dense_official_greedy(..., dot_dtype=np.float64)`).
    """
    n = z.shape[0]
    if np.dtype(dot_dtype) != np.float32:
        z = z.astype(dot_dtype)
    rows, cols, vals = [], [], []
    starts = range(0, n, BLOCK_ROWS)
    total = len(starts) * (len(starts) + 1) // 2
    done = 0
    for i0 in starts:
        zi = z[i0 : i0 + BLOCK_ROWS]
        for j0 in range(i0, n, BLOCK_ROWS):
            check_cancel(cancel)
            sim = similarity_from_cosine((zi @ z[j0 : j0 + BLOCK_ROWS].T).astype(np.float32, copy=False))
            mask = sim > np.float32(tau)
            if j0 == i0:
                mask = np.triu(mask, 1)
            r, c = np.nonzero(mask)
            rows.append((r + i0).astype(np.int32))
            cols.append((c + j0).astype(np.int32))
            vals.append(sim[r, c])
            del sim, mask
            done += 1
            if progress:
                progress(done / total, "exact range search", {})
    cat = lambda parts, dt: np.concatenate(parts) if parts else np.zeros(0, dt)  # noqa: E731
    return _csr_from_pairs(cat(rows, np.int32), cat(cols, np.int32), cat(vals, np.float32), n)


def validate_graph(graph, n: int) -> sp.csr_matrix:
    """Check a precomputed graph: (n, n), finite weights in [0, 1], symmetric; unit diagonal set."""
    if not sp.issparse(graph):
        graph = np.asarray(graph)
        if graph.ndim != 2:
            raise InputError(f"graph must be a 2-D (N, N) matrix, got shape {graph.shape}")
        graph = sp.csr_matrix(graph)
    g = graph.tocsr().astype(np.float32)
    if g.shape != (n, n):
        raise InputError(f"graph shape {g.shape} does not match N={n}")
    if g.nnz and (not np.isfinite(g.data).all() or g.data.min() < 0 or g.data.max() > 1.0 + 1e-6):
        raise InputError("graph weights must be finite and in [0, 1]")
    if abs(g - g.T).max() > 1e-5 if g.nnz else False:
        raise InputError("graph must be symmetric")
    g = g.tolil()
    g.setdiag(1.0)
    g = g.tocsr()
    g.sort_indices()
    return g


def graph_info(graph: sp.csr_matrix, **fields) -> GraphInfo:
    """Degree statistics of a graph (diagonal excluded) plus the given build fields."""
    degree = np.diff(graph.indptr) - (graph.diagonal() > 0)
    return GraphInfo(
        n=graph.shape[0],
        edges=int(degree.sum()),
        mean_degree=float(degree.mean()),
        median_degree=float(np.median(degree)),
        isolated_fraction=float((degree == 0).mean()),
        **fields,
    )


def build_graph_with_knn(
    embeddings: np.ndarray,
    k: int | None = 50,
    tau: float | str = 0.975,
    search: str = "auto",
    pca_dim: int | None = None,
    target_neighbours: int = 10,
    nprobe: int | None = None,
    device: str = "auto",
    seed: int = 0,
    allow_empty: bool = False,
    cell_size: int | None = None,
    progress=None,
    cancel=None,
):
    """`build_graph` that also returns the kNN lists it thresholded (for recall checks).

    Returns (graph, info, ids, cos); ids/cos are None for the range graph (k=None).
    """
    start = time.perf_counter()
    tau_value, tau_text = _parse_tau(tau)
    if k is not None:
        if int(k) != k or k < 1:
            raise InputError(f"k must be a positive integer, got {k}")
        k = int(k)
    if pca_dim is not None and pca_dim < 2:
        raise InputError(f"pca_dim must be at least 2, got {pca_dim}")
    z = normalize_embeddings(embeddings)
    n = z.shape[0]
    if k is not None and k >= n:
        raise InputError(f"k={k} is larger than N-1={n - 1} (N={n} examples)")
    if pca_dim is not None:
        z = _pca_reduce(z, int(pca_dim), seed)
    ids = cos = None
    fallback = None
    if k is None:
        if tau_value is None:
            raise InputError("tau='auto' needs a kNN graph (k), not an untruncated range search")
        graph = range_graph(z, tau_value, progress, cancel)
        backend = "exact-range"
    else:
        backend = resolve_search(n, search, device)
        fallback = small_data_fallback(n, search)
        if fallback and progress:
            progress(0.0, fallback, {})
        if backend in ("blocked", "exact"):
            # Same as knn_search, but z (our own copy) is reordered in place and freed
            # before the kNN lists are allocated: one N x D copy at any time.
            order, hs, hi = _blocked_heaps(z, k, cell_size or CELL_SIZE, nprobe or CELL_PROBES,
                                           seed, True, progress, cancel, exhaustive=backend == "exact")
            del z
            ids, cos = _heaps_to_lists(order, hs, hi)
            del order, hs, hi
        else:
            ids, cos, backend = knn_search(z, k, search, nprobe, device, seed, progress, cancel,
                                           cell_size=cell_size)
            del z
        if tau_value is None:
            tau_value = auto_tau(cos, target_neighbours)
        graph = _csr_from_knn(ids, similarity_from_cosine(cos), tau_value, n)
    info = graph_info(
        graph, k=k, tau=float(tau_value), tau_requested=tau_text, search=backend,
        pca_dim=pca_dim, seconds=time.perf_counter() - start, fallback=fallback,
    )
    if info.edges == 0 and not allow_empty:
        raise InputError(
            f"tau={tau_value:.4f} leaves no example any neighbour "
            f"(similarity 0.5+0.5cos must exceed tau); lower tau or use tau=auto"
        )
    return graph, info, ids, cos


def build_graph(
    embeddings: np.ndarray,
    k: int | None = 50,
    tau: float | str = 0.975,
    search: str = "auto",
    pca_dim: int | None = None,
    target_neighbours: int = 10,
    nprobe: int | None = None,
    device: str = "auto",
    seed: int = 0,
    allow_empty: bool = False,
    return_info: bool = False,
    progress=None,
    cancel=None,
    cell_size: int | None = None,
):
    """Cosine neighbour graph of embeddings (N, D) -> symmetric CSR (N, N), float32 weights.

    k: neighbours per example in the kNN search (self excluded); None = exact
       untruncated range search (every pair above tau), for small N or parity checks.
    tau: similarity threshold on the 0.5 + 0.5 cos scale, or 'auto' (the median example
       keeps `target_neighbours` neighbours).
    search: 'auto' (exact up to EXACT_SEARCH_MAX_N, 'blocked' above), 'exact', 'blocked',
       'ivf', 'hnsw'. On a machine with CUDA, exact search runs on the GPU (faiss-gpu,
       else torch), so 'auto' is exact there at any N.
    pca_dim: optional PCA reduction before the search; the graph (weights and threshold)
       is then in the reduced space. ('blocked' needs no reduction: it clusters in a small
       PCA space itself but computes every similarity in the original space.)
    nprobe: 'blocked': cells compared with each cell (default CELL_PROBES); 'ivf': lists
       visited per query. cell_size: 'blocked' points per cell (default CELL_SIZE).
    allow_empty: when False, a tau that leaves no example any neighbour is an InputError.
    Returns the CSR graph, or (graph, GraphInfo) when return_info is True.
    """
    graph, info, _, _ = build_graph_with_knn(
        embeddings, k=k, tau=tau, search=search, pca_dim=pca_dim,
        target_neighbours=target_neighbours, nprobe=nprobe, device=device, seed=seed,
        allow_empty=allow_empty, cell_size=cell_size, progress=progress, cancel=cancel,
    )
    return (graph, info) if return_info else graph
