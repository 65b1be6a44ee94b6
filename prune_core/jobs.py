"""The stage tasks of a run: load, warm-up, maps, graph, selection, demo and sweep.

Each task is a plain function ``task(ctx, **params)`` taking a `job_engine.JobContext`: it
reads its inputs from the run store (`artifacts`), calls the library and saves its results
as bundles. Tasks run as background jobs of a `job_engine.JobManager`, or synchronously with
`job_engine.run_task` (tests, scripts). They do not import Streamlit.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import time
from types import SimpleNamespace
from typing import Callable

import numpy as np

from .artifacts import (DERIVED_PREFIXES, MODEL_OUTPUTS, current_bundle, is_model_outputs, load_data, load_graph,
                        load_warmup, save_data, save_knn_lists)
from .errors import Cancelled, InputError, check_cancel
from .job_engine import JobContext, JobManager, error_message, params_key
from .runstore import RunStore, save_sparse


# --------------------------------------------------------------------------- making a run


def save_model_outputs(store: RunStore, run_id: str, outputs, images=None, seed: int = 0) -> None:
    """Make a run from model outputs: no warm-up, every selection page works on them.

    outputs: an `outputs.ModelOutputs` (probs (N, C), embeddings (N, D), labels (N,),
    optional labels_clean (N,)). images: optional (N, H, W) or (N, H, W, 3) uint8 images in
    the same order, shown as thumbnails; without them the examples are the embeddings.

    The examples and labels are written as an npz file under the store's uploads/ (so the
    run's data SPEC loads like any other, e.g. for the Sweep) and saved as the 'data' bundle
    with noise "none" (the given labels); probs and embeddings become the 'warmup' bundle
    with info source "model outputs" and no model; the PCA map follows.
    """
    import uuid

    from .data import load_dataset
    from .noise import apply_noise
    from .outputs import outputs_dataset

    ds = outputs_dataset(outputs, images)
    arrays = {"x_train": ds.x_train, "y_train": ds.y_train, "class_names": np.asarray(ds.class_names),
              # An explicit empty test split: the loader then holds nothing out (rows stay 1:1 with probs).
              "x_test": ds.x_train[:0], "y_test": ds.y_train[:0]}
    if ds.y_train_clean is not None:
        arrays["y_train_clean"] = ds.y_train_clean
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    raw = buf.getvalue()
    path = store.root / "uploads" / f"outputs-{hashlib.sha256(raw).hexdigest()[:16]}.npz"
    if not path.exists():
        from .runstore import atomic_write_bytes

        atomic_write_bytes(path, raw)
    ds = load_dataset(f"npz:{path}")
    save_data(store, run_id, ds, apply_noise(ds, "none"), seed)
    info = {"id": uuid.uuid4().hex[:12], "source": MODEL_OUTPUTS, "model_name": MODEL_OUTPUTS, "device": None,
            "epochs": 0, "seconds": 0.0, "test_acc": None, "history": [], "kind": ds.kind,
            "config": {"source": MODEL_OUTPUTS, "files": dict(outputs.sources or {}), "images": images is not None},
            "requested": {"seed": int(seed)}}
    store.save_bundle(run_id, "warmup", {"probs": np.asarray(outputs.probs, np.float32),
                                         "embeddings": outputs.embeddings}, info)
    task_pca(JobContext(None, store, None, run_id))


def task_load(ctx: JobContext, data: str = "digits", noise: str = "sym:0.4", seed: int = 0,
              download: bool = False) -> None:
    """Load a dataset SPEC, apply a NOISE spec, save the 'data' bundle."""
    from .data import load_dataset
    from .noise import apply_noise

    ctx.progress(0.0, f"loading {data}")
    ds = load_dataset(data, download=download)
    ctx.check()
    noisy = apply_noise(ds, noise, seed=seed)
    save_data(ctx.store, ctx.run_id, ds, noisy, seed)
    ctx.progress(1.0, f"loaded {ds.n_train} training examples, noise {noisy.spec}")


def task_warmup(ctx: JobContext, epochs: int | None = None, model: str = "auto", lr: float | None = None,
                batch_size: int | None = None, device: str = "auto", seed: int = 0, embed_pass: str = "eval",
                lo: float = 0.0, hi: float = 1.0) -> None:
    """Warm up on the run's noisy labels; save 'warmup' and the instant PCA map.

    Derived results of the previous warm-up (graphs, selections, maps) are removed once the
    new warm-up is saved; until then they stay as they were (a failed warm-up keeps them).
    """
    import uuid

    from .training import warmup

    data = load_data(ctx.store, ctx.run_id)
    if data is None:
        raise InputError("this run has no data yet: load a dataset first")
    if is_model_outputs(load_warmup(ctx.store, ctx.run_id)):
        raise InputError("this run holds model outputs, not a model to train: load a dataset for a warm-up")
    ctx.progress(lo, "warm-up starting")
    report = ctx.stage(lo, lo + 0.97 * (hi - lo), "")

    def progress(fraction, message, metrics):
        if metrics and metrics.get("phase") == "epoch":
            ctx.record({k: metrics.get(k) for k in ("epoch", "train_loss", "train_acc", "test_acc", "lr", "seconds")})
        report(fraction, message)

    # Writable in-memory copies: the stored arrays are memory-mapped read-only.
    ds = dataclasses.replace(data.ds, x_train=np.array(data.ds.x_train),
                             x_test=None if data.ds.x_test is None else np.array(data.ds.x_test))
    wu = warmup(ds, data.y_noisy, epochs=epochs, model=model, lr=lr, batch_size=batch_size,
                device=device, seed=seed, progress=progress, cancel=ctx.cancel, embed_pass=embed_pass)
    ctx.check()
    warmup_id = uuid.uuid4().hex[:12]
    info = {"id": warmup_id, "history": wu.history, "device": wu.device, "model_name": wu.model_name,
            "epochs": wu.epochs, "seconds": wu.seconds, "test_acc": wu.test_acc, "config": wu.config,
            "kind": wu.kind, "requested": {"epochs": epochs, "model": model, "lr": lr, "batch_size": batch_size,
                                           "device": device, "seed": seed, "embed_pass": embed_pass}}
    ctx.store.save_bundle(ctx.run_id, "warmup", wu.to_arrays(), info)
    for prefix in DERIVED_PREFIXES:
        ctx.store.delete_bundle(ctx.run_id, prefix)
    task_pca(ctx)
    ctx.progress(hi, f"warm-up done on {wu.device} in {wu.seconds:.1f} s (test acc {wu.test_acc or 0:.3f})")


def task_pca(ctx: JobContext) -> None:
    """The instant PCA map of the current embeddings ('maps/pca')."""
    from .projection import pca_2d

    wu = load_warmup(ctx.store, ctx.run_id)
    if wu is None:
        raise InputError("no warm-up yet: run the warm-up first")
    t = time.perf_counter()
    coords = pca_2d(wu.embeddings)
    ctx.store.save_bundle(ctx.run_id, "maps/pca", {"coords": coords},
                          {"method": "pca", "seconds": time.perf_counter() - t, "warmup_id": wu.id})


# --------------------------------------------------------------------------- neighbour graph and selection


def ensure_graph(ctx: JobContext, k: int | None = None, tau="auto", search: str = "auto", seed: int = 0,
                 progress: Callable | None = None):
    """(graph, info, key): the stored graph for (k, tau) of the current warm-up, built if missing."""
    from .graph import build_graph

    wu = load_warmup(ctx.store, ctx.run_id)
    if wu is None:
        raise InputError("no warm-up yet: run the warm-up first")
    n = wu.embeddings.shape[0]
    k = int(k) if k else min(50, n - 1)
    key = graph_key(k, tau)
    got = load_graph(ctx.store, ctx.run_id, key)
    if got is not None:
        return got[0], got[1], key
    ids = cos = None
    try:
        from .graph import build_graph_with_knn
    except ImportError:  # an older graph module: no kNN lists to keep
        graph, ginfo = build_graph(wu.embeddings, k=k, tau=tau, search=search, seed=seed, return_info=True,
                                   progress=progress, cancel=ctx.cancel)
    else:
        graph, ginfo, ids, cos = build_graph_with_knn(wu.embeddings, k=k, tau=tau, search=search, seed=seed,
                                                      progress=progress, cancel=ctx.cancel)
    info = {**ginfo.to_dict(), "warmup_id": wu.id, "key": key}
    ctx.store.save_bundle(ctx.run_id, f"graphs/{key}", save_sparse("graph", graph), info)
    if ids is not None and current_bundle(ctx.store, ctx.run_id, "knn") is None:
        save_knn_lists(ctx.store, ctx.run_id, ids, cos, wu.id, source=f"graph {key} ({ginfo.search})")
    return graph, info, key


def task_graph(ctx: JobContext, k: int | None = None, tau="auto", search: str = "auto", seed: int = 0) -> None:
    ctx.progress(0.0, "building the neighbour graph")
    _, info, key = ensure_graph(ctx, k, tau, search, seed, ctx.stage(0.0, 1.0, "graph: "))
    ctx.progress(1.0, f"graph {key}: tau {info['tau']:.4f}, median degree {info['median_degree']:.0f}")


def graph_key(k: int | None, tau) -> str:
    tau_text = "auto" if str(tau).strip().lower() == "auto" else f"{float(tau):.6g}"
    return f"k{k}_tau{tau_text}"


def method_params(method: str, params: dict | None) -> dict:
    """The parameters `method` takes, from `params` (unknown ones dropped, 'k' left to the graph)."""
    from .selection import get_method

    info = get_method(method)
    params = dict(params or {})
    out = {"balance": params.get("balance", info.default_balance)}
    for name, default in info.defaults.items():
        if name == "k":
            continue
        out[name] = params.get(name, default)
    return out


def selection_key(method: str, params: dict, graph: str, seed: int, keep_ratio: float | None) -> str:
    """Key of a stored ranking. Nested methods are stored once at keep ratio 1 (keep_ratio None)."""
    return f"{method}-" + params_key({"method": method, "params": params, "graph": graph, "seed": int(seed),
                                      "keep_ratio": None if keep_ratio is None else round(float(keep_ratio), 6)})


def plan_selection(method: str, params: dict | None = None, keep_ratio: float = 1.0, k: int | None = None,
                   tau="auto", seed: int = 0, n: int | None = None) -> dict:
    """Where a selection is (or will be) stored: {key, method, params, graph, nested, keep_ratio}.

    Nested methods rank everything once (keep ratio 1) and every smaller ratio is a prefix;
    other methods are stored per keep ratio. k None: 50, or N-1 on tiny data.
    """
    from .graph import parse_tau
    from .selection import budget_for, get_method

    info = get_method(method)
    budget_for(keep_ratio, n or 1)  # InputError for ratios outside (0, 1]
    tau_value, _ = parse_tau(tau)
    tau = "auto" if tau_value is None else tau_value
    if k is None and n is not None:
        k = min(50, n - 1)
    p = method_params(method, params)
    if "tau" in p:
        p["tau"] = tau
    gkey = graph_key(k, tau)
    stored_ratio = None if info.nested else float(keep_ratio)
    return {"key": selection_key(method, p, gkey, seed, stored_ratio), "method": method, "params": p,
            "graph": gkey, "k": k, "tau": tau, "seed": int(seed), "nested": bool(info.nested),
            "keep_ratio": 1.0 if info.nested else float(keep_ratio)}


def task_select(ctx: JobContext, method: str = "prune4rel", params: dict | None = None, keep_ratio: float = 1.0,
                k: int | None = None, tau="auto", seed: int = 0, lo: float = 0.0, hi: float = 1.0) -> str:
    """Rank with a registered method and save 'selections/<key>'; returns the key.

    Nested methods are ranked at keep ratio 1 (the app slices prefixes); others at keep_ratio.
    The neighbour graph for (k, tau) is built first when missing (prune4rel uses it, and the
    app uses it for C(x; S) of every method).
    """
    from .selection import select

    data = load_data(ctx.store, ctx.run_id)
    wu = load_warmup(ctx.store, ctx.run_id)
    if data is None or wu is None:
        raise InputError("this run has no warm-up yet: run the warm-up first")
    if is_model_outputs(wu):
        from .outputs import check_method_for_outputs

        check_method_for_outputs(method, params)
    n = wu.probs.shape[0]
    plan = plan_selection(method, params, keep_ratio, k, tau, seed, n)
    ctx.progress(lo, "neighbour graph")
    graph, ginfo, gkey = ensure_graph(ctx, plan["k"], plan["tau"], seed=seed,
                                      progress=ctx.stage(lo, lo + 0.3 * (hi - lo), "graph: "))
    ctx.progress(lo + 0.3 * (hi - lo), f"selecting with {method}")
    sel = select(method, keep_ratio=plan["keep_ratio"], probs=wu.probs, embeddings=wu.embeddings,
                 labels=data.y_noisy, graph=graph, losses=wu.losses, forgetting=wu.forgetting,
                 num_classes=data.ds.num_classes, seed=seed,
                 progress=ctx.stage(lo + 0.3 * (hi - lo), hi, f"{method}: "), cancel=ctx.cancel, **plan["params"])
    ctx.check()
    info = {"method": method, "params": sel.params, "plan_params": plan["params"], "keep_ratio": sel.keep_ratio,
            "n": sel.n, "budget": sel.budget, "nested": sel.nested, "objective": sel.objective,
            "seconds": sel.seconds, "graph": gkey, "graph_tau": ginfo["tau"], "seed": int(seed),
            "warmup_id": wu.id, "key": plan["key"]}
    ctx.store.save_bundle(ctx.run_id, f"selections/{plan['key']}",
                          {"indices": sel.indices, "gains": sel.gains, "scores": sel.scores}, info)
    ctx.progress(hi, f"{method}: ranked {sel.budget} examples in {sel.seconds:.2f} s")
    return plan["key"]


# --------------------------------------------------------------------------- maps and the demo


def task_maps(ctx: JobContext, n_neighbors: int = 15, seed: int = 0) -> None:
    """PCA (if missing), the faiss kNN lists for UMAP ('knn') and the UMAP map ('maps/umap')."""
    from .projection import knn_for_umap, umap_2d

    wu = load_warmup(ctx.store, ctx.run_id)
    if wu is None:
        raise InputError("no warm-up yet: run the warm-up first")
    if current_bundle(ctx.store, ctx.run_id, "maps/pca") is None:
        task_pca(ctx)
    ctx.progress(0.05, "kNN lists for UMAP")
    b = current_bundle(ctx.store, ctx.run_id, "knn")
    if b is not None and b.info.get("k", 0) >= n_neighbors:
        # The lists the neighbour graph's search found: no second search.
        ids, dists = b.array("ids", mmap=False), b.array("dists", mmap=False)
    else:
        t = time.perf_counter()
        ids, dists = knn_for_umap(wu.embeddings, n_neighbors, seed=seed, cancel=ctx.cancel)
        ctx.store.save_bundle(ctx.run_id, "knn", {"ids": ids, "dists": dists},
                              {"k": int(ids.shape[1]), "seconds": time.perf_counter() - t, "warmup_id": wu.id,
                               "source": "faiss search for UMAP"})
    ctx.progress(0.2, "UMAP layout (reusing the kNN lists)")
    coords, info = umap_2d(wu.embeddings, ids, dists, n_neighbors=n_neighbors, seed=seed,
                           return_info=True, cancel=ctx.cancel)
    ctx.check()
    ctx.store.save_bundle(ctx.run_id, "maps/umap", {"coords": coords}, {**info, "warmup_id": wu.id})
    ctx.progress(1.0, f"map ready ({info['method']}, {info['seconds']:.1f} s)")


DEMO = {"data": "digits", "noise": "sym:0.4", "seed": 0, "method": "prune4rel", "tau": "auto"}


def task_demo(ctx: JobContext, data: str = "digits", noise: str = "sym:0.4", seed: int = 0,
              epochs: int | None = None, method: str = "prune4rel", tau="auto", umap: bool = True) -> None:
    """The one-click demo: load + noise, warm-up, PCA map, graph (tau auto), ranking, then UMAP.

    The UMAP map runs as its own job (kind 'umap'), so the demo counts as done, and the
    PCA map is on screen, while UMAP is still computing.
    """
    task_load(ctx, data=data, noise=noise, seed=seed)
    ctx.progress(0.03, "warm-up")
    task_warmup(ctx, epochs=epochs, seed=seed, lo=0.03, hi=0.85)
    task_select(ctx, method=method, keep_ratio=1.0, tau=tau, seed=seed, lo=0.85, hi=0.99)
    if umap and ctx.manager is not None:
        ctx.manager.submit(ctx.run_id, "umap", task_maps, {"seed": seed})
    elif umap:
        task_maps(ctx, seed=seed)
    ctx.progress(1.0, "demo ready: warm-up, graph and ranking done")


def start_demo(manager: JobManager, epochs: int | None = None, name: str | None = None) -> tuple[str, str]:
    """Create a demo run and start its job; returns (run_id, job_id)."""
    cfg = {**DEMO, "epochs": epochs, "kind": "demo"}
    run_id = manager.store.create_run(cfg, name=name or f"demo: {DEMO['data']}, {DEMO['noise']} noise")
    job_id = manager.submit(run_id, "demo", task_demo, {"epochs": epochs})
    return run_id, job_id


# --------------------------------------------------------------------------- sweep


def sweep_key(params: dict) -> str:
    return "sweep-" + params_key(params)


def task_sweep(ctx: JobContext, methods: list, ratios: list, seeds: list, learner: str = "ce",
               learner_epochs: int | None = None, learner_input: str = "from-scratch",
               learner_params: dict | None = None, tau="auto", key: str | None = None,
               workers: int | None = None) -> None:
    """`sweep.run_sweep` on this run's data, noise and warm-up settings; rows saved as they arrive.

    The seed the run itself was made with reuses the run's noisy labels, warm-up and graph
    (`sweep_reuse`); other seeds draw their own. Learner fits run in `workers` processes
    (default: one per CPU core, at most 4).

    The bundle 'sweeps/<key>' (info: the parameters, state, rows and the results CSV) is
    rewritten atomically after every row, so the page draws the curves while the sweep runs
    and a failed or cancelled sweep keeps the rows done so far.
    """
    import pandas as pd

    from . import sweep as sweep_module
    from .sweep_report import RESULT_COLUMNS, results_csv
    from .pipeline import RunConfig

    data = load_data(ctx.store, ctx.run_id)
    if data is None:
        raise InputError("this run has no data yet: load a dataset first")
    wu = load_warmup(ctx.store, ctx.run_id)
    req = (wu.info.get("requested") if wu is not None else None) or {}
    if is_model_outputs(wu) and (learner != "none" or [int(x) for x in seeds] != [int(req.get("seed", 0))]):
        raise InputError(f"this run holds model outputs, not a model to train: its sweep only selects "
                         f"(learner none, seed {int(req.get('seed', 0))})")
    params = {"methods": list(methods), "ratios": [float(r) for r in ratios], "seeds": [int(x) for x in seeds],
              "learner": learner, "learner_epochs": learner_epochs, "learner_input": learner_input,
              "learner_params": learner_params or {}, "tau": tau}
    key = key or sweep_key(params)
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    base = {"data": data.info.get("spec") or "digits", "noise": data.info.get("noise", "none"),
            "tau": tau, "warmup_epochs": req.get("epochs"), "model": req.get("model") or "auto",
            "lr": req.get("lr"), "batch_size": req.get("batch_size"), "device": req.get("device") or "auto"}
    config_base = RunConfig(**{k: v for k, v in base.items() if k in fields})
    rows: list[dict] = []
    started = time.time()

    def save(state: str, error: str | None = None):
        df = pd.DataFrame(rows, columns=RESULT_COLUMNS) if rows else pd.DataFrame(
            columns=RESULT_COLUMNS)
        ctx.store.save_bundle(ctx.run_id, f"sweeps/{key}", {},
                              {**params, "key": key, "state": state, "error": error, "rows": rows,
                               "started": started, "csv": results_csv(df).decode()})

    def on_result(row):
        # Private keys (the sweep's "_subset" index array of selection-only rows) are not results.
        rows.append({k: (v.item() if hasattr(v, "item") else v) for k, v in dict(row).items()
                     if not k.startswith("_")})
        ctx.record(rows[-1])
        save("running")

    def progress(stage, fraction, message="", metrics=None):
        check_cancel(ctx.cancel)
        if stage == "sweep":
            ctx.progress(float(fraction), message)
        else:
            ctx.progress(ctx.fraction, f"{stage}: {message}" if message else stage)

    save("running")
    precomputed = sweep_reuse(ctx, data, wu, [int(x) for x in seeds], tau, learner_input)
    if workers is None:
        workers = max(1, min(4, os.cpu_count() or 1)) if learner != "none" else 1
    try:
        sweep_module.run_sweep(config_base, methods=list(methods), ratios=[float(r) for r in ratios],
                               seeds=[int(x) for x in seeds], learner=learner, learner_epochs=learner_epochs,
                               learner_input=learner_input, progress=progress, cancel=ctx.cancel,
                               on_result=on_result, learner_params=learner_params, workers=int(workers),
                               precomputed=precomputed)
    except BaseException as e:
        save("cancelled" if isinstance(e, Cancelled) else "failed", error_message(e))
        raise
    save("done")
    ctx.progress(1.0, f"sweep done: {len(rows)} rows")


def sweep_reuse(ctx: JobContext, data, wu, seeds: list[int], tau, learner_input: str) -> dict:
    """{seed: {"noisy", "wu", "graph", "ginfo"}} for the sweep seed that equals the seed the
    run's noise and warm-up were made with (both must match), from the run store: the sweep
    then trains no second warm-up for it. Empty when nothing matches, and for the
    frozen-features learner (it needs the warm-up network itself, which is not stored)."""
    from .learners import resolve_learner_input

    if wu is None or resolve_learner_input(learner_input) != "from-scratch":
        return {}
    data_seed = data.info.get("seed")
    warm_seed = ((wu.info.get("requested") or {}).get("seed"))
    if data_seed is None or warm_seed is None or int(data_seed) != int(warm_seed) or int(data_seed) not in seeds:
        return {}
    graph, ginfo, _ = ensure_graph(ctx, None, tau, seed=int(data_seed))
    noisy = SimpleNamespace(y_noisy=data.y_noisy, y_clean=data.y_clean, is_noisy=data.is_noisy,
                            noise_rate=data.info.get("noise_rate"), spec=data.info.get("noise"))
    warm = SimpleNamespace(probs=wu.probs, embeddings=wu.embeddings, losses=wu.losses, forgetting=wu.forgetting,
                           test_acc=wu.info.get("test_acc"), model_name=wu.info.get("model_name"))
    return {int(data_seed): {"noisy": noisy, "wu": warm, "graph": graph, "ginfo": SimpleNamespace(**ginfo)}}
