"""The job engine: background jobs for long work (warm-up, graph, selection, UMAP, sweep).

A process-wide `JobManager` runs each job on its own thread (torch, faiss and numba release
the GIL), with progress reports and a cooperative cancel token (`threading.Event`, passed to
the library as ``cancel``). Every state change is mirrored in the run store's SQLite index,
so a job outlives the browser session that started it: page switches and reloads only
re-read its state. Submitting the same (run, kind, key) while such a job is queued or
running returns the existing job instead of starting a second one. A job that fails records
its error message; results it had not finished are never written (bundles are replaced
atomically), so earlier results stay intact. At start-up the manager marks jobs that an
earlier server process left 'running' as failed ("interrupted").

A task is any function ``task(ctx, **params)`` taking a `JobContext`; the app's stage tasks
live in `prune_core.jobs`. `run_task` runs one synchronously (tests, scripts). This module
knows no task and no bundle layout.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import traceback
from typing import Callable

from .errors import Cancelled, InputError, check_cancel
from .runstore import ACTIVE_STATES, RunStore

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
