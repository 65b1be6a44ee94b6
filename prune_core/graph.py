"""Neighbour graphs over warm-up embeddings.

The graph is a symmetric scipy CSR matrix (N, N) of float32 similarity weights
s = 0.5 + 0.5 * cos(z_i, z_j) in [0, 1], kept only where s > tau, with every
example its own neighbour (diagonal weight 1), int32 column indices. It is built from the
cosine k-nearest-neighbour lists of `knn.knn_search` (backends and their defaults are
described there), or from an exact blockwise range search when ``k=None`` (the untruncated
tau-graph that the official dense loop implicitly uses). Embeddings are validated and
L2-normalised by `embeddings.normalize_embeddings` first.

This module holds the threshold (a fixed tau or `auto_tau`, parsed by `parse_tau`), the
symmetric CSR assembly, `range_graph`, `validate_graph` for precomputed graphs,
`graph_info` / `GraphInfo`, and `build_graph` / `build_graph_with_knn`.

No N x N dense matrix is ever formed: searches and range graphs work in tiles, and the
symmetrisation is a numba pass over the edge list (no scipy transpose copies).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numba
import numpy as np
import scipy.sparse as sp

from .embeddings import _pca_reduce, normalize_embeddings
from .errors import InputError, check_cancel

# The blocked/exact CPU search is run through its two steps here (not `knn_search`) so
# that build_graph can free its embedding copy before the kNN lists are allocated.
from .knn import (
    BLOCK_ROWS,
    CELL_PROBES,
    CELL_SIZE,
    _blocked_heaps,
    _heaps_to_lists,
    knn_search,
    resolve_search,
    small_data_fallback,
)


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


def auto_tau(knn_cos: np.ndarray, target_neighbours: int = 10) -> float:
    """The tau at which the median example keeps `target_neighbours` neighbours.

    knn_cos: (N, k) cosine similarities sorted descending per row, k >= target.
    Returns a similarity threshold on the 0.5 + 0.5 cos scale, slightly below the
    median of each row's target-th similarity (neighbour means s > tau).
    """
    target = min(max(1, int(target_neighbours)), knn_cos.shape[1])
    return tau_from_similarities(similarity_from_cosine(knn_cos[:, target - 1]))


def tau_from_similarities(col: np.ndarray) -> float:
    """`auto_tau`'s rule on the target-th neighbour similarities (N,) float32 (non-finite =
    no such neighbour): just below their lower median. Raises InputError when none is finite."""
    col = col[np.isfinite(col)]
    if col.size == 0:
        raise InputError("tau=auto found no neighbours at all")
    # The lower median, so at least half of the examples keep the target count.
    return float(np.nextafter(np.float32(np.quantile(col, 0.5, method="lower")), np.float32(0)))


def parse_tau(tau) -> tuple[float | None, str]:
    """Check a tau: a number in [0, 1), given as a number or as text, or 'auto' (any case).

    Returns (tau as a float, or None for 'auto'; the text GraphInfo.tau_requested records).
    Raises InputError for anything else.
    """
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


@numba.njit(parallel=True, cache=True)
def _knn_counts(ids, sim, tau, chunk_rows, own, incoming):
    """Per row i: own[i] kept entries of its list; per chunk c of chunk_rows consecutive rows
    and row j: incoming[c, j] kept entries of the chunk's lists that name j (j gets i back)."""
    n, k = ids.shape
    for c in numba.prange(incoming.shape[0]):
        for i in range(c * chunk_rows, min(n, (c + 1) * chunk_rows)):
            m = 0
            for t in range(k):
                j = ids[i, t]
                if j >= 0 and j != i and sim[i, t] > tau:
                    m += 1
                    incoming[c, j] += 1
            own[i] = m


@numba.njit(parallel=True, cache=True)
def _knn_cursors(ptr, own, incoming):
    """incoming[c, j] <- where chunk c writes its first entry into row j (in place): after
    the diagonal, row j's own entries and the earlier chunks' entries."""
    chunks, n = incoming.shape
    for j in numba.prange(n):
        pos = ptr[j] + 1 + own[j]
        for c in range(chunks):
            m = incoming[c, j]
            incoming[c, j] = pos
            pos += m


