"""Warm-up training on the noisy labels, then one inference pass over the training set.

`warmup(ds, y_noisy)` trains a fresh network with cross-entropy on the noisy labels for a
few epochs (SGD, momentum 0.9, Nesterov, cosine learning rate over the warm-up itself; the
official code reused the full run's schedule, so its learning rate barely decayed), records
Toneva-style forgetting counts on the way, and returns per-example softmax probabilities,
penultimate embeddings and losses that the selection methods consume.

Differences from the official code, on purpose:
- the default inference pass is deterministic (`embed_pass="eval"`: no augmentation); the
  official single stochastic strong-augmentation pass is `embed_pass="strong"`;
- outputs are float32 (the official fp16 risks overflow in cosine similarities);
- runs on CPU, CUDA or MPS.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from prune_core.errors import InputError, check_cancel
from prune_core.models import (
    Normalization,
    build_model,
    compute_normalization,
    infer_kind,
    normalize_tensor,
    resolve_model_name,
    to_device,
)

EMBED_PASSES = ("eval", "strong")

# (epochs, learning rate, batch size) per model when the caller passes None. A warm-up must
# stop before the net memorises the wrong labels, or the confidences stop telling clean from
# noisy examples. Measured on digits with 40% symmetric noise (3 seeds): the MLP on the 64
# pixel features peaks at about 10 epochs with lr 0.02 (30 epochs at lr 0.05 memorise:
# test acc 0.92 -> 0.76); the small CNN with the shift augmentation is flat between 10 and
# 20 epochs (test acc 0.96), without augmentation it falls from 0.95 at 5 epochs to 0.77 at
# 20. The resnets follow the paper's CIFAR warm-up (10 epochs, lr 0.02, batch 128).
DEFAULTS: dict[str, tuple[int, float, int]] = {
    "mlp": (10, 0.02, 128),
    "small_cnn": (15, 0.05, 128),
    "resnet20": (15, 0.05, 128),
    "resnet18": (10, 0.02, 128),
    "preact_resnet18": (10, 0.02, 128),
}
# Colour images learn more slowly than digits: on the CIFAR-10N dev set (worst labels) the
# small CNN's warm-up went from test acc 0.487 / graph purity 0.444 / training-label accuracy
# against the truth 0.515 at 15 epochs to 0.524 / 0.473 / 0.578 at 30 (bench/training.py);
# on digits 15 stays the choice (above).
RGB_DEFAULTS: dict[str, tuple[int, float, int]] = {"small_cnn": (30, 0.05, 128)}
# torchvision:ARCH backbones train a linear head on frozen features: a higher learning rate
# suits a lone linear layer, and nothing in it can memorise much in 10 epochs.
TORCHVISION_DEFAULTS: tuple[int, float, int] = (10, 0.05, 128)
INFERENCE_BATCH = 512


def default_hyperparameters(model_name: str, kind: str) -> tuple[int, float, int]:
    """(epochs, lr, batch size) of the warm-up for a resolved model name and input kind
    (torchvision:ARCH backbones: TORCHVISION_DEFAULTS)."""
    if kind == "rgb" and model_name in RGB_DEFAULTS:
        return RGB_DEFAULTS[model_name]
    return DEFAULTS.get(model_name, TORCHVISION_DEFAULTS)


# Keep the whole uint8 training array on an accelerator when it is at most this large:
# saves one host-to-device copy per batch.
_DEVICE_CACHE_BYTES = 2 << 30
_PROGRESS_EVERY_S = 1.0  # throttle for the within-epoch progress calls

ProgressFn = Callable[[float, str, dict], None]


@dataclass
class WarmupResult:
    """Outputs of `warmup`. N training examples, C classes, D = model.embedding_dim.

    probs:       (N, C) float32 softmax of the inference pass, rows sum to 1
    embeddings:  (N, D) float32 input of the final linear layer, same pass
    losses:      (N,) float32 cross-entropy vs the noisy label, same pass
    forgetting:  (N,) int64 correct -> incorrect transitions between consecutive training visits
    history:     one dict per epoch: epoch, train_loss, train_acc (vs noisy labels),
                 test_acc (None without a test split), lr (at the epoch's start), seconds
    device:      the torch device actually used, e.g. "cpu", "cuda:0"
    model_name:  the resolved model name (never "auto")
    epochs:      number of warm-up epochs run
    seconds:     wall time of training plus inference
    test_acc:    last-epoch test accuracy, None without a test split
    test_probs:  (N_test, C) float32 test softmax after the last epoch, or None
    norm:        the input normalisation the model was trained with (needed by `predict`)
    kind:        input kind: "grey" | "rgb" | "features"
    config:      the hyper-parameters used (JSON-friendly), for the run manifest
    model:       the trained nn.Module (left out of comparisons, repr and `to_arrays`)
    """

    probs: np.ndarray
    embeddings: np.ndarray
    losses: np.ndarray
    forgetting: np.ndarray
    history: list[dict]
    device: str
    model_name: str
    epochs: int
    seconds: float
    test_acc: float | None
    test_probs: np.ndarray | None
    norm: Normalization | None = field(default=None, compare=False, repr=False)
    kind: str = "features"
    config: dict = field(default_factory=dict)
    model: nn.Module | None = field(default=None, compare=False, repr=False)

    def meta(self) -> dict:
        """JSON-friendly description (no arrays, no model) for a run manifest."""
        return {"model_name": self.model_name, "kind": self.kind, "device": self.device,
                "epochs": self.epochs, "seconds": self.seconds, "test_acc": self.test_acc,
                "history": self.history, "config": self.config,
                "norm": self.norm.to_dict() if self.norm is not None else None}

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The numpy outputs by name, ready for `np.save` (test_probs only when present)."""
        arrays = {
            "probs": self.probs,
            "embeddings": self.embeddings,
            "losses": self.losses,
            "forgetting": self.forgetting,
        }
        if self.test_probs is not None:
            arrays["test_probs"] = self.test_probs
        return arrays


# --------------------------------------------------------------------------- devices


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" -> cuda if available, then mps, then cpu. "cpu", "cuda", "cuda:1", "mps" are
    taken as asked; an unknown or unavailable device raises InputError."""
    name = str(device).strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise InputError(f"unknown device {device!r}; expected auto, cpu, cuda or mps") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {device!r} asked for but CUDA is not available here; use auto or cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"device {device!r} does not exist: {torch.cuda.device_count()} CUDA device(s)")
        return dev
    if dev.type == "mps":
        if not _mps_available():
            raise InputError(f"device {device!r} asked for but MPS is not available here; use auto or cpu")
        return dev
    raise InputError(f"unknown device {device!r}; expected auto, cpu, cuda or mps")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def _device_label(dev: torch.device) -> str:
    if dev.type == "cuda":
        return f"cuda:{dev.index if dev.index is not None else torch.cuda.current_device()}"
    return dev.type


# --------------------------------------------------------------------------- augmentation


def _shift_pad(kind: str, height: int, width: int) -> int:
    # RGB: the CIFAR crop (pad 4 at 32 px); grey: a small shift (1 px at 8x8, 2 px at 28x28).
    side = min(height, width)
    return max(1, round(side / 8)) if kind == "rgb" else max(1, round(side / 16))


def random_shift(x: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Random crop of the zero-padded batch back to its size (a shift of up to `pad` pixels).
    x: (B, C, H, W) normalised, so the zero padding is the mean colour."""
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad)).permute(0, 2, 3, 1)  # (B, H+2p, W+2p, C)
    off_h = torch.randint(0, 2 * pad + 1, (b,), generator=gen).to(x.device)
    off_w = torch.randint(0, 2 * pad + 1, (b,), generator=gen).to(x.device)
    rows = off_h[:, None] + torch.arange(h, device=x.device)  # (B, H)
    cols = off_w[:, None] + torch.arange(w, device=x.device)  # (B, W)
    batch = torch.arange(b, device=x.device)[:, None, None]
    out = padded[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    return out.contiguous(memory_format=torch.channels_last)  # the layout of normalize_tensor


def random_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Horizontal flip of each image with probability 1/2. x: (B, C, H, W)."""
    flip = (torch.rand(x.shape[0], generator=gen) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def random_erase(x: torch.Tensor, gen: torch.Generator, size_ratio: float = 0.5) -> torch.Tensor:
    """Cutout: zero (= the mean colour) one square of side size_ratio * min(H, W) per image,
    centred uniformly, clipped at the border (the official Cutout 16 px at 32 px)."""
    b, _, h, w = x.shape
    half = max(1, int(round(size_ratio * min(h, w)))) // 2
    cy = torch.randint(0, h, (b,), generator=gen).to(x.device)
    cx = torch.randint(0, w, (b,), generator=gen).to(x.device)
    ys = torch.arange(h, device=x.device)[None, :]
    xs = torch.arange(w, device=x.device)[None, :]
    in_rows = (ys >= (cy[:, None] - half)) & (ys < (cy[:, None] + half))  # (B, H)
    in_cols = (xs >= (cx[:, None] - half)) & (xs < (cx[:, None] + half))  # (B, W)
    hole = in_rows[:, :, None] & in_cols[:, None, :]  # (B, H, W)
    return x.masked_fill(hole[:, None], 0.0)


def augment_batch(x: torch.Tensor, kind: str, gen: torch.Generator, strong: bool = False) -> torch.Tensor:
    """Training augmentation of a normalised batch, seeded by `gen` (a CPU generator).

    weak (training): rgb -> random crop with padding + horizontal flip; grey -> small random
    shift (no flip: digits and letters are not mirror-symmetric); features -> unchanged.
    strong (`embed_pass="strong"`): the weak images plus cutout; features get gaussian
    noise with std 0.1 in standardised units.
    """
    if kind == "features":
        if not strong:
            return x
        noise = torch.randn(x.shape, generator=gen).to(x.device)
        return x + 0.1 * noise
    x = random_shift(x, _shift_pad(kind, x.shape[2], x.shape[3]), gen)
    if kind == "rgb":
        x = random_flip(x, gen)
    if strong:
        x = random_erase(x, gen)
    return x


# --------------------------------------------------------------------------- inference


class BatchSource:
    """Serves normalised model-input batches of one raw array (training, subset or test).

    The raw data (uint8 images / float32 features) stays raw, on the device when it is at
    most 2 GiB and the device is an accelerator, and is normalised batch by batch, so memory
    stays bounded. Reusable by the learners:

        src = BatchSource(ds.x_train, kind, norm, device)
        for index in epoch_batches(len(src), 128, gen):
            xb = augment_batch(src.batch(index), kind, gen)   # (B, C, H, W) or (B, D)
    """

    def __init__(self, x: np.ndarray, kind: str, norm: Normalization, device: torch.device):
        self.kind = kind
        self.device = device
        raw = np.ascontiguousarray(x if kind != "features" else np.asarray(x, np.float32))
        tensor = torch.from_numpy(raw)
        if device.type != "cpu" and raw.nbytes <= _DEVICE_CACHE_BYTES:
            tensor = tensor.to(device)
        self.raw = tensor
        self.mean = torch.as_tensor(norm.mean, device=device)
        self.std = torch.as_tensor(norm.std, device=device)

    def __len__(self) -> int:
        return self.raw.shape[0]

    def batch(self, index: torch.Tensor | slice) -> torch.Tensor:
        """Rows `index` ((B,) int64 tensor or a slice) as a normalised float32 batch on the device."""
        if isinstance(index, torch.Tensor):
            index = index.to(self.raw.device)
        xb = self.raw[index].to(self.device, non_blocking=True)
        return normalize_tensor(xb, self.kind, self.mean, self.std)


@torch.inference_mode()
def _infer(model: nn.Module, source: BatchSource, batch_size: int, cancel=None,
           strong_gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (N, C) and embeddings (N, D), float32 on the CPU, in the order of `source`,
    with the model in eval mode (restored afterwards). `strong_gen` set -> strong augmentation."""
    was_training = model.training
    model.eval()
    logits_parts, emb_parts = [], []
    try:
        for start in range(0, len(source), batch_size):
            check_cancel(cancel)
            xb = source.batch(slice(start, start + batch_size))
            if strong_gen is not None:
                xb = augment_batch(xb, source.kind, strong_gen, strong=True)
            logits, emb = model.forward_with_embedding(xb)
            logits_parts.append(logits.float().cpu())
            emb_parts.append(emb.float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(logits_parts), torch.cat(emb_parts)


def predict(model: nn.Module, x: np.ndarray, kind: str, norm: Normalization,
            device: str | torch.device = "cpu", batch_size: int = INFERENCE_BATCH,
            cancel=None) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic inference (eval mode, no augmentation) in memory-bounded batches.

    x: (N, H, W) / (N, H, W, 3) uint8 images or (N, D) features, raw as in the Dataset.
    kind: "grey" | "rgb" | "features"; norm: the training normalisation (WarmupResult.norm).
    device: where `model` lives (e.g. WarmupResult.device).
    Returns probs (N, C) float32 softmax and embeddings (N, D) float32.
    """
    dev = torch.device(device)
    source = BatchSource(x, kind, norm, dev)
    logits, emb = _infer(model, source, batch_size, cancel)
    return torch.softmax(logits, 1).numpy(), emb.numpy()


# --------------------------------------------------------------------------- validation


def _check_labels(y, n: int, num_classes: int, what: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != n:
        raise InputError(f"{what} has shape {y.shape}; expected ({n},), one label per example")
    if y.dtype.kind not in "iu":
        if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
            y = y.astype(np.int64)  # integral floats (e.g. read from CSV) are fine
        else:
            raise InputError(f"{what} must hold integer class labels, got dtype {y.dtype}")
    if n and (y.min() < 0 or y.max() >= num_classes):
        raise InputError(f"{what} has labels outside 0..{num_classes - 1} (found {y.min()}..{y.max()})")
    return y.astype(np.int64)


def _check_inputs(x: np.ndarray, kind: str, what: str) -> None:
    if kind == "features":
        if not np.issubdtype(x.dtype, np.number):
            raise InputError(f"{what} must be numeric, got dtype {x.dtype}")
        if not np.all(np.isfinite(x)):
            raise InputError(f"{what} contains NaN or infinite values")


def _positive(value, what: str, kind=float):
    if not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(value, bool) or value <= 0:
        raise InputError(f"{what} must be a positive number, got {value!r}")
    if kind is int and value != int(value):
        raise InputError(f"{what} must be a whole number, got {value!r}")
    return kind(value)


# --------------------------------------------------------------------------- warm-up


def warmup(ds, y_noisy, epochs: int | None = None, model: str = "auto", lr: float | None = None,
           batch_size: int | None = None, weight_decay: float = 5e-4, device: str = "auto",
           seed: int = 0, progress: ProgressFn | None = None, cancel=None, embed_pass: str = "eval",
           augment: bool | None = None) -> WarmupResult:
    """Train a fresh model with cross-entropy on the noisy labels, then score every example.

    ds: a Dataset (duck-typed): x_train (N, H, W) / (N, H, W, 3) uint8 or (N, D) float,
        num_classes, optional kind, x_test, y_test.
    y_noisy: (N,) int labels in 0..C-1, the (possibly noisy) labels to train on.
    epochs, lr, batch_size: None -> per-model defaults (`default_hyperparameters`).
    model: "auto", one of models.MODEL_NAMES (see models.resolve_model_name), or
        "torchvision:ARCH[:WEIGHTS]": a pretrained torchvision backbone, frozen, with a new
        linear head that the warm-up trains (TORCHVISION_DEFAULTS); see models' docstring.
    weight_decay: SGD weight decay (the paper's 5e-4).
    device: "auto" (cuda, then mps, then cpu), "cpu", "cuda[:i]" or "mps".
    seed: seeds weight init, shuffling and augmentation (the caller's global torch RNG is left
        untouched); same inputs + seed on CPU give identical outputs (for one torch build and
        thread count; CUDA kernels are not bitwise reproducible unless the caller asks torch
        for deterministic algorithms).
    progress: optional `progress(fraction, message, metrics)`; called after every epoch with
        metrics {phase: "epoch", epoch, train_loss, train_acc, test_acc, lr, seconds}, within
        long epochs (at most once a second) with {phase: "train", epoch, batch, num_batches,
        train_loss, train_acc, lr} (running means), and once at the end with phase "done".
    cancel: anything with `is_set()`; checked at every batch -> raises errors.Cancelled.
    embed_pass: "eval" (deterministic, no augmentation) or "strong" (one seeded stochastic
        pass with crop/flip/cutout, or gaussian noise for features, as the official code).
        probs, embeddings and losses all come from this pass.
    augment: weak training augmentation (rgb: crop with padding + flip; grey: small shift);
        None -> on for every image model, off for features (see DEFAULTS for why).
    Returns a WarmupResult.
    """
    started = time.perf_counter()
    x_train = np.asarray(ds.x_train)
    n = len(x_train)
    if n < 2:
        raise InputError(f"warm-up needs at least 2 training examples, got {n}")
    num_classes = int(ds.num_classes)
    if num_classes < 2:
        raise InputError(f"num_classes must be at least 2, got {num_classes}")
    kind = getattr(ds, "kind", None) or infer_kind(x_train)
    _check_inputs(x_train, kind, "x_train")
    y = _check_labels(y_noisy, n, num_classes, "y_noisy")
    if embed_pass not in EMBED_PASSES:
        raise InputError(f"unknown embed_pass {embed_pass!r}; expected one of {', '.join(EMBED_PASSES)}")

    x_test = getattr(ds, "x_test", None)
    y_test = getattr(ds, "y_test", None)
    has_test = x_test is not None and y_test is not None and len(x_test) > 0
    if has_test:
        x_test = np.asarray(x_test)
        if x_test.shape[1:] != x_train.shape[1:]:
            raise InputError(f"x_test examples have shape {x_test.shape[1:]}, x_train ones {x_train.shape[1:]}")
        _check_inputs(x_test, kind, "x_test")
        y_test = _check_labels(y_test, len(x_test), num_classes, "y_test")

    dev = resolve_device(device)
    model_name = resolve_model_name(model, kind, x_train.shape[1:], num_examples=n, device_type=dev.type)
    default_epochs, default_lr, default_batch = default_hyperparameters(model_name, kind)
    epochs = int(_positive(default_epochs if epochs is None else epochs, "epochs", int))
    lr = _positive(default_lr if lr is None else lr, "lr")
    batch_size = min(int(_positive(default_batch if batch_size is None else batch_size, "batch_size", int)), n)
    if weight_decay < 0:
        raise InputError(f"weight_decay must be >= 0, got {weight_decay!r}")
    if augment is None:
        augment = kind != "features"  # the shift/crop is what keeps CNN warm-ups from memorising
    augment = bool(augment) and kind != "features"  # nothing to crop in a feature vector

    # Seeded weight init without touching the caller's global RNG state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_model(model_name, kind, x_train.shape[1:], num_classes, num_examples=n)
    net = to_device(net, dev)
    gen = torch.Generator().manual_seed(seed)  # shuffling + augmentation, always on the CPU

    norm = compute_normalization(x_train, kind)
    train_src = BatchSource(x_train, kind, norm, dev)
    test_src = BatchSource(x_test, kind, norm, dev) if has_test else None
    y_dev = torch.from_numpy(y).to(dev)

    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    steps_per_epoch = _num_batches(n, batch_size)
    total_steps = epochs * steps_per_epoch
    # Cosine decay per step over the warm-up only, down to 1% of the peak.
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps)))

    forgetting = np.zeros(n, np.int64)
    prev_correct = np.zeros(n, bool)  # never-seen examples count as "not learned yet"
    history: list[dict] = []
    test_logits = None
    step = 0
    last_report = time.perf_counter()

    net.train()
    for epoch in range(1, epochs + 1):
        epoch_start = time.perf_counter()
        epoch_lr = optimizer.param_groups[0]["lr"]
        loss_sum = torch.zeros((), device=dev)
        correct_sum = 0
        seen = 0
        for b, index in enumerate(epoch_batches(n, batch_size, gen)):
            check_cancel(cancel)
            xb = train_src.batch(index)
            if augment:
                xb = augment_batch(xb, kind, gen)
            yb = y_dev[index.to(dev)]
            logits = net(xb)
            loss = F.cross_entropy(logits, yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1

            # Forgetting events: correct at the previous visit, wrong now (Toneva et al. 2019).
            correct = (logits.detach().argmax(1) == yb).cpu().numpy()
            idx = index.numpy()
            forgetting[idx] += prev_correct[idx] & ~correct
            prev_correct[idx] = correct
            loss_sum += loss.detach() * len(idx)
            correct_sum += int(correct.sum())
            seen += len(idx)

            if progress is not None and time.perf_counter() - last_report >= _PROGRESS_EVERY_S:
                last_report = time.perf_counter()
                progress(0.95 * step / total_steps, f"warm-up epoch {epoch}/{epochs}, batch {b + 1}/{steps_per_epoch}",
                         {"phase": "train", "epoch": epoch, "batch": b + 1, "num_batches": steps_per_epoch,
                          "train_loss": float(loss_sum) / seen, "train_acc": correct_sum / seen, "lr": epoch_lr})

        test_acc = None
        if test_src is not None:
            test_logits, _ = _infer(net, test_src, INFERENCE_BATCH, cancel)
            test_acc = float((test_logits.argmax(1).numpy() == y_test).mean())
        record = {"epoch": epoch, "train_loss": float(loss_sum) / seen, "train_acc": correct_sum / seen,
                  "test_acc": test_acc, "lr": epoch_lr, "seconds": time.perf_counter() - epoch_start}
        history.append(record)
        if progress is not None:
            last_report = time.perf_counter()
            msg = f"warm-up epoch {epoch}/{epochs}: loss {record['train_loss']:.3f}, train acc {record['train_acc']:.3f}"
            if test_acc is not None:
                msg += f", test acc {test_acc:.3f}"
            progress(0.95 * step / total_steps, msg, {"phase": "epoch", **record})

    # Scores for selection: every training example once, in the original order.
    strong_gen = torch.Generator().manual_seed(seed + 1) if embed_pass == "strong" else None
    logits, embeddings = _infer(net, train_src, INFERENCE_BATCH, cancel, strong_gen=strong_gen)
    y_cpu = torch.from_numpy(y)
    losses = F.cross_entropy(logits, y_cpu, reduction="none")
    probs = torch.softmax(logits, 1)
    seconds = time.perf_counter() - started
    final_test_acc = history[-1]["test_acc"]
    if progress is not None:
        progress(1.0, f"warm-up done in {seconds:.1f} s", {"phase": "done", **history[-1]})

    config = {"model": model_name, "epochs": epochs, "lr": lr, "batch_size": batch_size,
              "weight_decay": weight_decay, "optimizer": "sgd(momentum=0.9, nesterov)",
              "schedule": "cosine per step to 1% over the warm-up", "augment": augment,
              "embed_pass": embed_pass, "seed": seed, "device": _device_label(dev)}
    return WarmupResult(
        probs=probs.numpy().astype(np.float32),
        embeddings=embeddings.numpy().astype(np.float32),
        losses=losses.numpy().astype(np.float32),
        forgetting=forgetting,
        history=history,
        device=_device_label(dev),
        model_name=model_name,
        epochs=epochs,
        seconds=seconds,
        test_acc=final_test_acc,
        test_probs=torch.softmax(test_logits, 1).numpy().astype(np.float32) if test_logits is not None else None,
        norm=norm,
        kind=kind,
        config=config,
        model=net,
    )


def _num_batches(n: int, batch_size: int) -> int:
    full, rest = divmod(n, batch_size)
    # A lone last example is merged into the previous batch: BatchNorm cannot train on 1.
    return full + (1 if rest > 1 or full == 0 else 0)


def epoch_batches(n: int, batch_size: int, gen: torch.Generator) -> list[torch.Tensor]:
    """Shuffled index batches for one epoch, (B,) int64 CPU tensors covering 0..n-1 once.
    A lone last example joins the previous batch (BatchNorm cannot train on a batch of 1)."""
    order = torch.randperm(n, generator=gen)
    batches = list(order.split(batch_size))
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2] = torch.cat([batches[-2], batches[-1]])
        batches.pop()
    return batches
