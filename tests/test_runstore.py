"""Run store: atomic bundles, run and job index, reopening from disk."""

import os
import sqlite3
import threading
import time

import numpy as np
import pytest
import scipy.sparse as sp

from prune_core.errors import InputError
from prune_core.runstore import RunStore, atomic_write_bytes, load_sparse, save_sparse


@pytest.fixture
def store(tmp_path):
    return RunStore(tmp_path / "ws")


def test_default_workspace_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNE4REL_WORKSPACE", str(tmp_path / "elsewhere"))
    s = RunStore()
    assert s.root == tmp_path / "elsewhere"
    assert (tmp_path / "elsewhere" / "index.sqlite").is_file()


def test_runs_listed_newest_first_and_reopened(store):
    a = store.create_run({"data": "digits"}, name="first")
    b = store.create_run({"data": "npz:x.npz"}, name="second")
    store.update_run(a, state="done", message="ok")
    ids = [r["id"] for r in store.list_runs()]
    assert set(ids) == {a, b} and ids[0] == b
    store.save_bundle(a, "warmup", {"probs": np.eye(3, dtype=np.float32)}, {"epochs": 2})

    reopened = RunStore(store.root)  # a new process would do exactly this
    run = reopened.get_run(a)
    assert run["name"] == "first" and run["state"] == "done" and run["config"] == {"data": "digits"}
    bundle = reopened.load_bundle(a, "warmup")
    assert bundle.info["epochs"] == 2
    np.testing.assert_array_equal(bundle.array("probs"), np.eye(3))
    assert bundle.array("missing") is None


def test_bundle_roundtrip_and_listing(store):
    rid = store.create_run()
    arrays = {"a": np.arange(10), "b": np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32), "skip": None}
    store.save_bundle(rid, "selections/k1", arrays, {"method": "uniform"})
    store.save_bundle(rid, "selections/k2", {}, {"method": "prune4rel"})
    b = store.load_bundle(rid, "selections/k1")
    assert b.names() == ["a", "b"]
    np.testing.assert_array_equal(b.array("a", mmap=False), np.arange(10))
    assert b.array("b").dtype == np.float32
    assert store.list_bundles(rid, "selections") == ["selections/k1", "selections/k2"]
    assert store.load_bundle(rid, "nothing") is None
    store.delete_bundle(rid, "selections/k1")
    assert store.list_bundles(rid, "selections") == ["selections/k2"]


def test_failed_bundle_write_keeps_the_old_one(store):
    rid = store.create_run()
    store.save_bundle(rid, "warmup", {"x": np.ones(3)}, {"version": 1})
    with pytest.raises(TypeError):
        store.save_bundle(rid, "warmup", {"x": np.zeros(3), "bad": np.array([object()])}, {"version": 2})
    b = store.load_bundle(rid, "warmup")
    assert b.info["version"] == 1
    np.testing.assert_array_equal(b.array("x"), np.ones(3))
    leftovers = [p.name for p in store.run_dir(rid).iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_bundle_without_info_is_not_complete(store):
    rid = store.create_run()
    half = store.run_dir(rid) / "maps" / "umap"
    half.mkdir(parents=True)
    np.save(half / "coords.npy", np.zeros((3, 2)))  # a crash before info.json
    assert store.load_bundle(rid, "maps/umap") is None
    assert store.list_bundles(rid, "maps") == []


def test_atomic_write_bytes_never_half_written(tmp_path, monkeypatch):
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"old")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"new content")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_signature_changes_when_a_result_is_rewritten(store):
    rid = store.create_run()
    assert store.signature(rid) == ()
    store.save_bundle(rid, "maps/pca", {"coords": np.zeros((2, 2))}, {})
    s1 = store.signature(rid)
    assert [name for name, _ in s1] == ["maps/pca"]
    store.save_bundle(rid, "maps/umap", {"coords": np.zeros((2, 2))}, {})
    assert store.signature(rid) != s1


def test_signature_never_sees_a_bundle_being_written(store):
    # A writer replaces selections while a reader polls the signature (as the app's pages do):
    # the reader neither fails on a temporary folder vanishing under it nor lists one.
    rid = store.create_run()
    store.save_bundle(rid, "selections/a", {"indices": np.arange(3)}, {})
    stop = threading.Event()

    def write():
        i = 0
        while not stop.is_set():
            store.save_bundle(rid, f"selections/s{i % 4}", {"indices": np.arange(50), "gains": np.ones(50)}, {})
            i += 1

    writer = threading.Thread(target=write)
    writer.start()
    seen = set()
    try:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            seen.update(name for name, _ in store.signature(rid))
    finally:
        stop.set()
        writer.join()
    assert seen <= {"selections/a", "selections/s0", "selections/s1", "selections/s2", "selections/s3"}
    assert "selections/a" in seen


def test_json_documents(store):
    rid = store.create_run()
    assert store.load_json(rid, "label_decisions", default={}) == {}
    store.save_json(rid, "label_decisions", {"3": {"decision": "accept", "label": 2}})
    assert store.load_json(rid, "label_decisions")["3"]["label"] == 2


def test_sparse_roundtrip(store):
    rid = store.create_run()
    g = sp.random(20, 20, density=0.2, random_state=0, format="csr", dtype=np.float32)
    store.save_bundle(rid, "graphs/g", save_sparse("graph", g), {})
    back = load_sparse(store.load_bundle(rid, "graphs/g"), "graph")
    assert (back != g).nnz == 0 and back.shape == (20, 20)


def test_bad_names_are_refused(store):
    rid = store.create_run()
    for bad in ("../x", "a/../../b", "/abs", ""):
        with pytest.raises(InputError):
            store.bundle_path(rid, bad)
    with pytest.raises(InputError):
        store.run_dir("../escape")


def test_jobs_index_and_interrupted_on_restart(store):
    rid = store.create_run()
    j1 = store.create_job(rid, "warmup", "k", {"epochs": 2})
    store.update_job(j1, state="running", progress=0.5, message="epoch 1", metrics=[{"epoch": 1}])
    j2 = store.create_job(rid, "select", "s")
    store.update_job(j2, state="done", progress=1.0)
    job = store.get_job(j1)
    assert job["state"] == "running" and job["params"] == {"epochs": 2} and job["metrics"] == [{"epoch": 1}]
    assert [j["id"] for j in store.list_jobs(run_id=rid, states=("running",))] == [j1]
    with pytest.raises(ValueError):
        store.update_job(j1, state="exploded")

    assert RunStore(store.root).mark_interrupted() == 1
    job = store.get_job(j1)
    assert job["state"] == "failed" and "interrupted" in job["error"]
    assert store.get_job(j2)["state"] == "done"
    assert store.list_runs()[0]["last_job"]["kind"] == "select"


def test_wal_mode_and_concurrent_writers(store):
    rid = store.create_run()
    with sqlite3.connect(store.db_path) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
    ids = [store.create_job(rid, "k", str(i)) for i in range(8)]
    errors = []

    def work(job_id):
        try:
            for step in range(25):
                store.update_job(job_id, progress=step / 25, message=f"step {step}")
        except Exception as e:  # pragma: no cover - the assertion below reports it
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert all(store.get_job(i)["message"] == "step 24" for i in ids)


def test_delete_run(store):
    rid = store.create_run()
    store.create_job(rid, "warmup")
    store.delete_run(rid)
    assert store.get_run(rid) is None and not store.run_dir(rid).exists()
    assert store.list_jobs(run_id=rid) == []
