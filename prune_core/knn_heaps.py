"""The kNN heaps of the blocked search (`knn._blocked_heaps`): numba kernels.

Each example's heap holds its k best candidates so far, hs (N, k) float32 similarities and
hi (N, k) int32 original ids, worst at the root (a min-heap under `_worse`). `_worse` is a
total order on distinct ids, so a heap ends as the k best of everything it was offered,
whatever the order of the offers; that is what lets the search run its passes on several
threads and still return the same lists. Pass 1 (a cell with itself) fills the heaps in
bulk (`_own_heaps`); pass 2 (a cell with its partner cells) offers each block to both
sides (`_update_heaps`); `_lists_from_heaps` sorts them into the kNN lists.
"""

from __future__ import annotations

import numba
import numpy as np


# The heaps hold original ids (not cell positions), so ties are broken without a lookup.
@numba.njit(cache=True, inline="always")
def _worse(s1, j1, s2, j2):
    """(s1, j1) ranks below (s2, j2): smaller similarity, or equal and a larger original id.

    A total order on distinct ids: each heap ends as the k best of what it was offered,
    whatever the order of the offers (block order, thread count, a partition's subset)."""
    return s1 < s2 or (s1 == s2 and j1 > j2)


@numba.njit(cache=True, inline="always")
def _sift_down(hs, hi, row, pos, s, j):
    """Place (s, j) at `pos` of row `row`'s heap (size k, worst at the root; see `_worse`)
    and sift it down; the similarities alone decide unless they are equal."""
    k = hs.shape[1]
    while True:
        child = 2 * pos + 1
        if child >= k:
            break
        cs = hs[row, child]
        if child + 1 < k:
            rs = hs[row, child + 1]
            if rs < cs or (rs == cs and hi[row, child + 1] > hi[row, child]):
                child += 1
                cs = rs
        if cs < s or (cs == s and hi[row, child] > j):
            hs[row, pos] = cs
            hi[row, pos] = hi[row, child]
            pos = child
        else:
            break
    hs[row, pos] = s
    hi[row, pos] = j


@numba.njit(cache=True, inline="always")
def _heap_replace_top(hs, hi, row, s, j):
    """Replace the worst entry of row `row`'s heap by (s, j)."""
    _sift_down(hs, hi, row, 0, s, j)


@numba.njit(cache=True, inline="always")
def _rank_key(bits, j):
    """uint64 key ordered like (similarity, -id): float32 bits mapped to an unsigned order
    (flip all bits of a negative, the sign bit of a positive; -0.0 as +0.0, since they
    compare equal) above the complemented id."""
    if bits == np.uint32(0x80000000):
        bits = np.uint32(0)
    mono = bits ^ ((np.uint32(0) - (bits >> np.uint32(31))) | np.uint32(0x80000000))
    return (np.uint64(mono) << np.uint64(32)) | np.uint64(np.uint32(0xFFFFFFFF) - np.uint32(j))


@numba.njit(cache=True, inline="always")
def _kth_smallest(a, t, target):
    """The value of ascending rank `target` (0-based) among distinct a[:t], permuting a[:t].

    Quickselect with a median-of-three pivot and a branch-free Lomuto partition (random
    keys mispredict any branch on them half the time; numba's np.partition took 3.5 us for
    the 127 keys of a cell row, this about a tenth of that). After 64 rounds (adversarial
    input), the rest is sorted.
    """
    lo, hi = 0, t - 1
    rounds = 0
    while lo < hi:
        rounds += 1
        if rounds > 64:
            a[lo : hi + 1] = np.sort(a[lo : hi + 1])
            break
        mid = (lo + hi) >> 1
        # Median of a[lo], a[mid], a[hi] to a[hi] (the pivot's place).
        if a[mid] < a[lo]:
            a[mid], a[lo] = a[lo], a[mid]
        if a[hi] < a[lo]:
            a[hi], a[lo] = a[lo], a[hi]
        if a[mid] < a[hi]:
            a[mid], a[hi] = a[hi], a[mid]
        pivot = a[hi]
        store = lo
        for u in range(lo, hi):
            v = a[u]
            a[u] = a[store]
            a[store] = v
            store += v < pivot
        a[hi] = a[store]
        a[store] = pivot
        if store == target:
            return pivot
        if target < store:
            hi = store - 1
        else:
            lo = store + 1
    return a[target]


@numba.njit(cache=True, inline="always")
def _key_parts(key):
    """(float32 bits, id) of a `_rank_key` (key 0: an empty slot, (-inf, -1))."""
    if key == np.uint64(0):
        return np.uint32(0xFF800000), -1
    mono = np.uint32(key >> np.uint64(32))
    bits = mono ^ ((np.uint32(0) - (np.uint32(1) - (mono >> np.uint32(31)))) | np.uint32(0x80000000))
    return bits, np.int64(np.uint32(0xFFFFFFFF) - np.uint32(key & np.uint64(0xFFFFFFFF)))


