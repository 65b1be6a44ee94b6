"""``sop``: SOP+ (Liu et al. 2022, as used by Prune4ReL): per-example u (N,1) and v (N,C),
initialised N(0, 1e-8^2), trained by plain SGD (lr_u, lr_v, no momentum, no weight decay).
Corrected prediction q = clip(p + u^2 y - sg(v^2 (1-y))), L1-normalised; loss = CE(q, y)
+ MSE(onehot(argmax p) + sg(u^2 y) - v^2 (1-y), y) + rb * KL(uniform || mean q)
+ rc * KL(sg softmax(weak) || softmax(strong)). The MSE term trains v only, as in the
official SOP repository; the Prune4ReL code also lets u learn from it (`mse_trains_u=True`).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ..errors import check_cancel
from ._loop import _Context, _epoch_record, _num_steps, _report
from ._registry import register_learner


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
