"""`select()`: run a registered selection method, and the `Selection` result type.

A method returns a ranking: the first `budget` examples in pick order. For methods
whose subsets are nested (greedy runs, score rankings), a ranking computed for the
largest budget serves every smaller keep ratio by its prefixes (`Selection.prefix`).

The registry, the class-balance policy and the helpers the methods share are in
`registry.py`. The method modules below fill it when imported, in list order.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from .errors import InputError
from .registry import _METHODS, MethodInfo, SelectionInputs, check_balance
from .validation import check_labels, check_probs

# The method modules: importing one registers its methods. Their order is the order of
# `list_methods` (prune4rel first: it leads the lists).
from . import prune4rel, baselines  # noqa: F401


@dataclass
class Selection:
    """A ranking of training examples: `indices[:budget]` is the kept subset, in pick order."""

    method: str
    indices: np.ndarray  # (budget,) int64
    n: int
    keep_ratio: float
    gains: np.ndarray | None
    scores: np.ndarray | None
    objective: float | None
    seconds: float
    params: dict
    nested: bool = True
    extra: dict = field(default_factory=dict)

    @property
    def budget(self) -> int:
        return int(self.indices.shape[0])

    @property
    def mask(self) -> np.ndarray:
        """(N,) bool, True for kept examples."""
        m = np.zeros(self.n, dtype=bool)
        m[self.indices] = True
        return m

    @property
    def ranks(self) -> np.ndarray:
        """(N,) int64: pick position of each kept example, -1 for dropped ones."""
        r = np.full(self.n, -1, dtype=np.int64)
        r[self.indices] = np.arange(self.budget)
        return r

    @property
    def objective_curve(self) -> np.ndarray | None:
        """(budget,) objective after each pick (cumulative gains), when gains are known."""
        return None if self.gains is None else np.cumsum(self.gains)

    def prefix(self, keep_ratio: float) -> "Selection":
        """The selection at a smaller keep ratio, sliced from this ranking (nested methods only)."""
        budget = budget_for(keep_ratio, self.n)
        if budget > self.budget:
            raise InputError(
                f"keep ratio {keep_ratio} needs {budget} examples but the ranking has {self.budget}"
            )
        if not self.nested:
            raise InputError(f"method {self.method!r} is not nested: prefixes are not its selections")
        curve = self.objective_curve
        return Selection(
            method=self.method,
            indices=self.indices[:budget],
            n=self.n,
            keep_ratio=float(keep_ratio),
            gains=None if self.gains is None else self.gains[:budget],
            scores=None if self.scores is None else self.scores[:budget],
            objective=None if curve is None else float(curve[budget - 1]),
            seconds=self.seconds,
            params=self.params,
            nested=True,
            extra=self.extra,
        )


def list_methods() -> list[str]:
    """Names of all registered selection methods."""
    return list(_METHODS)


def get_method(name: str) -> MethodInfo:
    if name not in _METHODS:
        raise InputError(f"unknown selection method {name!r}; choose one of {', '.join(_METHODS)}")
    return _METHODS[name]


def budget_for(keep_ratio: float, n: int) -> int:
    """round(keep_ratio * N), at least 1; keep_ratio must be in (0, 1]."""
    try:
        r = float(keep_ratio)
    except (TypeError, ValueError):
        raise InputError(f"keep ratio must be a number in (0, 1], got {keep_ratio!r}") from None
    if not (0.0 < r <= 1.0) or math.isnan(r):
        raise InputError(f"keep ratio must be in (0, 1], got {keep_ratio}")
    return max(1, int(round(r * n)))


def _check_inputs(inputs: SelectionInputs, needs: tuple[str, ...], method: str) -> None:
    """Every required input is present; every given array has N rows and finite values.

    probs must be probability rows (`validation.check_probs`; stored back as float64) and
    labels integer class ids in [0, num_classes) (`validation.check_labels`).
    """
    for name in needs:
        if getattr(inputs, name) is None:
            raise InputError(f"method {method!r} needs {name}, which was not given")
    if inputs.probs is not None:
        inputs.probs = check_probs(inputs.probs, inputs.n, inputs.num_classes)
    for name in ("probs", "embeddings", "labels", "losses", "forgetting"):
        value = getattr(inputs, name)
        if value is None:
            continue
        arr = np.asarray(value)
        if arr.shape[0] != inputs.n:
            raise InputError(f"{name} has {arr.shape[0]} rows but there are {inputs.n} examples")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise InputError(f"{name} has NaN or infinite values")
    if inputs.graph is not None and inputs.graph.shape != (inputs.n, inputs.n):
        raise InputError(f"graph shape {inputs.graph.shape} does not match N={inputs.n}")
    if inputs.labels is not None:
        if inputs.labels.dtype.kind not in "iu":
            raise InputError(f"labels must be a 1-D integer array; got dtype {inputs.labels.dtype}")
        inputs.labels = check_labels(inputs.labels, "labels", num_classes=inputs.num_classes, n=inputs.n)


def select(
    method: str,
    keep_ratio: float | None = None,
    *,
    budget: int | None = None,
    probs=None,
    embeddings=None,
    labels=None,
    graph=None,
    losses=None,
    forgetting=None,
    num_classes: int | None = None,
    seed: int = 0,
    progress=None,
    cancel=None,
    **params,
) -> Selection:
    """Run a registered selection method and return its `Selection`.

    Give `keep_ratio` in (0, 1] (budget = round(keep_ratio * N), at least 1) or `budget`.
    Arrays are over N training examples: probs (N, C), embeddings (N, D), labels (N,),
    graph CSR (N, N), losses (N,), forgetting (N,). Extra keyword arguments are the
    method's parameters (e.g. tau, eta, mode, balance, confidence for prune4rel).
    """
    info = get_method(method)
    given = [(name, a) for name, a in (("probs", probs), ("embeddings", embeddings), ("labels", labels),
                                        ("losses", losses), ("forgetting", forgetting), ("graph", graph))
             if a is not None]
    if not given:
        raise InputError("select needs at least one input array (probs, embeddings, labels...)")
    for name, a in given:
        if len(a.shape if hasattr(a, "shape") else np.shape(a)) == 0:
            raise InputError(f"{name} must be an array with one row per example, got a scalar")
    first = given[0][1]
    n = int(first.shape[0] if hasattr(first, "shape") else len(first))
    if probs is not None:
        probs = check_probs(probs, n, num_classes)
    if budget is None:
        if keep_ratio is None:
            raise InputError("give keep_ratio or budget")
        budget = budget_for(keep_ratio, n)
    else:
        if int(budget) != budget or not (1 <= budget <= n):
            raise InputError(f"budget must be an integer in [1, N={n}], got {budget}")
        budget = int(budget)
        keep_ratio = budget / n
    labels_arr = None if labels is None else np.asarray(labels)
    if num_classes is None:
        if probs is not None:
            num_classes = int(np.asarray(probs).shape[1])
        elif labels_arr is not None and labels_arr.size and labels_arr.dtype.kind in "iu":
            num_classes = int(labels_arr.max()) + 1
    inputs = SelectionInputs(n, probs, embeddings, labels_arr, graph, losses, forgetting, num_classes)
    _check_inputs(inputs, info.needs, method)
    merged = {"balance": info.default_balance, **info.defaults, **params}
    unknown = set(params) - set(info.defaults) - {"balance"}
    if unknown:
        raise InputError(f"method {method!r} has no parameter(s) {', '.join(sorted(unknown))}")
    check_balance(merged["balance"])
    start = time.perf_counter()
    out = info.fn(inputs, budget, seed, progress, cancel, **merged)
    seconds = time.perf_counter() - start
    indices = np.asarray(out.indices, dtype=np.int64)
    assert indices.shape == (budget,), (method, indices.shape, budget)
    return Selection(
        method=method, indices=indices, n=n, keep_ratio=float(keep_ratio),
        gains=out.gains, scores=out.scores, objective=out.objective, seconds=seconds,
        params={"seed": seed, **merged}, nested=info.nested, extra=out.extra,
    )
