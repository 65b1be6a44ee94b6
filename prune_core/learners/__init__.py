"""Re-labeling learners trained on a kept subset: CE (standard model), SOP+ and DivideMix.

One registry (`register_learner`, `list_learners`, `get_learner`) and one entry point::

    res = fit_learner("sop", x, y_noisy, subset, num_classes=C, x_test=xt, y_test=yt, seed=0)
    res.labels_all   # (N,) the learner's label for EVERY training example (argmax of the final model)
    res.test_acc     # test accuracy at the LAST epoch (never the best epoch on the test set)

Every learner starts from scratch and trains ONLY on `subset`; the labels of all N
training examples are then read off the final model, so re-labeling accuracy can be
measured on the subset and on the whole training set (`prune_core.metrics.relabel_accuracy`).

Two kinds of input (`input`):

- ``"from-scratch"`` (the default everywhere; the paper's protocol): `x` is the raw training
  input (images, or feature vectors for feature datasets) and a freshly initialised network
  (`prune_core.models.build_model`: the warm-up's architecture for images, resolved for the
  device, e.g. small_cnn or resnet20 on a CPU; the MLP for feature vectors) trains on the kept examples
  ONLY; the views are the warm-up's weak / strong augmentations
  (`prune_core.training.augment_batch`; feature vectors get the gaussian views below). Nothing
  the learner sees comes from a pruned example, so subsets compare honestly.
- ``"frozen-features"`` (explicit choice, fast): `x` is the frozen warm-up embedding (N, D)
  and the learner trains a small head on it (one hidden layer, Linear-BN-ReLU-Linear,
  `prune_core.models.MLP`), inputs standardised with the subset's mean/std. Views: weak =
  gaussian noise with std `weak_noise` (standardised units); strong = gaussian noise with std
  `strong_noise` plus dropout of `strong_dropout` of the coordinates. Caveat
  (`FROZEN_FEATURES_CAVEAT`, carried by every result of this mode): the warm-up that made
  the embeddings saw ALL training examples, pruned ones included, so the pruned examples
  leak into every subset's learner and the differences between selections shrink (on USPS
  every sensible method ended within about 0.5 pt, docs/results.md).

Aliases accepted for the input: "auto" and "images" -> "from-scratch", "embeddings" ->
"frozen-features".

Recipes, one module each (registered in this order when the package is imported):

- ``ce`` (`ce.py`): cross-entropy on the noisy labels with weak augmentation.
- ``sop`` (`sop.py`): SOP+ (Liu et al. 2022, as used by Prune4ReL), per-example u and v.
- ``dividemix`` (`dividemix.py`): DivideMix (Li et al. 2020), two networks, GMM co-divide
  and MixMatch; its differences from the official Prune4ReL code are in its module.

The registry, the result type and the shared hyper-parameters are in `_registry.py`, the
input kinds in `_inputs.py`, and the training loop every learner shares in `_loop.py`.

Determinism: the seed fixes weight init (`torch.random.fork_rng`, the caller's global RNG
state is untouched), shuffling, augmentation, the u/v init, mixup draws and the GMM; on
the CPU the same inputs and seed give identical results.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from ..errors import InputError, check_cancel
from ._inputs import (  # noqa: F401  (the package's public names)
    FROZEN_FEATURES_CAVEAT,
    LEARNER_INPUT_ALIASES,
    LEARNER_INPUTS,
    LearnerInputs,
    learner_caveat,
    learner_inputs,
    resolve_learner_input,
)
from ._loop import EVAL_BATCH, _Context, _Source  # noqa: F401  (EVAL_BATCH: public name)
from ._registry import (  # noqa: F401  (the package's public names)
    HEAD_HIDDEN,
    LearnerInfo,
    LearnerResult,
    ProgressFn,
    get_learner,
    list_learners,
    register_learner,
)

# The learner modules: importing one registers its learner. Their order is the order of
# `list_learners`.
from . import ce, sop, dividemix  # noqa: F401


def _check_subset(subset, n: int) -> np.ndarray:
    if subset is None:
        return np.arange(n, dtype=np.int64)
    s = np.asarray(subset)
    if s.ndim != 1 or (s.size and s.dtype.kind not in "iu"):
        raise InputError("subset must be a 1-D array of example indices")
    s = s.astype(np.int64)
    if s.size < 2:
        raise InputError(f"a learner needs at least 2 kept examples, got {s.size}")
    if s.min() < 0 or s.max() >= n:
        raise InputError(f"subset indices must be in [0, {n})")
    if np.unique(s).size != s.size:
        raise InputError("subset has repeated indices")
    return s


def fit_learner(
    name: str,
    x: np.ndarray,
    y_noisy: np.ndarray,
    subset=None,
    *,
    num_classes: int | None = None,
    x_test: np.ndarray | None = None,
    y_test: np.ndarray | None = None,
    input: str = "from-scratch",
    model: str = "auto",
    device: str = "auto",
    seed: int = 0,
    epochs: int | None = None,
    progress: ProgressFn | None = None,
    cancel=None,
    **params,
) -> LearnerResult:
    """Train learner `name` from scratch on x[subset] with labels y_noisy[subset].

    x: the raw training inputs (input="from-scratch", the default: (N, H, W) / (N, H, W, 3)
       uint8 images or (N, D) feature vectors, a fresh network per call), or (N, D) frozen
       warm-up embeddings (input="frozen-features": a small head; see FROZEN_FEATURES_CAVEAT).
       `learner_inputs` picks the arrays for a dataset and its warm-up.
    y_noisy: (N,) int labels in [0, C), the labels the learner sees.
    subset: (s,) distinct indices of the kept examples (None: all N).
    x_test, y_test: optional test split of the same kind as x -> test accuracy at the last epoch.
    model: images only: the architecture ("auto" -> models.resolve_model_name).
    epochs and **params: hyper-parameters, see `get_learner(name).params(input)`.
    progress(fraction, message, metrics) is called after every epoch; cancel.is_set() is
    checked at every batch (raises errors.Cancelled).
    """
    from ..models import MLP, build_model, compute_normalization, infer_kind, to_device
    from ..training import resolve_device

    info = get_learner(name)
    started = time.perf_counter()
    x = np.asarray(x)
    n = len(x)
    y = np.asarray(y_noisy)
    if y.ndim != 1 or len(y) != n:
        raise InputError(f"y_noisy has shape {y.shape}; expected ({n},)")
    if y.dtype.kind not in "iu":
        raise InputError(f"y_noisy must hold integer labels, got dtype {y.dtype}")
    y = y.astype(np.int64)
    c = int(num_classes) if num_classes is not None else int(y.max()) + 1
    if c < 2:
        raise InputError(f"num_classes must be at least 2, got {c}")
    if y.size and (y.min() < 0 or y.max() >= c):
        raise InputError(f"y_noisy has labels outside 0..{c - 1}")
    subset = _check_subset(subset, n)
    input = resolve_learner_input(input)
    frozen = input == "frozen-features"
    kind = "features" if frozen else infer_kind(x)
    if kind == "features" and not np.isfinite(x[subset]).all():
        raise InputError("learner inputs contain NaN or infinite values")
    if frozen and x.ndim != 2:
        raise InputError(f"embeddings must be (N, D), got shape {x.shape}")
    hp = info.params(input, epochs=epochs, **params)
    for key in ("epochs", "batch_size"):
        if int(hp[key]) != hp[key] or hp[key] < 1:
            raise InputError(f"{key} must be a positive integer, got {hp[key]!r}")
        hp[key] = int(hp[key])
    if not hp["lr"] > 0:
        raise InputError(f"lr must be positive, got {hp['lr']!r}")
    has_test = x_test is not None and y_test is not None and len(x_test) > 0
    if has_test:
        x_test = np.asarray(x_test)
        if x_test.shape[1:] != x.shape[1:]:
            raise InputError(f"x_test examples have shape {x_test.shape[1:]}, x ones {x.shape[1:]}")
        y_test = np.asarray(y_test, dtype=np.int64)
    dev = resolve_device(device)

    x_sub = x[subset]
    norm = compute_normalization(x_sub, kind)
    src = _Source(x_sub, kind, norm, dev)
    test_src = _Source(x_test, kind, norm, dev) if has_test else None

    def make_model(k: int) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed * 1000 + 17 * k + 1)
            if frozen:
                net = MLP(x.shape[1], c, hidden=(int(hp["hidden"]),))
            else:
                # Resolved on the whole training set's size, so "auto" picks the same network
                # at every keep ratio (and the warm-up's, see `learner_inputs`).
                net = build_model(model, kind, x.shape[1:], c, num_examples=n, device_type=dev.type)
        return to_device(net, dev)

    ctx = _Context(
        src=src, y=torch.from_numpy(y[subset]).to(dev), num_classes=c, kind=kind, input=input, device=dev,
        gen=torch.Generator().manual_seed(seed), rng=np.random.default_rng(seed), seed=seed,
        make_model=make_model, test_src=test_src, y_test=y_test if has_test else None, params=hp,
        # Without a progress callback nobody watches the live curve: a test pass per epoch
        # would cost about a quarter of a small subset's training time.
        track_test=progress is not None,
    )
    nets, history, extra = info.fn(ctx, progress, cancel, **hp)

    check_cancel(cancel)
    all_src = _Source(x, kind, norm, dev)
    logits_all = ctx.logits(nets, all_src)
    probs_all = logits_all.softmax(1).cpu().numpy().astype(np.float32)
    test_pred = None
    test_acc = None
    if test_src is not None:
        test_pred = ctx.logits(nets, test_src).argmax(1).cpu().numpy().astype(np.int64)
        test_acc = float((test_pred == y_test).mean())
    seconds = time.perf_counter() - started
    if progress is not None:
        progress(1.0, f"{name} done in {seconds:.1f} s", {"phase": "done", "test_acc": test_acc})
    return LearnerResult(
        name=name, labels_all=probs_all.argmax(1).astype(np.int64), probs_all=probs_all, test_acc=test_acc,
        test_pred=test_pred, history=history, seconds=seconds, input=input,
        params={**hp, "seed": seed, "model": "mlp-head" if frozen else model},
        subset=subset, extra=extra,
    )