@numba.njit(parallel=True, cache=True)
def _knn_fill_parallel(ids, sim, tau, chunk_rows, ptr, cursors, cols, vals):
    """Both directions of every kept entry, each chunk of rows on its own thread: row i's own
    entries go to its own region, the reverse entries through the chunk's cursors (every
    slot has one writer, so the layout does not depend on timing)."""
    n, k = ids.shape
    for c in numba.prange(cursors.shape[0]):
        for i in range(c * chunk_rows, min(n, (c + 1) * chunk_rows)):
            a = ptr[i]
            cols[a] = i  # the diagonal
            vals[a] = 1.0
            a += 1
            for t in range(k):
                j = ids[i, t]
                s = sim[i, t]
                if j >= 0 and j != i and s > tau:
                    cols[a] = j
                    vals[a] = s
                    a += 1
                    b = cursors[c, j]
                    cols[b] = i
                    vals[b] = s
                    cursors[c, j] = b + 1


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


@numba.njit(cache=True, inline="always")
def _insertion_sort_by_column(cols, vals, a, b):
    """Sort cols[a:b] ascending in place (stable), moving vals along."""
    for t in range(a + 1, b):
        c, v = cols[t], vals[t]
        u = t - 1
        while u >= a and cols[u] > c:
            cols[u + 1] = cols[u]
            vals[u + 1] = vals[u]
            u -= 1
        cols[u + 1] = c
        vals[u + 1] = v


@numba.njit(cache=True, inline="always")
def _append_or_max(cols, vals, a, o, c, v):
    """Append (c, v) at o of the row starting at a, or keep the max weight when c equals the
    last column written (entries arrive in column order); returns the next write position."""
    if o > a and cols[o - 1] == c:
        if v > vals[o - 1]:
            vals[o - 1] = v
        return o
    cols[o] = c
    vals[o] = v
    return o + 1


@numba.njit(parallel=True, cache=True)
def _sort_merge_rows(ptr, cols, vals, lengths):
    """Sort each row segment by column, keep the max weight of duplicates (compact in place).

    Rows up to 48 entries (most: about 2 k before the threshold) are insertion-sorted in
    place, longer ones through argsort (one allocation per row)."""
    n = ptr.shape[0] - 1
    for i in numba.prange(n):
        a, b = ptr[i], ptr[i + 1]
        if b - a == 0:
            lengths[i] = 0
            continue
        if b - a <= 48:
            _insertion_sort_by_column(cols, vals, a, b)
            c_sorted = cols[a:b]
            v_sorted = vals[a:b]
        else:
            order = np.argsort(cols[a:b], kind="mergesort")
            c_sorted = cols[a:b][order]
            v_sorted = vals[a:b][order]
        o = a  # never past t: the write trails the read
        for t in range(b - a):
            o = _append_or_max(cols, vals, a, o, c_sorted[t], v_sorted[t])
        lengths[i] = o - a


@numba.njit(parallel=True, cache=True)
def _sort_merge_knn_rows(ptr, own, cols, vals, lengths):
    """`_sort_merge_rows` for rows `_knn_fill_parallel` filled: the diagonal and row i's
    own[i] list entries first (in list order), then the reverse entries, already in
    increasing column order (chunks of rows in order, each row after row). Only the head
    is sorted (insertion sort, at most k + 1 entries), then merged with the tail in place
    (max on duplicates): the same rows, bit for bit, as `_sort_merge_rows`, without its
    argsort of every row longer than 48 entries (tight clusters: ~100 per row; 50k x 512:
    0.106 -> 0.063 s, docs/benchmarks.md)."""
    n = ptr.shape[0] - 1
    for i in numba.prange(n):
        a, b = ptr[i], ptr[i + 1]
        h = 1 + own[i]
        head_c = cols[a : a + h].copy()
        head_v = vals[a : a + h].copy()
        _insertion_sort_by_column(head_c, head_v, 0, h)
        # Merge the two sorted runs; equal columns (both directions, or a list naming a
        # column twice) end up adjacent and keep the max. The write position never passes
        # the tail's read position.
        o, p, q = a, 0, a + h
        while p < h or q < b:
            if q >= b or (p < h and head_c[p] <= cols[q]):
                c, v = head_c[p], head_v[p]
                p += 1
            else:
                c, v = cols[q], vals[q]
                q += 1
            o = _append_or_max(cols, vals, a, o, c, v)
        lengths[i] = o - a


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
    return _finish_csr(n, ptr, cols, vals)


