"""Run store: one folder per run under a workspace, plus an SQLite index of runs and jobs.

Layout (workspace default ``./runs``, env ``PRUNE4REL_WORKSPACE`` overrides)::

    <workspace>/index.sqlite             runs and jobs (stdlib sqlite3, WAL mode)
    <workspace>/<run_id>/meta.json       the run's config and dataset summary
    <workspace>/<run_id>/<bundle>/       one result: NAME.npy arrays + info.json

A *bundle* is one stage's result (``data``, ``warmup``, ``graphs/<key>``, ``knn``,
``selections/<key>``, ``maps/pca``, ``maps/umap``, ``sweeps/<key>``...). Every file is
written atomically (temporary name in the same folder, then ``os.replace``), and a bundle
is written into a temporary folder that is renamed into place only once complete, with
``info.json`` written last: a crash never leaves a half-written result that looks
complete, and a failed stage leaves the earlier bundle as it was.

The SQLite index uses one connection per call (safe from any thread, and across
processes thanks to WAL); arrays never go into the database.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError

JOB_STATES = ("queued", "running", "done", "failed", "cancelled")
ACTIVE_STATES = ("queued", "running")
_BUNDLE_RE = re.compile(r"^[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'created',
    message TEXT NOT NULL DEFAULT '',
    config TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    run_id TEXT,
    kind TEXT NOT NULL,
    key TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL,
    progress REAL NOT NULL DEFAULT 0,
    message TEXT NOT NULL DEFAULT '',
    error TEXT,
    params TEXT NOT NULL DEFAULT '{}',
    metrics TEXT NOT NULL DEFAULT '[]',
    created REAL NOT NULL,
    started REAL,
    finished REAL
);
CREATE INDEX IF NOT EXISTS jobs_by_run ON jobs(run_id, kind, state);
"""


def default_workspace() -> Path:
    """$PRUNE4REL_WORKSPACE, or ./runs."""
    return Path(os.environ.get("PRUNE4REL_WORKSPACE") or "runs")


# --------------------------------------------------------------------------- atomic files


