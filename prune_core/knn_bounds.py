"""Bounds on the similarities between two cells of the blocked search (`knn._blocked_heaps`).

Each cell's rows lie within an angle r of the cell's mean direction; by the spherical
triangle inequality no cosine between cells a and b exceeds cos(max(0, angle(a, b) - r_a -
r_b)). Pass 2 of the search leaves out a partner cell whose bound lies below every heap
floor on both sides (see `knn._BOUND_MARGIN`).
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, parallel=True)
def _cell_balls(zs, offsets):
    """The smallest-angle cap around each cell's mean direction that holds its rows.

    zs (N, D) rows in cell order (cell c: rows offsets[c]:offsets[c+1]). Returns (centres
    (nlist, D) float64 unit mean directions, radius (nlist,) float64: the largest angle in
    radians between a row and its cell's centre, computed in float64 from each row's own
    norm; pi where a cell has a zero row or a zero mean, so that no bound holds there).
    """
    nlist = offsets.shape[0] - 1
    d = zs.shape[1]
    centres = np.zeros((nlist, d))
    radius = np.zeros(nlist)
    for c in numba.prange(nlist):
        for i in range(offsets[c], offsets[c + 1]):
            for t in range(d):
                centres[c, t] += zs[i, t]
        norm = 0.0
        for t in range(d):
            norm += centres[c, t] * centres[c, t]
        norm = np.sqrt(norm)
        if not norm > 0.0:
            radius[c] = np.pi
            continue
        for t in range(d):
            centres[c, t] /= norm
        worst = 1.0
        for i in range(offsets[c], offsets[c + 1]):
            dot = 0.0
            sq = 0.0
            for t in range(d):
                v = np.float64(zs[i, t])
                dot += v * centres[c, t]
                sq += v * v
            if not sq > 0.0:
                worst = -1.0
                break
            worst = min(worst, dot / np.sqrt(sq))
        radius[c] = np.arccos(max(-1.0, min(1.0, worst)))
    return centres, radius


@numba.njit(cache=True, parallel=True)
def _partner_bounds(centres, radius, pptr, partners):
    """Upper bound on the cosine between any row of cell c and any row of its partner b,
    per partner entry (len(partners),) float64: cos(max(0, angle(c, b) - r_c - r_b)), the
    spherical triangle inequality (rows lie within r of their cell's centre). One loop, no
    (partners, D) temporaries (those took 0.6 GB at 1M)."""
    nlist = pptr.shape[0] - 1
    out = np.empty(partners.shape[0])
    for c in numba.prange(nlist):
        for q in range(pptr[c], pptr[c + 1]):
            b = partners[q]
            dot = 0.0
            for t in range(centres.shape[1]):
                dot += centres[c, t] * centres[b, t]
            gap = np.arccos(max(-1.0, min(1.0, dot))) - radius[c] - radius[b]
            out[q] = np.cos(min(np.pi, max(0.0, gap)))
    return out
