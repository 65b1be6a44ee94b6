"""Neighbour graphs over warm-up embeddings.

The graph is a symmetric scipy CSR matrix (N, N) of float32 similarity weights
s = 0.5 + 0.5 * cos(z_i, z_j) in [0, 1], kept only where s > tau, with every
example its own neighbour (diagonal weight 1). It is built from a faiss cosine
k-nearest-neighbour search (exact below a size threshold, IVF above it), or from
an exact blockwise range search when ``k=None`` (the untruncated tau-graph that the
official dense loop implicitly uses). No N x N dense matrix is ever formed.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import scipy.sparse as sp

from .errors import InputError, check_cancel

# Below this many examples the kNN search is exact (faiss flat inner product).
EXACT_SEARCH_MAX_N = 20_000
# Rows per block in blockwise searches: bounds memory at BLOCK_ROWS x N floats.
BLOCK_ROWS = 4096


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

    def to_dict(self) -> dict:
        return asdict(self)


def similarity_from_cosine(cos: np.ndarray) -> np.ndarray:
    """Map cosine similarity in [-1, 1] to the method's similarity 0.5 + 0.5 cos in [0, 1]."""
    return (0.5 + 0.5 * np.asarray(cos, dtype=np.float32)).astype(np.float32, copy=False)


def normalize_embeddings(embeddings: np.ndarray) -> np.ndarray:
    """Validate and L2-normalise embeddings (N, D) to float32 unit rows.

    Rows of zero norm stay zero (they are nobody's neighbour but their own).
    """
    z = np.asarray(embeddings)
    if z.ndim != 2:
        raise InputError(f"embeddings must be a 2-D array (N, D), got shape {z.shape}")
    if z.shape[0] < 2:
        raise InputError(f"need at least two embeddings to build a graph, got {z.shape[0]}")
    z = np.ascontiguousarray(z, dtype=np.float32)
    if not np.isfinite(z).all():
        bad = int((~np.isfinite(z)).any(axis=1).sum())
        raise InputError(f"embeddings have NaN or infinite values ({bad} rows)")
    norms = np.linalg.norm(z, axis=1, keepdims=True)
    np.divide(z, norms, out=z, where=norms > 0)
    z[norms[:, 0] == 0] = 0.0
    return z


def _pca_reduce(z: np.ndarray, dim: int, seed: int) -> np.ndarray:
    """Project unit rows (N, D) to `dim` principal axes and re-normalise (faiss PCA)."""
    import faiss

    if dim >= z.shape[1]:
        return z
    pca = faiss.PCAMatrix(z.shape[1], dim)
    rng = np.random.default_rng(seed)
    sample = z if z.shape[0] <= 200_000 else z[rng.choice(z.shape[0], 200_000, replace=False)]
    pca.train(np.ascontiguousarray(sample))
    reduced = pca.apply(z)
    return normalize_embeddings(reduced)


def _torch_cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # torch missing or broken CUDA: CPU path
        return False


def _faiss_gpu_available() -> bool:
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def resolve_search(n: int, search: str, device: str = "auto") -> str:
    """Pick the kNN search backend: 'exact', 'ivf', 'hnsw', 'torch-cuda' or 'faiss-gpu'."""
    valid = ("auto", "exact", "ivf", "hnsw")
    if search not in valid:
        raise InputError(f"unknown graph search {search!r}; choose one of {', '.join(valid)}")
    if device not in ("auto", "cpu", "cuda"):
        raise InputError(f"unknown graph device {device!r}; choose auto, cpu or cuda")
    if device in ("auto", "cuda"):
        if _faiss_gpu_available():
            return "faiss-gpu" if search in ("auto", "exact") else search
        if _torch_cuda_available() and search in ("auto", "exact"):
            return "torch-cuda"
        if device == "cuda":
            raise InputError("graph device 'cuda' asked for, but no CUDA device is available")
    if search == "auto":
        return "exact" if n <= EXACT_SEARCH_MAX_N else "ivf"
    return search


