"""Benchmark: `select --engine ray` (prune_core.distributed) on a local Ray cluster against
the single-machine exact mode, on synthetic clustered embeddings.

For each N (default 1M and 4M, D = 128): the data is written once to a .npy file (the
"clustered" generator of bench/selection.py), then in fresh subprocesses
  1. ray:    ray.init on this machine (all its CPUs), `ray_select` with P partitions:
             wall time per stage, driver peak RSS, every Ray worker's peak RSS (VmHWM);
  2. single: `build_graph` + exact greedy in one process: wall time, peak RSS, F of its
             picks and F of the Ray picks ON THE SAME single-machine graph (the F ratio).
Both use k = 50, tau 'auto', keep ratio 0.5, search 'auto' (the blocked cell search).
Each finished (N, engine) row is kept in docs/distributed_bench.json, so a second invocation
continues where the first stopped (--force reruns). Then a projection to 100M examples
from the measured per-partition costs, stated as such.

Run: .venv/bin/python bench/distributed.py [--sizes 1M,4M] [--dim 128] [--partitions P]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

KEEP = 0.5
K = 50


def data_path(out: Path, n: int, d: int) -> Path:
    return out / f"clustered_{n}x{d}.npy"


def make_data(out: Path, n: int, d: int) -> Path:
    """Embeddings (.npy, written once) and confidences (.conf.npy) of the clustered generator."""
    path = data_path(out, n, d)
    if not path.exists():
        from selection import clustered  # bench/selection.py's generator

        x, conf = clustered(n, d, seed=0)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, x)
        np.save(path.with_suffix(".conf.npy"), conf)
        os.replace(tmp, path)
    return path


def _peak_rss_self() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _ray_worker_peaks() -> list[int]:
    """VmHWM (peak resident bytes) of every live Ray worker process on this machine."""
    peaks = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"default_worker.py" not in cmd and not cmd.startswith(b"ray::"):
                continue
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks.append(int(line.split()[1]) * 1024)
        except OSError:
            continue
    return sorted(peaks, reverse=True)


def run_ray(path: Path, partitions: int | None) -> dict:
    import ray

    from prune_core.distributed import ray_select

    conf = np.load(path.with_suffix(".conf.npy"))
    labels = np.zeros(conf.shape[0], dtype=np.int64)
    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    cpus = int(ray.cluster_resources().get("CPU", 1))

    @ray.remote
    def library_baseline():  # a worker's peak RSS with our modules imported, before any data
        import prune_core.distributed_tasks  # noqa: F401

        status = Path("/proc/self/status").read_text()
        return int(status.split("VmHWM:")[1].split()[0]) * 1024

    baseline = ray.get(library_baseline.remote())
    start = time.perf_counter()
    res = ray_select(str(path), None, labels, KEEP, conf=conf, k=K, tau="auto", partitions=partitions, seed=0,
                     mode="exact")  # the benchmark compares exact mode, whatever the library default
    wall = time.perf_counter() - start
    workers = _ray_worker_peaks()
    ray.shutdown()
    np.save(path.with_suffix(f".ray{res.info['partitions']}.picks.npy"), res.picks)
    return {"engine": "ray", "cpus": cpus, "wall_s": wall, "driver_peak_gib": _peak_rss_self() / 2**30,
            "worker_peaks_gib": [w / 2**30 for w in workers], "worker_baseline_gib": baseline / 2**30,
            "info": res.info}


def run_single(path: Path, ray_picks: Path | None) -> dict:
    from prune_core.graph import build_graph
    from prune_core.prune4rel import greedy_neighbourhood_confidence, objective

    x = np.load(path)
    conf = np.load(path.with_suffix(".conf.npy"))
    start = time.perf_counter()
    g, info = build_graph(x, k=K, tau="auto", return_info=True, seed=0)
    t_graph = time.perf_counter() - start
    del x
    budget = max(1, round(KEEP * conf.shape[0]))
    picks, gains, _, _ = greedy_neighbourhood_confidence(g, conf, budget, mode="exact")
    wall = time.perf_counter() - start
    out = {"engine": "single", "wall_s": wall, "graph_s": t_graph, "select_s": wall - t_graph,
           "peak_gib": _peak_rss_self() / 2**30, "F": objective(g, conf, picks), "tau": info.tau,
           "edges": info.edges}
    if ray_picks is not None and ray_picks.exists():
        out["F_ray_picks"] = objective(g, conf, np.load(ray_picks))
    return out


def subprocess_json(args: list[str], timeout: float) -> dict:
    r = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def load_avg() -> str:
    return "{:.1f}".format(os.getloadavg()[0])


def table(results: dict) -> str:
    lines = ["| N x D | engine | load | wall s | stages s | partitions (rows each) | replication | "
             "cross-partition entries | F / F single (same graph) | peak RSS GiB: driver / workers |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for key in sorted(results, key=lambda s: (int(s.split("x")[0]), s)):
        r = results[key]
        n, d = key.split(":")[0].split("x")
        s, ray_ = r.get("single"), r.get("ray")
        if s:
            lines.append(f"| {int(n):,} x {d} | single machine | {s['load']} | {s['wall_s']:.1f} | graph "
                         f"{s['graph_s']:.1f}, select {s['select_s']:.1f} | 1 | 1 | 0 | 1 | {s['peak_gib']:.2f} |")
        if ray_:
            i = ray_["info"]
            sec = i["seconds"]
            ratio = f"{s['F_ray_picks'] / s['F']:.5f}" if s and "F_ray_picks" in s else "n/a"
            stages = ", ".join(f"{k_} {v:.1f}" for k_, v in sec.items() if k_ != "total")
            workers = " / ".join(f"{w:.2f}" for w in ray_["worker_peaks_gib"][:4])
            workers += f" (libraries alone {ray_.get('worker_baseline_gib', float('nan')):.2f})"
            lines.append(f"| {int(n):,} x {d} | Ray, {ray_['cpus']} CPUs | {ray_['load']} | {ray_['wall_s']:.1f} | "
                         f"{stages} | {i['partitions']} ({', '.join(f'{p:,}' for p in i['partition_sizes'])}) | "
                         f"{i['replication']:.2f} | {i['cross_partition_entries']:,} | {ratio} | "
                         f"{ray_['driver_peak_gib']:.2f} / {workers} |")
    return "\n".join(lines)


def projection(results: dict, target_n: int = 100_000_000, nodes: int = 32, cpus_per_node: int = 16) -> str:
    """100M on `nodes` x `cpus_per_node` CPUs, from the largest measured Ray run's
    per-partition costs (stated as a projection, not a measurement)."""
    runs = [(int(k.split("x")[0]), r["ray"]) for k, r in results.items() if r.get("ray")]
    if not runs:
        return ""
    n, r = max(runs, key=lambda t: t[0])
    i, sec = r["info"], r["info"]["seconds"]
    p, cpus = i["partitions"], r["cpus"]
    rows = n / p
    waves = math.ceil(p / cpus)
    # Per-partition task cost at `rows` rows: a stage's wall time / waves of tasks.
    per_part = {k_: sec[k_] / waves for k_ in ("partition", "search", "graph", "round1")}
    p_target = math.ceil(target_n / rows)
    waves_target = math.ceil(p_target / (nodes * cpus_per_node))
    par = sum(per_part.values()) * waves_target
    # Round 2 is one task over the candidates' rows: it scales with N, not with the cluster.
    round2 = sec.get("round2", 0.0) * target_n / n
    return (f"Projection (not a measurement): {target_n:,} examples on {nodes} nodes x {cpus_per_node} CPUs "
            f"({nodes * cpus_per_node} CPUs), partitions of {rows:,.0f} rows as measured at N = {n:,} "
            f"(P = {p_target}, {waves_target} wave(s) of tasks): partitioned stages ~{par:.0f} s "
            f"(per partition: " + ", ".join(f"{k_} {v:.1f} s" for k_, v in per_part.items()) + f"), "
            f"plus round 2 ~{round2:.0f} s on one worker if it scales linearly from {sec.get('round2', 0):.1f} s "
            f"(it runs only when edges cross partitions and holds (1 + slack) x keep of the graph's rows), "
            f"plus reading {target_n * 128 * 4 / 2**30:.0f} GiB of 128-d float32 embeddings from shared storage.")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1M,4M")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--partitions", type=int, default=None, help="P (default: the engine's auto rule)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "distributed"), help="data cache (large files)")
    ap.add_argument("--results", default=str(ROOT / "docs" / "distributed_bench.json"),
                    help="finished rows (kept, committed: the resume point)")
    ap.add_argument("--force", action="store_true", help="rerun finished rows")
    ap.add_argument("--no-single", action="store_true", help="skip the single-machine reference")
    ap.add_argument("--one", nargs=3, metavar=("ENGINE", "PATH", "ARG"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        engine, path, extra = args.one
        if engine == "ray":
            res = run_ray(Path(path), None if extra == "auto" else int(extra))
        else:
            res = run_single(Path(path), None if extra == "none" else Path(extra))
        print(json.dumps(res))
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    store = Path(args.results)
    results = json.loads(store.read_text()) if store.exists() else {}
    from selection import parse_size  # bench/selection.py's size parser (10k, 1M)

    for n in map(parse_size, args.sizes.split(",")):
        key = f"{n}x{args.dim}:{args.partitions or 'auto'}"
        entry = results.setdefault(key, {})
        path = make_data(out, n, args.dim)
        if args.force or "ray" not in entry:
            load = load_avg()
            entry["ray"] = subprocess_json(["--one", "ray", str(path), str(args.partitions or "auto")], 7200)
            entry["ray"]["load"] = f"{load}-{load_avg()}"
            store.write_text(json.dumps(results, indent=1))
        if not args.no_single and (args.force or "single" not in entry):
            picks = path.with_suffix(f".ray{entry['ray']['info']['partitions']}.picks.npy")
            load = load_avg()
            entry["single"] = subprocess_json(["--one", "single", str(path), str(picks)], 7200)
            entry["single"]["load"] = f"{load}-{load_avg()}"
            store.write_text(json.dumps(results, indent=1))
        print(table(results), flush=True)
    print()
    print(table(results))
    print()
    print(projection(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
