"""AppTest on a run made from model outputs (no warm-up): the Data page makes it from an upload,
Select (slider), Explore (UMAP from the embeddings) and Label errors render, the Warm-up and
Sweep pages say what they cannot do, and the sweep selects without training."""

import io
import os

import numpy as np
import pytest

from prune_core import artifacts as A
from prune_core import jobs as J
from prune_core.job_engine import run_task
from prune_core.outputs import check_model_outputs
from prune_core.runstore import RunStore
from tests.test_app import metric, open_app

N = 400


def digits_outputs():
    """Out-of-sample probabilities (3-fold logistic regression on 30%-noisy labels), PCA
    embeddings, given and clean labels and the 8x8 images of the first N digits."""
    from sklearn.datasets import load_digits
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict

    from prune_core.noise import inject_noise

    bunch = load_digits()
    x, y_clean = bunch.data[:N] / 16.0, bunch.target[:N]
    y = inject_noise(y_clean, "sym", 0.3, num_classes=10, seed=0)
    probs = cross_val_predict(LogisticRegression(max_iter=200), x, y, cv=3, method="predict_proba")
    emb = PCA(12, random_state=0).fit_transform(x).astype(np.float32)
    images = np.round(bunch.images[:N] * 255 / 16).astype(np.uint8)
    return probs.astype(np.float32), emb, y, y_clean, images


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    path = tmp_path_factory.mktemp("workspace")
    old = {k: os.environ.get(k) for k in ("PRUNE4REL_WORKSPACE", "PRUNE4REL_AUTODEMO")}
    os.environ["PRUNE4REL_WORKSPACE"] = str(path)
    os.environ.pop("PRUNE4REL_AUTODEMO", None)
    store = RunStore(path)
    probs, emb, y, y_clean, images = digits_outputs()
    rid = store.create_run({"data": "model outputs", "noise": "none", "kind": "outputs"}, name="outputs")
    J.save_model_outputs(store, rid, check_model_outputs(probs, emb, y, y_clean), images)
    key = run_task(store, rid, J.task_select, method="prune4rel", tau="auto")
    store.update_run(rid, state="done")
    yield store, rid, key, (probs, emb, y, y_clean)
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def test_model_outputs_run_is_stored_as_data_and_warmup(ws):
    store, rid, _, (probs, emb, y, y_clean) = ws
    data, wu = A.load_data(store, rid), A.load_warmup(store, rid)
    assert A.is_model_outputs(wu) and wu.losses is None and wu.forgetting is None
    np.testing.assert_array_equal(wu.probs, probs)
    np.testing.assert_array_equal(data.y_noisy, y)
    np.testing.assert_array_equal(data.y_clean, y_clean)
    assert data.ds.kind == "grey" and data.ds.n_train == N and data.ds.n_test == 0  # thumbnails, no hold-out


def test_select_explore_label_errors_render_and_slider_works(ws):
    store, rid, _, _ = ws
    at = open_app(rid, "pages/select.py")
    assert not at.error, [e.value for e in at.error]
    assert metric(at, "Kept examples") == f"{round(0.5 * N):,}"
    at.select_slider(key="select_keep").set_value(20).run()
    assert metric(at, "Kept examples") == f"{round(0.2 * N):,}"
    at.select_slider(key="select_keep").set_value(50).run()
    for page, title in (("pages/explore.py", "Explore"), ("pages/label_errors.py", "Label errors")):
        at = open_app(rid, page)
        assert at.title[0].value == title and not at.error, [e.value for e in at.error]
    run_task(store, rid, J.task_maps, seed=0)  # what the Explore page's "Compute UMAP" job runs
    at = open_app(rid, "pages/explore.py")
    assert "UMAP" in at.radio(key="explore_projection").options
    at = open_app(rid, "pages/label_errors.py")
    assert float(metric(at, "Average precision")) > 0.3


def test_warmup_and_sweep_pages_say_what_they_need(ws):
    store, rid, _, _ = ws
    at = open_app(rid, "pages/warmup.py")
    assert any("model outputs" in i.value and "nothing to train" in i.value for i in at.info)
    assert "warmup_start" not in {b.key for b in at.button}
    at = open_app(rid, "pages/sweep.py")
    assert any("can only select" in i.value for i in at.info)
    with pytest.raises(Exception, match="its sweep only selects"):
        run_task(store, rid, J.task_sweep, methods=["uniform"], ratios=[0.5], seeds=[0], learner="ce")
    run_task(store, rid, J.task_sweep, methods=["prune4rel", "uniform"], ratios=[0.3, 0.6], seeds=[0],
             learner="none", key="s1")
    rows = A.list_sweeps(store, rid)[0]["rows"]
    assert len(rows) == 4 and {r["method"] for r in rows} == {"prune4rel", "uniform"}
    with pytest.raises(Exception, match="needs forgetting"):
        run_task(store, rid, J.task_select, method="forgetting")


