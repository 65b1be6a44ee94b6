"""Demo click -> first map (PCA) and -> UMAP map, in a real browser, against the library path.

    .venv/bin/python bench/app_demo.py [--repeats 2] [--cache warm,cold] [--busy 0]

For each numba cache state ("warm": a cache filled the way scripts/setup.sh fills it on a fresh
clone, timed once; "cold": an empty cache, kernels compile on first use) and each repeat, it:

  1. starts `streamlit run app.py` headless with an empty run store, opens the home page in
     Debian's chromium (Playwright), clicks "Run the demo" and times the click until the
     first map is drawn, and until the map's title says UMAP;
  2. as the reference, in the same run, times the same stages through the library alone
     (`prune_core.job_engine.run_task`: load + noise, warm-up + PCA, graph + ranking, UMAP) in a
     fresh Python process with the same cache state, imports included.

It prints one row per try, the medians, and the ratio browser / library (what the app's
server, browser and polling add). `--busy N` runs N busy-looping processes meanwhile, to
see the app on a machine whose cores are shared.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # run from anywhere

from _fresh import busy_processes, run_fresh  # noqa: E402
from browser_kit import CHROMIUM, FIRST_PLOT_TITLE_JS, app_server, browser_page  # noqa: E402

LIBRARY_PATH = r"""
import json, sys, tempfile, time
t0 = time.perf_counter()
from prune_core import jobs as J
from prune_core.job_engine import run_task
from prune_core.runstore import RunStore
out = {"import_s": time.perf_counter() - t0}
store = RunStore(tempfile.mkdtemp())
rid = store.create_run({"data": "digits", "noise": "sym:0.4"}, name="bench")
t = time.perf_counter()
run_task(store, rid, J.task_load, data="digits", noise="sym:0.4", seed=0)
run_task(store, rid, J.task_warmup, seed=0)             # saves the PCA map too
out["to_pca_s"] = time.perf_counter() - t
run_task(store, rid, J.task_select, method="prune4rel", tau="auto", seed=0)
out["to_ranking_s"] = time.perf_counter() - t
run_task(store, rid, J.task_maps, seed=0)
out["to_umap_s"] = time.perf_counter() - t
print(json.dumps(out))
"""


def library_try(cache_dir: str) -> dict:
    return run_fresh(LIBRARY_PATH, {"NUMBA_CACHE_DIR": cache_dir}, timeout=900)


def browser_try(cache_dir: str, log_dir: Path) -> dict:
    from playwright.sync_api import sync_playwright

    workspace = Path(tempfile.mkdtemp(prefix="prune4rel-bench-"))
    with app_server(workspace, log_dir / "streamlit.log", {"NUMBA_CACHE_DIR": cache_dir}) as url, \
            sync_playwright() as p, browser_page(p) as page:
        page.goto(url)
        button = page.get_by_role("button", name="Run the demo")
        button.wait_for()
        button.click()
        started = time.time()
        page.locator(".js-plotly-plot").first.wait_for(state="visible", timeout=600_000)
        first = time.time() - started
        first_title = page.evaluate(FIRST_PLOT_TITLE_JS)
        page.wait_for_function(f"() => ({FIRST_PLOT_TITLE_JS})().startsWith('UMAP map')", timeout=900_000)
        umap = time.time() - started
    # When the job saved each map (same clock): the rest of the time is polling and drawing.
    from prune_core.runstore import RunStore

    store = RunStore(workspace)
    run_id = store.list_runs()[0]["id"]
    saved = {name: store.load_bundle(run_id, f"maps/{name}").info["saved"] - started for name in ("pca", "umap")}
    return {"first_map_s": first, "first_map_kind": first_title.split(" ")[0], "umap_map_s": umap,
            "pca_saved_s": saved["pca"], "umap_saved_s": saved["umap"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--cache", default="warm,cold", help="comma list of numba cache states: warm, cold")
    ap.add_argument("--busy", type=int, default=0, help="busy-looping processes running meanwhile")
    args = ap.parse_args()
    if not os.path.exists(CHROMIUM):
        sys.exit("Debian's chromium is missing: run `bash scripts/test.sh` once (it installs it)")
    warm_dir, setup_s = None, None
    if "warm" in args.cache:
        # What scripts/setup.sh does once on a fresh clone: fill an empty cache ahead of use.
        warm_dir = tempfile.mkdtemp(prefix="numba-setup-")
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "prune_core.warm_cache"], check=True, cwd=ROOT,
                       env={**os.environ, "NUMBA_CACHE_DIR": warm_dir, "PYTHONPATH": str(ROOT)})
        setup_s = time.perf_counter() - t
    rows = []
    with busy_processes(args.busy):
        for state in args.cache.split(","):
            for r in range(args.repeats):
                for where in ("library", "browser"):
                    cache = warm_dir if state == "warm" else tempfile.mkdtemp(prefix="numba-cold-")
                    t = time.perf_counter()
                    got = library_try(cache) if where == "library" else browser_try(cache, ROOT / "tests" / "artifacts")
                    row = {"cache": state, "try": r + 1, "path": where, **got, "wall_s": time.perf_counter() - t}
                    rows.append(row)
                    print(json.dumps({k: (round(v, 1) if isinstance(v, float) else v) for k, v in row.items()}),
                          flush=True)

    print(f"\ncpu cores: {os.cpu_count()}, busy processes: {args.busy}, load avg at end: "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    if setup_s is not None:
        print(f"filling an empty numba cache (setup's `python -m prune_core.warm_cache`, once): {setup_s:.1f} s")
    print("| numba cache | path | to first map s (median) | to UMAP map s (median) | first map |")
    print("|---|---|---|---|---|")
    summary = {}
    for state in args.cache.split(","):
        lib = [r for r in rows if r["cache"] == state and r["path"] == "library"]
        web = [r for r in rows if r["cache"] == state and r["path"] == "browser"]
        lib_first = statistics.median(r["import_s"] + r["to_pca_s"] for r in lib)
        lib_umap = statistics.median(r["import_s"] + r["to_umap_s"] for r in lib)
        web_first = statistics.median(r["first_map_s"] for r in web)
        web_umap = statistics.median(r["umap_map_s"] for r in web)
        summary[state] = (lib_first, lib_umap, web_first, web_umap)
        print(f"| {state} | library (imports + stages) | {lib_first:.1f} | {lib_umap:.1f} | PCA |")
        print(f"| {state} | browser (click to drawn) | {web_first:.1f} | {web_umap:.1f} | "
              f"{'/'.join(sorted({r['first_map_kind'] for r in web}))} |")
    for state, (lf, lu, wf, wu) in summary.items():
        print(f"{state}: browser / library = {wf / lf:.2f}x to the first map, {wu / lu:.2f}x to UMAP; "
              f"target first map < 60 s: {'met' if wf < 60 else 'NOT met'}")


if __name__ == "__main__":
    main()
