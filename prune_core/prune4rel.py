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
in chunks, so progress and cancel are checked between chunks, never per pick. Without
class balance, exact mode selects connected component by component on all numba threads,
with the examples renamed so that each component lies together in memory
(`greedy_neighbourhood_confidence`, components): the same picks as one heap.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import scipy.sparse as sp
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .components import _balanced_work, _component_labels, _rows_in_order, component_order
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


@numba.njit(cache=True, parallel=True)
def _edge_factors(indptr, weights, conf, inv_eta):
    """Per stored entry (x, v): m = -expm1(-2 d) for d = w(v, x) conf_x / eta, (nnz,) float64.

    It does not change during the selection, so the exact gain's inner loop needs no
    transcendental function: with e = exp(-2 C_v / eta) kept per example, the tanh
    increase tanh(C_v/eta + d) - tanh(C_v/eta) is 2 e m / ((1 + e (1 - m)) (1 + e)), the
    expression of `tanh_increase` with exp(-2 d) = 1 - m. Only m is stored: 1 - m is
    accurate to about 1e-16 absolute (and exp(-2 d) >= exp(-2 / eta)), and a second array
    of nnz doubles would be read from memory on every gain evaluation (that reading is
    most of the exact mode's time on overlapping neighbourhoods; docs/benchmarks.md).
    The selection computes m with its first keys in `_edge_factors_and_keys`; this
    factors-only pass is the reference that one is tested against.
    """
    n = indptr.shape[0] - 1
    m1 = np.empty(weights.shape[0], dtype=np.float64)
    for x in numba.prange(n):  # rows on all numba threads
        cx = conf[x]
        for j in range(indptr[x], indptr[x + 1]):
            m1[j] = -np.expm1(-2.0 * (weights[j] * cx * inv_eta))
    return m1


@numba.njit(cache=True, parallel=True)
def _edge_factors_and_keys(indptr, weights, conf, inv_eta):
    """`_edge_factors` and the exact mode's `initial_keys` in one pass over the entries:
    (m1 (nnz,) float64, keys (N,) float64). Each key is summed with `_exact_gain_fast`'s
    very arithmetic at e = exp(0) = 1, so it equals `initial_keys` bit for bit (tested);
    one pass instead of two saves reading the nnz indices and factors again (the two
    passes took 0.60 + 0.41 s at clustered 1M on a 2-core AMD VM)."""
    n = indptr.shape[0] - 1
    m1 = np.empty(weights.shape[0], dtype=np.float64)
    keys = np.empty(n, dtype=np.float64)
    e_base = 1.0  # exp(-2 C_v / eta) with C = 0, spelt out as in the refresh
    for x in numba.prange(n):
        cx = conf[x]
        total = 0.0
        for j in range(indptr[x], indptr[x + 1]):
            m = -np.expm1(-2.0 * (weights[j] * cx * inv_eta))
            m1[j] = m
            total += 2.0 * e_base * m / ((1.0 + e_base * (1.0 - m)) * (1.0 + e_base))
        keys[x] = total
    return m1, keys


@numba.njit(cache=True)
def _exact_gain_fast(x, indptr, indices, m1, ebase):
    """`_exact_gain` from the precomputed factors (equal to it within a few ulps)."""
    total = 0.0
    for j in range(indptr[x], indptr[x + 1]):
        e_base = ebase[indices[j]]
        m = m1[j]
        total += 2.0 * e_base * m / ((1.0 + e_base * (1.0 - m)) * (1.0 + e_base))
    return total


@numba.njit(cache=True, parallel=True)
def initial_keys(indptr, indices, conf, inv_eta, exact, m1, ebase):
    """(N,) heap keys of every example for the empty subset (rows on all numba threads).

    Computed with the very arithmetic a refresh uses (exact: `_exact_gain_fast` with
    ebase = 1; official: `tanh_increase` from C = 0), so an example's first refresh gives
    its key back to the last bit. Keys must be upper bounds of every later refresh: a key
    from np.tanh instead was 1 ulp below the first refresh for some confidences, and
    near-ties then fell differently on one heap and per component."""
    n = conf.shape[0]
    out = np.empty(n, dtype=np.float64)
    for x in numba.prange(n):
        if exact:
            out[x] = _exact_gain_fast(x, indptr, indices, m1, ebase)
        else:
            out[x] = tanh_increase(0.0 * inv_eta, conf[x] * inv_eta)
    return out