def _finish_csr(n: int, ptr: np.ndarray, cols: np.ndarray, vals: np.ndarray,
                own: np.ndarray | None = None) -> sp.csr_matrix:
    """Rows filled (diagonal and both directions of every edge, any order; or, with own
    (N,), laid out as `_knn_fill_parallel` fills them) -> the CSR: columns sorted,
    duplicates merged by max, int32 indices where they fit."""
    lengths = np.empty(n, dtype=np.int64)
    if own is None:
        _sort_merge_rows(ptr, cols, vals, lengths)
    else:
        _sort_merge_knn_rows(ptr, own, cols, vals, lengths)
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


def _csr_from_knn(ids: np.ndarray, sim: np.ndarray, tau: float, n: int,
                  chunks: int | None = None) -> sp.csr_matrix:
    """Thresholded, symmetrised (by max) graph with unit diagonal from kNN lists (N, k).

    Counting and filling run in `chunks` chunks of consecutive rows in parallel (default: one
    per numba thread, at most 16); the result does not depend on the chunking. Memory beyond
    the CSR is one int64 per row and chunk."""
    ids = np.ascontiguousarray(ids)
    sim = np.ascontiguousarray(sim, dtype=np.float32)
    tau32 = np.float32(tau)  # compared in float32, like numpy's `sim > tau` on float32 arrays
    chunks = max(1, min(chunks or min(numba.get_num_threads(), 16), n))
    chunk_rows = -(-n // chunks)
    own = np.zeros(n, dtype=np.int64)
    cursors = np.zeros((chunks, n), dtype=np.int64)
    _knn_counts(ids, sim, tau32, chunk_rows, own, cursors)
    ptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(own + cursors.sum(axis=0) + 1, out=ptr[1:])
    _knn_cursors(ptr, own, cursors)
    cols = np.empty(ptr[-1], dtype=np.int32)
    vals = np.empty(ptr[-1], dtype=np.float32)
    _knn_fill_parallel(ids, sim, tau32, chunk_rows, ptr, cursors, cols, vals)
    del cursors
    return _finish_csr(n, ptr, cols, vals, own)


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
    stats: dict | None = None,
):
    """`build_graph` that also returns the kNN lists it thresholded (for recall checks).

    Returns (graph, info, ids, cos); ids/cos are None for the range graph (k=None).
    stats: a dict the blocked and exact searches fill with their cost (`knn.knn_search`).
    """
    start = time.perf_counter()
    tau_value, tau_text = parse_tau(tau)
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
                                           seed, True, progress, cancel, exhaustive=backend == "exact",
                                           stats=stats)
            del z
            ids, cos = _heaps_to_lists(order, hs, hi)
            del order, hs, hi
        else:
            ids, cos, backend = knn_search(z, k, search, nprobe, device, seed, progress, cancel,
                                           cell_size=cell_size, stats=stats)
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
            f"tau={tau_value:.10g} leaves no example any neighbour "
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
    search: 'auto' (exact up to knn.EXACT_SEARCH_MAX_N, 'blocked' above), 'exact', 'blocked',
       'ivf', 'hnsw'. On a machine with CUDA, exact search runs on the GPU (faiss-gpu,
       else torch), so 'auto' is exact there at any N.
    pca_dim: optional PCA reduction before the search; the graph (weights and threshold)
       is then in the reduced space. ('blocked' needs no reduction: it clusters in a small
       PCA space itself but computes every similarity in the original space.)
    nprobe: 'blocked': cells compared with each cell (default knn.CELL_PROBES); 'ivf': lists
       visited per query. cell_size: 'blocked' points per cell (default knn.CELL_SIZE).
    allow_empty: when False, a tau that leaves no example any neighbour is an InputError.
    Returns the CSR graph, or (graph, GraphInfo) when return_info is True.
    """
    graph, info, _, _ = build_graph_with_knn(
        embeddings, k=k, tau=tau, search=search, pca_dim=pca_dim,
        target_neighbours=target_neighbours, nprobe=nprobe, device=device, seed=seed,
        allow_empty=allow_empty, cell_size=cell_size, progress=progress, cancel=cancel,
    )
    return (graph, info) if return_info else graph
