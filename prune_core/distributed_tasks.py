"""The worker-side steps of `distributed.ray_select` (plain functions; the driver wraps them
as Ray tasks). Each reads only its own rows or row block, is deterministic, and keeps no
state between calls, so Ray can retry it on another worker after a crash.
"""

from __future__ import annotations

import os
import signal

import numpy as np
import scipy.sparse as sp

def _read_rows(path: str, ids: np.ndarray) -> np.ndarray:
    """Unit-normalised float32 rows `ids` (sorted) of the memory-mapped file."""
    from .embeddings import normalize_embeddings

    z = np.load(path, mmap_mode="r", allow_pickle=False)
    if ids.size == 0:
        return np.zeros((0, z.shape[1]), dtype=np.float32)
    rows = np.asarray(z[ids]) if ids.size < z.shape[0] else np.asarray(z)
    if rows.shape[0] < 2:  # normalize_embeddings wants two rows; normalise a lone row by hand
        rows = rows.astype(np.float32)
        norm = np.linalg.norm(rows, axis=1, keepdims=True)
        return np.where(norm > 0, rows / np.where(norm > 0, norm, 1), 0).astype(np.float32)
    return normalize_embeddings(rows)


def _assign_chunk(path: str, start: int, stop: int, centroids: np.ndarray, kill_marker: str | None = None):
    """Owner partition (nearest centroid), second-nearest partition and the distance to the
    bisecting hyperplane of the two, for rows start..stop. Returns three (stop-start,) arrays."""
    _maybe_die(kill_marker)
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
    from .graph import similarity_from_cosine
    from .knn import knn_search

    _maybe_die(kill_marker)
    db = np.union1d(own, extra)  # sorted global ids: local order = global order (same ties)
    n_own = own.shape[0]
    kk = min(k, db.shape[0] - 1)
    if kk < 1:
        ids = np.full((n_own, k), -1, dtype=np.int64)
        cos = np.full((n_own, k), -np.inf, dtype=np.float32)
    else:
        z = _read_rows(path, db)
        local_ids, local_cos, _ = knn_search(z, kk, search=search, seed=seed)
        del z
        rows = np.searchsorted(db, own)
        local_ids, local_cos = local_ids[rows], local_cos[rows]
        ids = np.full((n_own, k), -1, dtype=np.int64)
        cos = np.full((n_own, k), -np.inf, dtype=np.float32)
        ids[:, :kk] = np.where(local_ids >= 0, db[np.maximum(local_ids, 0)], -1)
        cos[:, :kk] = local_cos
    col = cos[:, min(target, k) - 1]
    return (ids, cos), similarity_from_cosine(col)


def _edges_for(lists, own: np.ndarray, owner: np.ndarray, tau: float, partitions: int):
    """Directed edges above tau of one partition's kNN lists, routed to the partitions owning
    each end (both directions, so the assembled graph is symmetric). own: the partition's
    sorted global ids (n_own,); owner: (N,) int32 owner partition of every example.
    Returns P triples (row global ids int64, column global ids int64, weight float32)."""
    from .graph import similarity_from_cosine

    ids, cos = lists
    k = ids.shape[1]
    sim = similarity_from_cosine(cos)
    keep = (ids >= 0) & (sim > np.float32(tau))  # float32 comparison, as graph._csr_from_knn
    src = np.repeat(own, k).reshape(ids.shape)[keep]
    dst = ids[keep]
    w = sim[keep]
    keep_pair = src != dst
    src, dst, w = src[keep_pair], dst[keep_pair], w[keep_pair]
    rows = np.concatenate([src, dst])
    cols = np.concatenate([dst, src])
    vals = np.concatenate([w, w])
    dest = owner[rows]
    order = np.argsort(dest, kind="stable")
    rows, cols, vals, dest = rows[order], cols[order], vals[order], dest[order]
    bounds = np.searchsorted(dest, np.arange(partitions + 1))
    return tuple((rows[a:b], cols[a:b], vals[a:b]) for a, b in zip(bounds[:-1], bounds[1:]))


def _assemble_rows(own: np.ndarray, *pieces):
    """The partition's rows of the symmetric graph from the edge pieces sent to it: CSR
    (n_own, N) as (indptr int64, columns int64 global, weights float32), duplicates merged
    by max, unit diagonal, columns sorted. Also returns off-diagonal degrees (n_own,) int64
    and the count of stored entries whose column another partition owns."""
    rows = np.concatenate([p[0] for p in pieces] + [own])
    cols = np.concatenate([p[1] for p in pieces] + [own])
    vals = np.concatenate([p[2] for p in pieces] + [np.ones(own.shape[0], dtype=np.float32)])
    local = np.searchsorted(own, rows)
    order = np.lexsort((-vals, cols, local))  # per (row, col): the largest weight first
    local, cols, vals = local[order], cols[order], vals[order]
    first = np.ones(local.shape[0], dtype=bool)
    first[1:] = (local[1:] != local[:-1]) | (cols[1:] != cols[:-1])
    local, cols, vals = local[first], cols[first], vals[first]
    diag = cols == own[local]
    vals = np.where(diag, np.float32(1.0), vals).astype(np.float32)
    indptr = np.zeros(own.shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(local, minlength=own.shape[0]), out=indptr[1:])
    degree = np.diff(indptr) - 1
    cross = int(np.count_nonzero(~np.isin(cols, own, assume_unique=False)))
    return (indptr, cols, vals), degree, cross


