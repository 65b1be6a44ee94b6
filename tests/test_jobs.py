"""Background jobs: progress, cancel, failures that keep results, no duplicates, restart; stage tasks."""

import threading
import time

import numpy as np
import pytest

from prune_core import artifacts as A
from prune_core import jobs as J
from prune_core.job_engine import JobManager, run_task
from prune_core.errors import InputError
from prune_core.runstore import RunStore


@pytest.fixture
def store(tmp_path):
    return RunStore(tmp_path / "ws")


def wait_state(manager, job_id, timeout=60.0):
    row = manager.wait(job_id, timeout)
    assert row["state"] not in ("queued", "running"), f"job still {row['state']} after {timeout} s"
    return row


def test_progress_records_and_done(store):
    m = JobManager(store)
    rid = store.create_run()

    def task(ctx, steps):
        for i in range(steps):
            ctx.progress((i + 1) / steps, f"step {i + 1}")
            ctx.record({"epoch": i + 1, "loss": 1.0 / (i + 1)})
        ctx.store.save_bundle(ctx.run_id, "out", {"x": np.arange(steps)}, {"steps": steps})

    jid = m.submit(rid, "train", task, {"steps": 4})
    row = wait_state(m, jid)
    assert row["state"] == "done" and row["progress"] == 1.0
    assert [r["epoch"] for r in row["metrics"]] == [1, 2, 3, 4]
    assert store.load_bundle(rid, "out").info["steps"] == 4
    assert store.get_run(rid)["state"] == "done"


def test_progress_visible_while_running(store):
    m = JobManager(store)
    release = threading.Event()

    def task(ctx):
        ctx.progress(0.4, "halfway-ish")
        release.wait(10)

    jid = m.submit(None, "slow", task)
    deadline = time.time() + 10
    while m.get(jid)["progress"] < 0.4 and time.time() < deadline:
        time.sleep(0.02)
    row = m.get(jid)
    assert row["state"] == "running" and row["progress"] == pytest.approx(0.4) and row["message"] == "halfway-ish"
    assert [j["id"] for j in m.active()] == [jid]
    release.set()
    assert wait_state(m, jid)["state"] == "done"


def test_cancel_is_cooperative(store):
    m = JobManager(store)
    rid = store.create_run()
    started = threading.Event()

    def task(ctx):
        started.set()
        for _ in range(1000):
            ctx.check()
            time.sleep(0.01)
        ctx.store.save_bundle(ctx.run_id, "never", {}, {})

    jid = m.submit(rid, "loop", task)
    assert started.wait(10)
    assert m.cancel(jid)
    row = wait_state(m, jid, 10)
    assert row["state"] == "cancelled"
    assert store.load_bundle(rid, "never") is None
    assert not m.cancel(jid)  # no longer active
    assert store.get_run(rid)["state"] == "cancelled"


def test_failure_records_error_and_keeps_earlier_results(store):
    m = JobManager(store)
    rid = store.create_run()
    store.save_bundle(rid, "warmup", {"probs": np.ones((3, 2))}, {"version": 1})

    def bad_input(ctx):
        raise InputError("tau=0.9999 leaves no example any neighbour")

    def crash(ctx):
        ctx.progress(0.5, "half done")
        raise RuntimeError("boom\nsecond line")

    r1 = wait_state(m, m.submit(rid, "select", bad_input))
    assert r1["state"] == "failed" and r1["error"] == "tau=0.9999 leaves no example any neighbour"
    r2 = wait_state(m, m.submit(rid, "warmup", crash))
    assert r2["state"] == "failed" and r2["error"] == "RuntimeError: boom"
    assert store.load_bundle(rid, "warmup").info["version"] == 1
    assert store.get_run(rid)["state"] == "failed"  # no data yet: nothing of the run is usable


def test_a_failed_step_fails_itself_not_the_run_that_holds_data(store):
    m = JobManager(store)
    rid = store.create_run()
    store.save_bundle(rid, "data", {"y_noisy": np.zeros(3, np.int64)}, {})

    def bad_input(ctx):
        raise InputError("tau=0.99999 leaves no example any neighbour")

    row = wait_state(m, m.submit(rid, "select", bad_input))
    assert row["state"] == "failed"
    run = store.get_run(rid)
    assert run["state"] == "done" and run["message"].startswith("select failed: tau=0.99999")
    assert store.list_runs()[0]["last_job"]["state"] == "failed"
    wait_state(m, m.submit(rid, "select", lambda ctx: None))
    assert store.get_run(rid)["state"] == "done"


def test_same_job_is_not_started_twice(store):
    m = JobManager(store)
    rid = store.create_run()
    release = threading.Event()
    calls = []

    def task(ctx, x):
        calls.append(x)
        release.wait(10)

    a = m.submit(rid, "select", task, {"x": 1})
    b = m.submit(rid, "select", task, {"x": 1})
    c = m.submit(rid, "select", task, {"x": 2})
    d = m.submit(rid, "select", task, {"x": 1}, key="explicit")
    assert a == b and len({a, c, d}) == 3
    release.set()
    for j in (a, c, d):
        wait_state(m, j)
    assert sorted(calls) == [1, 1, 2]
    # Once finished, the same submission is a new job.
    e = m.submit(rid, "select", task, {"x": 1})
    assert e != a
    wait_state(m, e)


