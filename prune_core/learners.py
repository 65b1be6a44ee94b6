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
  (`prune_core.warmup.augment_batch`; feature vectors get the gaussian views below). Nothing
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

Recipes:

- ``ce``: cross-entropy on the noisy labels with weak augmentation.
- ``sop``: SOP+ (Liu et al. 2022, as used by Prune4ReL): per-example u (N,1) and v (N,C),
  initialised N(0, 1e-8^2), trained by plain SGD (lr_u, lr_v, no momentum, no weight decay).
  Corrected prediction q = clip(p + u^2 y - sg(v^2 (1-y))), L1-normalised; loss = CE(q, y)
  + MSE(onehot(argmax p) + sg(u^2 y) - v^2 (1-y), y) + rb * KL(uniform || mean q)
  + rc * KL(sg softmax(weak) || softmax(strong)). The MSE term trains v only, as in the
  official SOP repository; the Prune4ReL code also lets u learn from it (`mse_trains_u=True`).
- ``dividemix``: DivideMix (Li et al. 2020): two networks; a short CE warm-up
  (`warmup_epochs`), then every epoch each net's per-example CE losses on the subset
  (no augmentation) are min-max normalised and split by a 2-component GMM; each net trains
  on the split made by the OTHER net (co-divide). Labeled set: label co-refinement
  w*y + (1-w)*mean of the net's two views, sharpened with T; unlabeled set: co-guessing
  (mean of both nets over two views), sharpened; MixMatch mixup with lambda ~ Beta(a, a),
  lambda = max(lambda, 1-lambda); soft CE on labeled, MSE on unlabeled with weight
  lambda_u ramped up linearly over `rampup_epochs` after the warm-up, plus a uniform-prior
  penalty. **Differences from the official Prune4ReL code, on purpose:** that code disabled
  the warm-up (the first GMM split was fitted on losses of untrained networks) and the
  lambda_u ramp-up (constant lambda_u = 1); we restore the DivideMix paper's recipe
  (a 5-epoch CE warm-up, then an 8-epoch linear ramp-up, scaled from the paper's 10 and 16 to 30 epochs).
  Predictions use the sum of the two nets' logits.

Determinism: the seed fixes weight init (`torch.random.fork_rng`, the caller's global RNG
state is untouched), shuffling, augmentation, the u/v init, mixup draws and the GMM; on
the CPU the same inputs and seed give identical results.
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

from .errors import InputError, check_cancel

LEARNER_INPUTS = ("from-scratch", "frozen-features")
LEARNER_INPUT_ALIASES = {"auto": "from-scratch", "images": "from-scratch", "embeddings": "frozen-features"}
FROZEN_FEATURES_CAVEAT = ("frozen-features: the learner is a head on warm-up embeddings trained on ALL training "
                          "examples, pruned ones included, so pruned data leaks into every subset and "
                          "differences between methods shrink")
HEAD_HIDDEN = 128
EVAL_BATCH = 1024

ProgressFn = Callable[[float, str, dict], None]


# --------------------------------------------------------------------------- results and registry


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


# --------------------------------------------------------------------------- inputs


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
    from .warmup import predict, resolve_device

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


class _Source:
    """Normalised batches of one array, kept on the device.

    Features are standardised once; images stay uint8 and are normalised per batch.
    """

    def __init__(self, x: np.ndarray, kind: str, norm, device: torch.device):
        from .models import normalize_tensor

        self.kind = kind
        self.device = device
        self._normalize = normalize_tensor
        self.mean = torch.as_tensor(norm.mean, device=device)
        self.std = torch.as_tensor(norm.std, device=device)
        if kind == "features":
            t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device)
            self.data = (t - self.mean) / self.std
        else:
            self.data = torch.from_numpy(np.ascontiguousarray(x)).to(device)

    def __len__(self) -> int:
        return self.data.shape[0]

    def batch(self, index) -> torch.Tensor:
        if isinstance(index, torch.Tensor):
            index = index.to(self.data.device)
        xb = self.data[index]
        if self.kind == "features":
            return xb
        return self._normalize(xb, self.kind, self.mean, self.std)