def _local_subgraph(rows, own: np.ndarray) -> sp.csr_matrix:
    """(n_own, n_own) CSR of the edges between the partition's own examples (local ids in
    global order), from its row block."""
    indptr, cols, vals = rows
    pos = np.searchsorted(own, cols)
    pos_c = np.minimum(pos, own.shape[0] - 1)
    inside = own[pos_c] == cols
    row_of = np.repeat(np.arange(own.shape[0]), np.diff(indptr))
    g = sp.csr_matrix((vals[inside], (row_of[inside], pos_c[inside])), shape=(own.shape[0], own.shape[0]))
    g.sort_indices()
    return g


def _greedy_partition(rows, own: np.ndarray, conf: np.ndarray, labels: np.ndarray, count: int, eta: float,
                      mode: str, balance: str, kill_marker: str | None = None):
    """Round 1 on one partition: `count` greedy picks on its own subgraph. Returns (picks
    global ids (count,) int64, keys (count,) float64, classes (count,) int64)."""
    from .prune4rel import greedy_neighbourhood_confidence

    _maybe_die(kill_marker)
    g = _local_subgraph(rows, own)
    lab = labels[own]
    picks, _, scores, _ = greedy_neighbourhood_confidence(
        g, conf[own], count, eta=eta, mode=mode,
        labels=lab if balance != "none" else None, balance=balance)
    return own[picks], scores, lab[picks]


def _rows_of(rows, own: np.ndarray, ids: np.ndarray):
    """The row block's rows for global ids `ids` (sorted, all owned): (indptr, cols, vals)."""
    indptr, cols, vals = rows
    local = np.searchsorted(own, ids)
    lengths = indptr[local + 1] - indptr[local]
    out_ptr = np.zeros(ids.shape[0] + 1, dtype=np.int64)
    np.cumsum(lengths, out=out_ptr[1:])
    take = np.concatenate([np.arange(indptr[i], indptr[i + 1]) for i in local]) if ids.size else np.zeros(0, np.int64)
    return out_ptr, cols[take], vals[take]


def _second_round(conf: np.ndarray, budget: int, eta: float, mode: str, *blocks):
    """Round 2 (GreeDi): greedy with exact gains over the union of candidates, on their full
    rows (cross-partition edges included). blocks: (candidate ids, (indptr, cols, vals)) per
    partition. Returns (picks global ids (budget,) int64, keys (budget,) float64)."""
    from .prune4rel import greedy_neighbourhood_confidence

    cand = np.concatenate([b[0] for b in blocks])  # each id in one block only
    lengths = np.concatenate([np.diff(b[1][0]) for b in blocks])
    cols = np.concatenate([b[1][1] for b in blocks])
    vals = np.concatenate([b[1][2] for b in blocks])
    row_of = np.repeat(np.arange(cand.shape[0]), lengths)
    # Compact space: candidates first (in global order, so ties go to the lower global id
    # as in round 1), then the other examples their rows touch (empty rows: gain 0, never
    # picked while a candidate has a positive gain).
    cand_sorted = np.sort(cand)
    others = np.setdiff1d(np.unique(cols), cand_sorted, assume_unique=True)
    space = np.concatenate([cand_sorted, others])
    by_id = np.argsort(space, kind="stable")
    local_cols = by_id[np.searchsorted(space[by_id], cols)]
    local_rows = np.searchsorted(cand_sorted, cand)[row_of]
    g = sp.csr_matrix((vals, (local_rows, local_cols)), shape=(space.shape[0], space.shape[0]))
    g.sort_indices()
    cand = cand_sorted
    c = np.concatenate([conf[cand], np.zeros(others.shape[0])])
    picks, _, scores, _ = greedy_neighbourhood_confidence(g, c, budget, eta=eta, mode=mode)
    if picks.size and picks.max() >= cand.shape[0]:
        raise RuntimeError("round 2 ran out of candidates with a positive gain")
    return space[picks], scores


def _cover_partition(rows, own: np.ndarray, selected: np.ndarray, conf: np.ndarray, eta: float):
    """C(x; S) (n_own,) for the partition's examples and their part of F (paper Eq. for F)."""
    indptr, cols, vals = rows
    weight = np.where(selected[cols], vals.astype(np.float64) * conf[cols], 0.0)
    row_of = np.repeat(np.arange(own.shape[0]), np.diff(indptr))
    cover = np.bincount(row_of, weights=weight, minlength=own.shape[0])
    return cover, float(np.tanh(cover / eta).sum())


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
