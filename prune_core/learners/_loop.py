"""What every learner shares: the subset's batches on the device (`_Source`), the training
context handed to a registered learner (`_Context`: model factory, seeded generators,
augmentation, optimiser, evaluation), epoch records and progress, and one CE epoch."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import check_cancel

EVAL_BATCH = 1024


class _Source:
    """Normalised batches of one array, kept on the device.

    Features are standardised once; images stay uint8 and are normalised per batch.
    """

    def __init__(self, x: np.ndarray, kind: str, norm, device: torch.device):
        from ..models import normalize_tensor

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
        """Weak or strong view of a normalised batch (see the package docstring)."""
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
        from ..training import augment_batch

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
