"""AppTest for every page on a small completed run (digits, 2 warm-up epochs, prune4rel ranking).

The run is made through the library (the same stage tasks the app's jobs run) in a temporary
workspace before any page is opened; the pages then only read it. Plotly selections cannot be
driven by AppTest: the gallery is opened through the index box instead (the lasso itself is
the browser test's job).
"""

import io
import os
import time
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from prune_core import artifacts as A
from prune_core import jobs as J
from prune_core.job_engine import run_task
from prune_core.runstore import RunStore

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
N = 1437


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    path = tmp_path_factory.mktemp("workspace")
    old = {k: os.environ.get(k) for k in ("PRUNE4REL_WORKSPACE", "PRUNE4REL_AUTODEMO", "PRUNE4REL_DEMO_EPOCHS")}
    os.environ["PRUNE4REL_WORKSPACE"] = str(path)
    os.environ.pop("PRUNE4REL_AUTODEMO", None)
    os.environ["PRUNE4REL_DEMO_EPOCHS"] = "1"
    store = RunStore(path)
    rid = store.create_run({"data": "digits", "noise": "sym:0.4"}, name="fixture")
    run_task(store, rid, J.task_load, data="digits", noise="sym:0.4", seed=0)
    run_task(store, rid, J.task_warmup, epochs=2, seed=0)
    key = run_task(store, rid, J.task_select, method="prune4rel", tau="auto")
    store.update_run(rid, state="done")
    yield store, rid, key
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def open_app(rid, page=None, timeout=60):
    at = AppTest.from_file(APP, default_timeout=timeout)
    if rid is not None:
        at.session_state["run"] = rid
    at.run()
    if page:
        at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def wait_jobs(store, rid, kind, timeout=120, at_least=1):
    """Wait until the run has `at_least` jobs of `kind` and none of them is active; newest first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        jobs = store.list_jobs(run_id=rid, kind=kind)
        if len(jobs) >= at_least and all(j["state"] not in ("queued", "running") for j in jobs):
            return jobs
        time.sleep(0.2)
    raise AssertionError(f"{kind} jobs still running after {timeout} s: {store.list_jobs(run_id=rid, kind=kind)}")


def reopen(rid, page: str, values: dict):
    """A fresh session on `page` after a background job ended, with these widget values (key -> value).

    A fresh AppTest, not another run of the old one: AppTest sometimes drops or keeps stale
    widget values in the run after one that showed a polling fragment (a job was active then),
    which the real app does not do. Reopening keeps the check about the page, not that quirk.
    """
    at = open_app(rid, page)
    for key, value in values.items():
        widget = at.get_by_key(key)
        if widget.type == "text_input":
            widget.input(value)
        else:
            widget.set_value(value)
        at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def metric(at, label_start):
    for m in at.metric:
        if m.label.startswith(label_start):
            return m.value
    raise AssertionError(f"no metric {label_start!r}: {[m.label for m in at.metric]}")


PAGES = {
    "pages/home.py": "Prune4ReL Studio",
    "pages/data.py": "Data",
    "pages/warmup.py": "Warm-up",
    "pages/select.py": "Select",
    "pages/explore.py": "Explore",
    "pages/sweep.py": "Sweep",
    "pages/label_errors.py": "Label errors",
    "pages/learn.py": "Learn",
}


@pytest.mark.parametrize("page", list(PAGES))
def test_every_page_renders(ws, page):
    store, rid, _ = ws
    at = open_app(rid, None if page == "pages/home.py" else page)
    assert at.title[0].value == PAGES[page]
    assert not at.error, [e.value for e in at.error]
    assert at.sidebar.selectbox(key="run").value == rid  # the run picker is on every page


def test_home_lists_runs_and_reopens(ws):
    store, rid, _ = ws
    at = open_app(rid, "pages/home.py")
    assert at.button(key="home_demo").label == "Run the demo"
    table = at.dataframe[0].value
    assert rid in set(table["run"])
    assert at.selectbox(key="home_open_pick").value in set(table["run"])
    at.button(key="home_open").click().run()
    assert not at.exception


def test_select_slider_reslices_instantly(ws):
    store, rid, key = ws
    at = open_app(rid, "pages/select.py")
    assert at.selectbox(key="select_method").value == "prune4rel"
    assert metric(at, "Kept examples") == f"{round(0.5 * N):,}"
    assert "select_run" not in {b.key for b in at.button}  # stored: nothing to run
    at.select_slider(key="select_keep").set_value(20).run()
    assert metric(at, "Kept examples") == f"{round(0.2 * N):,}"
    at.select_slider(key="select_keep").set_value(100).run()
    assert metric(at, "Kept examples") == f"{N:,}"
    assert not at.exception
    labels = {b.label for b in at.get("download_button")}
    assert {"Download selection CSV", "Download selection NPY", "Download manifest JSON"} <= labels
    # The slider label shows both ratios.
    assert any("keep 100% (prune 0%)" in c.value for c in at.caption)
    # The choice is shared with the other pages.
    assert store.load_json(rid, "current_selection") == {"key": key, "keep_ratio": 1.0}
    at.select_slider(key="select_keep").set_value(50).run()


def test_select_bad_tau_shows_one_error_and_keeps_results(ws):
    store, rid, key = ws
    at = open_app(rid, "pages/select.py")
    at.text_input(key="select_tau").input("abc").run()
    assert len(at.error) == 1 and "tau must be a number" in at.error[0].value
    # The last computed selection stays on screen below the message, said to be the last one.
    assert metric(at, "Kept examples") is not None
    assert any("until the settings above are valid" in i.value for i in at.info), [i.value for i in at.info]
    at.text_input(key="select_tau").input("0.9999").run()
    assert not at.error
    n_jobs = len(store.list_jobs(run_id=rid, kind="select"))
    at.button(key="select_run").click().run()
    wait_jobs(store, rid, "select", at_least=n_jobs + 1)
    # With the keep ratio too: when the job ends inside the click's run, AppTest reruns the
    # page with the typed values dropped (see `reopen`), which moves the shared keep ratio.
    at = reopen(rid, "pages/select.py", {"select_tau": "0.9999", "select_keep": 50})
    assert len(at.error) == 1 and "leaves no example any neighbour" in at.error[0].value, [e.value for e in at.error]
    # Earlier results stay on screen.
    assert metric(at, "Kept examples") == f"{round(0.5 * N):,}"
    assert [s["key"] for s in A.list_selections(store, rid)] == [key]
    at.text_input(key="select_tau").input("auto").run()
    assert not at.error


def test_select_compare_with_uniform(ws):
    store, rid, _ = ws
    at = open_app(rid, "pages/select.py")
    at.select_slider(key="select_keep").set_value(50).run()
    at.selectbox(key="select_compare").set_value("uniform").run()
    n_jobs = len(store.list_jobs(run_id=rid, kind="select"))
    at.button(key="select_compare_run").click().run()
    jobs = wait_jobs(store, rid, "select", at_least=n_jobs + 1)
    assert jobs[0]["state"] == "done", jobs[0]
    # The method first: a fresh session starts from the run's shared current selection, which
    # other sessions may have moved (last writer wins), and "Compare with" omits the shown method.
    at = reopen(rid, "pages/select.py", {"select_method": "prune4rel", "select_keep": 50, "select_compare": "uniform"})
    overlap = int(metric(at, "Overlap").replace(",", ""))
    assert 0 < overlap < round(0.5 * N)
    at.selectbox(key="select_compare").set_value("(none)").run()


def test_explore_colour_and_gallery(ws):
    store, rid, _ = ws
    at = open_app(rid, "pages/explore.py")
    box = at.selectbox(key="explore_color")
    assert box.value == "neighbourhood confidence C(x;S)"
    assert {"given label", "clean label", "noisy or not", "selected vs dropped", "suspected error"} <= set(box.options)
    for field in ("given label", "noisy or not", "selected vs dropped", "suspected error", "confidence"):
        at.selectbox(key="explore_color").set_value(field).run()
        assert not at.exception
        assert at.selectbox(key="explore_color").value == field
    at.text_input(key="explore_indices").input("1, 5-7").run()
    assert any(h.value == "4 selected examples" for h in at.subheader)
    assert list(at.dataframe[0].value["index"]) == [1, 5, 6, 7]
    at.text_input(key="explore_indices").input("99999").run()
    assert len(at.error) == 1 and "out of range" in at.error[0].value


def test_class_axis_prefixes_every_tick_once_a_name_differs():
    from types import SimpleNamespace

    import plotly.graph_objects as go

    from pages._figures import class_axis

    def ticks(names):
        fig = go.Figure()
        class_axis(fig, SimpleNamespace(ds=SimpleNamespace(class_names=names, num_classes=len(names))))
        return list(fig.layout.xaxis.ticktext)

    assert ticks(["0", "1", "2"]) == ["0", "1", "2"]
    assert ticks(["0", "10", "20"]) == ["0: 0", "1: 10", "2: 20"]  # gapped label values
    assert ticks(["cat", "dog"]) == ["0: cat", "1: dog"]


def test_gallery_indices_come_from_customdata():
    from pages._figures import selected_indices

    event = {"selection": {"points": [{"curve_number": 1, "point_index": 0, "customdata": [42, 3, 3]},
                                      {"curve_number": 0, "point_index": 0, "customdata": [7, 1, 1]},
                                      {"curve_number": 0, "point_index": 1, "customdata": [42, 3, 3]}]}}
    assert selected_indices(event) == [7, 42]
    # Rows of a typed (base64) customdata array arrive as dicts keyed by column.
    typed = {"selection": {"points": [{"curve_number": 0, "point_index": 3, "customdata": {"0": 19, "1": 4}},
                                      {"curve_number": 2, "point_index": 0, "customdata": {"0": 5.0, "1": 1}}]}}
    assert selected_indices(typed) == [5, 19]
    assert selected_indices({"selection": {"points": []}}) == []


def test_warmup_page_shows_last_run(ws):
    store, rid, _ = ws
    at = open_app(rid, "pages/warmup.py")
    assert metric(at, "Model") == "small_cnn"
    assert metric(at, "Epochs") == "2"
    assert at.number_input(key="warmup_epochs").value == 15  # the model's default
    at.selectbox(key="warmup_model").set_value("mlp").run()
    assert len(at.error) == 1 and "does not fit" in at.error[0].value


def test_warmup_page_offers_pretrained_backbones(ws):
    """A torchvision backbone is reachable from the app, checked as it is typed (no download)."""
    from prune_core.training import TORCHVISION_DEFAULTS

    store, rid, _ = ws
    at = open_app(rid, "pages/warmup.py")
    at.selectbox(key="warmup_model").set_value("pretrained backbone (torchvision)").run()
    assert not at.error and at.text_input(key="warmup_backbone").value == "torchvision:resnet18"
    assert at.number_input(key="warmup_epochs").value == TORCHVISION_DEFAULTS[0]  # the backbone's defaults
    at.text_input(key="warmup_backbone").input("torchvision:nosuchnet").run()
    assert len(at.error) == 1 and "unknown torchvision model" in at.error[0].value
    at.text_input(key="warmup_backbone").input("resnet50:none").run()  # the prefix is optional
    assert not at.error and not at.exception


def test_label_errors_accept_and_export(ws):
    store, rid, _ = ws
    at = open_app(rid, "pages/label_errors.py")
    assert float(metric(at, "Average precision")) > 0.5
    radios = [r for r in at.radio if r.key and r.key.startswith("le_dec_")]
    assert len(radios) == 10
    first = radios[0].key
    at.radio(key=first).set_value("accept").run()
    decisions = store.load_json(rid, "label_decisions")
    assert decisions[first.removeprefix("le_dec_")]["decision"] == "accept"
    assert any(c.value.startswith("1 accepted") for c in at.caption)
    at.radio(key=first).set_value("undecided").run()
    assert store.load_json(rid, "label_decisions") == {}


def test_learn_steps_through_the_greedy(ws):
    at = open_app(None, "pages/learn.py")
    assert metric(at, "Objective F(S)") == "0.00"
    at.button(key="learn_next").click().run()
    at.button(key="learn_next").click().run()
    assert at.slider(key="learn_step").value == 2
    assert float(metric(at, "Objective F(S)")) > 0
    at.slider(key="learn_noise").set_value(50).run()
    at.slider(key="learn_budget").set_value(10).run()
    assert not at.exception


def test_data_page_bad_npz_and_new_run(ws, tmp_path):
    store, rid, _ = ws
    bad = tmp_path / "bad.npz"
    np.savez(bad, images=np.zeros((4, 8, 8)), labels=np.zeros(4))
    n_runs = len(store.list_runs())
    at = open_app(rid, "pages/data.py")
    at.radio(key="data_source").set_value("npz").run()
    at.text_input(key="data_npz_path").input(str(bad)).run()
    at.button(key="data_load").click().run()
    assert len(at.error) == 1 and "missing key(s) x_train, y_train" in at.error[0].value
    # An upload with wrong shapes.
    buf = io.BytesIO()
    np.savez(buf, x_train=np.zeros((5, 8, 8), np.uint8), y_train=np.array([0, 1, 0]))
    at.radio(key="data_source").set_value("upload").run()
    at.file_uploader(key="data_upload").set_value(("wrong.npz", buf.getvalue(), "application/octet-stream")).run()
    at.button(key="data_load").click().run()
    assert len(at.error) == 1 and "they must match" in at.error[0].value
    # The message names the user's file, not the copy the app keeps under the workspace.
    assert "wrong.npz" in at.error[0].value and "uploads" not in at.error[0].value, at.error[0].value
    # A file of another type gets a message naming it (the uploader accepts any file).
    at.file_uploader(key="data_upload").set_value(("labels.csv", b"0,1\n", "text/csv")).run()
    assert len(at.error) == 1 and "labels.csv is not an .npz file" in at.error[0].value
    at.button(key="data_load").click().run()
    assert any("labels.csv is not an .npz file" in e.value for e in at.error)
    # An unreadable folder.
    at.radio(key="data_source").set_value("imagefolder").run()
    at.text_input(key="data_folder_path").input(str(tmp_path / "no_such_folder")).run()
    at.button(key="data_load").click().run()
    assert len(at.error) == 1 and "no such folder" in at.error[0].value
    assert len(store.list_runs()) == n_runs
    assert metric(at, "Training examples") == "1,437"  # the current run still shows
    # A good load makes a new run and opens it.
    at.radio(key="data_source").set_value("digits").run()
    at.selectbox(key="data_noise_type").set_value("asym").run()
    at.button(key="data_load").click().run()
    assert not at.exception and not at.error
    assert len(store.list_runs()) == n_runs + 1
    new = store.list_runs()[0]
    assert new["config"]["noise"].startswith("asym:0.4")
    assert metric(at, "Noise").startswith("asym:0.4")  # the new run is the current one
    # The rate reads as the share of ALL labels, and within the flipped classes of the map.
    assert any("of all labels wrong (" in c.value and "of classes 2, 3, 5, 6, 7)" in c.value for c in at.caption), \
        [c.value for c in at.caption]
    assert at.sidebar.selectbox(key="run").value == new["id"]
    for _ in range(2):  # the note stays through the page's own reruns, while its run is current
        assert any("1437 training examples" in n.value and "Next: Warm-up" in n.value for n in at.success)
        at.run()
    store.delete_run(new["id"])


def test_sweep_bad_ratio_then_a_small_sweep(ws):
    store, rid, _ = ws
    at = open_app(rid, "pages/sweep.py")
    at.text_input(key="sweep_ratios").input("0, 0.5").run()
    at.button(key="sweep_start").click().run()
    assert len(at.error) == 1 and "keep ratio" in at.error[0].value
    at.text_input(key="sweep_ratios").input("0.3 0.6").run()  # spaces separate values too
    at.text_input(key="sweep_seeds").input("0,,1").run()
    at.button(key="sweep_start").click().run()
    assert len(at.error) == 1 and "seeds: empty item in '0,,1'" in at.error[0].value, [e.value for e in at.error]
    at.text_input(key="sweep_seeds").input("0").run()
    at.multiselect(key="sweep_methods").set_value(["uniform", "prune4rel"]).run()
    at.text_input(key="sweep_ratios").input("0.3, 0.6").run()
    at.selectbox(key="sweep_learner").set_value("none").run()
    at.button(key="sweep_start").click().run()
    jobs = wait_jobs(store, rid, "sweep", timeout=150)
    assert jobs[0]["state"] == "done", jobs[0]
    at.run()
    assert not at.exception
    table = at.dataframe[0].value
    assert len(table) == 4 and set(table["method"]) == {"uniform", "prune4rel"}
    assert at.get("download_button")[0].label == "Download sweep CSV"
    # A fresh session (a reload) starts its form from that sweep, not from the defaults.
    fresh = open_app(rid, "pages/sweep.py")
    assert not fresh.exception and not fresh.warning, [w.value for w in fresh.warning]
    assert fresh.multiselect(key="sweep_methods").value == ["uniform", "prune4rel"]
    assert fresh.text_input(key="sweep_ratios").value == "0.3, 0.6"
    assert fresh.selectbox(key="sweep_learner").value == "none" and fresh.text_input(key="sweep_seeds").value == "0"


def test_demo_button_starts_a_job_that_can_be_cancelled(ws):
    store, rid, _ = ws
    before = {r["id"] for r in store.list_runs()}
    at = open_app(rid, "pages/home.py")
    at.button(key="home_demo").click().run()
    assert not at.exception
    new = [r for r in store.list_runs() if r["id"] not in before]
    assert len(new) == 1 and new[0]["name"].startswith("demo")
    demo_id = new[0]["id"]
    assert any(h.value.startswith("Current run: demo") for h in at.subheader)
    cancel = [b for b in at.button if b.label == "Cancel"]
    if cancel:  # still running: cancel it from the page
        cancel[0].click().run()
    jobs = wait_jobs(store, demo_id, "demo", timeout=120)
    assert jobs[0]["state"] in ("cancelled", "done")
    wait_jobs(store, demo_id, "umap", timeout=180) if store.list_jobs(run_id=demo_id, kind="umap") else None
    # With a demo run in the workspace, "Run the demo" reopens it; "New demo run" is the explicit way.
    at = open_app(rid, "pages/home.py")
    assert at.button(key="home_demo_new").label == "New demo run"
    at.button(key="home_demo").click().run()
    assert {r["id"] for r in store.list_runs()} == before | {demo_id}
    assert at.sidebar.selectbox(key="run").value == demo_id
    store.delete_run(demo_id)


def test_run_picker_holds_the_id_and_a_failed_step_keeps_the_run(ws):
    store, rid, key = ws
    newer = store.create_run({"data": "digits"}, name="newer, no data")
    try:
        at = open_app(rid, "pages/select.py")
        assert at.query_params["run"] in (rid, [rid])  # the URL holds the id
        picker = at.sidebar.selectbox(key="run")
        assert picker.options == [f"newer, no data · {newer}", f"fixture · {rid}"]  # no state in the text
        # A selection that fails marks that step failed, not the run, and the view stays on the run.
        n_jobs = len(store.list_jobs(run_id=rid, kind="select"))
        at.text_input(key="select_tau").input("0.99999").run()
        at.button(key="select_run").click().run()
        wait_jobs(store, rid, "select", at_least=n_jobs + 1)
        # Reopened with the same plan: AppTest may drop the typed values in the rerun that the
        # polling fragment asks for when the job ends (see `reopen`), and then the failure of
        # another plan is rightly not shown.
        at = reopen(rid, "pages/select.py", {"select_tau": "0.99999", "select_keep": 50})
        assert at.sidebar.selectbox(key="run").value == rid
        assert store.get_run(rid)["state"] == "done"
        assert any("select failed" in e.value for e in at.error), [e.value for e in at.error]
        at.text_input(key="select_tau").input("auto").run()
        assert at.sidebar.selectbox(key="run").value == rid
        assert metric(at, "Kept examples") == f"{round(0.5 * N):,}"  # not "this run has no warm-up"
        assert any(c.value.startswith("state: done") for c in at.sidebar.caption)
        # A reload (a new session) reopens the URL's run, not the newest.
        fresh = AppTest.from_file(APP, default_timeout=60)
        fresh.query_params["run"] = rid
        fresh.run()
        fresh.switch_page("pages/select.py").run()
        assert fresh.sidebar.selectbox(key="run").value == rid
    finally:
        store.delete_run(newer)


def test_delete_asks_first_naming_the_run(ws):
    store, rid, _ = ws
    doomed = store.create_run({"data": "digits"}, name="to be deleted")
    at = open_app(rid, "pages/home.py")
    pick = at.selectbox(key="home_delete_pick")
    assert pick.value is None  # nothing preselected, least of all the current run
    assert at.button(key="home_delete").disabled
    pick.set_value(doomed).run()
    at.button(key="home_delete").click().run()
    assert store.get_run(doomed) is not None  # not yet: it asks
    assert any("to be deleted" in w.value and doomed in w.value for w in at.warning)
    at.button(key="home_delete_cancel").click().run()
    assert store.get_run(doomed) is not None
    at.selectbox(key="home_delete_pick").set_value(doomed).run()
    at.button(key="home_delete").click().run()
    assert at.button(key="home_delete_confirm").label == "Delete to be deleted"
    at.button(key="home_delete_confirm").click().run()
    assert store.get_run(doomed) is None and store.get_run(rid) is not None
    assert at.sidebar.selectbox(key="run").value == rid
    # The outcome stays through the page's own reruns (it polls while jobs run) ...
    for _ in range(2):
        assert any(f"Deleted run to be deleted ({doomed})" in n.value for n in at.success)
        at.run()
    # ... until the next deletion is started.
    other = store.create_run({"data": "digits"}, name="second")
    at.run()
    at.selectbox(key="home_delete_pick").set_value(other).run()
    at.button(key="home_delete").click().run()
    assert not any("Deleted run" in n.value for n in at.success)


def test_explore_switches_to_umap_when_ready_unless_pca_was_picked(ws):
    store, rid, _ = ws
    at = open_app(rid, "pages/explore.py")
    assert at.radio(key="explore_projection").options == ["PCA"]
    pca = A.load_map(store, rid, "pca")
    wu = A.load_warmup(store, rid)
    store.save_bundle(rid, "maps/umap", {"coords": pca[0][:, ::-1].copy()}, {"warmup_id": wu.id, "method": "umap"})
    try:
        at.run()
        assert at.radio(key="explore_projection").value == "UMAP"
        at.radio(key="explore_projection").set_value("PCA").run()
        at.run()
        assert at.radio(key="explore_projection").value == "PCA"  # the user's choice stays
    finally:
        store.delete_bundle(rid, "maps/umap")


def test_sweep_warns_when_relabeling_made_labels_worse_and_shows_the_frozen_caveat(ws):
    """A real 1-epoch from-scratch sweep re-labels worse than the given labels (60% right): the
    page says so next to the chart; it reuses the run's own warm-up for the run's seed; the
    frozen-features choice carries its caveat."""
    store, rid, _ = ws
    at = open_app(rid, "pages/sweep.py")
    at.multiselect(key="sweep_methods").set_value(["uniform"]).run()
    at.text_input(key="sweep_ratios").input("0.2").run()
    at.selectbox(key="sweep_learner").set_value("ce").run()
    at.number_input(key="sweep_learner_epochs").set_value(1).run()
    assert at.selectbox(key="sweep_learner_input").value == "from-scratch"
    at.button(key="sweep_start").click().run()
    jobs = wait_jobs(store, rid, "sweep", timeout=300)
    assert jobs[0]["state"] == "done", jobs[0].get("error")
    at = open_app(rid, "pages/sweep.py")
    rows = A.list_sweeps(store, rid)[0]["rows"]
    assert rows[0]["warmup_reused"] is True and rows[0]["relabel_gain_all"] < 0
    warnings = [w.value for w in at.warning]
    assert any(w.startswith("Re-labeling made the labels worse than the given labels") for w in warnings), warnings
    assert not any("frozen-features" in w for w in warnings)
    at.multiselect(key="sweep_methods").set_value(["uniform"]).run()
    at.text_input(key="sweep_ratios").input("0.3").run()
    at.selectbox(key="sweep_learner").set_value("ce").run()
    at.number_input(key="sweep_learner_epochs").set_value(1).run()
    at.selectbox(key="sweep_learner_input").set_value("frozen-features").run()
    at.button(key="sweep_start").click().run()
    jobs = wait_jobs(store, rid, "sweep", timeout=300, at_least=2)
    assert all(j["state"] == "done" for j in jobs), jobs
    at = open_app(rid, "pages/sweep.py")
    assert any("pruned ones included" in w.value for w in at.warning)
