"""``ce``: cross-entropy on the noisy labels with weak augmentation (the standard model)."""

from __future__ import annotations

import time

from ._loop import _ce_epoch, _Context, _epoch_record, _num_steps, _report
from ._registry import register_learner


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