@numba.njit(cache=True, inline="always")
def _refresh_top(c, indptr, indices, conf, inv_eta, exact, hg, hi, off, size, cover, m1, ebase,
                 evaluations, slot):
    """Refresh stale keys of heap segment c (a class, a connected component or all examples)
    until the top one holds against the rest; returns (that top example, its fresh key).
    The top stays in the heap (with its stale key). evaluations[slot] counts the gain
    evaluations. Official mode passes empty m1 and ebase."""
    base = off[c]
    while True:
        # Peek at the top, refresh its key, and either keep it (it still beats the best
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
        evaluations[slot] += 1
        # Stale keys are upper bounds (gains only shrink): x wins if it still beats the rest.
        r = _runner_up(hg, hi, base, size[c])
        if r < 0 or not _better(hg[base + r], hi[base + r], g, x):
            return x, g
        _sift_down(hg, hi, base, size[c], 0, g, x)


@numba.njit(cache=True, inline="always")
def _take_top(c, x, g, indptr, indices, weights, conf, inv_eta, exact, hg, hi, off, size, cover,
              ebase):
    """Pop the top x of heap segment c (its fresh key g) into the subset: add it to the
    cover C (and, in exact mode, to ebase[v] = exp(-2 C_v / eta)); returns its true
    marginal gain in F."""
    _heap_pop(hg, hi, off, size, c)
    gain = g if exact else _exact_gain(x, indptr, indices, weights, conf, cover, inv_eta)
    cx = conf[x]
    for j in range(indptr[x], indptr[x + 1]):
        v = indices[j]
        cover[v] += weights[j] * cx
        if exact:
            ebase[v] = np.exp(-2.0 * (cover[v] * inv_eta))
    return gain


@numba.njit(cache=True)
def _pick(c, indptr, indices, weights, conf, inv_eta, exact, hg, hi, off, size, cover, m1, ebase,
          evaluations, slot):
    """One greedy pick from heap segment c: returns (pick, its score, its true gain in F)."""
    x, g = _refresh_top(c, indptr, indices, conf, inv_eta, exact, hg, hi, off, size, cover, m1, ebase,
                        evaluations, slot)
    gain = _take_top(c, x, g, indptr, indices, weights, conf, inv_eta, exact, hg, hi, off, size, cover,
                     ebase)
    return x, g, gain


@numba.njit(cache=True)
def _greedy_steps(t_start, t_end, class_seq, indptr, indices, weights, conf, inv_eta, exact,
                  hg, hi, off, size, cover, picks, gains, scores, m1, ebase, evaluations):
    """Run greedy picks t_start..t_end-1 in place (state: heaps, cover C, outputs); pick t
    comes from heap segment class_seq[t]. evaluations (1,) int64 counts gain evaluations."""
    for t in range(t_start, t_end):
        x, g, gain = _pick(class_seq[t], indptr, indices, weights, conf, inv_eta, exact, hg, hi, off,
                           size, cover, m1, ebase, evaluations, 0)
        picks[t] = x
        scores[t] = g
        gains[t] = gain


@numba.njit(cache=True)
def _run_component(c, theta, limit, indptr, indices, weights, conf, inv_eta, exact, hg, hi, off, size,
                   cover, m1, ebase, evaluations, produced, picks, gains, scores):
    """Extend component c's own greedy sequence by every pick whose score is at least theta,
    up to limit[c] picks in all.

    Pick q of component c is stored at off[c] + q of picks, gains and scores. Afterwards
    every key left in its heap is below theta (a top refreshed below theta keeps its fresh
    key), and all keys are still upper bounds of the gains: nothing is picked that the
    global greedy would not pick before any score below theta."""
    base = off[c]
    while size[c] > 0 and hg[base] >= theta and produced[c] < limit[c]:
        x, g = _refresh_top(c, indptr, indices, conf, inv_eta, exact, hg, hi, off, size, cover, m1,
                            ebase, evaluations, c)
        if g < theta:
            hg[base] = g  # still the best key of the heap: the heap stays valid
            return
        gain = _take_top(c, x, g, indptr, indices, weights, conf, inv_eta, exact, hg, hi, off, size,
                         cover, ebase)
        t = off[c] + produced[c]
        picks[t] = x
        scores[t] = g
        gains[t] = gain
        produced[c] += 1


