"""The registry of selection methods and the helpers every method shares.

A method module registers its methods with `register_method` when it is imported; the
modules to import, in list order, are named once in `selection.py`, which looks methods up
(`selection.get_method`, `selection.list_methods`) and runs them (`selection.select`).
This module imports no method module, so the methods can import it.

A method is `fn(inputs: SelectionInputs, budget, seed, progress, cancel, **params) ->
MethodOutput` and returns a ranking: the first `budget` examples in pick order.

Class balance is one explicit policy shared by all methods (`class_target_sequence`,
`rank_by_score`):
- ``none``: no class constraint;
- ``equal``: round-robin over the (noisy-label) classes that still have examples,
  so kept counts differ by at most one among non-exhausted classes (the official
  Prune4ReL rule, without its ad-hoc 1.5x break);
- ``proportional``: at every prefix each class keeps about its share of the data,
  within one example of budget * n_c / N.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numba
import numpy as np

from .errors import InputError

BALANCE_KINDS = ("none", "equal", "proportional")


@dataclass
class SelectionInputs:
    """Warm-up outputs a method may use. Arrays are over the N training examples."""

    n: int
    probs: np.ndarray | None = None  # (N, C) softmax probabilities
    embeddings: np.ndarray | None = None  # (N, D) penultimate features
    labels: np.ndarray | None = None  # (N,) int64 given (noisy) labels
    graph: object | None = None  # scipy CSR (N, N) similarity graph
    losses: np.ndarray | None = None  # (N,) per-example CE loss vs the given label
    forgetting: np.ndarray | None = None  # (N,) forgetting events during warm-up
    num_classes: int | None = None


@dataclass
class MethodOutput:
    """What a registered method returns to `select`."""

    indices: np.ndarray  # (budget,) int64, pick order, distinct
    gains: np.ndarray | None = None  # (budget,) marginal gain of each pick in the method's objective
    scores: np.ndarray | None = None  # (budget,) the score each pick was ranked by
    objective: float | None = None
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class MethodInfo:
    """A registry entry: how to call a method and what it needs."""

    name: str
    fn: Callable
    summary: str
    needs: tuple[str, ...]
    nested: bool
    default_balance: str
    defaults: dict


_METHODS: dict[str, MethodInfo] = {}


def register_method(
    name: str,
    summary: str,
    needs: tuple[str, ...] = (),
    nested: bool = True,
    default_balance: str = "none",
    defaults: dict | None = None,
):
    """Decorator adding `fn(inputs, budget, seed, progress, cancel, **params) -> MethodOutput`."""

    def wrap(fn):
        _METHODS[name] = MethodInfo(name, fn, summary, tuple(needs), nested, default_balance, dict(defaults or {}))
        return fn

    return wrap


def check_balance(balance: str) -> str:
    if balance not in BALANCE_KINDS:
        raise InputError(f"unknown class balance {balance!r}; choose one of {', '.join(BALANCE_KINDS)}")
    return balance


@numba.njit(cache=True)
def _class_target_sequence(class_sizes, budget, proportional):
    """(budget,) class to pick from at each step, for the equal or proportional policy."""
    k = class_sizes.shape[0]
    n = class_sizes.sum()
    seq = np.empty(budget, dtype=np.int64)
    counts = np.zeros(k, dtype=np.int64)
    pointer = 0
    for t in range(budget):
        best = -1
        if proportional:
            # Largest deficit between the ideal share (t+1) n_c / N and what was taken.
            best_deficit = -1e300
            for c in range(k):
                if counts[c] < class_sizes[c]:
                    deficit = (t + 1) * class_sizes[c] / n - counts[c]
                    if deficit > best_deficit + 1e-12:
                        best_deficit = deficit
                        best = c
        else:
            # Round-robin over classes that still have examples.
            for step in range(k):
                c = (pointer + step) % k
                if counts[c] < class_sizes[c]:
                    best = c
                    break
            pointer = best + 1
        counts[best] += 1
        seq[t] = best
    return seq


def class_target_sequence(labels: np.ndarray, budget: int, balance: str, num_classes: int | None = None):
    """Which class each pick comes from under a balance policy, or None for 'none'.

    labels: (N,) int64 noisy labels. Returns (budget,) int64 class ids or None.
    """
    if check_balance(balance) == "none":
        return None
    sizes = np.bincount(labels, minlength=num_classes or 0).astype(np.int64)
    return _class_target_sequence(sizes, int(budget), balance == "proportional")


def rank_by_score(score: np.ndarray, budget: int, labels=None, balance: str = "none", descending=True):
    """Rank examples by a score under a class-balance policy; ties go to the lowest index.

    score: (N,) higher first when descending. Returns (budget,) int64 indices in rank order.
    """
    score = np.asarray(score, dtype=np.float64)
    if labels is None and check_balance(balance) != "none":
        raise InputError(f"class balance {balance!r} needs labels")
    order = np.lexsort((np.arange(score.size), -score if descending else score))
    seq = None if labels is None else class_target_sequence(labels, budget, balance)
    if seq is None:
        return order[:budget].astype(np.int64)
    # Per class, its examples in score order; the t-th pick of class c is its t-th best.
    by_class = labels[order]
    class_order = np.argsort(by_class, kind="stable")
    sorted_labels = by_class[class_order]
    starts = np.searchsorted(sorted_labels, np.arange(sorted_labels.max() + 1))
    pick_number = np.zeros_like(seq)
    # Occurrence index of each class within seq (0 for its first pick, 1 for the second ...).
    pos = np.argsort(seq, kind="stable")
    seq_sorted = seq[pos]
    first = np.searchsorted(seq_sorted, seq_sorted)
    pick_number[pos] = np.arange(seq.size) - first
    return order[class_order[starts[seq] + pick_number]].astype(np.int64)