@dataclass
class _Context:
    """Everything a registered learner function needs: the subset's data, a model factory,
    seeded generators, augmentation and evaluation helpers."""

    src: _Source  # over the subset only
    y: torch.Tensor  # (n,) int64 noisy labels of the subset, on the device
    num_classes: int
    kind: str
    input: str
    device: torch.device
    gen: torch.Generator  # CPU generator: shuffling, augmentation, u/v init
    rng: np.random.Generator  # mixup draws
    seed: int
    make_model: Callable[[int], nn.Module]  # make_model(k): the k-th freshly initialised net
    test_src: _Source | None
    y_test: np.ndarray | None
    params: dict
    track_test: bool = True  # test accuracy after every epoch (live curves), else after the last only

    @property
    def n(self) -> int:
        return len(self.src)

    def batches(self, n: int, batch_size: int) -> list[torch.Tensor]:
        """Shuffled index batches over 0..n-1; a lone last example joins the previous batch
        (BatchNorm cannot train on a batch of one)."""
        order = torch.randperm(n, generator=self.gen)
        parts = list(order.split(max(2, batch_size)))
        if len(parts) > 1 and len(parts[-1]) == 1:
            parts[-2] = torch.cat([parts[-2], parts[-1]])
            parts.pop()
        return parts

    def augment(self, xb: torch.Tensor, strong: bool = False) -> torch.Tensor:
        """Weak or strong view of a normalised batch (see the module docstring)."""
        if self.kind == "features":
            p = self.params
            sigma = p["strong_noise"] if strong else p["weak_noise"]
            out = xb
            if sigma > 0:
                out = out + sigma * torch.randn(xb.shape, generator=self.gen).to(xb.device)
            if strong and p["strong_dropout"] > 0:
                keep = (torch.rand(xb.shape, generator=self.gen) >= p["strong_dropout"]).to(xb.device)
                out = out * keep / (1.0 - p["strong_dropout"])
            return out
        from .warmup import augment_batch

        return augment_batch(xb, self.kind, self.gen, strong=strong)

    def optimizer(self, net: nn.Module, epochs: int, steps_per_epoch: int):
        """SGD (momentum 0.9, Nesterov, weight decay) with a cosine decay to 1% over
        epochs * steps_per_epoch scheduler steps (per batch; DivideMix steps per epoch)."""
        p = self.params
        opt = torch.optim.SGD(net.parameters(), lr=p["lr"], momentum=0.9, nesterov=True,
                              weight_decay=p["weight_decay"])
        total = max(1, epochs * steps_per_epoch)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * min(s, total) / total)))
        return opt, sched

    @torch.no_grad()
    def logits(self, nets: list[nn.Module], src: _Source, index=None) -> torch.Tensor:
        """Summed logits of `nets` (eval mode, no augmentation) over `src` (or src[index])."""
        modes = [net.training for net in nets]
        for net in nets:
            net.eval()
        try:
            n = len(src) if index is None else len(index)
            parts = []
            for start in range(0, n, EVAL_BATCH):
                sl = slice(start, start + EVAL_BATCH)
                xb = src.batch(sl if index is None else index[sl])
                out = sum(net(xb) for net in nets)
                parts.append(out.float())
            return torch.cat(parts) if parts else torch.zeros(0, self.num_classes, device=self.device)
        finally:
            for net, m in zip(nets, modes):
                net.train(m)

    def test_accuracy(self, nets: list[nn.Module]) -> float | None:
        if self.test_src is None:
            return None
        pred = self.logits(nets, self.test_src).argmax(1).cpu().numpy()
        return float((pred == self.y_test).mean())


def _num_steps(n: int, batch_size: int) -> int:
    full, rest = divmod(n, max(2, batch_size))
    return max(1, full + (1 if rest > 1 else 0))