def _drop_self(ids: np.ndarray, sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Remove each row's own index from (N, k+1) search results, keep k columns."""
    n = ids.shape[0]
    is_self = ids == np.arange(n)[:, None]
    # Rows where self was not returned (duplicates ahead of it): drop the last column.
    no_self = ~is_self.any(axis=1)
    is_self[no_self, -1] = True
    keep = ~is_self
    return ids[keep].reshape(n, k), sims[keep].reshape(n, k)


def _search_torch_cuda(z: np.ndarray, k: int, progress=None, cancel=None):
    """Exact kNN with blockwise fp32 matmuls on CUDA (used when faiss-gpu is absent)."""
    import torch

    zt = torch.from_numpy(z).cuda()
    n = z.shape[0]
    ids = np.empty((n, k + 1), dtype=np.int64)
    sims = np.empty((n, k + 1), dtype=np.float32)
    for start in range(0, n, BLOCK_ROWS):
        check_cancel(cancel)
        block = zt[start : start + BLOCK_ROWS] @ zt.T
        top = torch.topk(block, k + 1, dim=1)
        sims[start : start + BLOCK_ROWS] = top.values.cpu().numpy()
        ids[start : start + BLOCK_ROWS] = top.indices.cpu().numpy()
        if progress:
            progress(min(1.0, (start + BLOCK_ROWS) / n), "kNN search (CUDA)", {})
    return ids, sims


def knn_search(
    z: np.ndarray,
    k: int,
    search: str = "auto",
    nprobe: int | None = None,
    device: str = "auto",
    seed: int = 0,
    progress=None,
    cancel=None,
) -> tuple[np.ndarray, np.ndarray, str]:
    """Cosine kNN of unit rows z (N, D), self excluded.

    Returns (ids (N, k) int64, cos (N, k) float32 in descending order, backend).
    Approximate backends may return -1 ids (with -inf cos) where fewer than k were found.
    """
    import faiss

    n, d = z.shape
    backend = resolve_search(n, search, device)
    kk = min(k + 1, n)
    if backend == "torch-cuda":
        ids, sims = _search_torch_cuda(z, kk - 1, progress, cancel)
        return (*_drop_self(ids, sims, k), backend)
    if backend == "exact" or backend == "faiss-gpu":
        index = faiss.IndexFlatIP(d)
        if backend == "faiss-gpu":
            index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
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
    sims[ids < 0] = -np.inf
    ids_out, sims_out = _drop_self(ids, sims, kk - 1)
    if kk - 1 < k:  # k == n - 1 edge case cannot happen (validated), kept for safety
        raise InputError(f"k={k} is larger than N-1={n - 1}")
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


def _csr_from_knn(ids: np.ndarray, sim: np.ndarray, tau: float, n: int) -> sp.csr_matrix:
    """Thresholded, symmetrised graph with unit diagonal from kNN lists (N, k)."""
    keep = (sim > tau) & (ids >= 0)
    rows = np.repeat(np.arange(n, dtype=np.int32), keep.sum(axis=1))
    directed = sp.csr_matrix(
        (sim[keep].astype(np.float32), (rows, ids[keep].astype(np.int32))), shape=(n, n)
    )
    return _finish(directed, n)


def _finish(directed: sp.csr_matrix, n: int) -> sp.csr_matrix:
    """Symmetrise by max (a kNN relation is not symmetric), set the diagonal to 1."""
    sym = directed.maximum(directed.T).tocsr()
    sym.setdiag(0)
    sym.eliminate_zeros()
    sym = (sym + sp.identity(n, dtype=np.float32, format="csr")).tocsr()
    sym.sort_indices()
    sym.data = sym.data.astype(np.float32, copy=False)
    sym.indices = sym.indices.astype(np.int32, copy=False)
    sym.indptr = sym.indptr.astype(np.int64 if sym.nnz >= 2**31 else np.int32, copy=False)
    return sym


def range_graph(z: np.ndarray, tau: float, progress=None, cancel=None) -> sp.csr_matrix:
    """Exact, untruncated tau-graph: every pair with 0.5 + 0.5 cos > tau (blockwise, fp32).

    Memory is O(BLOCK_ROWS * N) for the blocks plus O(edges) for the result.
    """
    n = z.shape[0]
    rows, cols, vals = [], [], []
    for start in range(0, n, BLOCK_ROWS):
        check_cancel(cancel)
        sim = similarity_from_cosine(z[start : start + BLOCK_ROWS] @ z.T)  # (b, N)
        r, c = np.nonzero(sim > tau)
        rows.append((r + start).astype(np.int32))
        cols.append(c.astype(np.int32))
        vals.append(sim[r, c])
        del sim
        if progress:
            progress(min(1.0, (start + BLOCK_ROWS) / n), "exact range search", {})
    directed = sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)
    )
    return _finish(directed, n)


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
):
    """Cosine neighbour graph of embeddings (N, D) -> symmetric CSR (N, N), float32 weights.

    k: neighbours per example in the kNN search (self excluded); None = exact
       untruncated range search (every pair above tau), for small N or parity checks.
    tau: similarity threshold on the 0.5 + 0.5 cos scale, or 'auto' (the median example
       keeps `target_neighbours` neighbours).
    search: 'auto' (exact up to EXACT_SEARCH_MAX_N, IVF above), 'exact', 'ivf', 'hnsw'.
       On a machine with CUDA, exact search runs on the GPU (faiss-gpu, else torch).
    pca_dim: optional PCA reduction before the search (speeds up large D).
    allow_empty: when False, a tau that leaves no example any neighbour is an InputError.
    Returns the CSR graph, or (graph, GraphInfo) when return_info is True.
    """
    start = time.perf_counter()
    z = normalize_embeddings(embeddings)
    n = z.shape[0]
    tau_value, tau_text = _parse_tau(tau)
    if k is not None:
        if int(k) != k or k < 1:
            raise InputError(f"k must be a positive integer, got {k}")
        if k >= n:
            raise InputError(f"k={k} is larger than N-1={n - 1} (N={n} examples)")
        k = int(k)
    if pca_dim is not None:
        if pca_dim < 2:
            raise InputError(f"pca_dim must be at least 2, got {pca_dim}")
        z = _pca_reduce(z, int(pca_dim), seed)
    if k is None:
        if tau_value is None:
            raise InputError("tau='auto' needs a kNN graph (k), not an untruncated range search")
        graph = range_graph(z, tau_value, progress, cancel)
        backend = "exact-range"
    else:
        ids, cos, backend = knn_search(z, k, search, nprobe, device, seed, progress, cancel)
        if tau_value is None:
            tau_value = auto_tau(cos, target_neighbours)
        graph = _csr_from_knn(ids, similarity_from_cosine(cos), tau_value, n)
    info = graph_info(
        graph, k=k, tau=float(tau_value), tau_requested=tau_text, search=backend,
        pca_dim=pca_dim, seconds=time.perf_counter() - start,
    )
    if info.edges == 0 and not allow_empty:
        raise InputError(
            f"tau={tau_value:.4f} leaves no example any neighbour "
            f"(similarity 0.5+0.5cos must exceed tau); lower tau or use tau=auto"
        )
    return (graph, info) if return_info else graph
