"""Training speed and quality of the warm-up networks on CPU, against a plain PyTorch loop.

    .venv/bin/python bench/training.py                   # everything not measured yet (resumable)
    .venv/bin/python bench/training.py --only throughput # just the images/s table (a few minutes)
    .venv/bin/python bench/training.py --redo            # measure everything again

For each model and input (32x32 RGB from the CIFAR-10N dev set, 16x16 grey from USPS) it
prints, in one table:

- training images/s of `prune_core`'s loop (batched tensor augmentation, channels_last,
  forward + backward + SGD step) against a plain PyTorch loop over the SAME model (per-image
  torchvision transforms in a DataLoader, contiguous NCHW tensors): the reference measured in
  the same run, so the ratio holds on a busy machine;
- the warm-up at its default epochs (`prune_core.warmup`, CE on the given labels): wall time,
  test accuracy, and the purity of the kNN graph of its embeddings (share of edges joining two
  examples of the same TRUE class; k = 50, tau auto);
- a from-scratch SOP+ learner on a uniform 20% subset (the sweep's default protocol): wall
  time and re-labeling accuracy over all training examples.

Each finished measurement is kept in `--results` (JSON, default docs/training_bench.json) and
skipped next time, so the slow ones (ResNet-18 trains at single-digit images/s here) can be
spread over invocations. Timings use `--threads` torch threads (default 2, the machine's
cores); absolute numbers vary with the machine's load, ratios measured side by side much less.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CIFAR = "npz:../shared/datasets/cifar10n_dev/cifar10n_dev.npz"
USPS = "npz:../shared/datasets/usps/usps.npz"
USPS_NOISE = "sym:0.4"
# (input, model) pairs measured; resnet18 is the network `auto` picked on CPU before resnet20.
CONFIGS = [
    ("cifar10n_dev", "resnet18"),
    ("cifar10n_dev", "resnet20"),
    ("cifar10n_dev", "small_cnn"),
    ("usps", "small_cnn"),
    ("usps", "resnet20"),
]


def load(name: str):
    import prune_core as pc

    if name == "cifar10n_dev":
        ds = pc.load_dataset(CIFAR)
        return ds, ds.y_train  # y_train holds the CIFAR-10N "worst" human labels (39.9% wrong)
    ds = pc.load_dataset(USPS)
    return ds, pc.inject_noise(ds.y_train, "sym", 0.4, num_classes=ds.num_classes, seed=0)


def throughput(ds, y, model_name: str, steps: int, batch: int = 128) -> dict:
    """images/s of prune_core's training step and of a plain PyTorch loop, same model and batch."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    import torchvision.transforms as T

    from prune_core.models import build_model, compute_normalization, to_device
    from prune_core.training import BatchSource, augment_batch, epoch_batches

    kind = ds.kind
    shape = ds.x_train.shape[1:]

    def fresh():
        torch.manual_seed(0)
        return build_model(model_name, kind, shape, ds.num_classes)

    def timed(step_fn, n):
        step_fn()  # one untimed step: allocations, oneDNN primitive caches
        t = time.perf_counter()
        for _ in range(n):
            step_fn()
        return batch * n / (time.perf_counter() - t)

    # prune_core: uint8 source, batched normalisation + augmentation, channels_last.
    norm = compute_normalization(ds.x_train, kind)
    src = BatchSource(ds.x_train, kind, norm, torch.device("cpu"))
    net = to_device(fresh(), "cpu")
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(0)
    yt = torch.from_numpy(np.asarray(y))
    batches = iter([])

    def ours():
        nonlocal batches
        idx = next(batches, None)
        if idx is None or len(idx) < batch:
            batches = iter(epoch_batches(len(src), batch, gen))
            idx = next(batches)
        loss = F.cross_entropy(net(augment_batch(src.batch(idx), kind, gen)), yt[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    ours_ips = timed(ours, steps)

    # Reference: the textbook loop: PIL-free per-image transforms in a DataLoader, NCHW.
    mean, std = norm.mean.tolist(), norm.std.tolist()
    pad = 4 if kind == "rgb" else 1
    tfs = [T.ToTensor(), T.Normalize(mean, std), T.RandomCrop(shape[0], padding=pad)]
    if kind == "rgb":
        tfs.append(T.RandomHorizontalFlip())
    transform = T.Compose(tfs)

    class Data(torch.utils.data.Dataset):
        def __len__(self):
            return len(ds.x_train)

        def __getitem__(self, i):
            return transform(ds.x_train[i]), int(y[i])

    loader = torch.utils.data.DataLoader(Data(), batch_size=batch, shuffle=True, drop_last=True, num_workers=0)
    ref_net = fresh()
    ref_opt = torch.optim.SGD(ref_net.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    it = iter(loader)

    def reference():
        nonlocal it
        try:
            xb, yb = next(it)
        except StopIteration:
            it = iter(loader)
            xb, yb = next(it)
        loss = F.cross_entropy(ref_net(xb), yb)
        ref_opt.zero_grad(set_to_none=True)
        loss.backward()
        ref_opt.step()

    ref_ips = timed(reference, steps)
    return {"ours_img_s": ours_ips, "reference_img_s": ref_ips, "speedup_vs_reference": ours_ips / ref_ips,
            "steps": steps, "batch": batch}


def warmup_quality(ds, y, model_name: str) -> dict:
    """The default warm-up: wall time, test accuracy, graph purity of its embeddings."""
    import prune_core as pc
    from prune_core.sweep import graph_purity

    wu = pc.warmup(ds, y, model=model_name, device="cpu", seed=0)
    graph, info = pc.build_graph(wu.embeddings, k=50, tau="auto", return_info=True)
    yc = ds.y_train_clean if ds.y_train_clean is not None else ds.y_train
    return {"warmup_seconds": wu.seconds, "warmup_epochs": wu.epochs, "warmup_test_acc": wu.test_acc,
            "graph_purity": graph_purity(graph, yc), "graph_isolated_fraction": info.isolated_fraction,
            "warmup_train_acc_true": float((wu.probs.argmax(1) == yc).mean())}


def learner_run(ds, y, model_name: str, ratio: float = 0.2) -> dict:
    """From-scratch SOP+ on a uniform `ratio` subset, default learner hyper-parameters."""
    import numpy as np

    from prune_core.learners import fit_learner, get_learner

    yc = ds.y_train_clean if ds.y_train_clean is not None else ds.y_train
    subset = np.sort(np.random.default_rng(0).permutation(len(y))[: round(ratio * len(y))])
    res = fit_learner("sop", ds.x_train, y, subset, num_classes=ds.num_classes, x_test=ds.x_test, y_test=ds.y_test,
                      input="from-scratch", model=model_name, device="cpu", seed=0)
    return {"sop_seconds": res.seconds, "sop_epochs": res.params["epochs"], "sop_keep": ratio,
            "sop_relabel_acc_all": float((res.labels_all == yc).mean()), "sop_test_acc": res.test_acc,
            "given_acc_all": float((np.asarray(y) == yc).mean()),
            "sop_lr": get_learner("sop").params("from-scratch")["lr"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--only", choices=["throughput", "warmup", "learner"], default=None)
    p.add_argument("--models", default=None, help="comma-separated models to measure (default: all in CONFIGS)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=12, help="timed training steps per loop (resnet18: a third)")
    p.add_argument("--redo", action="store_true", help="measure the chosen parts again even if --results has them")
    p.add_argument("--results", default=str(ROOT / "docs" / "training_bench.json"))
    args = p.parse_args(argv)
    os.chdir(ROOT)
    for path in (CIFAR, USPS):
        if not Path(path[4:]).exists():
            print(f"skipped: {path[4:]} not found (../shared/datasets/)", file=sys.stderr)
            return 0
    import torch

    torch.set_num_threads(args.threads)
    results_path = Path(args.results)
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    models = set(args.models.split(",")) if args.models else None
    parts = [args.only] if args.only else ["throughput", "warmup", "learner"]
    cache = {}
    for data, model in CONFIGS:
        if models and model not in models:
            continue
        key = f"{data}/{model}"
        entry = results.setdefault(key, {})
        for part in parts:
            if part in entry and not args.redo:
                continue
            if data not in cache:
                cache[data] = load(data)
            ds, y = cache[data]
            t = time.perf_counter()
            if part == "throughput":
                steps = max(2, args.steps // 3) if model == "resnet18" else args.steps
                entry[part] = throughput(ds, y, model, steps)
            elif part == "warmup":
                entry[part] = warmup_quality(ds, y, model)
            else:
                entry[part] = learner_run(ds, y, model)
            entry[part]["measured"] = time.strftime("%Y-%m-%d %H:%M")
            entry[part]["load_avg_1min"] = os.getloadavg()[0]
            print(f"[training] {key} {part}: {json.dumps(entry[part])} ({time.perf_counter() - t:.0f} s)",
                  file=sys.stderr, flush=True)
            from prune_core.pipeline import atomic_write_json

            atomic_write_json(results_path, results)
    print(table(results, args.threads))
    return 0


def table(results: dict, threads: int) -> str:
    def g(entry, part, key, fmt):
        v = (entry.get(part) or {}).get(key)
        return "–" if v is None else fmt.format(v)

    base = (results.get("cifar10n_dev/resnet18") or {}).get("throughput", {}).get("ours_img_s")
    lines = [f"CPU: {platform.machine()}, {os.cpu_count()} cores, torch threads {threads}", "",
             "| input | model | ours img/s | plain loop img/s | ours / plain | ours / resnet18 (RGB) | warm-up s "
             "(epochs) | warm-up test acc | graph purity | SOP+ keep 20%: s | SOP+ re-labeling acc (given) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, entry in results.items():
        data, model = key.split("/")
        ips = (entry.get("throughput") or {}).get("ours_img_s")
        rel = "–" if not (ips and base and data == "cifar10n_dev") else f"{ips / base:.1f}x"
        wu = entry.get("warmup") or {}
        ln = entry.get("learner") or {}
        lines.append(
            f"| {data} | {model} | {g(entry, 'throughput', 'ours_img_s', '{:.0f}')} | "
            f"{g(entry, 'throughput', 'reference_img_s', '{:.0f}')} | "
            f"{g(entry, 'throughput', 'speedup_vs_reference', '{:.2f}x')} | {rel} | "
            + ("–" if not wu else f"{wu['warmup_seconds']:.0f} ({wu['warmup_epochs']})") + " | "
            f"{g(entry, 'warmup', 'warmup_test_acc', '{:.3f}')} | {g(entry, 'warmup', 'graph_purity', '{:.3f}')} | "
            + ("–" if not ln else f"{ln['sop_seconds']:.0f} ({ln['sop_epochs']} ep)") + " | "
            + ("–" if not ln else f"{ln['sop_relabel_acc_all']:.3f} ({ln['given_acc_all']:.3f})") + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
