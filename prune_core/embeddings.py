"""Embedding preparation for the neighbour search and the graph.

`normalize_embeddings` validates embeddings (N, D) and L2-normalises them to a new float32
array of unit rows (a numba pass, no N x D temporaries besides the result); the kNN search
(`knn`), the graph (`graph`) and the dense reference loop (`reference`) all normalise
with it, so they see bit-identical unit vectors. `_pca_reduce` is the optional faiss PCA
of `build_graph(..., pca_dim=...)`.
"""

from __future__ import annotations

import numba
import numpy as np

from .errors import InputError

# Rows per block when normalising / projecting (bounds temporaries to ~32 MB at D = 512).
_ROW_BLOCK = 16384


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