def test_data_page_makes_a_run_from_uploaded_outputs(ws, tmp_path):
    store, rid, _, (probs, emb, y, y_clean) = ws
    n_runs = len(store.list_runs())
    uploads_before = set((store.root / "uploads").glob("*"))
    at = open_app(rid, "pages/data.py")
    bad = io.BytesIO()
    np.savez(bad, probs=probs, embeddings=emb[:10], labels=y)
    at.file_uploader(key="outputs_upload").set_value(("bad.npz", bad.getvalue(), "application/octet-stream")).run()
    at.button(key="outputs_load").click().run()
    assert len(at.error) == 1 and "embeddings have 10 rows but there are 400 examples" in at.error[0].value
    assert len(store.list_runs()) == n_runs
    # Messages name the user's file, never the copy kept under the workspace; rejected copies go.
    nokey = io.BytesIO()
    np.savez(nokey, probs=probs, labels=y)
    at.file_uploader(key="outputs_upload").set_value(("nokey.npz", nokey.getvalue(), "application/octet-stream")).run()
    at.button(key="outputs_load").click().run()
    assert len(at.error) == 1 and "nokey.npz lacks embeddings" in at.error[0].value, at.error[0].value
    at.file_uploader(key="outputs_upload").set_value(("text.npz", b"not a zip", "application/octet-stream")).run()
    at.button(key="outputs_load").click().run()
    assert len(at.error) == 1 and "text.npz is not a readable .npz file (not a zip archive)" in at.error[0].value
    assert "uploads" not in at.error[0].value, at.error[0].value
    assert set((store.root / "uploads").glob("*")) == uploads_before, "rejected uploads were kept"
    good = io.BytesIO()
    np.savez(good, probs=probs, embeddings=emb, labels=y)
    at.file_uploader(key="outputs_upload").set_value(("good.npz", good.getvalue(), "application/octet-stream")).run()
    at.button(key="outputs_load").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert len(store.list_runs()) == n_runs + 1
    new = store.list_runs()[0]
    assert metric(at, "Training examples") == f"{N:,}" and at.sidebar.selectbox(key="run").value == new["id"]
    assert A.is_model_outputs(A.load_warmup(store, new["id"]))
    store.delete_run(new["id"])


def test_data_page_csv_source(ws, tmp_path):
    from PIL import Image

    store, rid, _, _ = ws
    rng = np.random.default_rng(0)
    lines = ["file,class"]
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (6, 6), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        lines.append(f"{i}.png,{'cat' if i % 2 else 'dog'}")
    (tmp_path / "list.csv").write_text("\n".join(lines) + "\n")
    at = open_app(rid, "pages/data.py")
    at.radio(key="data_source").set_value("csv").run()
    at.text_input(key="data_csv_path").input(f"{tmp_path / 'list.csv'}#image=nope").run()
    at.button(key="data_load").click().run()
    assert len(at.error) == 1 and "has no column 'nope' (image)" in at.error[0].value
    at.text_input(key="data_csv_path").input(str(tmp_path / "list.csv")).run()
    at.selectbox(key="data_noise_type").set_value("none").run()
    at.button(key="data_load").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    new = store.list_runs()[0]
    assert new["config"]["data"] == f"csv:{tmp_path / 'list.csv'}"
    assert int(metric(at, "Training examples")) + int(metric(at, "Test examples")) == 12
    store.delete_run(new["id"])


def test_app_exports_write_the_datasets_own_label_values(tmp_path):
    """A dataset with labels 10/20/30: the Select page's CSV and the corrections CSV write them back."""
    from prune_core.label_errors import corrections_frame
    from prune_core.selection import select

    store = RunStore(tmp_path / "ws")
    rng = np.random.default_rng(0)
    y = np.array([10, 20, 30] * 20)
    np.savez(tmp_path / "d.npz", x_train=rng.normal(size=(60, 4)).astype(np.float32), y_train=y)
    rid = store.create_run({"data": "npz"}, name="values")
    run_task(store, rid, J.task_load, data=f"npz:{tmp_path / 'd.npz'}", noise="none", seed=0)
    d = A.load_data(store, rid)
    assert list(d.ds.label_values) == [10, 20, 30]
    sel = select("uniform", keep_ratio=0.5, labels=d.y_noisy, seed=0)
    text = A.selection_csv(sel, d.y_noisy, d.y_clean, np.ones(d.ds.n_train), d.ds.label_values).decode()
    import pandas as pd

    table = pd.read_csv(io.StringIO(text))
    assert set(table["given_label"]) == {10, 20, 30}
    issues = pd.DataFrame({"index": [0], "given_label": [0], "suggested_label": [2], "confidence": [0.9],
                           "score": [0.8]})
    out = corrections_frame(issues, {"0": {"decision": "accept"}}, d.ds.label_values)
    assert list(out["corrected_label"]) == [30] and list(out["given_label"]) == [10]
