"""The worker-side steps of `distributed.ray_select` (plain functions; the driver wraps them
as Ray tasks). Each reads only its own rows or row block, is deterministic, and keeps no
state between calls, so Ray can retry it on another worker after a crash.
"""

from __future__ import annotations

import os
import signal

import numba
import numpy as np
import scipy.sparse as sp

def _read_rows(path: str, ids: np.ndarray) -> np.ndarray:
    """Unit-normalised float32 rows `ids` (sorted) of the memory-mapped file. Raises
    InputError naming the first row (file row number) with a NaN or infinite value."""
    from .embeddings import normalize_embeddings
    from .errors import InputError

    z = np.load(path, mmap_mode="r", allow_pickle=False)
    if ids.size == 0:
        return np.zeros((0, z.shape[1]), dtype=np.float32)
    rows = np.asarray(z[ids]) if ids.size < z.shape[0] else np.asarray(z)
    finite = np.isfinite(rows).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise InputError(f"embeddings have NaN or infinite values: row {int(ids[bad[0]])} "
                         f"({bad.size} such row{'s' if bad.size > 1 else ''} among the {ids.size} read)")
    if rows.shape[0] < 2:  # normalize_embeddings wants two rows; normalise a lone row by hand
        rows = rows.astype(np.float32)
        norm = np.linalg.norm(rows, axis=1, keepdims=True)
        return np.where(norm > 0, rows / np.where(norm > 0, norm, 1), 0).astype(np.float32)
    return normalize_embeddings(rows)


def _assign_chunk(path: str, start: int, stop: int, centroids: np.ndarray):
    """Owner partition (nearest centroid), second-nearest partition and the distance to the
    bisecting hyperplane of the two, for rows start..stop. Returns three (stop-start,) arrays.
    Raises InputError naming the first row with a NaN or infinite value (`_read_rows`)."""
    z = _read_rows(path, np.arange(start, stop, dtype=np.int64))
    p = centroids.shape[0]
    # Squared distances to every centroid, (rows, P); z rows are unit length.
    d2 = 1.0 - 2.0 * (z.astype(np.float64) @ centroids.T) + (centroids ** 2).sum(axis=1)[None, :]
    if p == 1:
        zeros = np.zeros(z.shape[0], dtype=np.int32)
        return zeros, zeros, np.full(z.shape[0], np.inf, dtype=np.float32)
    order = np.argsort(d2, axis=1, kind="stable")[:, :2]  # ties go to the lower partition id
    owner, second = order[:, 0], order[:, 1]
    rows = np.arange(z.shape[0])
    gap = d2[rows, second] - d2[rows, owner]
    sep = 2.0 * np.linalg.norm(centroids[owner] - centroids[second], axis=1)
    border = np.where(sep > 0, gap / np.where(sep > 0, sep, 1.0), 0.0)
    return owner.astype(np.int32), second.astype(np.int32), border.astype(np.float32)


def _search_partition(path: str, own: np.ndarray, extra: np.ndarray, k: int, search: str, seed: int,
                      target: int, kill_marker: str | None = None):
    """kNN lists of the partition's own examples against own + extra (copied-in) examples.

    Returns ((ids (n_own, k) int64 global ids, -1 where fewer were found; cos (n_own, k)
    float32 descending), the target-th neighbour's similarity (n_own,) float32 for tau auto).
    """
    from . import knn
    from .graph import similarity_from_cosine

    _maybe_die(kill_marker)
    cpus = _assigned_cpus()
    if cpus:  # threads for the CPUs Ray gave this task, not for the whole machine
        knn._BLOCK_WORKERS = knn._MERGE_WORKERS = cpus
    db = np.union1d(own, extra)  # sorted global ids: local order = global order (same ties)
    n_own = own.shape[0]
    kk = min(k, db.shape[0] - 1)
    if kk < 1:
        ids = np.full((n_own, k), -1, dtype=np.int64)
        cos = np.full((n_own, k), -np.inf, dtype=np.float32)
    else:
        z = _read_rows(path, db)
        local_ids, local_cos, _ = knn.knn_search(z, kk, search=search, seed=seed)
        del z
        rows = np.searchsorted(db, own)
        local_ids, local_cos = local_ids[rows], local_cos[rows]
        ids = np.full((n_own, k), -1, dtype=np.int64)
        cos = np.full((n_own, k), -np.inf, dtype=np.float32)
        ids[:, :kk] = np.where(local_ids >= 0, db[np.maximum(local_ids, 0)], -1)
        cos[:, :kk] = local_cos
    col = cos[:, min(target, k) - 1]
    return (ids, cos), similarity_from_cosine(col)