def atomic_write_bytes(path, data: bytes) -> None:
    """Write bytes to a temporary file in the same folder, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def to_json(obj, indent: int | None = 2) -> str:
    return json.dumps(obj, indent=indent, default=_json_default)


def atomic_write_json(path, obj) -> None:
    atomic_write_bytes(path, (to_json(obj) + "\n").encode())


def atomic_save_npy(path, array: np.ndarray) -> None:
    """np.save into a temporary file, then rename (object arrays are refused)."""
    array = np.asarray(array)
    if array.dtype == object:
        raise TypeError("object arrays are not stored (they would need pickle)")
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


# --------------------------------------------------------------------------- bundles


@dataclass
class Bundle:
    """A stored result: its info dict and arrays loaded on demand (memory-mapped)."""

    path: Path
    info: dict
    version: int  # mtime_ns of info.json: changes whenever the bundle is rewritten

    def names(self) -> list[str]:
        return sorted(p.stem for p in self.path.glob("*.npy"))

    def has(self, name: str) -> bool:
        return (self.path / f"{name}.npy").is_file()

    def array(self, name: str, mmap: bool = True) -> np.ndarray | None:
        p = self.path / f"{name}.npy"
        if not p.is_file():
            return None
        return np.load(p, mmap_mode="r" if mmap else None, allow_pickle=False)

    def arrays(self, mmap: bool = True) -> dict[str, np.ndarray]:
        return {n: self.array(n, mmap) for n in self.names()}


def save_sparse(prefix: str, matrix) -> dict[str, np.ndarray]:
    """A CSR matrix as plain arrays {prefix_data, prefix_indices, prefix_indptr, prefix_shape}."""
    m = matrix.tocsr()
    return {f"{prefix}_data": m.data, f"{prefix}_indices": m.indices, f"{prefix}_indptr": m.indptr,
            f"{prefix}_shape": np.asarray(m.shape, dtype=np.int64)}


def load_sparse(bundle: Bundle, prefix: str):
    """The CSR matrix saved by `save_sparse` (copied into memory), or None."""
    import scipy.sparse as sp

    if not bundle.has(f"{prefix}_data"):
        return None
    shape = tuple(int(s) for s in bundle.array(f"{prefix}_shape", mmap=False))
    return sp.csr_matrix((bundle.array(f"{prefix}_data", mmap=False),
                          bundle.array(f"{prefix}_indices", mmap=False),
                          bundle.array(f"{prefix}_indptr", mmap=False)), shape=shape)


# --------------------------------------------------------------------------- the store


class RunStore:
    """Runs, jobs and their results under one workspace folder."""

    def __init__(self, root=None):
        self.root = Path(root) if root is not None else default_workspace()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InputError(f"cannot create workspace folder {self.root}: {e.strerror}") from None
        self.db_path = self.root / "index.sqlite"
        self._local = threading.local()
        with self._connect() as con:
            con.executescript(_SCHEMA)

    # ---- database

    @contextmanager
    def _connect(self):
        con = sqlite3.connect(self.db_path, timeout=30.0, isolation_level=None)
        try:
            con.row_factory = sqlite3.Row
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")
            con.execute("PRAGMA busy_timeout=30000")
            yield con
        finally:
            con.close()

    @staticmethod
    def _run_row(row) -> dict:
        d = dict(row)
        d["config"] = json.loads(d["config"] or "{}")
        return d

    @staticmethod
    def _job_row(row) -> dict:
        d = dict(row)
        d["params"] = json.loads(d["params"] or "{}")
        d["metrics"] = json.loads(d["metrics"] or "[]")
        return d

    # ---- runs

    def create_run(self, config: dict | None = None, name: str | None = None, run_id: str | None = None) -> str:
        """A new run folder and index row; returns its id (time-sortable, unique)."""
        config = dict(config or {})
        run_id = run_id or time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
        if not _BUNDLE_RE.match(run_id) or "/" in run_id:
            raise InputError(f"bad run id {run_id!r}")
        name = name or config.get("name") or run_id
        now = time.time()
        self.run_dir(run_id).mkdir(parents=True, exist_ok=False)
        atomic_write_json(self.run_dir(run_id) / "meta.json", {"id": run_id, "name": name, "created": now, "config": config})
        with self._connect() as con:
            con.execute("INSERT INTO runs(id, name, created, updated, state, message, config) VALUES (?,?,?,?,?,?,?)",
                        (run_id, name, now, now, "created", "", to_json(config, None)))
        return run_id

    def run_dir(self, run_id: str) -> Path:
        if not run_id or "/" in run_id or run_id.startswith("."):
            raise InputError(f"bad run id {run_id!r}")
        return self.root / run_id

    def get_run(self, run_id: str) -> dict | None:
        with self._connect() as con:
            row = con.execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone()
        return None if row is None else self._run_row(row)

    def list_runs(self) -> list[dict]:
        """All runs, newest first, each with its latest job (kind, state) when any."""
        with self._connect() as con:
            runs = [self._run_row(r) for r in con.execute("SELECT * FROM runs ORDER BY created DESC, id DESC")]
            for r in runs:
                j = con.execute("SELECT kind, state, progress, message, error FROM jobs WHERE run_id=? "
                                "ORDER BY created DESC LIMIT 1", (r["id"],)).fetchone()
                r["last_job"] = None if j is None else dict(j)
        return runs

    def update_run(self, run_id: str, **fields) -> None:
        allowed = {"name", "state", "message", "config"}
        bad = set(fields) - allowed
        if bad:
            raise ValueError(f"unknown run field(s) {bad}")
        if "config" in fields:
            fields["config"] = to_json(fields["config"], None)
        if not fields:
            return
        cols = ", ".join(f"{k}=?" for k in fields)
        with self._connect() as con:
            con.execute(f"UPDATE runs SET {cols}, updated=? WHERE id=?", (*fields.values(), time.time(), run_id))

    def delete_run(self, run_id: str) -> None:
        with self._connect() as con:
            con.execute("DELETE FROM jobs WHERE run_id=?", (run_id,))
            con.execute("DELETE FROM runs WHERE id=?", (run_id,))
        shutil.rmtree(self.run_dir(run_id), ignore_errors=True)

    # ---- bundles (results)

    def bundle_path(self, run_id: str, bundle: str) -> Path:
        if not _BUNDLE_RE.match(bundle) or ".." in bundle.split("/"):
            raise InputError(f"bad bundle name {bundle!r}")
        return self.run_dir(run_id) / bundle

    def save_bundle(self, run_id: str, bundle: str, arrays: dict | None = None, info: dict | None = None) -> Path:
        """Write a complete bundle (arrays as .npy, info.json last), replacing any earlier one.

        The bundle is assembled in a temporary sibling folder and renamed into place, so a
        reader sees the old bundle or the new one, never a mix; a failure before the rename
        leaves the old bundle untouched.
        """
        final = self.bundle_path(run_id, bundle)
        final.parent.mkdir(parents=True, exist_ok=True)
        tag = uuid.uuid4().hex[:8]
        tmp = final.parent / f".{final.name}.{tag}.tmp"
        tmp.mkdir()
        try:
            for name, arr in (arrays or {}).items():
                if arr is None:
                    continue
                if not re.match(r"^[A-Za-z0-9_.\-]+$", name):
                    raise ValueError(f"bad array name {name!r}")
                atomic_save_npy(tmp / f"{name}.npy", arr)
            atomic_write_json(tmp / "info.json", {**(info or {}), "saved": time.time()})
            old = None
            if final.exists():
                old = final.parent / f".{final.name}.{tag}.old"
                os.replace(final, old)
            os.replace(tmp, final)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final

    def load_bundle(self, run_id: str, bundle: str) -> Bundle | None:
        """The bundle, or None when it does not exist (or is not complete)."""
        path = self.bundle_path(run_id, bundle)
        info_path = path / "info.json"
        try:
            st = info_path.stat()
            info = json.loads(info_path.read_text())
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (OSError, json.JSONDecodeError):
            return None
        return Bundle(path, info, st.st_mtime_ns)

    def has_bundle(self, run_id: str, bundle: str) -> bool:
        return (self.bundle_path(run_id, bundle) / "info.json").is_file()

    def bundle_version(self, run_id: str, bundle: str) -> int:
        """mtime_ns of the bundle's info.json, 0 when missing (a cheap cache key)."""
        try:
            return (self.bundle_path(run_id, bundle) / "info.json").stat().st_mtime_ns
        except OSError:
            return 0

    def list_bundles(self, run_id: str, prefix: str) -> list[str]:
        """Complete bundles under `prefix` (e.g. "selections" -> ["selections/abc", ...])."""
        base = self.bundle_path(run_id, prefix)
        if not base.is_dir():
            return []
        out = []
        for p in sorted(base.iterdir()):
            if p.is_dir() and not p.name.startswith(".") and (p / "info.json").is_file():
                out.append(f"{prefix}/{p.name}")
        return out

    def delete_bundle(self, run_id: str, bundle: str) -> None:
        path = self.bundle_path(run_id, bundle)
        if path.exists():
            trash = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.old"
            os.replace(path, trash)
            shutil.rmtree(trash, ignore_errors=True)

    def signature(self, run_id: str) -> tuple:
        """(bundle, version) of every complete bundle of a run: changes when any result does.

        Temporary and replaced folders (names starting with '.') are never entered, and a
        folder renamed or removed by a writer while it is scanned is skipped: readers poll
        this while jobs save bundles.
        """
        root = self.run_dir(run_id)
        out = []
        pending = [root]
        while pending:
            folder = pending.pop()
            try:
                entries = list(os.scandir(folder))
            except OSError:  # renamed or removed meanwhile
                continue
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                try:
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(Path(entry.path))
                    elif entry.name == "info.json" and folder != root:
                        out.append((Path(folder).relative_to(root).as_posix(), entry.stat().st_mtime_ns))
                except OSError:
                    continue
        return tuple(sorted(out))

    # small JSON documents kept beside the bundles (decisions, settings)

    def save_json(self, run_id: str, name: str, obj) -> None:
        atomic_write_json(self.bundle_path(run_id, name + ".json"), obj)

    def load_json(self, run_id: str, name: str, default=None):
        p = self.bundle_path(run_id, name + ".json")
        try:
            return json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            return default

    def save_bytes(self, run_id: str, name: str, data: bytes) -> Path:
        p = self.bundle_path(run_id, name)
        atomic_write_bytes(p, data)
        return p

    # ---- jobs

    def create_job(self, run_id: str | None, kind: str, key: str = "", params: dict | None = None,
                   job_id: str | None = None) -> str:
        job_id = job_id or uuid.uuid4().hex[:12]
        with self._connect() as con:
            con.execute("INSERT INTO jobs(id, run_id, kind, key, state, progress, message, params, created) "
                        "VALUES (?,?,?,?,?,?,?,?,?)",
                        (job_id, run_id, kind, key, "queued", 0.0, "queued", to_json(params or {}, None), time.time()))
        return job_id

    def update_job(self, job_id: str, **fields) -> None:
        allowed = {"state", "progress", "message", "error", "metrics", "started", "finished"}
        bad = set(fields) - allowed
        if bad:
            raise ValueError(f"unknown job field(s) {bad}")
        if "state" in fields and fields["state"] not in JOB_STATES:
            raise ValueError(f"unknown job state {fields['state']!r}")
        if "metrics" in fields:
            fields["metrics"] = to_json(fields["metrics"], None)
        if not fields:
            return
        cols = ", ".join(f"{k}=?" for k in fields)
        with self._connect() as con:
            con.execute(f"UPDATE jobs SET {cols} WHERE id=?", (*fields.values(), job_id))

    def get_job(self, job_id: str) -> dict | None:
        with self._connect() as con:
            row = con.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        return None if row is None else self._job_row(row)

    def list_jobs(self, run_id: str | None = None, kind: str | None = None, states=None, limit: int | None = None) -> list[dict]:
        """Jobs, newest first, filtered by run, kind and states."""
        sql, args = "SELECT * FROM jobs WHERE 1=1", []
        if run_id is not None:
            sql += " AND run_id=?"
            args.append(run_id)
        if kind is not None:
            sql += " AND kind=?"
            args.append(kind)
        if states:
            sql += f" AND state IN ({','.join('?' * len(states))})"
            args += list(states)
        sql += " ORDER BY created DESC"
        if limit:
            sql += f" LIMIT {int(limit)}"
        with self._connect() as con:
            return [self._job_row(r) for r in con.execute(sql, args)]

    def mark_interrupted(self, message: str = "interrupted (the server stopped while it ran)") -> int:
        """Mark every queued/running job as failed (call once at server start). Returns how many."""
        now = time.time()
        with self._connect() as con:
            rows = con.execute("SELECT id, run_id FROM jobs WHERE state IN ('queued','running')").fetchall()
            con.execute("UPDATE jobs SET state='failed', error=?, message=?, finished=? "
                        "WHERE state IN ('queued','running')", (message, message, now))
            for r in rows:
                if r["run_id"]:
                    # Like a failed step: a run that holds its data stays usable ('done').
                    state = "done" if self.has_bundle(r["run_id"], "data") else "failed"
                    con.execute("UPDATE runs SET state=?, message=?, updated=? WHERE id=? AND state='running'",
                                (state, message, now, r["run_id"]))
        return len(rows)