def _epoch_record(ctx: _Context, nets, epoch, loss_sum, correct, seen, lr, started, **extra) -> dict:
    last = epoch >= int(ctx.params["epochs"])
    test_acc = ctx.test_accuracy(nets) if ctx.track_test or last else None
    return {"epoch": epoch, "train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1),
            "test_acc": test_acc, "lr": lr, "seconds": time.perf_counter() - started, **extra}


def _report(progress, epoch, epochs, name, record):
    if progress is None:
        return
    msg = f"{name} epoch {epoch}/{epochs}: loss {record['train_loss']:.3f}"
    if record.get("test_acc") is not None:
        msg += f", test acc {record['test_acc']:.3f}"
    progress(0.97 * epoch / epochs, msg, {"phase": "epoch", **record})


# --------------------------------------------------------------------------- CE


def _ce_epoch(ctx: _Context, net, opt, sched, batch_size, cancel, penalty: float = 0.0):
    """One CE epoch on the subset with weak augmentation; returns (loss sum, correct, seen)."""
    loss_sum, correct, seen = 0.0, 0, 0
    for index in ctx.batches(ctx.n, batch_size):
        check_cancel(cancel)
        xb = ctx.augment(ctx.src.batch(index))
        yb = ctx.y[index.to(ctx.device)]
        logits = net(xb)
        loss = F.cross_entropy(logits, yb)
        if penalty > 0:  # DivideMix's confidence penalty (negative entropy), for asymmetric noise
            p = logits.softmax(1)
            loss = loss + penalty * (p * p.clamp_min(1e-12).log()).sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        loss_sum += float(loss.detach()) * len(index)
        correct += int((logits.detach().argmax(1) == yb).sum())
        seen += len(index)
    return loss_sum, correct, seen


@register_learner("ce", "CE: the standard model, cross-entropy on the noisy labels (weak augmentation)")
def _fit_ce(ctx: _Context, progress, cancel, epochs, lr, batch_size, **_):
    net = ctx.make_model(0)
    opt, sched = ctx.optimizer(net, epochs, _num_steps(ctx.n, batch_size))
    history = []
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        lr_now = opt.param_groups[0]["lr"]
        loss_sum, correct, seen = _ce_epoch(ctx, net, opt, sched, batch_size, cancel)
        history.append(_epoch_record(ctx, [net], epoch, loss_sum, correct, seen, lr_now, started))
        _report(progress, epoch, epochs, "ce", history[-1])
    return [net], history, {}


# --------------------------------------------------------------------------- SOP+