@numba.njit(cache=True)
def _route_count(ids, sim, tau32, own, owner, counts):
    """Entries each partition receives from these lists (both directions of every edge)."""
    n, k = ids.shape
    for i in range(n):
        x = own[i]
        for t in range(k):
            j = ids[i, t]
            if j >= 0 and j != x and sim[i, t] > tau32:
                counts[owner[x]] += 1
                counts[owner[j]] += 1


@numba.njit(cache=True)
def _route_fill(ids, sim, tau32, own, owner, fill, rows, cols, vals):
    """Write both directions of every edge above tau at its owner partition's offset."""
    n, k = ids.shape
    for i in range(n):
        x = own[i]
        for t in range(k):
            j = ids[i, t]
            s = sim[i, t]
            if j >= 0 and j != x and s > tau32:
                d = owner[x]
                rows[fill[d]] = x
                cols[fill[d]] = j
                vals[fill[d]] = s
                fill[d] += 1
                d = owner[j]
                rows[fill[d]] = j
                cols[fill[d]] = x
                vals[fill[d]] = s
                fill[d] += 1


def _edges_for(lists, own: np.ndarray, owner: np.ndarray, tau: float, partitions: int):
    """Directed edges above tau of one partition's kNN lists, routed to the partitions owning
    each end (both directions, so the assembled graph is symmetric). own: the partition's
    sorted global ids (n_own,); owner: (N,) int32 owner partition of every example.
    Returns P triples (row global ids int64, column global ids int64, weight float32)."""
    from .graph import similarity_from_cosine

    ids, cos = lists
    sim = similarity_from_cosine(cos)
    tau32 = np.float32(tau)  # float32 comparison, as graph._csr_from_knn
    counts = np.zeros(partitions, dtype=np.int64)
    _route_count(ids, sim, tau32, own, owner, counts)
    offsets = np.zeros(partitions + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    rows = np.empty(offsets[-1], dtype=np.int64)
    cols = np.empty(offsets[-1], dtype=np.int64)
    vals = np.empty(offsets[-1], dtype=np.float32)
    _route_fill(ids, sim, tau32, own, owner, offsets[:-1].copy(), rows, cols, vals)
    return tuple((rows[a:b], cols[a:b], vals[a:b]) for a, b in zip(offsets[:-1], offsets[1:]))


@numba.njit(cache=True)
def _scatter_rows(local, cols_in, vals_in, fill, cols, vals):
    for e in range(local.shape[0]):
        r = local[e]
        cols[fill[r]] = cols_in[e]
        vals[fill[r]] = vals_in[e]
        fill[r] += 1


def _assemble_rows(own: np.ndarray, owner: np.ndarray, part: int, *pieces):
    """The partition's rows of the symmetric graph from the edge pieces sent to it: CSR
    (n_own, N) as (indptr int64, columns int64 global, weights float32), duplicates merged
    by max, unit diagonal, columns sorted (the numba row sort of `graph._assemble`). Also
    returns off-diagonal degrees (n_own,) int64 and the count of stored entries whose
    column another partition owns."""
    from .graph import _compact, _sort_merge_rows

    n_own = own.shape[0]
    locals_ = [np.searchsorted(own, p[0]) for p in pieces]
    deg = np.ones(n_own, dtype=np.int64)  # the diagonal
    for local in locals_:
        deg += np.bincount(local, minlength=n_own)
    ptr = np.zeros(n_own + 1, dtype=np.int64)
    np.cumsum(deg, out=ptr[1:])
    cols = np.empty(ptr[-1], dtype=np.int64)
    vals = np.empty(ptr[-1], dtype=np.float32)
    fill = ptr[:-1].copy()
    cols[fill] = own
    vals[fill] = 1.0
    fill += 1
    for local, p in zip(locals_, pieces):
        _scatter_rows(local, p[1], p[2], fill, cols, vals)
    del locals_
    lengths = np.empty(n_own, dtype=np.int64)
    _sort_merge_rows(ptr, cols, vals, lengths)
    indptr = np.zeros(n_own + 1, dtype=np.int64)
    np.cumsum(lengths, out=indptr[1:])
    out_cols = np.empty(indptr[-1], dtype=np.int64)
    out_vals = np.empty(indptr[-1], dtype=np.float32)
    _compact(ptr, cols, vals, indptr, out_cols, out_vals)
    del cols, vals
    cross = int(np.count_nonzero(owner[out_cols] != part))
    return (indptr, out_cols, out_vals), lengths - 1, cross


def _local_subgraph(rows, own: np.ndarray, owner: np.ndarray, part: int) -> sp.csr_matrix:
    """(n_own, n_own) CSR of the edges between the partition's own examples (local ids in
    global order, so the row block's column order is kept), from its row block."""
    indptr, cols, vals = rows
    inside = owner[cols] == part
    counts = np.add.reduceat(inside.astype(np.int64), indptr[:-1])  # no empty row: the diagonal
    local_ptr = np.zeros(own.shape[0] + 1, dtype=np.int64)
    np.cumsum(counts, out=local_ptr[1:])
    local_cols = np.searchsorted(own, cols[inside])
    index = np.int32 if own.shape[0] < 2**31 and local_ptr[-1] < 2**31 else np.int64
    g = sp.csr_matrix((vals[inside], local_cols.astype(index), local_ptr.astype(index)),
                      shape=(own.shape[0], own.shape[0]))
    g.has_sorted_indices = True
    return g


def _greedy_partition(rows, own: np.ndarray, owner: np.ndarray, part: int, conf: np.ndarray, labels: np.ndarray,
                      count: int, eta: float, mode: str, balance: str, kill_marker: str | None = None):
    """Round 1 on one partition: `count` greedy picks on its own subgraph. Returns (picks
    global ids (count,) int64, keys (count,) float64, classes (count,) int64)."""
    from .prune4rel import greedy_neighbourhood_confidence

    _maybe_die(kill_marker)
    g = _local_subgraph(rows, own, owner, part)
    lab = labels[own]
    picks, _, scores, _ = greedy_neighbourhood_confidence(
        g, conf[own], count, eta=eta, mode=mode,
        labels=lab if balance != "none" else None, balance=balance)
    return own[picks], scores, lab[picks]


@numba.njit(cache=True)
def _gather_rows(indptr, cols, vals, local, out_ptr, out_cols, out_vals):
    """Copy rows `local` of a CSR (indptr, cols, vals) to consecutive output rows."""
    for r in range(local.shape[0]):
        a = indptr[local[r]]
        o = out_ptr[r]
        for t in range(indptr[local[r] + 1] - a):
            out_cols[o + t] = cols[a + t]
            out_vals[o + t] = vals[a + t]


def _take_rows(indptr, cols, vals, local):
    """Rows `local` (positions) of a CSR as a new (indptr, cols, vals)."""
    lengths = indptr[local + 1] - indptr[local]
    out_ptr = np.zeros(local.shape[0] + 1, dtype=np.int64)
    np.cumsum(lengths, out=out_ptr[1:])
    out_cols = np.empty(out_ptr[-1], dtype=cols.dtype)
    out_vals = np.empty(out_ptr[-1], dtype=vals.dtype)
    _gather_rows(indptr, cols, vals, local, out_ptr, out_cols, out_vals)
    return out_ptr, out_cols, out_vals


def _rows_of(rows, own: np.ndarray, ids: np.ndarray):
    """The row block's rows for global ids `ids` (sorted, all owned): (indptr, cols, vals)."""
    indptr, cols, vals = rows
    return _take_rows(indptr, cols, vals, np.searchsorted(own, ids))


def _second_round(conf: np.ndarray, budget: int, eta: float, mode: str, *flat):
    """Round 2 (GreeDi): greedy with exact gains over the union of candidates, on their full
    rows (cross-partition edges included). flat: per partition, its candidate ids (sorted)
    followed by their rows' indptr, cols and vals. Returns (picks global ids (budget,) int64,
    keys (budget,) float64). Holds the candidates' rows and two (N,) index arrays."""
    from .prune4rel import greedy_neighbourhood_confidence

    blocks = [(flat[i], (flat[i + 1], flat[i + 2], flat[i + 3])) for i in range(0, len(flat), 4)]

    n = conf.shape[0]
    cand = np.concatenate([b[0] for b in blocks])  # each id in one block only
    offsets = np.cumsum([0] + [b[1][1].shape[0] for b in blocks[:-1]])
    indptr = np.concatenate([b[1][0][:-1] + off for b, off in zip(blocks, offsets)] + [[offsets[-1] + blocks[-1][1][1].shape[0]]])
    cols = np.concatenate([b[1][1] for b in blocks])
    vals = np.concatenate([b[1][2] for b in blocks])
    # Rows in global id order: candidates take local ids 0..C-1 in that order (ties go to the
    # lower global id, as in round 1); the other examples their rows touch follow, with
    # empty rows (gain 0: never picked while a candidate has a positive gain).
    order = np.argsort(cand, kind="stable")
    cand = cand[order]
    indptr, cols, vals = _take_rows(indptr, cols, vals, order)
    local_of = np.full(n, -1, dtype=np.int64)
    local_of[cand] = np.arange(cand.shape[0])
    touched = np.zeros(n, dtype=bool)
    touched[cols] = True
    touched[cand] = False
    others = np.flatnonzero(touched)
    del touched
    local_of[others] = cand.shape[0] + np.arange(others.shape[0])
    size = cand.shape[0] + others.shape[0]
    full_ptr = np.concatenate([indptr, np.full(others.shape[0], indptr[-1], dtype=np.int64)])
    g = sp.csr_matrix((vals, local_of[cols], full_ptr), shape=(size, size))
    g.sort_indices()  # the global order of columns is not the local one (others come last)
    del local_of
    c = np.concatenate([conf[cand], np.zeros(others.shape[0])])
    picks, _, scores, _ = greedy_neighbourhood_confidence(g, c, budget, eta=eta, mode=mode)
    if picks.size and picks.max() >= cand.shape[0]:
        raise RuntimeError("round 2 ran out of candidates with a positive gain")
    return cand[picks], scores


def _cover_partition(rows, own: np.ndarray, selected: np.ndarray, conf: np.ndarray, eta: float):
    """C(x; S) (n_own,) for the partition's examples and their part of F (paper Eq. for F)."""
    indptr, cols, vals = rows
    weight = np.where(selected[cols], vals.astype(np.float64) * conf[cols], 0.0)
    row_of = np.repeat(np.arange(own.shape[0]), np.diff(indptr))
    cover = np.bincount(row_of, weights=weight, minlength=own.shape[0])
    return cover, float(np.tanh(cover / eta).sum())


def _assigned_cpus() -> int | None:
    """CPUs Ray assigned to the running task (None outside a Ray task)."""
    try:
        import ray

        if not ray.is_initialized():
            return None
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
        return max(1, int(round(cpus))) if cpus else None
    except Exception:  # noqa: BLE001 - not in a Ray worker
        return None


def _maybe_die(kill_marker: str | None) -> None:
    """Fault-injection hook for tests: the first task to see `kill_marker` (a path that does
    not exist yet) creates it and kills its own worker process with SIGKILL."""
    if not kill_marker:
        return
    try:
        fd = os.open(kill_marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)
