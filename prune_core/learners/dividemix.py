"""``dividemix``: DivideMix (Li et al. 2020): two networks; a short CE warm-up
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
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import check_cancel
from ._loop import _ce_epoch, _Context, _epoch_record, _report
from ._registry import register_learner


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
