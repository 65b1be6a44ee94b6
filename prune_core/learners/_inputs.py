"""The two kinds of learner input and the arrays each needs (see the package docstring)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError, check_cancel

LEARNER_INPUTS = ("from-scratch", "frozen-features")
LEARNER_INPUT_ALIASES = {"auto": "from-scratch", "images": "from-scratch", "embeddings": "frozen-features"}
FROZEN_FEATURES_CAVEAT = ("frozen-features: the learner is a head on warm-up embeddings trained on ALL training "
                          "examples, pruned ones included, so pruned data leaks into every subset and "
                          "differences between methods shrink")


@dataclass
class LearnerInputs:
    """Arrays a learner trains and predicts on (see `learner_inputs`)."""

    x_train: np.ndarray  # (N, ...) raw training inputs, or (N, D) frozen embeddings
    x_test: np.ndarray | None  # (M, ...) same kind, or None
    y_test: np.ndarray | None  # (M,) int64, or None
    input: str  # "from-scratch" | "frozen-features"
    model: str  # the architecture for from-scratch, "auto" for frozen features (the head)
    device: str


def resolve_learner_input(input: str = "from-scratch", device="auto") -> str:
    """The canonical learner input: "from-scratch" or "frozen-features" (aliases: "auto",
    "images" -> "from-scratch"; "embeddings" -> "frozen-features"). `device` is accepted for
    backward compatibility and no longer changes the choice. Unknown values raise InputError."""
    name = LEARNER_INPUT_ALIASES.get(input, input)
    if name not in LEARNER_INPUTS:
        raise InputError(f"unknown learner input {input!r}; choose one of {', '.join(LEARNER_INPUTS)}")
    return name


def learner_caveat(input: str) -> str | None:
    """The one-line caveat that must accompany results of a learner input, or None."""
    return FROZEN_FEATURES_CAVEAT if resolve_learner_input(input) == "frozen-features" else None


def learner_inputs(ds, wu, input: str = "from-scratch", device="auto", cancel=None) -> LearnerInputs:
    """The learner's arrays for a dataset and its warm-up.

    from-scratch: ds.x_train / ds.x_test as they are (images or feature vectors), with the
    warm-up's architecture (wu.model_name; "auto" when wu is None or has no model name).
    frozen-features: wu.embeddings (N, D) and the test embeddings from one deterministic pass
    of the warm-up model over ds.x_test (needs wu.model).
    """
    from ..training import predict, resolve_device

    kind = resolve_learner_input(input, device)
    dev = str(resolve_device(device))
    x_test = getattr(ds, "x_test", None)
    y_test = getattr(ds, "y_test", None)
    has_test = x_test is not None and y_test is not None and len(x_test) > 0
    if kind == "from-scratch":
        model = getattr(wu, "model_name", None) or "auto"
        return LearnerInputs(np.asarray(ds.x_train), np.asarray(x_test) if has_test else None,
                             np.asarray(y_test, np.int64) if has_test else None, kind, model, dev)
    test_emb = None
    if has_test:
        check_cancel(cancel)
        _, test_emb = predict(wu.model, x_test, wu.kind, wu.norm, device=wu.device, cancel=cancel)
    return LearnerInputs(np.asarray(wu.embeddings, np.float32), test_emb,
                         np.asarray(y_test, np.int64) if has_test else None, kind, "auto", dev)