@numba.njit(cache=True, nogil=True)
def _own_heaps(sim, row0, cols, ids, hs, hi):
    """Merge one cell's block with itself into its rows' heaps, in bulk (no other merger
    touches these heaps: see `_blocked_heaps`).

    sim (m, C): rows at positions row0 + r, columns at positions cols[c]; ids (N,) the
    original id of each position. Each heap becomes the k best (`_worse`) of its entries and
    the row's candidates (itself excluded), as `_rank_key`s: a selection of the k largest
    keys and a heapify on them, instead of ~100 one-by-one insertions into an empty heap
    that mispredict a branch at every level (2.7 us per row of a 128-point cell instead of
    5.2 on the AMD machine of docs/benchmarks.md).
    """
    m, c_total = sim.shape
    k = hs.shape[1]
    bits = sim.view(np.uint32)
    hbits = hs.view(np.uint32)
    keys = np.empty(k + c_total, dtype=np.uint64)
    col_ids = np.empty(c_total, dtype=np.int64)
    for c in range(c_total):
        col_ids[c] = ids[cols[c]]
    for r in range(m):
        i = row0 + r
        me = ids[i]
        t = 0
        for q in range(k):
            if hi[i, q] >= 0:
                keys[t] = _rank_key(hbits[i, q], hi[i, q])
                t += 1
        for c in range(c_total):
            if col_ids[c] != me:
                keys[t] = _rank_key(bits[r, c], col_ids[c])
                t += 1
        if t > k:
            # Quickselect leaves the k largest keys (distinct) at keys[t - k:t].
            _kth_smallest(keys, t, t - k)
            base = t - k
        else:
            keys[t:k] = 0  # empty slots, ranked below everything
            base = 0
        heap = keys[base : base + k]
        for p in range(k // 2 - 1, -1, -1):  # heapify: smallest key (the worst) at the root
            v = heap[p]
            pos = p
            while True:
                child = 2 * pos + 1
                if child >= k:
                    break
                if child + 1 < k and heap[child + 1] < heap[child]:
                    child += 1
                if heap[child] < v:
                    heap[pos] = heap[child]
                    pos = child
                else:
                    break
            heap[pos] = v
        for p in range(k):
            b, j = _key_parts(heap[p])
            hbits[i, p] = b
            hi[i, p] = j


@numba.njit(cache=True, nogil=True)
def _update_heaps(sim, row0, cols, ids, hs, hi, rows_owned, owned):
    """Offer the similarities of one block between a cell and its partner cells to the kNN
    heaps of both sides.

    sim (m, C): rows are the cell's points (positions row0 + r), columns the candidates at
    positions cols[c] (outside the cell); ids (N,) the original id of each position. Each
    row's heap gets every column when rows_owned; each column whose heap this merger owns
    (owned[cols[c]]) gets every row (its side of the same pair). Every heap has one owner,
    so mergers never touch the same heap; see `_blocked_heaps` for the threading.

    Most offers of a partner block fall below the heap's floor (its k-th best), so each row
    is screened 128 columns at a time by a branch-free count of the offers at or above the
    floor, and each column by its maximum over the rows (both vectorised) before any offer
    is made one by one. The floor only rises, so a screen never drops an offer that counts.
    """
    m, c_total = sim.shape
    if rows_owned:
        for r in range(m):
            i = row0 + r
            me = ids[i]
            floor = hs[i, 0]  # the heap's smallest kept similarity, cached in a register
            for a in range(0, c_total, 128):
                b = min(c_total, a + 128)
                hits = 0
                for c in range(a, b):
                    hits += sim[r, c] >= floor
                if hits == 0:
                    continue
                for c in range(a, b):
                    s = sim[r, c]
                    if s >= floor:  # equal: the lower original id wins (`_worse`)
                        j = ids[cols[c]]
                        if s > floor or j < hi[i, 0]:
                            _heap_replace_top(hs, hi, i, s, j)
                            floor = hs[i, 0]
    colmax = np.full(c_total, -np.inf, dtype=sim.dtype)
    for r in range(m):
        for c in range(c_total):
            colmax[c] = max(colmax[c], sim[r, c])
    for c in range(c_total):
        p = cols[c]
        if not owned[p]:
            continue
        floor = hs[p, 0]
        if colmax[c] < floor:
            continue
        for r in range(m):
            s = sim[r, c]
            if s >= floor:
                j = ids[row0 + r]
                if s > floor or j < hi[p, 0]:
                    _heap_replace_top(hs, hi, p, s, j)
                    floor = hs[p, 0]


@numba.njit(parallel=True, cache=True)
def _lists_from_heaps(order, hs, hi, ids, cos):
    """Sort each heap by similarity (descending) and write it to the row of the original
    example: ids[order[p]] = hi[p], cos[order[p]] = hs[p] (-1 / -inf where empty)."""
    n, k = hs.shape
    for p in numba.prange(n):
        # Insertion sort by (similarity descending, original id ascending); k is small.
        srt = np.arange(k)
        for a in range(1, k):
            cur = srt[a]
            b = a - 1
            while b >= 0 and _worse(hs[p, srt[b]], hi[p, srt[b]], hs[p, cur], hi[p, cur]):
                srt[b + 1] = srt[b]
                b -= 1
            srt[b + 1] = cur
        i = order[p]
        for t in range(k):
            ids[i, t] = hi[p, srt[t]]
            cos[i, t] = hs[p, srt[t]]