@register_learner(
    "sop",
    "SOP+: sparse over-parameterisation (per-example u, v) with class-balance and consistency terms",
    defaults={"lr_u": 10.0, "lr_v": 100.0, "ratio_consistency": 0.9, "ratio_balance": 0.1,
              "mse_trains_u": False},
)
def _fit_sop(ctx: _Context, progress, cancel, epochs, lr, batch_size, lr_u, lr_v, ratio_consistency,
             ratio_balance, mse_trains_u, **_):
    n, c, dev = ctx.n, ctx.num_classes, ctx.device
    net = ctx.make_model(0)
    # Per-example parameters, N(0, 1e-8^2), plain SGD (no momentum, no weight decay).
    u = (torch.randn(n, 1, generator=ctx.gen) * 1e-8).to(dev).requires_grad_()
    v = (torch.randn(n, c, generator=ctx.gen) * 1e-8).to(dev).requires_grad_()
    opt, sched = ctx.optimizer(net, epochs, _num_steps(n, batch_size))
    opt_u = torch.optim.SGD([u], lr=lr_u, momentum=0.0, weight_decay=0.0)
    opt_v = torch.optim.SGD([v], lr=lr_v, momentum=0.0, weight_decay=0.0)
    eye = torch.eye(c, device=dev)
    prior = torch.full((c,), 1.0 / c, device=dev)
    eps = 1e-4
    history = []
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        lr_now = opt.param_groups[0]["lr"]
        loss_sum, correct, seen = 0.0, 0, 0
        for index in ctx.batches(n, batch_size):
            check_cancel(cancel)
            idx = index.to(dev)
            xb = ctx.src.batch(index)
            yb = ctx.y[idx]
            y1 = eye[yb]
            weak = ctx.augment(xb)
            if ratio_consistency > 0:
                out = net(torch.cat([weak, ctx.augment(xb, strong=True)]))
                logits, logits_strong = out[: len(idx)], out[len(idx):]
            else:
                logits, logits_strong = net(weak), None
            p = logits.softmax(1)
            u2 = (u[idx] ** 2 * y1).clamp(0.0, 1.0)
            v2 = (v[idx] ** 2 * (1.0 - y1)).clamp(0.0, 1.0)
            q = (p + u2 - v2.detach()).clamp_min(eps)
            q = (q / q.sum(1, keepdim=True)).clamp(eps, 1.0 - eps)
            loss_ce = -(y1 * q.log()).sum(1).mean()
            hard = eye[logits.detach().argmax(1)]
            u2_mse = u2 if mse_trains_u else u2.detach()
            loss_mse = ((hard + u2_mse - v2 - y1) ** 2).sum(1).mean()
            loss = loss_ce + loss_mse
            if ratio_balance > 0:  # KL(uniform prior || mean corrected prediction)
                mean_q = q.mean(0).clamp_min(eps)
                loss = loss + ratio_balance * (prior * (prior.log() - mean_q.log())).sum()
            if logits_strong is not None:  # KL(sg softmax(weak) || softmax(strong))
                target = p.detach()
                kl = (target * (target.clamp_min(1e-12).log() - logits_strong.log_softmax(1))).sum(1)
                loss = loss + ratio_consistency * kl.mean()
            opt.zero_grad(set_to_none=True)
            opt_u.zero_grad(set_to_none=True)
            opt_v.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            opt_u.step()
            opt_v.step()
            sched.step()
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((logits.detach().argmax(1) == yb).sum())
            seen += len(idx)
        with torch.no_grad():
            u2_all = (u.detach() ** 2).clamp(0, 1).squeeze(1)
        history.append(_epoch_record(ctx, [net], epoch, loss_sum, correct, seen, lr_now, started,
                                     mean_u2=float(u2_all.mean()), share_u2_above_half=float((u2_all > 0.5).float().mean())))
        _report(progress, epoch, epochs, "sop", history[-1])
    u2 = (u.detach() ** 2).clamp(0, 1).squeeze(1).cpu().numpy()
    return [net], history, {"u2": u2.astype(np.float32)}


# --------------------------------------------------------------------------- DivideMix


@torch.no_grad()
def _per_example_loss(ctx: _Context, net) -> np.ndarray:
    """CE loss of every subset example vs its noisy label (eval mode, no augmentation), (n,)."""
    logits = ctx.logits([net], ctx.src)
    return F.cross_entropy(logits, ctx.y, reduction="none").cpu().numpy().astype(np.float64)


def _clean_probability(losses: np.ndarray, seed: int) -> np.ndarray:
    """Posterior of the low-loss component of a 2-component GMM on min-max normalised losses."""
    from sklearn.mixture import GaussianMixture

    span = losses.max() - losses.min()
    if losses.size < 4 or span < 1e-12:
        return np.full(losses.shape, 0.5)
    z = ((losses - losses.min()) / span).reshape(-1, 1)
    gmm = GaussianMixture(n_components=2, max_iter=10, tol=1e-2, reg_covar=5e-4, random_state=seed)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning: 10 iterations is the recipe
        gmm.fit(z)
    clean = int(np.argmin(gmm.means_.ravel()))
    return gmm.predict_proba(z)[:, clean]


