"""Background jobs for long work (warm-up, graph, selection, UMAP, sweep) and the stage tasks.

A process-wide `JobManager` runs each job on its own thread (torch, faiss and numba release
the GIL), with progress reports and a cooperative cancel token (`threading.Event`, passed to
the library as ``cancel``). Every state change is mirrored in the run store's SQLite index,
so a job outlives the browser session that started it: page switches and reloads only
re-read its state. Submitting the same (run, kind, key) while such a job is queued or
running returns the existing job instead of starting a second one. A job that fails records
its error message; results it had not finished are never written (bundles are replaced
atomically), so earlier results stay intact. At start-up the manager marks jobs that an
earlier server process left 'running' as failed ("interrupted").

The stage tasks below (`task_warmup`, `task_select`, `task_maps`, `task_demo`, ...) are plain
functions ``task(ctx, **params)``: they read inputs from the run store, call the library and
save their results as bundles. They do not import Streamlit and can be run synchronously
with `run_task` (tests, scripts).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import threading
import time
import traceback
from types import SimpleNamespace
from typing import Callable

import numpy as np

from .errors import Cancelled, InputError, check_cancel
from .runstore import ACTIVE_STATES, RunStore, load_sparse, save_sparse

log = logging.getLogger(__name__)

DB_WRITE_EVERY_S = 0.5  # progress is mirrored to SQLite at most this often (and on every record)


def params_key(params: dict | None) -> str:
    """A short stable hash of JSON-able params (sorted keys)."""
    text = json.dumps(params or {}, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


# --------------------------------------------------------------------------- job manager


class JobContext:
    """What a running task gets: the store, its run, a cancel token and progress reporting."""

    def __init__(self, manager: "JobManager | None", store: RunStore, job_id: str | None, run_id: str | None,
                 cancel: threading.Event | None = None, progress_fn: Callable | None = None):
        self.manager = manager
        self.store = store
        self.job_id = job_id
        self.run_id = run_id
        self.cancel = cancel or threading.Event()
        self._progress_fn = progress_fn
        self.fraction = 0.0
        self.message = ""
        self.records: list[dict] = []

    def progress(self, fraction: float, message: str = "", metrics: dict | None = None) -> None:
        self.fraction = float(min(1.0, max(0.0, fraction)))
        self.message = message or self.message
        if self._progress_fn:
            self._progress_fn(self.fraction, self.message, None)

    def record(self, item: dict) -> None:
        """Append a record (an epoch of a curve, a row of a sweep) to the job's history."""
        self.records.append(dict(item))
        if self._progress_fn:
            self._progress_fn(self.fraction, self.message, self.records)

    def stage(self, lo: float, hi: float, prefix: str = "") -> Callable:
        """A progress(fraction, message, metrics) callback mapping 0..1 into lo..hi."""

        def inner(fraction, message="", metrics=None):
            check_cancel(self.cancel)
            self.progress(lo + (hi - lo) * float(fraction), (prefix + message) if message else prefix.rstrip(": "))

        return inner

    def check(self) -> None:
        check_cancel(self.cancel)


class _Live:
    def __init__(self, job_id, run_id, kind, key):
        self.job_id, self.run_id, self.kind, self.key = job_id, run_id, kind, key
        self.cancel = threading.Event()
        self.thread: threading.Thread | None = None
        self.state = "queued"
        self.progress = 0.0
        self.message = "queued"
        self.records: list[dict] = []
        self.last_db_write = 0.0