def test_max_running_queues_the_rest(store):
    m = JobManager(store, max_running=1)
    release = threading.Event()

    def task(ctx, i):
        release.wait(10)

    a = m.submit(None, "t", task, {"i": 1})
    b = m.submit(None, "t", task, {"i": 2})
    time.sleep(0.3)
    assert m.get(a)["state"] == "running" and m.get(b)["state"] == "queued"
    assert m.cancel(b)
    release.set()
    assert wait_state(m, a)["state"] == "done"
    assert wait_state(m, b)["state"] == "cancelled"


def test_restart_marks_running_jobs_interrupted(store):
    rid = store.create_run()
    store.update_run(rid, state="running")
    jid = store.create_job(rid, "warmup")
    store.update_job(jid, state="running")
    m = JobManager(RunStore(store.root))
    assert m.interrupted == 1
    row = m.get(jid)
    assert row["state"] == "failed" and "interrupted" in row["error"]
    assert store.get_run(rid)["state"] == "failed"  # it had no data
    # A run that holds its data stays usable after an interrupted step.
    store.save_bundle(rid, "data", {"y_noisy": np.zeros(3, np.int64)}, {})
    store.update_run(rid, state="running")
    store.update_job(store.create_job(rid, "select"), state="running")
    assert JobManager(RunStore(store.root)).interrupted == 1
    assert store.get_run(rid)["state"] == "done"


def test_plan_selection_keys():
    nested = J.plan_selection("prune4rel", {}, 0.3, None, "auto", 0, n=100)
    again = J.plan_selection("prune4rel", {}, 0.7, None, "auto", 0, n=100)
    assert nested["key"] == again["key"] and nested["keep_ratio"] == 1.0  # nested: one ranking
    other_tau = J.plan_selection("prune4rel", {}, 0.3, None, 0.95, 0, n=100)
    assert other_tau["key"] != nested["key"] and other_tau["graph"] == "k50_tau0.95"
    with pytest.raises(InputError):
        J.plan_selection("prune4rel", {}, 0.0, None, "auto", 0, n=100)
    with pytest.raises(InputError):
        J.plan_selection("prune4rel", {}, 0.5, None, "abc", 0, n=100)
    with pytest.raises(InputError):
        J.plan_selection("no_such_method", {}, 0.5, None, "auto", 0, n=100)


def test_demo_stages_and_a_failed_select_keeps_results(store):
    """The demo task on digits (1 epoch) saves every stage; a bad tau fails alone."""
    rid = store.create_run({"data": "digits"})
    run_task(store, rid, J.task_demo, epochs=1, umap=False)
    for bundle in ("data", "warmup", "maps/pca"):
        assert store.load_bundle(rid, bundle) is not None, bundle
    sels = A.list_selections(store, rid)
    assert len(sels) == 1 and sels[0]["method"] == "prune4rel" and sels[0]["budget"] == 1437
    sel, info = A.load_selection(store, rid, sels[0]["key"])
    assert sel.prefix(0.4).budget == round(0.4 * 1437)
    assert A.load_graph(store, rid, info["graph"])[0].shape == (1437, 1437)
    # The graph's kNN lists are kept for UMAP (self first, cosine distances): no second search.
    knn = store.load_bundle(rid, "knn")
    assert knn.info["source"].startswith("graph") and knn.info["k"] == A.UMAP_KNN_COLUMNS
    ids, dists = knn.array("ids"), knn.array("dists")
    assert (ids[:, 0] == np.arange(1437)).all() and (dists[:, 0] == 0).all()
    assert (np.diff(dists, axis=1) >= -1e-6).all()
    from prune_core.projection import knn_for_umap

    ref_ids, ref_dists = knn_for_umap(A.load_warmup(store, rid).embeddings, k=15)
    assert (ids[:, 1] == ref_ids[:, 1]).mean() > 0.95
    np.testing.assert_allclose(dists[:, :15], ref_dists, atol=1e-4)

    m = JobManager(store)
    row = wait_state(m, m.submit(rid, "select", J.task_select, {"method": "prune4rel", "tau": 0.9999}))
    assert row["state"] == "failed" and "leaves no example any neighbour" in row["error"]
    assert [s["key"] for s in A.list_selections(store, rid)] == [sels[0]["key"]]

    # CSV export: one row per training example.
    d = A.load_data(store, rid)
    wu = A.load_warmup(store, rid)
    csv = A.selection_csv(sel.prefix(0.4), d.y_noisy, d.y_clean, wu.probs.max(1)).decode().splitlines()
    assert csv[0] == "index,rank,selected,given_label,clean_label,confidence" and len(csv) == 1438
    assert sum(line.split(",")[2] == "1" for line in csv[1:]) == round(0.4 * 1437)
    man = A.selection_manifest(store, rid, sels[0]["key"], 0.4)
    assert man["selection"]["budget"] == round(0.4 * 1437) and man["selection"]["method"] == "prune4rel"

    # A new warm-up replaces the derived results of the old one.
    run_task(store, rid, J.task_warmup, epochs=1, seed=1)
    assert A.list_selections(store, rid) == [] and A.load_map(store, rid)[1]["name"] == "pca"