def _sharpen(p: torch.Tensor, temperature: float) -> torch.Tensor:
    p = p ** (1.0 / temperature)
    return p / p.sum(1, keepdim=True)


def _mixmatch_epoch(ctx: _Context, net, other, opt, sched, prob_clean: np.ndarray, epoch: int, params: dict,
                    cancel) -> tuple[float, int, int, dict]:
    """One DivideMix training epoch of `net` on the division `prob_clean` made by `other`."""
    p = params
    dev, c = ctx.device, ctx.num_classes
    labeled = np.flatnonzero(prob_clean > p["p_threshold"])
    if labeled.size < 2:  # degenerate split: keep the most likely clean half as labeled
        labeled = np.argsort(-prob_clean, kind="stable")[: max(2, ctx.n // 2)]
    unlabeled = np.setdiff1d(np.arange(ctx.n), labeled)
    lab_t = torch.from_numpy(labeled)
    unl_t = torch.from_numpy(unlabeled)
    w_all = torch.from_numpy(prob_clean.astype(np.float32)).to(dev)
    eye = torch.eye(c, device=dev)
    prior = torch.full((c,), 1.0 / c, device=dev)
    batches = ctx.batches(labeled.size, p["batch_size"])
    num_iter = len(batches)
    unl_perm, unl_ptr = unl_t[:0], 0
    other.eval()
    net.train()
    loss_sum, correct, seen = 0.0, 0, 0
    lx_sum, lu_sum = 0.0, 0.0
    for b, pos in enumerate(batches):
        check_cancel(cancel)
        idx_x = lab_t[pos]
        bx = len(idx_x)
        xb = ctx.src.batch(idx_x)
        yb = ctx.y[idx_x.to(dev)]
        y1 = eye[yb]
        w = w_all[idx_x.to(dev)].unsqueeze(1)
        x1, x2 = ctx.augment(xb), ctx.augment(xb)
        u1 = u2 = None
        if unlabeled.size:
            parts, need = [], bx
            while need > 0:  # cycle through reshuffled passes over the unlabeled set
                if unl_ptr >= len(unl_perm):
                    unl_perm, unl_ptr = unl_t[torch.randperm(unlabeled.size, generator=ctx.gen)], 0
                take = unl_perm[unl_ptr:unl_ptr + need]
                unl_ptr += len(take)
                parts.append(take)
                need -= len(take)
            idx_u = torch.cat(parts)
            ub = ctx.src.batch(idx_u)
            u1, u2 = ctx.augment(ub), ctx.augment(ub)
        with torch.no_grad():
            # Label co-refinement (labeled) and co-guessing (unlabeled), then sharpening.
            px = (net(x1).softmax(1) + net(x2).softmax(1)) / 2
            tx = _sharpen(w * y1 + (1 - w) * px, p["temperature"])
            if u1 is not None:
                pu = (net(u1).softmax(1) + net(u2).softmax(1) + other(u1).softmax(1) + other(u2).softmax(1)) / 4
                tu = _sharpen(pu, p["temperature"])
        lam = float(ctx.rng.beta(p["alpha"], p["alpha"]))
        lam = max(lam, 1.0 - lam)
        if u1 is not None:
            inputs = torch.cat([x1, x2, u1, u2])
            targets = torch.cat([tx, tx, tu, tu])
        else:
            inputs = torch.cat([x1, x2])
            targets = torch.cat([tx, tx])
        perm = torch.randperm(len(inputs), generator=ctx.gen).to(dev)
        mixed_x = lam * inputs + (1 - lam) * inputs[perm]
        mixed_t = lam * targets + (1 - lam) * targets[perm]
        logits = net(mixed_x)
        lx = -(logits[: 2 * bx].log_softmax(1) * mixed_t[: 2 * bx]).sum(1).mean()
        loss = lx
        lu = torch.zeros((), device=dev)
        ramp = min(1.0, max(0.0, (epoch + b / num_iter - p["warmup_epochs"]) / max(p["rampup_epochs"], 1e-9)))
        if u1 is not None:
            lu = ((logits[2 * bx:].softmax(1) - mixed_t[2 * bx:]) ** 2).mean()
            loss = loss + p["lambda_u"] * ramp * lu
        mean_p = logits.softmax(1).mean(0).clamp_min(1e-12)
        loss = loss + p["prior_penalty"] * (prior * (prior.log() - mean_p.log())).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        loss_sum += float(loss.detach()) * bx
        lx_sum += float(lx.detach()) * bx
        lu_sum += float(lu.detach()) * bx
        correct += int((logits[:bx].detach().argmax(1) == yb).sum())
        seen += bx
    info = {"labeled": int(labeled.size), "loss_x": lx_sum / max(seen, 1), "loss_u": lu_sum / max(seen, 1),
            "lambda_u": p["lambda_u"] * ramp}
    return loss_sum, correct, seen, info


@register_learner(
    "dividemix",
    "DivideMix: two nets, GMM co-divide on losses, co-refinement/co-guessing and MixMatch",
    defaults={"epochs": 30, "warmup_epochs": 5, "rampup_epochs": 8, "lambda_u": 25.0, "alpha": 4.0,
              "temperature": 0.5, "p_threshold": 0.5, "prior_penalty": 1.0, "conf_penalty": 0.0},
    image_defaults={"epochs": 30, "warmup_epochs": 5, "rampup_epochs": 8},
)
def _fit_dividemix(ctx: _Context, progress, cancel, epochs, batch_size, warmup_epochs, conf_penalty, **_):
    p = ctx.params
    nets = [ctx.make_model(0), ctx.make_model(1)]
    # One optimiser per net; the learning rate follows the cosine per epoch (MixMatch
    # epochs have fewer steps than CE epochs, so per-step counting would not end the decay).
    opts = [ctx.optimizer(net, epochs, 1) for net in nets]
    history = []
    probs_clean = [np.full(ctx.n, np.nan), np.full(ctx.n, np.nan)]
    for epoch in range(epochs):
        started = time.perf_counter()
        lr_now = opts[0][0].param_groups[0]["lr"]
        loss_sum, correct, seen = 0.0, 0, 0
        extra = {}
        if epoch < warmup_epochs:
            for net, (opt, _) in zip(nets, opts):
                ls, cr, sn = _ce_epoch(ctx, net, opt, None, batch_size, cancel, penalty=conf_penalty)
                loss_sum, correct, seen = loss_sum + ls, correct + cr, seen + sn
            extra["phase"] = "warmup"
        else:
            probs_clean = [_clean_probability(_per_example_loss(ctx, net), ctx.seed + epoch) for net in nets]
            labeled = []
            for k in (0, 1):  # each net trains on the division made by the other net
                ls, cr, sn, info = _mixmatch_epoch(ctx, nets[k], nets[1 - k], opts[k][0], None, probs_clean[1 - k],
                                                   epoch, p, cancel)
                loss_sum, correct, seen = loss_sum + ls, correct + cr, seen + sn
                labeled.append(info["labeled"])
                extra.update(lambda_u=info["lambda_u"])
            extra.update(phase="mixmatch", labeled_net1=labeled[0], labeled_net2=labeled[1])
        for _, sched in opts:
            sched.step()
        record = _epoch_record(ctx, nets, epoch + 1, loss_sum, correct, seen, lr_now, started, **extra)
        history.append(record)
        _report(progress, epoch + 1, epochs, "dividemix", record)
    clean = np.nanmean(np.vstack(probs_clean), axis=0) if epochs > warmup_epochs else None
    return nets, history, {} if clean is None else {"prob_clean": clean.astype(np.float32)}


# --------------------------------------------------------------------------- entry point


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
    from .models import MLP, build_model, compute_normalization, infer_kind, to_device
    from .warmup import resolve_device

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
