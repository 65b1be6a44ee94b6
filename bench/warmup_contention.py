"""The digits warm-up with OpenMP threads spinning (ACTIVE) or sleeping (PASSIVE) while they wait.

    .venv/bin/python bench/warmup_contention.py [--repeats 3] [--busy 0,2]

Each try is a fresh process (OpenMP reads OMP_WAIT_POLICY when torch loads it) that times
`prune_core.warmup` on digits with 40% symmetric noise, seed 0, default settings, while
`--busy` other processes keep the cores busy. prune_core sets PASSIVE unless the variable
is set; ACTIVE is what torch does by default. Prints every try, then min / median / max per
setting and the ratio ACTIVE / PASSIVE of the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run from anywhere

from _fresh import busy_processes, run_fresh  # noqa: E402

ONE_WARMUP = """
import json, time
import prune_core as pc
import torch
ds = pc.load_dataset("digits")
y = pc.inject_noise(ds.y_train, "sym", 0.4, num_classes=ds.num_classes, seed=0)
t = time.perf_counter()
wu = pc.warmup(ds, y, seed=0)
print(json.dumps({"seconds": time.perf_counter() - t, "test_acc": wu.test_acc, "threads": torch.get_num_threads()}))
"""


def one_try(policy: str) -> dict:
    return run_fresh(ONE_WARMUP, {"OMP_WAIT_POLICY": policy}, timeout=1200)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--busy", default="0,2", help="comma list: busy-looping processes running meanwhile")
    args = ap.parse_args()
    results = {}
    for busy in [int(b) for b in args.busy.split(",")]:
        with busy_processes(busy):
            for r in range(args.repeats):
                for policy in ("PASSIVE", "ACTIVE"):
                    got = one_try(policy)
                    results.setdefault((busy, policy), []).append(got["seconds"])
                    print(json.dumps({"busy": busy, "policy": policy, "try": r + 1,
                                      **{k: round(v, 3) for k, v in got.items()}}), flush=True)
    print(f"\ncpu cores: {os.cpu_count()}")
    print("| busy processes | OMP_WAIT_POLICY | warm-up s min / median / max |")
    print("|---|---|---|")
    for (busy, policy), secs in results.items():
        print(f"| {busy} | {policy} | {min(secs):.1f} / {statistics.median(secs):.1f} / {max(secs):.1f} |")
    for busy in sorted({b for b, _ in results}):
        a, p = results.get((busy, "ACTIVE")), results.get((busy, "PASSIVE"))
        if a and p:
            print(f"busy {busy}: ACTIVE / PASSIVE median = {statistics.median(a) / statistics.median(p):.2f}x")


if __name__ == "__main__":
    main()
