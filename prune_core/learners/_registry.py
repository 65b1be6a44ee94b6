"""The learner registry, the learner result type and the hyper-parameters every learner takes.

A learner module registers its learner with `register_learner` when it is imported; the
package (`prune_core.learners`) imports them in list order. This module imports no learner.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..errors import InputError
from ._inputs import resolve_learner_input

HEAD_HIDDEN = 128

ProgressFn = Callable[[float, str, dict], None]


@dataclass
class LearnerResult:
    """What a learner returns. N training examples, M test examples, C classes.

    labels_all:  (N,) int64 the learner's label for every training example (argmax of the
                 final model; DivideMix: argmax of the summed logits of the two nets)
    probs_all:   (N, C) float32 softmax of the same final outputs
    test_acc:    test accuracy after the LAST epoch, or None without a test split
    test_pred:   (M,) int64 test predictions after the last epoch, or None
    history:     one dict per epoch: epoch, train_loss, train_acc (vs noisy labels on the
                 subset), test_acc, lr, seconds, plus learner-specific entries
    seconds:     wall time of the training and the final predictions
    input:       "from-scratch" | "frozen-features"
    params:      the hyper-parameters used (JSON-friendly)
    extra:       learner-specific arrays over the subset (e.g. SOP's u^2, DivideMix's clean probs)
    """

    name: str
    labels_all: np.ndarray
    probs_all: np.ndarray
    test_acc: float | None
    test_pred: np.ndarray | None
    history: list[dict]
    seconds: float
    input: str
    params: dict
    subset: np.ndarray
    extra: dict = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class LearnerInfo:
    """A registry entry. `defaults` are the frozen-features hyper-parameters;
    `image_defaults` override them for input="from-scratch"."""

    name: str
    fn: Callable
    summary: str
    defaults: dict
    image_defaults: dict

    def params(self, input: str = "from-scratch", **overrides) -> dict:
        """Merged hyper-parameters for an input kind; unknown names raise InputError."""
        scratch = resolve_learner_input(input) == "from-scratch"
        merged = {**self.defaults, **(self.image_defaults if scratch else {})}
        unknown = set(overrides) - set(merged)
        if unknown:
            raise InputError(f"learner {self.name!r} has no parameter(s) {', '.join(sorted(unknown))}")
        merged.update({k: v for k, v in overrides.items() if v is not None})
        return merged


_LEARNERS: dict[str, LearnerInfo] = {}

# Hyper-parameters every learner takes (fast mode; `hidden` is the head's width and the
# noise/dropout entries the embedding views, both unused on images). Chosen on the bundled
# digits: lr 0.02 (the paper's) for every learner, 40 epochs.
_COMMON = {"epochs": 40, "lr": 0.02, "batch_size": 128, "weight_decay": 5e-4, "hidden": HEAD_HIDDEN,
           "weak_noise": 0.1, "strong_noise": 0.4, "strong_dropout": 0.2}
# From scratch on a CPU: 30 epochs (the paper's GPU runs take 200+), lr 0.05. Chosen on the
# training set's re-labeling accuracy of SOP+ on a uniform 20% of the CIFAR-10N dev set (worst
# labels, small_cnn, seed 0): lr 0.02 / 30 epochs 0.300, lr 0.05 / 30 epochs 0.337, lr 0.05 /
# 60 epochs 0.346 for twice the time (the given labels: 0.601).
_COMMON_IMAGES = {"epochs": 30, "lr": 0.05}


def register_learner(name: str, summary: str, defaults: dict | None = None, image_defaults: dict | None = None):
    """Decorator adding `fn(ctx, progress, cancel, **params) -> (nets, history, extra)`."""

    def wrap(fn):
        _LEARNERS[name] = LearnerInfo(name, fn, summary, {**_COMMON, **(defaults or {})},
                                      {**_COMMON_IMAGES, **(image_defaults or {})})
        return fn

    return wrap


def list_learners() -> list[str]:
    """Names of all registered learners."""
    return list(_LEARNERS)


def get_learner(name: str) -> LearnerInfo:
    if name not in _LEARNERS:
        raise InputError(f"unknown learner {name!r}; choose one of {', '.join(_LEARNERS)}")
    return _LEARNERS[name]
