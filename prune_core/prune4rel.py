"""Prune4ReL: greedy maximisation of the total reduced neighbourhood confidence.

    F(S) = sum over ALL training examples x of tanh(C(x; S) / eta),
    C(x; S) = sum over s in S of w(x, s) * conf(s),

with w the sparse similarity graph (unit diagonal). Two modes, both lazy greedy over
the graph with one max-heap per class (a single heap without class balance):

- ``exact``: the true marginal gain sum_v tanh((C_v + w(v,x) conf_x)/eta) - tanh(C_v/eta)
  over x's neighbours v. F is monotone submodular, gains only shrink, so lazy
  evaluation picks exactly what plain greedy picks (the (1 - 1/e) guarantee holds
  without class balance).
- ``official``: the released code's own-term score tanh((C_x + conf_x)/eta) - tanh(C_x/eta),
  for parity with the paper's numbers. It ignores the gain to x's neighbours.

Ties go to the lowest index in both modes. The hot loop is numba-compiled and runs
in chunks, so progress and cancel are checked between chunks, never per pick.
"""

from __future__ import annotations

import numba
import numpy as np
import scipy.sparse as sp
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .errors import InputError, check_cancel
from .scores import confidence as confidence_of
from .registry import MethodOutput, class_target_sequence, register_method

MODES = ("exact", "official")
# Defaults for 10-class data (the paper's CIFAR-10 setting); 0.95 suits 100 classes.
DEFAULT_TAU = 0.975
DEFAULT_ETA = 1.0
# The default mode, chosen on measured re-labeling accuracy (DESIGN: "decide the default from
# measured downstream accuracy"): on the real CIFAR-10N worst labels, SOP+ from scratch, 3
# seeds, official beat exact at keep 20% (+3.9 pt, 3/3 seeds) and 80% (+1.0 pt, 3/3) and was
# within the seed spread at 50%; exact led by 0.4 pt on USPS with synthetic noise at 20%
# (docs/results.md, finding 5). `exact` stays one flag away: it maximises F itself.
DEFAULT_MODE = "official"