class JobManager:
    """Runs tasks off the caller's thread; state in memory and in the store's SQLite index.

    max_running: how many jobs compute at once (others wait, state 'queued'): on a 2-core
    machine two parallel trainings only slow each other down.
    """

    def __init__(self, store: RunStore, max_running: int = 2, recover: bool = True):
        self.store = store
        self._lock = threading.RLock()
        self._live: dict[str, _Live] = {}
        self._slots = threading.BoundedSemaphore(max(1, int(max_running)))
        self.interrupted = store.mark_interrupted() if recover else 0

    # ---- submit / query / cancel

    def submit(self, run_id: str | None, kind: str, fn: Callable, params: dict | None = None,
               key: str | None = None) -> str:
        """Start `fn(ctx, **params)` on a thread; returns the job id.

        The same (run_id, kind, key) while a job is queued or running returns that job
        (no duplicate). `key` defaults to a hash of `params`.
        """
        params = dict(params or {})
        key = key if key is not None else params_key(params)
        with self._lock:
            for live in self._live.values():
                if (live.run_id, live.kind, live.key) == (run_id, kind, key) and live.state in ACTIVE_STATES:
                    return live.job_id
            job_id = self.store.create_job(run_id, kind, key, params)
            live = _Live(job_id, run_id, kind, key)
            self._live[job_id] = live
            live.thread = threading.Thread(target=self._run, args=(live, fn, params), daemon=True,
                                           name=f"job-{kind}-{job_id}")
            live.thread.start()
        return job_id

    def get(self, job_id: str) -> dict | None:
        """The job's state: the store's row, with the live progress when it runs here."""
        row = self.store.get_job(job_id)
        if row is None:
            return None
        live = self._live.get(job_id)
        if live is not None and live.state in ACTIVE_STATES:
            row.update(state=live.state, progress=live.progress, message=live.message, metrics=list(live.records))
        return row

    def find(self, run_id: str | None, kind: str | None = None, key: str | None = None,
             active_only: bool = False) -> dict | None:
        """The newest job of a run (of a kind, with a key), or None."""
        states = ACTIVE_STATES if active_only else None
        for row in self.store.list_jobs(run_id=run_id, kind=kind, states=states, limit=50):
            if key is None or row["key"] == key:
                return self.get(row["id"])
        return None

    def active(self, run_id: str | None = None, kind: str | None = None) -> list[dict]:
        """Queued or running jobs (optionally of one run / kind), newest first."""
        with self._lock:
            ids = [j.job_id for j in self._live.values() if j.state in ACTIVE_STATES
                   and (run_id is None or j.run_id == run_id) and (kind is None or j.kind == kind)]
        rows = [self.get(i) for i in ids]
        return sorted([r for r in rows if r], key=lambda r: r["created"], reverse=True)

    def cancel(self, job_id: str) -> bool:
        """Ask a job to stop (it stops at its next check). True when it was active."""
        live = self._live.get(job_id)
        if live is None or live.state not in ACTIVE_STATES:
            return False
        live.cancel.set()
        live.message = "cancelling..."
        return True

    def wait(self, job_id: str, timeout: float | None = None) -> dict | None:
        """Block until the job ends (or timeout); returns its state."""
        live = self._live.get(job_id)
        if live is not None and live.thread is not None:
            live.thread.join(timeout)
        return self.get(job_id)

    # ---- the worker

    def _write(self, live: _Live, force: bool = False, **extra) -> None:
        now = time.monotonic()
        if not force and now - live.last_db_write < DB_WRITE_EVERY_S:
            return
        live.last_db_write = now
        try:
            self.store.update_job(live.job_id, state=live.state, progress=live.progress, message=live.message,
                                  metrics=live.records, **extra)
        except Exception:  # noqa: BLE001 - a busy database must not kill the job
            log.exception("could not mirror job %s to the run store", live.job_id)

    def _set_run_state(self, live: _Live, state: str, message: str) -> None:
        """Mirror a job's state on its run: 'running' while any job runs, then the run's own state.

        A failed or cancelled step fails only itself: a run that already holds its data stays
        'done' (the message names the failed step); only a run left without any result takes
        the job's state.
        """
        if not live.run_id:
            return
        try:
            if state in ACTIVE_STATES:
                self.store.update_run(live.run_id, state="running", message=message)
                return
            others = [j for j in self._live.values() if j.run_id == live.run_id and j is not live
                      and j.state in ACTIVE_STATES]
            if not others and self.store.get_run(live.run_id) is not None:
                usable = self.store.has_bundle(live.run_id, "data")
                self.store.update_run(live.run_id, state="done" if state == "done" or usable else state,
                                      message=message)
        except Exception:  # noqa: BLE001
            log.exception("could not update run %s", live.run_id)

    def _run(self, live: _Live, fn: Callable, params: dict) -> None:
        def on_progress(fraction, message, records):
            live.progress = fraction
            live.message = message
            if records is not None:
                live.records = list(records)
            self._write(live, force=records is not None)

        ctx = JobContext(self, self.store, live.job_id, live.run_id, live.cancel, on_progress)
        acquired = False
        try:
            while not acquired:
                if live.cancel.is_set():
                    raise Cancelled("cancelled before it started")
                acquired = self._slots.acquire(timeout=0.2)
            live.state, live.message = "running", "started"
            self._write(live, force=True, started=time.time())
            self._set_run_state(live, "running", f"{live.kind} running")
            fn(ctx, **params)
            check_cancel(live.cancel)
            live.state, live.progress, live.message = "done", 1.0, ctx.message or "done"
            self._write(live, force=True, finished=time.time())
            self._set_run_state(live, "done", f"{live.kind} done")
        except Cancelled:
            live.state, live.message = "cancelled", "cancelled"
            self._write(live, force=True, finished=time.time())
            self._set_run_state(live, "cancelled", f"{live.kind} cancelled")
        except BaseException as e:  # noqa: BLE001 - every failure is recorded, none escapes the thread
            error = error_message(e)
            if not isinstance(e, InputError):
                log.error("job %s (%s) failed:\n%s", live.job_id, live.kind, traceback.format_exc())
            live.state, live.message = "failed", error
            self._write(live, force=True, finished=time.time(), error=error)
            self._set_run_state(live, "failed", f"{live.kind} failed: {error}")
        finally:
            if acquired:
                self._slots.release()


