"""Why the warm-up's neighbourhoods on the CIFAR-10N dev set are impure, measured.

    .venv/bin/python bench/purity_study.py                  # every variant not measured yet (resumable)
    .venv/bin/python bench/purity_study.py --jobs 2         # two variants at a time, 1 torch thread each
    .venv/bin/python bench/purity_study.py --render-only    # print the table from the results file

The default CPU warm-up (small CNN, 30 epochs, CE on the CIFAR-10N "worst" labels) gives a kNN
graph (k = 50, tau auto) whose purity, the share of edges joining two examples of the same TRUE
class, is 0.47. Each variant below changes one thing and reports the same purity, the warm-up's
test accuracy and its wall time:

- `ce`: the default, as `prune_core.warmup` runs it;
- `ce_true_labels`: the same training on the TRUE labels: the ceiling of any label-noise
  remedy for this network, data size and budget (no pruning method can see these labels);
- `ce_flip_tta`: the default network, embeddings averaged over the image and its mirror;
- `mixup`: mixup (alpha 1) on the given labels (Zhang et al. 2018; DivideMix uses it against
  label noise);
- `gce`: generalised cross-entropy, q = 0.7 (Zhang & Sabuncu 2018), a noise-robust loss;
- `ce_60_epochs`: the default with twice the epochs (twice the time budget).

Everything but the `ce_true_labels` row uses training-set quantities only (given labels);
purity and accuracy against the truth are the measurement, not an input. Results are kept in
`--results` (JSON) and skipped next time.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CIFAR = "npz:../shared/datasets/cifar10n_dev/cifar10n_dev.npz"
VARIANTS = ["ce", "ce_true_labels", "ce_flip_tta", "mixup", "gce", "ce_60_epochs"]


def _train(ds, y, epochs: int, loss_name: str, seed: int = 0):
    """The default warm-up's loop (same model, optimiser, schedule, augmentation, seed) with
    the loss swapped; returns the trained network."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from prune_core.models import build_model, compute_normalization, resolve_model_name
    from prune_core.training import BatchSource, augment_batch, default_hyperparameters, epoch_batches

    x = np.asarray(ds.x_train)
    name = resolve_model_name("auto", ds.kind, x.shape[1:], num_examples=len(x), device_type="cpu")
    _, lr, batch = default_hyperparameters(name, ds.kind)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_model(name, ds.kind, x.shape[1:], ds.num_classes, num_examples=len(x))
    net = net.to(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(seed)
    norm = compute_normalization(x, ds.kind)
    src = BatchSource(x, ds.kind, norm, torch.device("cpu"))
    yt = torch.from_numpy(np.asarray(y, np.int64))
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    total = epochs * math.ceil(len(x) / batch)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * min(s, total) / total)))
    net.train()
    for _ in range(epochs):
        for index in epoch_batches(len(x), batch, gen):
            xb = augment_batch(src.batch(index), ds.kind, gen)
            yb = yt[index]
            if loss_name == "mixup":
                lam = float(torch.rand((), generator=gen))  # Beta(1, 1) is uniform on [0, 1]
                perm = torch.randperm(len(index), generator=gen)
                logits = net(lam * xb + (1 - lam) * xb[perm])
                loss = lam * F.cross_entropy(logits, yb) + (1 - lam) * F.cross_entropy(logits, yb[perm])
            elif loss_name == "gce":
                p = torch.softmax(net(xb), 1).gather(1, yb[:, None]).clamp_min(1e-7)
                loss = ((1 - p ** 0.7) / 0.7).mean()
            else:
                loss = F.cross_entropy(net(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return net, src, norm


def _embed(net, src, flip: bool = False):
    import torch

    from prune_core.training import INFERENCE_BATCH

    net.eval()
    logits, embs = [], []
    with torch.inference_mode():
        for start in range(0, len(src), INFERENCE_BATCH):
            xb = src.batch(slice(start, start + INFERENCE_BATCH))
            lo, em = net.forward_with_embedding(xb)
            if flip:
                lo2, em2 = net.forward_with_embedding(torch.flip(xb, dims=[3]))
                lo, em = (lo + lo2) / 2, (em + em2) / 2
            logits.append(lo)
            embs.append(em)
    return torch.cat(logits).numpy(), torch.cat(embs).numpy()


def run_variant(variant: str, threads: int) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    import prune_core as pc
    from prune_core.sweep import graph_purity
    from prune_core.training import BatchSource

    ds = pc.load_dataset(CIFAR)
    y_true = ds.y_train_clean
    y = y_true if variant == "ce_true_labels" else ds.y_train
    epochs = 60 if variant == "ce_60_epochs" else 30
    loss = variant if variant in ("mixup", "gce") else "ce"
    started = time.perf_counter()
    net, src, norm = _train(ds, y, epochs, loss)
    seconds = time.perf_counter() - started
    logits, emb = _embed(net, src, flip=variant == "ce_flip_tta")
    test_src = BatchSource(np.asarray(ds.x_test), ds.kind, norm, torch.device("cpu"))
    test_logits, _ = _embed(net, test_src, flip=variant == "ce_flip_tta")
    out = {"variant": variant, "epochs": epochs, "train_seconds": seconds, "threads": threads,
           "test_acc": float((test_logits.argmax(1) == np.asarray(ds.y_test)).mean()),
           "train_pred_acc_true": float((logits.argmax(1) == y_true).mean())}
    for k in (50, 10):
        graph, info = pc.build_graph(emb, k=k, tau="auto", return_info=True)
        out[f"purity_k{k}"] = graph_purity(graph, y_true)
        out[f"isolated_k{k}"] = info.isolated_fraction
        out[f"tau_k{k}"] = info.tau
    return out


def table(results: dict) -> str:
    lines = ["| variant | epochs | test acc | train predictions right vs truth | purity k 50 (tau auto) | "
             "purity k 10 | isolated k 50 | train s (threads) |", "|---|---|---|---|---|---|---|---|"]
    for v in VARIANTS:
        r = results.get(v)
        if r is None:
            continue
        lines.append(f"| {v} | {r['epochs']} | {r['test_acc']:.3f} | {r['train_pred_acc_true']:.3f} | "
                     f"{r['purity_k50']:.3f} | {r['purity_k10']:.3f} | {r['isolated_k50']:.3f} | "
                     f"{r['train_seconds']:.0f} ({r['threads']}) |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default=str(ROOT / "docs" / "purity_study.json"))
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--render-only", action="store_true")
    args = p.parse_args()
    path = Path(args.results)
    results = json.loads(path.read_text()) if path.exists() else {}
    todo = [v for v in args.variants.split(",") if v not in results]
    unknown = [v for v in todo if v not in VARIANTS]
    if unknown:
        print(f"unknown variant(s): {', '.join(unknown)}", file=sys.stderr)
        return 2
    if not args.render_only and todo:
        threads = max(1, 2 // args.jobs)
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            futures = {v: pool.submit(run_variant, v, threads) for v in todo}
            for v, fut in futures.items():
                results[v] = fut.result()
                path.write_text(json.dumps(results, indent=1))
                print(f"{v}: {results[v]}", flush=True)
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
