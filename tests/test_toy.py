"""Toy data and the step-by-step greedy trace (the real prune4rel code underneath)."""

import numpy as np
import pytest

from prune_core import select
from prune_core.errors import InputError
from prune_core.prune4rel import neighbourhood_confidence, objective
from prune_core.toy import greedy_trace, make_toy, toy_graph


def test_toy_data():
    toy = make_toy(n=240, classes=3, noise_rate=0.3, seed=1)
    assert toy.x.shape == (240, 2) and toy.probs.shape == (240, 3)
    assert toy.is_noisy.sum() == 72  # exactly round(0.3 * 240) flipped
    np.testing.assert_allclose(toy.probs.sum(1), 1.0)
    again = make_toy(n=240, classes=3, noise_rate=0.3, seed=1)
    np.testing.assert_array_equal(toy.y_noisy, again.y_noisy)
    with pytest.raises(InputError):
        make_toy(n=240, classes=1)


def test_toy_graph():
    toy = make_toy(n=120, seed=0)
    g = toy_graph(toy.x, tau=0.5)
    assert (abs(g - g.T) > 1e-6).nnz == 0
    np.testing.assert_array_equal(g.diagonal(), 1.0)
    off = g.copy()
    off.setdiag(0)
    off.eliminate_zeros()
    assert off.data.min() > 0.5 and off.data.max() <= 1.0
    assert toy_graph(toy.x, tau=0.9).nnz < g.nnz
    with pytest.raises(InputError):
        toy_graph(toy.x, tau=1.0)


def test_trace_follows_the_real_greedy():
    toy = make_toy(n=200, classes=3, noise_rate=0.3, seed=0)
    g = toy_graph(toy.x, tau=0.4)
    tr = greedy_trace(g, toy.probs, budget=25, eta=0.8)
    ref = select("prune4rel", budget=25, probs=toy.probs, graph=g, eta=0.8, mode="exact")  # the Learn page teaches F
    np.testing.assert_array_equal(tr.picks, ref.indices)
    assert tr.cover.shape == (26, 200) and tr.objective.shape == (26,)
    assert (tr.cover[0] == 0).all() and tr.objective[0] == 0
    assert (np.diff(tr.objective) > 0).all()  # monotone
    assert (np.diff(tr.gains) <= 1e-9).all()  # submodular: gains shrink (no class balance)
    for t in (1, 7, 25):
        np.testing.assert_allclose(tr.cover[t], neighbourhood_confidence(g, tr.conf, tr.picks[:t]))
        assert tr.objective[t] == pytest.approx(objective(g, tr.conf, tr.picks[:t], 0.8), rel=1e-9)
    assert all(tr.picks[t] in tr.neighbours[t] for t in range(25))
    with pytest.raises(InputError):
        greedy_trace(g, toy.probs, budget=0)
