"""Compile the numba kernels once, ahead of the first demo: ``python -m prune_core.warm_cache``.

numba compiles the Prune4ReL greedy, the graph kernels and umap-learn on first use (half a
minute or more on 2 cores) and keeps the machine code under ``NUMBA_CACHE_DIR``. This runs
the app's own job path (load + noise, a one-epoch warm-up, graph, every registered selection
method, the UMAP map) on the digits data in a throw-away run store, so every kernel the demo
and the Select page call is compiled with the argument types they will see (umap-learn's own
uncached kernels included, see `projection.import_umap`). scripts/setup.sh runs it once per
change of the requirements or of the modules holding numba code; afterwards the demo's first
UMAP map costs what a warm cache costs.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from .projection import default_numba_cache_dir


def warm_numba_cache(log=print) -> dict:
    """Run the demo's job path once on digits; returns {stage: seconds, "cache_dir": path}."""
    cache_dir = default_numba_cache_dir()
    from . import jobs as J
    from .artifacts import load_map
    from .job_engine import run_task
    from .runstore import RunStore
    from .selection import list_methods

    times: dict = {"cache_dir": cache_dir}
    with tempfile.TemporaryDirectory(prefix="prune4rel-warm-cache-") as tmp:
        store = RunStore(Path(tmp))
        rid = store.create_run({"data": "digits", "noise": "sym:0.4"}, name="warm cache")
        t = time.perf_counter()
        run_task(store, rid, J.task_load, data="digits", noise="sym:0.4", seed=0)
        run_task(store, rid, J.task_warmup, epochs=1, seed=0)
        times["load_warmup_s"] = time.perf_counter() - t
        for method in list_methods():
            t = time.perf_counter()
            run_task(store, rid, J.task_select, method=method, tau="auto", seed=0)
            times[f"select_{method}_s"] = time.perf_counter() - t
        t = time.perf_counter()
        run_task(store, rid, J.task_select, method="prune4rel", params={"mode": "exact"}, tau="auto", seed=0)
        times["select_prune4rel_exact_s"] = time.perf_counter() - t  # the default is official
        t = time.perf_counter()
        run_task(store, rid, J.task_maps, seed=0)
        times["umap_s"] = time.perf_counter() - t
        method = (load_map(store, rid, "umap") or (None, {}))[1].get("method")
        if method != "umap":
            raise RuntimeError(f"UMAP did not run while warming the cache (map method: {method})")
    return times


def main() -> int:
    t = time.perf_counter()
    times = warm_numba_cache()
    slowest = sorted(((v, k) for k, v in times.items() if k.endswith("_s")), reverse=True)[:3]
    print(f"[warm_cache] numba kernels compiled into {times['cache_dir']} in {time.perf_counter() - t:.1f} s "
          f"(slowest: {', '.join(f'{k[:-2]} {v:.1f} s' for v, k in slowest)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
