"""Stage times, objective F and noise kept on digits with injected noise (one shared warm-up).

    .venv/bin/python bench/pipeline_digits.py [--noise sym:0.4] [--seed 0] [--tau auto]

Prints one row per (method, keep ratio): the noise rate kept, F of the kept subset (the same
graph, confidences and eta for every method), and the selection time; plus the time of each
pipeline stage. Prune4ReL in both modes against uniform sampling.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

import prune_core as pc  # noqa: E402
from prune_core.metrics import noise_rate  # noqa: E402
from prune_core.prune4rel import objective  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="digits")
    ap.add_argument("--noise", default="sym:0.4")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tau", default="auto")
    ap.add_argument("--eta", type=float, default=1.0)
    ap.add_argument("--ratios", default="0.2,0.5,0.8")
    args = ap.parse_args()
    tau = args.tau if args.tau == "auto" else float(args.tau)
    times = {}
    t = time.perf_counter()
    ds = pc.load_dataset(args.data)
    times["load"] = time.perf_counter() - t
    t = time.perf_counter()
    noisy = pc.apply_noise(ds, args.noise, seed=args.seed)
    times["noise"] = time.perf_counter() - t
    t = time.perf_counter()
    wu = pc.warmup(ds, noisy.y_noisy, seed=args.seed)
    times["warmup"] = time.perf_counter() - t
    t = time.perf_counter()
    g, info = pc.build_graph(wu.embeddings, k=50, tau=tau, return_info=True)
    times["graph"] = time.perf_counter() - t
    conf = pc.confidence(wu.probs)
    print(f"data {args.data}: N={ds.n_train}, noise {noisy.spec} (rate {noisy.noise_rate:.3f}), "
          f"warm-up {wu.model_name} {wu.epochs} epochs on {wu.device}, test acc {wu.test_acc:.3f}")
    print(f"graph: tau={info.tau:.4f} ({info.tau_requested}), mean degree {info.mean_degree:.1f}, "
          f"isolated {info.isolated_fraction:.1%}")
    print("stage seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in times.items()))
    print()
    print(f"{'method':20s} {'keep':>5s} {'noise kept':>10s} {'F':>9s} {'select s':>9s}")
    for ratio in [float(r) for r in args.ratios.split(",")]:
        for label, method, params in (("prune4rel exact", "prune4rel", {"mode": "exact"}),
                                      ("prune4rel official", "prune4rel", {"mode": "official"}),
                                      ("uniform", "uniform", {})):
            if method == "prune4rel":
                params = {**params, "eta": args.eta}
            sel = pc.select(method, keep_ratio=ratio, probs=wu.probs, labels=noisy.y_noisy, graph=g,
                            seed=args.seed, **params)
            f = objective(g, conf, sel.indices, args.eta)
            kept = noise_rate(noisy.y_noisy, noisy.y_clean, sel.indices)
            print(f"{label:20s} {ratio:5.2f} {kept:10.3f} {f:9.1f} {sel.seconds:9.3f}")


if __name__ == "__main__":
    main()