@numba.njit(parallel=True, cache=True)
def _run_components(work, work_ptr, theta, limit, indptr, indices, weights, conf, inv_eta, exact, hg, hi,
                    off, size, cover, m1, ebase, evaluations, produced, picks, gains, scores):
    """`_run_component` for every component, worker w taking work[work_ptr[w]:work_ptr[w+1]].

    Components share no edge, so their picks touch disjoint entries of every array (heap
    segments, covers, outputs): the workers need no synchronisation and the result does not
    depend on how many there are or on their timing."""
    for w in numba.prange(work_ptr.shape[0] - 1):
        for q in range(work_ptr[w], work_ptr[w + 1]):
            _run_component(work[q], theta, limit, indptr, indices, weights, conf, inv_eta, exact, hg, hi,
                           off, size, cover, m1, ebase, evaluations, produced, picks, gains, scores)


@numba.njit(cache=True)
def _remaining_keys(hg, off, size):
    """The keys of all examples still in the heaps (sum(size),) float64."""
    out = np.empty(size.sum(), dtype=np.float64)
    q = 0
    for c in range(size.shape[0]):
        for p in range(off[c], off[c] + size[c]):
            out[q] = hg[p]
            q += 1
    return out


@numba.njit(cache=True)
def _sift_down_heads(key, ids, comp, m, pos):
    """Sift entry pos of the max-heap of component heads (key, pick id, component) down."""
    k, i, c = key[pos], ids[pos], comp[pos]
    while True:
        child = 2 * pos + 1
        if child >= m:
            break
        if child + 1 < m and _better(key[child + 1], ids[child + 1], key[child], ids[child]):
            child += 1
        if _better(key[child], ids[child], k, i):
            key[pos], ids[pos], comp[pos] = key[child], ids[child], comp[child]
            pos = child
        else:
            break
    key[pos], ids[pos], comp[pos] = k, i, c


@numba.njit(cache=True)
def _merge_components(t_start, t_end, head_key, head_id, head_comp, n_heads, head, indptr, indices,
                      weights, conf, inv_eta, exact, hg, hi, off, size, cover, m1, ebase, evaluations,
                      produced, seq_picks, seq_gains, seq_scores, picks, gains, scores, extended, name):
    """Global picks t_start..t_end-1: a lazy greedy over the components' heads.

    A head is either a component's next computed pick (key: its score, id: the pick) or,
    where the computed sequence is used up, a bound (key: the top key of the component's
    heap, an upper bound of its next score; id -1, so it is resolved before an equal real
    key: ties keep going to the lower index). The best head is taken when real; a bound is
    resolved by computing that component's next pick (counted in extended (1,)). n_heads
    (1,) is the heads' heap size, head[c] the next unread place of component c's sequence.
    The state may name examples in component order: name (N,) maps them to the caller's
    indices, which head ids and picks hold (ties between components go by those).
    """
    for t in range(t_start, t_end):
        while head_id[0] < 0:
            c = head_comp[0]
            x, g, gain = _pick(c, indptr, indices, weights, conf, inv_eta, exact, hg, hi, off, size,
                               cover, m1, ebase, evaluations, c)
            q = off[c] + produced[c]
            seq_picks[q], seq_gains[q], seq_scores[q] = x, gain, g
            produced[c] += 1
            extended[0] += 1
            head_key[0], head_id[0] = g, name[x]
            _sift_down_heads(head_key, head_id, head_comp, n_heads[0], 0)
        c = head_comp[0]
        q = off[c] + head[c]
        picks[t] = name[seq_picks[q]]
        gains[t] = seq_gains[q]
        scores[t] = seq_scores[q]
        head[c] += 1
        if head[c] < produced[c]:
            q = off[c] + head[c]
            head_key[0], head_id[0] = seq_scores[q], name[seq_picks[q]]
        elif size[c] > 0:
            head_key[0], head_id[0] = hg[off[c]], -1
        else:  # the component is used up: its place goes to the last head
            n_heads[0] -= 1
            m = n_heads[0]
            head_key[0], head_id[0], head_comp[0] = head_key[m], head_id[m], head_comp[m]
        if n_heads[0] > 0:
            _sift_down_heads(head_key, head_id, head_comp, n_heads[0], 0)


@numba.njit(cache=True)
def _cover_of(picks, indptr, indices, weights, conf, cover):
    """C(x; S) accumulated over picks in pick order (the order the greedy adds them in)."""
    for t in range(picks.shape[0]):
        x = picks[t]
        cx = conf[x]
        for j in range(indptr[x], indptr[x + 1]):
            cover[indices[j]] += weights[j] * cx


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