@intrinsic
def _prefetch(typingctx, array, index):
    """Hint the CPU to bring array[index]'s cache line in (LLVM's llvm.prefetch: a read,
    high temporal locality, data cache); no effect on results."""
    def codegen(context, builder, sig, args):
        array_type = sig.args[0]
        arr = context.make_array(array_type)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, array_type, arr, [args[1]],
                                       wraparound=False, boundscheck=False)
        byte_ptr = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [byte_ptr, i32, i32, i32]), "llvm.prefetch.p0i8")
        builder.call(fn, [builder.bitcast(ptr, byte_ptr), ir.Constant(i32, 0), ir.Constant(i32, 3),
                          ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.void(array, index), codegen


@numba.njit(cache=True, inline="always")
def _prefetch_row(x, indptr, indices, m1):
    """Prefetch row x of the graph (its column indices and edge factors), one hint per line."""
    start, end = indptr[x], indptr[x + 1]
    for j in range(start, end, 64 // indices.itemsize):  # 64-byte lines
        _prefetch(indices, j)
    for j in range(start, end, 64 // m1.itemsize):
        _prefetch(m1, j)


@numba.njit(cache=True, inline="always")
def _better(g1, i1, g2, i2):
    """Key order of the max-heap: larger gain first, then lower index."""
    return g1 > g2 or (g1 == g2 and i1 < i2)


@numba.njit(cache=True, inline="always")
def _sift_down(hg, hi, base, m, pos, g, i):
    """Place (g, i) at `pos` of the heap segment base:base+m and sift it down."""
    while True:
        child = 2 * pos + 1
        if child >= m:
            break
        if child + 1 < m and _better(hg[base + child + 1], hi[base + child + 1], hg[base + child], hi[base + child]):
            child += 1
        if _better(hg[base + child], hi[base + child], g, i):
            hg[base + pos] = hg[base + child]
            hi[base + pos] = hi[base + child]
            pos = child
        else:
            break
    hg[base + pos] = g
    hi[base + pos] = i


@numba.njit(cache=True)
def _heap_pop(hg, hi, off, size, c):
    """Remove and return the top (gain, id) of class heap c (segment off[c]:off[c]+size[c])."""
    base = off[c]
    top_g = hg[base]
    top_i = hi[base]
    size[c] -= 1
    m = size[c]
    if m > 0:
        _sift_down(hg, hi, base, m, 0, hg[base + m], hi[base + m])
    return top_g, top_i


@numba.njit(cache=True, inline="always")
def _runner_up(hg, hi, base, m):
    """Position (within the segment) of the best key below the top, or -1 if m < 2."""
    if m < 2:
        return -1
    if m > 2 and _better(hg[base + 2], hi[base + 2], hg[base + 1], hi[base + 1]):
        return 2
    return 1


@numba.njit(cache=True, inline="always")
def tanh_increase(base, delta):
    """tanh(base + delta) - tanh(base) for base, delta >= 0, without cancellation.

    Written with exp(-2 base) so the increase stays accurate (not rounded to 0) once
    tanh saturates near 1; plain subtraction would turn later gains into float noise.
    """
    e_base = np.exp(-2.0 * base)
    e_top = e_base * np.exp(-2.0 * delta)
    return 2.0 * e_base * -np.expm1(-2.0 * delta) / ((1.0 + e_top) * (1.0 + e_base))


@numba.njit(cache=True)
def _exact_gain(x, indptr, indices, weights, conf, cover, inv_eta):
    """True marginal gain of adding x: sum over its neighbours v of the tanh increase."""
    total = 0.0
    cx = conf[x]
    for j in range(indptr[x], indptr[x + 1]):
        v = indices[j]
        total += tanh_increase(cover[v] * inv_eta, weights[j] * cx * inv_eta)
    return total


@numba.njit(cache=True)
def initial_gains(indptr, indices, weights, conf, inv_eta, exact):
    """(N,) gains of every example for the empty subset."""
    n = conf.shape[0]
    out = np.empty(n, dtype=np.float64)
    for x in range(n):
        if exact:
            total = 0.0
            for j in range(indptr[x], indptr[x + 1]):
                total += np.tanh(weights[j] * conf[x] * inv_eta)
            out[x] = total
        else:
            out[x] = np.tanh(conf[x] * inv_eta)
    return out


@numba.njit(cache=True)
def _edge_factors(indptr, weights, conf, inv_eta):
    """Per stored entry (x, v): m = -expm1(-2 d) for d = w(v, x) conf_x / eta, (nnz,) float64.

    It does not change during the selection, so the exact gain's inner loop needs no
    transcendental function: with e = exp(-2 C_v / eta) kept per example, the tanh
    increase tanh(C_v/eta + d) - tanh(C_v/eta) is 2 e m / ((1 + e (1 - m)) (1 + e)), the
    expression of `tanh_increase` with exp(-2 d) = 1 - m. Only m is stored: 1 - m is
    accurate to about 1e-16 absolute (and exp(-2 d) >= exp(-2 / eta)), and a second array
    of nnz doubles would be read from memory on every gain evaluation (that reading is
    most of the exact mode's time on overlapping neighbourhoods; docs/benchmarks.md).
    """
    n = indptr.shape[0] - 1
    m1 = np.empty(weights.shape[0], dtype=np.float64)
    for x in range(n):
        cx = conf[x]
        for j in range(indptr[x], indptr[x + 1]):
            m1[j] = -np.expm1(-2.0 * (weights[j] * cx * inv_eta))
    return m1


@numba.njit(cache=True)
def _exact_gain_fast(x, indptr, indices, m1, ebase):
    """`_exact_gain` from the precomputed factors (equal to it within a few ulps)."""
    total = 0.0
    for j in range(indptr[x], indptr[x + 1]):
        e_base = ebase[indices[j]]
        m = m1[j]
        total += 2.0 * e_base * m / ((1.0 + e_base * (1.0 - m)) * (1.0 + e_base))
    return total


@numba.njit(cache=True)
def _greedy_steps(t_start, t_end, class_seq, indptr, indices, weights, conf, inv_eta, exact,
                  hg, hi, off, size, cover, picks, gains, scores, m1, ebase, evaluations):
    """Run greedy picks t_start..t_end-1 in place (state: heaps, cover C, outputs).

    evaluations (1,) int64 counts the gain evaluations (one per pick plus the re-evaluations
    of stale keys).

    exact mode uses the precomputed factors m1 and ebase[v] = exp(-2 C_v / eta);
    official mode passes empty arrays for them.
    """
    for t in range(t_start, t_end):
        c = class_seq[t]
        base = off[c]
        while True:
            # Peek at the top, refresh its key, and either take it (it still beats the best
            # key below it) or sift the fresh key down in place: one sift instead of a pop
            # and a push, same order of evaluations and picks.
            x = hi[base]
            if exact:
                # The next key to refresh is one of the top's two children (after a pick or
                # when the fresh key sinks): their rows are read while this one is evaluated.
                # The rows lie at random places of the CSR (tens of MB), so without the hint
                # every evaluation waited for memory (tight 50k: 1.3 -> 0.8 s, same picks).
                m = size[c]
                if m > 1:
                    _prefetch_row(hi[base + 1], indptr, indices, m1)
                if m > 2:
                    _prefetch_row(hi[base + 2], indptr, indices, m1)
                g = _exact_gain_fast(x, indptr, indices, m1, ebase)
            else:
                g = tanh_increase(cover[x] * inv_eta, conf[x] * inv_eta)
            evaluations[0] += 1
            # Stale keys are upper bounds (gains only shrink): x wins if it still beats the rest.
            r = _runner_up(hg, hi, base, size[c])
            if r < 0 or not _better(hg[base + r], hi[base + r], g, x):
                _heap_pop(hg, hi, off, size, c)
                break
            _sift_down(hg, hi, base, size[c], 0, g, x)
        picks[t] = x
        scores[t] = g
        gains[t] = g if exact else _exact_gain(x, indptr, indices, weights, conf, cover, inv_eta)
        cx = conf[x]
        for j in range(indptr[x], indptr[x + 1]):
            v = indices[j]
            cover[v] += weights[j] * cx
            if exact:
                ebase[v] = np.exp(-2.0 * (cover[v] * inv_eta))


def prepare_graph(graph, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR arrays (indptr int64, indices int32 or int64, weights float32 or float64) of an
    (N, N) graph. Index and weight arrays are used as stored (no copies at N = 1M); float32
    weights are widened exactly to float64 inside the kernels."""
    if graph is None or not sp.issparse(graph):
        raise InputError("prune4rel needs a sparse neighbour graph (see build_graph)")
    if graph.shape != (n, n):
        raise InputError(f"graph shape {graph.shape} does not match N={n}")
    g = graph.tocsr()
    indices = g.indices if g.indices.dtype in (np.int32, np.int64) else g.indices.astype(np.int64)
    weights = g.data if g.data.dtype in (np.float32, np.float64) else g.data.astype(np.float64)
    return (g.indptr.astype(np.int64), np.ascontiguousarray(indices), np.ascontiguousarray(weights))


def neighbourhood_confidence(graph, conf: np.ndarray, subset: np.ndarray) -> np.ndarray:
    """C(x; S) (N,) for every example x given the kept subset S (indices)."""
    g = graph.tocsc()[:, np.asarray(subset)]
    return np.asarray(g @ np.asarray(conf, dtype=np.float64)[subset]).ravel()


def objective(graph, conf: np.ndarray, subset: np.ndarray, eta: float = DEFAULT_ETA) -> float:
    """F(S) = sum over all x of tanh(C(x; S) / eta)."""
    return float(np.tanh(neighbourhood_confidence(graph, conf, subset) / eta).sum())


def greedy_neighbourhood_confidence(
    graph,
    conf: np.ndarray,
    budget: int,
    eta: float = DEFAULT_ETA,
    mode: str = "exact",
    labels: np.ndarray | None = None,
    balance: str = "none",
    progress=None,
    cancel=None,
    stats: dict | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Greedy Prune4ReL selection on a sparse graph.

    graph: CSR (N, N) weights w (unit diagonal). conf: (N,) confidences in [0, 1].
    Returns (picks (budget,) int64 in pick order, gains (budget,) true marginal gains in F,
    scores (budget,) the greedy score of each pick, cover (N,) final C(x; S)).
    stats: when a dict, gets `evaluations` (gain evaluations, stale-key refreshes included)
    and `evaluations_per_pick`. Raises InputError for an unknown mode, eta <= 0 or a graph
    that is not sparse (N, N). Objective: F(S) = sum over all x of tanh(C(x; S) / eta), the
    total reduced neighbourhood confidence (paper, Sec. 3; its Algorithm 1 is the greedy),
    maximised by lazy greedy on the exact marginal gain (Minoux's accelerated greedy).
    """
    if mode not in MODES:
        raise InputError(f"unknown prune4rel mode {mode!r}; choose one of {', '.join(MODES)}")
    if not (eta > 0):
        raise InputError(f"eta must be positive, got {eta}")
    conf = np.ascontiguousarray(conf, dtype=np.float64)
    n = conf.shape[0]
    indptr, indices, weights = prepare_graph(graph, n)
    exact = mode == "exact"
    inv_eta = 1.0 / float(eta)
    seq = class_target_sequence(labels, budget, balance) if labels is not None else None
    heap_class = np.zeros(n, dtype=np.int64) if seq is None else np.asarray(labels, dtype=np.int64)
    if seq is None:
        seq = np.zeros(budget, dtype=np.int64)
    k = int(heap_class.max()) + 1
    # A list sorted by (class, -gain, index) is a valid max-heap in every class segment.
    gains0 = initial_gains(indptr, indices, weights, conf, inv_eta, exact)
    order = np.lexsort((np.arange(n), -gains0, heap_class))
    hg = gains0[order].copy()
    hi = order.astype(np.int64)
    size = np.bincount(heap_class, minlength=k).astype(np.int64)
    off = np.concatenate([[0], np.cumsum(size)[:-1]]).astype(np.int64)
    cover = np.zeros(n, dtype=np.float64)
    picks = np.empty(budget, dtype=np.int64)
    gains = np.empty(budget, dtype=np.float64)
    scores = np.empty(budget, dtype=np.float64)
    if exact:
        m1 = _edge_factors(indptr, weights, conf, inv_eta)
        ebase = np.ones(n, dtype=np.float64)  # exp(-2 C_v / eta) with C = 0
    else:
        m1 = ebase = np.empty(0, dtype=np.float64)
    evaluations = np.zeros(1, dtype=np.int64)
    chunk = max(1, budget // 100)
    for start in range(0, budget, chunk):
        check_cancel(cancel)
        end = min(budget, start + chunk)
        _greedy_steps(start, end, seq, indptr, indices, weights, conf, inv_eta, exact,
                      hg, hi, off, size, cover, picks, gains, scores, m1, ebase, evaluations)
        if progress:
            progress(end / budget, f"prune4rel {mode}: {end}/{budget} picked", {})
    if stats is not None:
        stats.update(evaluations=int(evaluations[0]),
                     evaluations_per_pick=float(evaluations[0]) / budget if budget else 0.0)
    return picks, gains, scores, cover


@register_method(
    "prune4rel",
    "Prune4ReL: greedily maximise the total reduced neighbourhood confidence of all examples",
    needs=("probs",),
    nested=True,
    default_balance="none",
    defaults={"mode": DEFAULT_MODE, "tau": DEFAULT_TAU, "eta": DEFAULT_ETA, "confidence": "maxprob", "k": 50},
)
def _prune4rel(inputs, budget, seed, progress, cancel, mode, tau, eta, confidence, k, balance):
    from .graph import build_graph

    graph = inputs.graph
    extra = {}
    if graph is None:
        if inputs.embeddings is None:
            raise InputError("prune4rel needs a neighbour graph or embeddings to build one")
        graph, info = build_graph(inputs.embeddings, k=k, tau=tau, return_info=True, seed=seed, cancel=cancel)
        extra["graph"] = info.to_dict()
    if balance != "none" and inputs.labels is None:
        raise InputError(f"class balance {balance!r} needs labels")
    conf = confidence_of(inputs.probs, confidence)
    picks, gains, scores, cover = greedy_neighbourhood_confidence(
        graph, conf, budget, eta=eta, mode=mode,
        labels=inputs.labels if balance != "none" else None, balance=balance,
        progress=progress, cancel=cancel,
    )
    extra["neighbourhood_confidence"] = cover
    return MethodOutput(picks, gains=gains, scores=scores, objective=float(gains.sum()), extra=extra)