def error_message(e: BaseException) -> str:
    """One line for the user: InputError text as is, else 'Type: first line'."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if isinstance(e, InputError):
        return text or "bad input"
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def run_task(store: RunStore, run_id: str | None, fn: Callable, **params):
    """Run a task synchronously on the calling thread (tests, scripts). Returns its result."""
    ctx = JobContext(None, store, None, run_id)
    return fn(ctx, **params)


# --------------------------------------------------------------------------- reading results


DERIVED_PREFIXES = ("graphs", "selections", "maps", "knn")


def load_data(store: RunStore, run_id: str):
    """The run's dataset and labels as a namespace, or None before data is saved.

    Fields: ds (a prune_core Dataset), y_noisy, y_clean (or None), is_noisy (or None),
    transition (or None), info (the bundle's info), version.
    """
    from .data import Dataset

    b = store.load_bundle(run_id, "data")
    if b is None:
        return None
    info = b.info
    ds = Dataset(
        x_train=b.array("x_train"), y_train=b.array("y_given", mmap=False),
        y_train_clean=b.array("y_train_clean", mmap=False),
        x_test=b.array("x_test"), y_test=b.array("y_test", mmap=False),
        num_classes=int(info["num_classes"]), class_names=list(info["class_names"]), name=info.get("spec", ""),
        label_values=None if info.get("label_values") is None else np.asarray(info["label_values"], dtype=np.int64),
    )
    return SimpleNamespace(ds=ds, y_noisy=b.array("y_noisy", mmap=False), y_clean=b.array("y_clean", mmap=False),
                           is_noisy=b.array("is_noisy", mmap=False), transition=b.array("transition", mmap=False),
                           info=info, version=b.version)


def load_warmup(store: RunStore, run_id: str):
    """Warm-up outputs (probs, embeddings, losses, forgetting, test_probs, info) or None."""
    b = store.load_bundle(run_id, "warmup")
    if b is None:
        return None
    return SimpleNamespace(probs=b.array("probs", mmap=False), embeddings=b.array("embeddings", mmap=False),
                           losses=b.array("losses", mmap=False), forgetting=b.array("forgetting", mmap=False),
                           test_probs=b.array("test_probs", mmap=False), info=b.info, id=b.info.get("id"),
                           version=b.version)


def _current(store: RunStore, run_id: str, bundle: str):
    """A derived bundle, only when it was computed from the current warm-up."""
    b = store.load_bundle(run_id, bundle)
    if b is None:
        return None
    wu = store.load_bundle(run_id, "warmup")
    if wu is None or b.info.get("warmup_id") != wu.info.get("id"):
        return None
    return b


def graph_key(k: int | None, tau) -> str:
    tau_text = "auto" if str(tau).strip().lower() == "auto" else f"{float(tau):.6g}"
    return f"k{k}_tau{tau_text}"


def load_graph(store: RunStore, run_id: str, key: str):
    """(graph CSR, info dict) for a graph key of the current warm-up, or None."""
    b = _current(store, run_id, f"graphs/{key}")
    if b is None:
        return None
    return load_sparse(b, "graph"), b.info


def list_selections(store: RunStore, run_id: str) -> list[dict]:
    """Info of the stored selections of the current warm-up, newest first (with 'bundle')."""
    out = []
    for name in store.list_bundles(run_id, "selections"):
        b = _current(store, run_id, name)
        if b is not None:
            out.append({**b.info, "bundle": name})
    return sorted(out, key=lambda d: d.get("saved", 0), reverse=True)


def load_selection(store: RunStore, run_id: str, key: str):
    """A stored ranking as a `Selection` (the full stored budget) plus its info, or None."""
    from .selection import Selection

    b = _current(store, run_id, f"selections/{key}")
    if b is None:
        return None
    info = b.info
    sel = Selection(method=info["method"], indices=b.array("indices", mmap=False), n=int(info["n"]),
                    keep_ratio=float(info["keep_ratio"]), gains=b.array("gains", mmap=False),
                    scores=b.array("scores", mmap=False), objective=info.get("objective"),
                    seconds=float(info.get("seconds", 0.0)), params=info.get("params", {}),
                    nested=bool(info.get("nested", True)))
    return sel, info


def load_map(store: RunStore, run_id: str, which: str = "best"):
    """(coords (N, 2), info) of 'umap', 'pca' or 'best' (UMAP when ready, else PCA), or None."""
    names = ("umap", "pca") if which == "best" else (which,)
    for name in names:
        b = _current(store, run_id, f"maps/{name}")
        if b is not None:
            return b.array("coords", mmap=False), {**b.info, "name": name}
    return None


# --------------------------------------------------------------------------- stage tasks


def save_data(store: RunStore, run_id: str, ds, noisy, seed: int = 0) -> None:
    """Store a loaded dataset and its (noisy) labels as the run's 'data' bundle.

    Later results (warm-up and everything derived) are removed: they belonged to other data.
    """
    arrays = {"x_train": ds.x_train, "y_given": ds.y_train, "y_train_clean": ds.y_train_clean,
              "x_test": ds.x_test, "y_test": ds.y_test, "y_noisy": noisy.y_noisy, "y_clean": noisy.y_clean,
              "is_noisy": noisy.is_noisy, "transition": noisy.transition}
    info = {**ds.summary(), "spec": ds.name, "noise": noisy.spec, "noise_rate": noisy.noise_rate,
            "n_noisy": noisy.n_noisy, "seed": int(seed)}
    store.save_bundle(run_id, "data", arrays, info)
    for name in ["warmup", *DERIVED_PREFIXES]:
        store.delete_bundle(run_id, name)


MODEL_OUTPUTS = "model outputs"  # the 'warmup' bundle's info["source"] for outputs a user supplied


def is_model_outputs(wu) -> bool:
    """True when a run's warm-up bundle (`load_warmup`) holds model outputs a user supplied."""
    return wu is not None and (wu.info or {}).get("source") == MODEL_OUTPUTS


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

    from .warmup import warmup

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
    if ids is not None and _current(ctx.store, ctx.run_id, "knn") is None:
        save_knn_lists(ctx.store, ctx.run_id, ids, cos, wu.id, source=f"graph {key} ({ginfo.search})")
    return graph, info, key


UMAP_KNN_COLUMNS = 31  # self + 30 neighbours kept from the graph's search for UMAP


def save_knn_lists(store: RunStore, run_id: str, ids: np.ndarray, cos: np.ndarray, warmup_id: str,
                   source: str = "") -> None:
    """Keep the graph search's kNN lists in umap-learn's layout ('knn'): self first, cosine distances."""
    n = ids.shape[0]
    m = min(UMAP_KNN_COLUMNS - 1, ids.shape[1])
    knn_ids = np.concatenate([np.arange(n, dtype=np.int64)[:, None], ids[:, :m].astype(np.int64)], axis=1)
    dists = np.clip(1.0 - cos[:, :m], 0.0, 2.0).astype(np.float32)
    dists[ids[:, :m] < 0] = np.inf
    knn_dists = np.concatenate([np.zeros((n, 1), np.float32), dists], axis=1)
    store.save_bundle(run_id, "knn", {"ids": knn_ids, "dists": knn_dists},
                      {"k": int(knn_ids.shape[1]), "warmup_id": warmup_id, "source": source})


def task_graph(ctx: JobContext, k: int | None = None, tau="auto", search: str = "auto", seed: int = 0) -> None:
    ctx.progress(0.0, "building the neighbour graph")
    _, info, key = ensure_graph(ctx, k, tau, search, seed, ctx.stage(0.0, 1.0, "graph: "))
    ctx.progress(1.0, f"graph {key}: tau {info['tau']:.4f}, median degree {info['median_degree']:.0f}")


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


def task_maps(ctx: JobContext, n_neighbors: int = 15, seed: int = 0) -> None:
    """PCA (if missing), the faiss kNN lists for UMAP ('knn') and the UMAP map ('maps/umap')."""
    from .projection import knn_for_umap, umap_2d

    wu = load_warmup(ctx.store, ctx.run_id)
    if wu is None:
        raise InputError("no warm-up yet: run the warm-up first")
    if _current(ctx.store, ctx.run_id, "maps/pca") is None:
        task_pca(ctx)
    ctx.progress(0.05, "kNN lists for UMAP")
    b = _current(ctx.store, ctx.run_id, "knn")
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
        df = pd.DataFrame(rows, columns=sweep_module.RESULT_COLUMNS) if rows else pd.DataFrame(
            columns=sweep_module.RESULT_COLUMNS)
        ctx.store.save_bundle(ctx.run_id, f"sweeps/{key}", {},
                              {**params, "key": key, "state": state, "error": error, "rows": rows,
                               "started": started, "csv": sweep_module.results_csv(df).decode()})

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


def list_sweeps(store: RunStore, run_id: str) -> list[dict]:
    """Stored sweeps of a run (their info), newest first."""
    out = []
    for name in store.list_bundles(run_id, "sweeps"):
        b = store.load_bundle(run_id, name)
        if b is not None:
            out.append({**b.info, "bundle": name})
    return sorted(out, key=lambda d: d.get("started", 0), reverse=True)


# --------------------------------------------------------------------------- exports


def selection_csv(sel, y_noisy, y_clean, conf, label_values=None) -> bytes:
    """The CLI's selection.csv for a Selection: one row per training example (N rows).

    Columns: index, rank (pick position, -1 when dropped), selected (1/0), given_label,
    clean_label (empty without ground truth), confidence. label_values: the dataset's original
    label values ((C,), `Dataset.label_values`) when its labels were mapped to ids 0..C-1;
    the label columns are then written in those values.
    """
    from .pipeline import selection_csv as pipeline_csv

    result = SimpleNamespace(selection=sel, noisy=SimpleNamespace(y_noisy=y_noisy, y_clean=y_clean), confidence=conf,
                             dataset=SimpleNamespace(label_values=label_values))
    return pipeline_csv(result)


def selection_npy(sel) -> bytes:
    """The kept indices in pick order as an .npy file (int64, shape (budget,))."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(sel.indices, dtype=np.int64), allow_pickle=False)
    return buf.getvalue()


def selection_manifest(store: RunStore, run_id: str, key: str, keep_ratio: float, metrics: dict | None = None) -> dict:
    """A JSON-able manifest of a selection: run config, data, warm-up, graph, method, versions, hashes."""
    from .pipeline import _hash_array, _library_versions

    run = store.get_run(run_id) or {}
    data = load_data(store, run_id)
    wu = load_warmup(store, run_id)
    got = load_selection(store, run_id, key)
    if data is None or wu is None or got is None:
        raise InputError("this selection is not stored (any more)")
    sel, info = got
    if sel.nested:
        sel = sel.prefix(keep_ratio)
    g = load_graph(store, run_id, info["graph"])
    data_info = {k: v for k, v in data.info.items() if k not in ("class_counts",)}
    return {
        "run": {"id": run_id, "name": run.get("name"), "config": run.get("config")},
        "data": data_info,
        "warmup": {k: wu.info.get(k) for k in ("model_name", "device", "epochs", "seconds", "test_acc", "config")},
        "graph": None if g is None else g[1],
        "selection": {"method": sel.method, "keep_ratio": float(keep_ratio), "prune_ratio": 1.0 - sel.budget / sel.n,
                      "budget": sel.budget, "n": sel.n, "params": info.get("params"), "nested": sel.nested,
                      "objective": sel.objective, "seconds": info.get("seconds"), "stored_key": key},
        "metrics": metrics or {},
        "versions": _library_versions(),
        "embedding_hash": _hash_array(wu.embeddings),
        "probs_hash": _hash_array(wu.probs),
        "selection_hash": _hash_array(sel.indices),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