# Selection by component (`_select_by_component`): at most _COMPONENT_ROUNDS parallel rounds
# (progress and cancel are checked between rounds); the lazy merge computes the last picks
# once fewer than max(_COMPONENT_GROW, budget / 200) are missing; an extrapolated round
# aims at _COMPONENT_STEP of the missing picks and may compute (1 + _COMPONENT_SLACK) times
# them. Chosen on the benchmark's 50k and 1M graphs (bench/selection.py; the choice moves
# the selection's time by under 10%, never its result).
_COMPONENT_ROUNDS = 40
_COMPONENT_GROW = 64
_COMPONENT_SLACK = 0.25
_COMPONENT_STEP = 0.25


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
    components: bool | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Greedy Prune4ReL selection on a sparse graph.

    graph: CSR (N, N) weights w (unit diagonal). conf: (N,) confidences in [0, 1].
    Returns (picks (budget,) int64 in pick order, gains (budget,) true marginal gains in F,
    scores (budget,) the greedy score of each pick, cover (N,) final C(x; S)).
    stats: when a dict, gets `evaluations` (gain evaluations, stale-key refreshes included),
    `evaluations_per_pick`, `components` (connected components of the graph; 1 when the
    selection ran on one heap) and `picks_computed` (picks the components' greedy runs
    made, used or not: at least budget), `component_rounds` (parallel rounds) and
    `picks_after_rounds` (picks the final merge computed one at a time). Raises
    InputError for an unknown mode, eta <= 0, a budget outside 0..N or a graph that is not
    sparse (N, N). Objective: F(S) = sum over all x of tanh(C(x; S) /
    eta), the total reduced neighbourhood confidence (paper, Sec. 3; its Algorithm 1 is
    the greedy), maximised by lazy greedy on the exact marginal gain (Minoux's accelerated
    greedy).

    components: without class balance, a graph of several connected components (a
    thresholded kNN graph usually has thousands) is selected component by component: an
    example's gain (and its official score) depends only on the picks in its own
    component, so each component's own lazy greedy, run on all cores at once, yields its
    picks in the order the global greedy takes them, and merging the components'
    sequences by decreasing key (ties to the lower index) IS the global greedy: same
    picks, gains, scores and cover as one heap over all examples. None (default): so in
    exact mode when there is no class balance and more than one component; False: one
    heap; True: components in either mode, even for a connected graph (tests). Both rely on
    every key being an upper bound of later refreshes to the last bit: the initial keys use
    the refresh's own arithmetic (`initial_keys`); a refresh rising by an ulp as C grows is
    possible in principle (the rounded formula is not monotone everywhere) but was not seen
    in tens of thousands of random instances (tests/test_selection.py fuzzes it).
    """
    if mode not in MODES:
        raise InputError(f"unknown prune4rel mode {mode!r}; choose one of {', '.join(MODES)}")
    if not (eta > 0):
        raise InputError(f"eta must be positive, got {eta}")
    conf = np.ascontiguousarray(conf, dtype=np.float64)
    n = conf.shape[0]
    if int(budget) != budget or not 0 <= budget <= n:
        raise InputError(f"budget must be a whole number from 0 to N={n}, got {budget}")
    budget = int(budget)
    indptr, indices, weights = prepare_graph(graph, n)
    exact = mode == "exact"
    inv_eta = 1.0 / float(eta)
    seq = class_target_sequence(labels, budget, balance) if labels is not None else None
    heap_class = None
    n_components = 1
    # Official-mode picks cost a few nanoseconds each: there the components' set-up cost more
    # than their threads saved (1M: 0.97 -> 1.16 s), so by default only exact mode uses them.
    if seq is None and budget > 0 and (components or (components is None and exact)):
        n_components, comp_label = _component_labels(indptr, indices, n)
        if n_components > 1 or components:
            heap_class = comp_label
        else:
            n_components = 1
    by_component = heap_class is not None
    caller_graph = (indptr, indices, weights, conf)
    name = None
    if by_component:
        # Rename the examples component by component: a component's rows, covers and keys
        # then lie together in memory instead of scattered over the whole CSR (its lazy
        # greedy re-reads them tens of times per pick on overlapping neighbourhoods).
        # Same picks: renaming keeps the order inside a component, rows keep their entry
        # order, and the merge breaks ties between components by the caller's indices.
        # Cost: one pass and a copy of the CSR's indices and weights (tight 50k: 0.03 s;
        # one heap 1.65 s -> 0.88 s on one thread, docs/benchmarks.md).
        name = component_order(heap_class)
        if name is not None:
            indptr, indices, weights = _rows_in_order(name, indptr, indices, weights)
            conf, heap_class = conf[name], heap_class[name]
        else:
            name = np.arange(n, dtype=np.int64)
    if heap_class is None:
        heap_class = np.zeros(n, dtype=np.int64) if seq is None else np.asarray(labels, dtype=np.int64)
    if seq is None:
        seq = np.zeros(budget, dtype=np.int64)
    k = int(heap_class.max()) + 1
    if exact:
        m1, gains0 = _edge_factors_and_keys(indptr, weights, conf, inv_eta)
        ebase = np.ones(n, dtype=np.float64)  # exp(-2 C_v / eta) with C = 0
    else:
        m1 = ebase = np.empty(0, dtype=np.float64)
        gains0 = initial_keys(indptr, indices, conf, inv_eta, exact, m1, ebase)
    # A list sorted by (class, -gain, index) is a valid max-heap in every class segment
    # (lexsort is stable: equal gains stay in index order).
    order = np.lexsort((-gains0, heap_class))
    hg = gains0[order].copy()
    hi = order.astype(np.int64)
    size = np.bincount(heap_class, minlength=k).astype(np.int64)
    off = np.concatenate([[0], np.cumsum(size)[:-1]]).astype(np.int64)
    cover = np.zeros(n, dtype=np.float64)
    picks = np.empty(budget, dtype=np.int64)
    gains = np.empty(budget, dtype=np.float64)
    scores = np.empty(budget, dtype=np.float64)
    state = (indptr, indices, weights, conf, inv_eta, exact, hg, hi, off, size, cover, m1, ebase)
    if by_component:
        evaluations, computed, rounds, merged_late = _select_by_component(
            budget, state, picks, gains, scores, mode, progress, cancel, name)
        state = indptr = indices = weights = m1 = None  # the renamed copies
        cover[:] = 0.0  # the components' runs went past the budget: C of the picks alone
        _cover_of(picks, *caller_graph, cover)
    else:
        evaluations = np.zeros(1, dtype=np.int64)
        computed, rounds, merged_late = budget, 0, 0
        chunk = max(1, budget // 100)
        for start in range(0, budget, chunk):
            check_cancel(cancel)
            end = min(budget, start + chunk)
            _greedy_steps(start, end, seq, indptr, indices, weights, conf, inv_eta, exact,
                          hg, hi, off, size, cover, picks, gains, scores, m1, ebase, evaluations)
            if progress:
                progress(end / budget, f"prune4rel {mode}: {end}/{budget} picked", {})
    if stats is not None:
        total = int(evaluations.sum())
        stats.update(evaluations=total, evaluations_per_pick=float(total) / budget if budget else 0.0,
                     components=int(n_components), picks_computed=int(computed),
                     component_rounds=rounds, picks_after_rounds=merged_late)
    return picks, gains, scores, cover


def _select_by_component(budget, state, picks, gains, scores, mode, progress, cancel, name):
    """The global greedy's first `budget` picks from per-component lazy greedy runs (see
    `greedy_neighbourhood_confidence`, components). Returns (evaluations (n_components,)
    int64, picks computed in all, parallel rounds, picks the merge computed one at a time).
    state may name examples in component order; name (N,) int64 maps them to the caller's
    indices (picks are written in those).

    Rounds, each on all numba threads: every component picks while its refreshed top
    scores at least theta, so after a round the computed picks are exactly the global
    greedy's picks scoring at least theta, whatever theta was. With theta the r-th largest
    key left in all heaps (r = picks still missing) a round cannot overshoot the budget
    (keys are upper bounds; ties at theta aside); later rounds extrapolate a lower theta and
    cap each component's picks (see the comment in the loop), so some computed picks may go
    unused (stats: picks_computed). Once few picks are missing (or after _COMPONENT_ROUNDS
    rounds) a lazy merge of the components' heads takes the sequences in global order and
    computes the rest one pick at a time.
    """
    (indptr, indices, weights, conf, inv_eta, exact, hg, hi, off, size, cover, m1, ebase) = state
    n = conf.shape[0]
    n_comp = size.shape[0]
    seq_picks = np.empty(n, dtype=np.int64)
    seq_gains = np.empty(n, dtype=np.float64)
    seq_scores = np.empty(n, dtype=np.float64)
    produced = np.zeros(n_comp, dtype=np.int64)
    evaluations = np.zeros(n_comp, dtype=np.int64)
    # Work of a component ~ its size x its rows' mean length: LPT assignment to the threads
    # (size: the examples still in each heap, all of them before the first round).
    nnz = np.bincount(np.repeat(np.arange(n_comp), size), weights=np.diff(indptr)[hi], minlength=n_comp)
    work, work_ptr = _balanced_work(nnz, numba.get_num_threads())
    finish_below = max(_COMPONENT_GROW, budget // 200)
    rounds = 0
    # theta: keys are stale upper bounds, so far fewer picks score at least theta than keys
    # lie above it: a theta `missing` keys deep (it can never overshoot) crept down a few
    # hundred picks a round on overlapping neighbourhoods (40 rounds at tight 50k, the
    # merge then computing 12k of the 25k picks one at a time). Scores fall about
    # exponentially with the rank, so from the third round on theta is extrapolated in log
    # scale from the last two rounds, to _COMPONENT_STEP of the missing picks, and each
    # component may then add at most its share (by examples left) of
    # (1 + _COMPONENT_SLACK) x missing picks: a round wastes at most that slack.
    history = []
    for r in range(1, _COMPONENT_ROUNDS + 1):
        done = int(produced.sum())
        missing = budget - done
        if missing <= finish_below:
            break
        rounds = r
        check_cancel(cancel)
        keys = _remaining_keys(hg, off, size)
        theta = (float(np.partition(keys, len(keys) - missing)[len(keys) - missing])
                 if missing < len(keys) else -math.inf)
        limit = produced + size  # no cap: a component cannot add more picks than it has left
        if len(history) >= 2 and theta > 0:
            (c0, t0), (c1, t1) = history[-2], history[-1]
            if c1 > c0 and 0 < t1 < t0:
                guess = t1 * math.exp((math.log(t1) - math.log(t0)) / (c1 - c0) * missing * _COMPONENT_STEP)
                if guess < theta:
                    theta = guess
                    share = missing * (1.0 + _COMPONENT_SLACK) / max(1, len(keys))
                    limit = produced + np.minimum(size, np.ceil(size * share).astype(np.int64))
        del keys
        _run_components(work, work_ptr, theta, limit, indptr, indices, weights, conf, inv_eta, exact,
                        hg, hi, off, size, cover, m1, ebase, evaluations, produced, seq_picks,
                        seq_gains, seq_scores)
        history.append((int(produced.sum()), theta))
        if progress:
            done = min(budget, int(produced.sum()))
            progress(done / budget, f"prune4rel {mode}: {done}/{budget} picked ({n_comp} components)", {})
    head_key = np.empty(n_comp, dtype=np.float64)
    head_id = np.empty(n_comp, dtype=np.int64)
    live = np.flatnonzero((produced > 0) | (size > 0))
    has = produced[live] > 0
    head_key[: len(live)] = np.where(has, seq_scores[off[live]], hg[off[live]])
    first = np.where(has, seq_picks[off[live]], 0)  # where nothing was produced: unset memory
    head_id[: len(live)] = np.where(has, name[first], -1)
    heap_order = np.lexsort((head_id[: len(live)], -head_key[: len(live)]))  # a valid max-heap
    head_key[: len(live)] = head_key[heap_order]
    head_id[: len(live)] = head_id[heap_order]
    head_comp = live[heap_order].astype(np.int64)
    n_heads = np.array([len(live)], dtype=np.int64)
    head = np.zeros(n_comp, dtype=np.int64)
    extended = np.zeros(1, dtype=np.int64)
    chunk = max(1, budget // 20)
    reported = min(budget, int(produced.sum())) / budget
    for start in range(0, budget, chunk):
        check_cancel(cancel)
        end = min(budget, start + chunk)
        _merge_components(start, end, head_key, head_id, head_comp, n_heads, head, indptr, indices,
                          weights, conf, inv_eta, exact, hg, hi, off, size, cover, m1, ebase,
                          evaluations, produced, seq_picks, seq_gains, seq_scores, picks, gains, scores,
                          extended, name)
        if progress and (end / budget > reported or end == budget):  # never below the rounds' report
            reported = max(reported, end / budget)
            progress(reported, f"prune4rel {mode}: {end}/{budget} picked ({n_comp} components)", {})
    return evaluations, int(produced.sum()), rounds, int(extended[0])


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
