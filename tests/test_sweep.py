"""Keep-ratio sweeps: the CLI on digits, shared warm-up and rankings, bad input before training."""

import csv
import importlib
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from prune_core import cli
from prune_core.errors import InputError
from prune_core.registry import _METHODS, MethodOutput, register_method
from prune_core.selection import list_methods
from prune_core.learners import FROZEN_FEATURES_CAVEAT
from prune_core.sweep import check_sweep_inputs, label_accuracy_columns, run_sweep
from prune_core.sweep_report import (
    GIVEN_LABELS_NAME,
    RESULT_COLUMNS,
    relabel_worse_than_given,
    sweep_caveat,
    sweep_figures,
    write_sweep_outputs,
)

ROOT = Path(__file__).resolve().parents[1]
# The warm-up module (the package re-exports its function `warmup`).
warmup_module = importlib.import_module("prune_core.training")
REQUIRED = ["method", "keep_ratio", "seed", "learner", "test_acc", "relabel_acc_subset", "relabel_acc_all",
            "noise_in_subset", "select_seconds", "budget", "objective_F", "learner_seconds", "given_acc_all",
            "relabel_gain_all"]


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Small models on a shared 2-core machine: one thread is faster than two fighting.
    threadpoolctl also pins OpenMP, so a nested limit elsewhere restores 1, not the default."""
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    with threadpool_limits(1):
        torch.set_num_threads(1)
        yield
    torch.set_num_threads(before)


def run_cli(*args, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "prune_core", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_sweep_cli_on_digits_writes_results_and_curves(tmp_path):
    methods = [m for m in ("prune4rel", "uniform", "small_loss") if m in list_methods()]
    out = tmp_path / "sweep"
    r = run_cli("sweep", "--data", "digits", "--noise", "sym:0.4", "--methods", ",".join(methods),
                "--ratios", "0.3,0.6", "--seeds", "0", "--learner", "ce", "--warmup-epochs", "2",
                "--learner-epochs", "5", "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stderr[-3000:]
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert set(REQUIRED) <= set(rows[0])
    assert len(rows) == len(methods) * 2
    assert {(row["method"], float(row["keep_ratio"]), int(row["seed"])) for row in rows} == {
        (m, r_, 0) for m in methods for r_ in (0.3, 0.6)}
    for row in rows:
        assert row["learner"] == "ce"
        for col in ("test_acc", "relabel_acc_subset", "relabel_acc_all", "noise_in_subset", "given_acc_all"):
            assert 0.0 <= float(row[col]) <= 1.0, (col, row[col])
        assert int(row["budget"]) == round(float(row["keep_ratio"]) * 1437)
        assert float(row["select_seconds"]) >= 0 and float(row["learner_seconds"]) > 0
    html = (out / "curves.html").read_text()
    # Self-contained: plotly.js inlined, no <script src=...> to a CDN (the app may run offline).
    assert "<script src" not in html and len(html) > 1_000_000 and "keep ratio" in html
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "sweep.json").exists()


# --------------------------------------------------------------------------- bad input


BAD = {
    "unknown method": (["--methods", "prune4rel,magic"], "unknown selection method"),
    "no methods": (["--methods", ","], "no selection methods"),
    "unknown learner": (["--learner", "magic"], "unknown learner"),
    "ratio zero": (["--ratios", "0,0.5"], "keep ratio"),
    "ratio above one": (["--ratios", "0.5,1.5"], "keep ratio"),
    "empty ratios": (["--ratios", ","], "empty"),
    "bad ratio text": (["--ratios", "0.2,abc"], "--ratios"),
    "empty seeds": (["--seeds", ","], "empty"),
    "negative seed": (["--seeds", "0,-1"], "seeds"),
    "doubled comma in seeds": (["--seeds", "0,,1"], "empty item in '0,,1'"),
    "trailing comma in ratios": (["--ratios", "0.2,"], "empty item"),
    "zero learner epochs": (["--learner-epochs", "0"], "epochs"),
    "unknown learner input": (["--learner-input", "pixels"], "learner input"),
    "unknown noise": (["--noise", "loud:0.3"], "noise"),
    "unknown device": (["--device", "tpu"], "device"),
}


@pytest.fixture
def no_training(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("training started despite bad input")

    monkeypatch.setattr(warmup_module, "warmup", boom)


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_sweep_input_exit_2_one_line_before_training(case, no_training, tmp_path, capsys):
    extra, needle = BAD[case]
    args = {"--data": "digits", "--noise": "sym:0.4", "--methods": "prune4rel,uniform", "--ratios": "0.2,0.4",
            "--seeds": "0", "--learner": "ce", "--out": str(tmp_path / "o")}
    args.update(dict(zip(extra[::2], extra[1::2])))
    with pytest.raises(SystemExit) as exc:  # argparse-level errors exit directly
        raise SystemExit(cli.main(["sweep", *[x for kv in args.items() for x in kv], "--quiet"]))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert needle.lower() in lines[0].lower(), lines[0]
    assert not (tmp_path / "o" / "results.csv").exists()


def test_bad_sweep_input_through_python_m():
    r = run_cli("sweep", "--methods", "magic", "--ratios", "0.5", "--out", "/tmp/never-written")
    assert r.returncode == 2
    assert len([x for x in r.stderr.splitlines() if x.strip()]) == 1 and "Traceback" not in r.stderr


def test_check_sweep_inputs_normalises():
    specs, ratios, seeds, learner = check_sweep_inputs(["uniform", ("u2", "uniform", {"balance": "equal"})],
                                                       [0.6, 0.2, 0.6], [1, 0, 1], "none")
    assert [s.label for s in specs] == ["uniform", "u2"] and specs[1].param_dict == {"balance": "equal"}
    assert ratios == [0.2, 0.6] and seeds == [1, 0] and learner == ["none"]
    assert check_sweep_inputs(["uniform"], [0.5], [0], "sop,ce,sop")[3] == ["sop", "ce"]
    with pytest.raises(InputError, match="combined"):
        check_sweep_inputs(["uniform"], [0.5], [0], ["ce", "none"])
    with pytest.raises(InputError, match="no parameter"):
        check_sweep_inputs([("x", "uniform", {"tau": 0.9})], [0.5], [0], "ce")
    with pytest.raises(InputError, match="twice"):
        check_sweep_inputs(["uniform", "uniform"], [0.5], [0], "ce")


# --------------------------------------------------------------------------- API on a small feature set


@pytest.fixture
def features_npz(tmp_path):
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 6)) * 3
    y = np.arange(240) % 3
    yt = np.arange(90) % 3
    path = tmp_path / "feat.npz"
    np.savez(path, x_train=(centers[y] + rng.normal(size=(240, 6))).astype(np.float32), y_train=y,
             x_test=(centers[yt] + rng.normal(size=(90, 6))).astype(np.float32), y_test=yt)
    return f"npz:{path}"


@pytest.fixture
def counting_methods():
    calls = {"nested": 0, "flat": []}

    @register_method("_test_nested", "test: lowest indices first", nested=True)
    def _nested(inputs, budget, seed, progress, cancel, balance):
        calls["nested"] += 1
        return MethodOutput(np.arange(budget, dtype=np.int64))

    @register_method("_test_flat", "test: a random subset per budget (not nested)", nested=False)
    def _flat(inputs, budget, seed, progress, cancel, balance):
        calls["flat"].append(budget)
        rng = np.random.default_rng(seed + budget)
        return MethodOutput(rng.permutation(inputs.n)[:budget].astype(np.int64))

    yield calls
    _METHODS.pop("_test_nested", None)
    _METHODS.pop("_test_flat", None)


def test_run_sweep_shares_warmup_and_nested_rankings(features_npz, counting_methods, monkeypatch):
    real = warmup_module.warmup
    warm_calls = []

    def counting_warmup(*a, **k):
        warm_calls.append(k.get("seed"))
        return real(*a, **k)

    monkeypatch.setattr(warmup_module, "warmup", counting_warmup)
    seen = []
    progress = []
    df = run_sweep({"data": features_npz, "noise": "sym:0.3", "warmup_epochs": 3, "tau": "auto"},
                   ["_test_nested", "_test_flat", "prune4rel"], [0.5, 0.25, 0.75], [0, 1], "ce",
                   learner_epochs=3, on_result=seen.append,
                   progress=lambda stage, f, m, x: progress.append((stage, f)))
    assert warm_calls == [0, 1]  # one warm-up per seed
    assert counting_methods["nested"] == 2  # one ranking per seed, at the largest ratio
    assert sorted(counting_methods["flat"]) == sorted([60, 120, 180] * 2)  # per ratio and seed
    assert len(df) == len(seen) == 3 * 3 * 2
    assert list(df.columns) == RESULT_COLUMNS
    assert seen[0]["method"] == "_test_nested" and seen[0]["keep_ratio"] == 0.25
    nested = df[df.method == "_test_nested"]
    assert nested.ranking_reused.tolist().count(True) == 4  # the two smaller ratios, two seeds
    assert (df.budget == (df.keep_ratio * 240).round().astype(int)).all()
    assert df.test_acc.between(0, 1).all() and df.relabel_acc_all.between(0, 1).all()
    sweep_fracs = [f for s, f in progress if s == "sweep"]
    assert sweep_fracs == sorted(sweep_fracs) and sweep_fracs[-1] == pytest.approx(1.0)
    figs = sweep_figures(df)
    assert set(figs) == {"relabel_acc_all", "test_acc"}  # no predictor curve (it did not predict)
    assert "predicted_relabel" not in df.columns
    assert len(figs["test_acc"].data) == 3  # one line per method


def test_no_learner_and_no_ground_truth(features_npz):
    df = run_sweep({"data": features_npz, "noise": "sym:0.3", "warmup_epochs": 2}, ["uniform"], [0.5], [0], "none")
    assert df.test_acc.isna().all() and df.relabel_acc_all.isna().all() and df.noise_in_subset.notna().all()
    # No ground truth: the npz has no y_train_clean and no noise is injected.
    df = run_sweep({"data": features_npz, "noise": "none", "warmup_epochs": 2}, ["uniform"], [0.5], [0], "ce",
                   learner_epochs=2)
    assert df.relabel_acc_all.isna().all() and df.relabel_acc_subset.isna().all()
    assert df.noise_in_subset.isna().all() and df.test_acc.notna().all()
    from prune_core.sweep_report import results_csv

    row = results_csv(df).decode().splitlines()[1].split(",")
    header = results_csv(df).decode().splitlines()[0].split(",")
    assert row[header.index("relabel_acc_all")] == ""


def test_several_learners_share_one_warmup(features_npz, monkeypatch):
    real = warmup_module.warmup
    warm_calls = []
    monkeypatch.setattr(warmup_module, "warmup", lambda *a, **k: warm_calls.append(1) or real(*a, **k))
    df = run_sweep({"data": features_npz, "noise": "sym:0.3", "warmup_epochs": 2}, ["uniform", "small_loss"],
                   [0.4, 0.8], [0], ["ce", "sop"], learner_epochs={"ce": 2, "sop": 3})
    assert len(warm_calls) == 1
    assert len(df) == 2 * 2 * 2 and sorted(df.learner.unique()) == ["ce", "sop"]
    assert df.groupby("learner").learner_epochs.first().to_dict() == {"ce": 2, "sop": 3}
    figs = sweep_figures(df)
    assert len(figs["test_acc"].data) == 4  # one line per (method, learner)
    assert {t.name for t in figs["test_acc"].data} == {"uniform (ce)", "uniform (sop)", "small_loss (ce)",
                                                        "small_loss (sop)"}


def test_method_variants_get_their_own_rows(features_npz):
    df = run_sweep({"data": features_npz, "noise": "sym:0.3", "warmup_epochs": 2},
                   [("p4r_official", "prune4rel", {"mode": "official"}),
                    ("p4r_tau", "prune4rel", {"tau": 0.9, "eta": 10.0})], [0.3], [0], "none")
    assert df.method.tolist() == ["p4r_official", "p4r_tau"]
    assert (df.base_method == "prune4rel").all()
    assert '"tau": 0.9' in df.params.iloc[1] and '"mode": "official"' in df.params.iloc[0]


def _load_report():
    spec = importlib.util.spec_from_file_location("relabel_report", ROOT / "bench" / "relabel_report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    return report


def test_report_is_resumable_and_keeps_hand_written_text(tmp_path):
    """bench/relabel_report.py --plan tiny (digits) in-process, twice: the second run finds every
    unit in the units file and trains nothing; text outside the generated block is kept."""
    report = _load_report()
    doc, units = tmp_path / "results.md", tmp_path / "units.csv"
    doc.write_text("# kept above\n\n" + report.BEGIN + "\nold\n" + report.END + "\n\n## Hand-written analysis\nkept\n")
    args = ["--plan", "tiny", "--jobs", "1", "--doc", str(doc), "--units", str(units), "--out", str(tmp_path / "out")]
    cwd = os.getcwd()
    fits = []
    real_fit = report.fit
    report.fit = lambda *a, **k: fits.append(a[0]["method"]) or real_fit(*a, **k)
    try:
        assert report.main(args) == 0
        assert len(fits) == 4  # 2 methods x 2 ratios x 1 seed x 1 learner
        first = units.read_text()
        assert report.main(args) == 0
        assert len(fits) == 4 and units.read_text() == first  # nothing trained again
        # A lost unit (e.g. an interrupted run) is the only one trained on the next call.
        lines = first.splitlines()
        units.write_text("\n".join(lines[:-1]) + "\n")
        assert report.main(args) == 0
        assert len(fits) == 5 and len(units.read_text().splitlines()) == len(lines)
    finally:
        os.chdir(cwd)
    text = doc.read_text()
    assert text.startswith("# kept above") and text.rstrip().endswith("kept") and "\nold\n" not in text
    assert "| uniform |" in text and "| prune4rel |" in text and "*given labels*" in text
    assert "4 of 4 units" in text and "from scratch on the kept examples only" in text
    df = pd.read_csv(units)
    assert (df.learner_input == "from-scratch").all() and df.learner_caveat.isna().all()


def test_label_accuracy_columns_by_hand():
    y_clean = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
    y_given = np.array([0, 1, 0, 1, 1, 0, 2, 2, 1, 2])  # wrong at 1, 5, 8
    after = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 0])  # fixes all three, breaks 9
    subset = np.array([0, 1, 2, 3])
    cols = label_accuracy_columns(y_given, y_clean, subset, after)
    assert cols["given_acc_all"] == pytest.approx(0.7) and cols["given_acc_subset"] == pytest.approx(0.75)
    assert cols["relabel_acc_all"] == pytest.approx(0.9) and cols["relabel_acc_subset"] == pytest.approx(1.0)
    assert cols["relabel_gain_all"] == pytest.approx(0.2) and cols["relabel_gain_subset"] == pytest.approx(0.25)
    worse = label_accuracy_columns(y_given, y_clean, subset, np.zeros(10, int))
    assert worse["relabel_gain_all"] == pytest.approx(0.3 - 0.7)
    assert label_accuracy_columns(y_given, None, subset, after) == {
        "given_acc_all": None, "given_acc_subset": None, "relabel_acc_all": None, "relabel_acc_subset": None,
        "relabel_gain_all": None, "relabel_gain_subset": None}


def test_sweep_reports_given_labels_and_draws_their_reference_line(features_npz, tmp_path):
    from prune_core.data import load_dataset
    from prune_core.noise import apply_noise

    df = run_sweep({"data": features_npz, "noise": "sym:0.3", "warmup_epochs": 2}, ["uniform", "prune4rel"],
                   [0.3, 0.6], [0, 1], "ce", learner_epochs=2)
    for seed in (0, 1):
        noisy = apply_noise(load_dataset(features_npz), "sym:0.3", seed=seed)
        part = df[df.seed == seed]
        assert part.given_acc_all.tolist() == pytest.approx([float((noisy.y_noisy == noisy.y_clean).mean())] * 4)
    assert (df.relabel_gain_all - (df.relabel_acc_all - df.given_acc_all)).abs().max() < 1e-12
    assert (df.relabel_gain_subset - (df.relabel_acc_subset - df.given_acc_subset)).abs().max() < 1e-12
    assert (df.learner_input == "from-scratch").all() and df.learner_caveat.isna().all()
    figs = sweep_figures(df)
    ref = [t for t in figs["relabel_acc_all"].data if t.name == GIVEN_LABELS_NAME]
    assert len(ref) == 1 and list(ref[0].y) == pytest.approx([df.given_acc_all.mean()] * 2)
    assert all(t.name != GIVEN_LABELS_NAME for t in figs["test_acc"].data)
    # The worse-than-given list is exactly the (method, ratio) cells with a negative mean gain.
    gains = df.groupby(["method", "keep_ratio"]).relabel_gain_all.mean()
    assert {(w["method"], w["keep_ratio"]) for w in relabel_worse_than_given(df)} == {
        k for k, g in gains.items() if g < 0}
    lowered = df.assign(relabel_acc_all=0.1, relabel_gain_all=0.1 - df.given_acc_all)
    assert len(relabel_worse_than_given(lowered)) == 4
    paths = write_sweep_outputs(df, tmp_path / "out", "tiny")
    assert GIVEN_LABELS_NAME in paths["html"].read_text()
    header = paths["results"].read_text().splitlines()[0].split(",")
    assert {"given_acc_all", "given_acc_subset", "relabel_gain_all", "relabel_gain_subset"} <= set(header)


def test_frozen_features_results_carry_their_caveat(features_npz, tmp_path):
    df = run_sweep({"data": features_npz, "noise": "sym:0.3", "warmup_epochs": 2}, ["uniform"], [0.5], [0], "ce",
                   learner_epochs=2, learner_input="frozen-features")
    assert (df.learner_input == "frozen-features").all() and (df.learner_caveat == FROZEN_FEATURES_CAVEAT).all()
    assert sweep_caveat(df) == FROZEN_FEATURES_CAVEAT
    paths = write_sweep_outputs(df, tmp_path / "out", "tiny")
    rows = list(csv.DictReader(open(paths["results"])))
    assert rows[0]["learner_caveat"] == FROZEN_FEATURES_CAVEAT
    assert FROZEN_FEATURES_CAVEAT in sweep_figures(df)["relabel_acc_all"].layout.title.text


def test_from_scratch_learner_is_fresh_and_sees_kept_examples_only(features_npz, monkeypatch):
    """The sweep's default learner: new weights (not the warm-up's), kept rows only."""
    import prune_core.learners as L
    import prune_core.models as M

    warm = []
    real_warmup = warmup_module.warmup
    monkeypatch.setattr(warmup_module, "warmup", lambda *a, **k: warm.append(real_warmup(*a, **k)) or warm[-1])
    built = []
    real_build = M.build_model

    def recording_build(*a, **k):
        net = real_build(*a, **k)
        built.append({n: p.detach().clone() for n, p in net.state_dict().items()})
        return net

    monkeypatch.setattr(M, "build_model", recording_build)
    sources = []
    real_source = L._Source.__init__

    def spy(self, x, kind, norm, device):
        sources.append(np.asarray(x).copy())
        real_source(self, x, kind, norm, device)

    monkeypatch.setattr(L._Source, "__init__", spy)
    df = run_sweep({"data": features_npz, "noise": "sym:0.3", "warmup_epochs": 2}, ["small_loss"], [0.25], [0], "ce",
                   learner_epochs=1)
    assert len(df) == 1 and df.learner_input.iloc[0] == "from-scratch"
    from prune_core.data import load_dataset

    x = load_dataset(features_npz).x_train
    kept = sources[0]
    assert kept.shape == (60, 6)  # 25% of 240: the learner's training source holds the kept rows only
    kept_rows = {tuple(r) for r in kept}
    assert len(kept_rows) == 60 and kept_rows <= {tuple(r) for r in x}
    assert len(built) == 1  # the learner's network (the warm-up builds its own elsewhere)
    warm_state = warm[0].model.state_dict()
    same = [n for n, t in built[0].items() if t.dtype.is_floating_point and t.shape == warm_state[n].shape
            and torch.equal(t, warm_state[n].cpu()) and t.abs().sum() > 0 and n.endswith("weight")]
    assert not same, f"learner started from warm-up weights: {same}"


def test_sweep_on_two_worker_processes_equals_one_process(features_npz):
    args = ({"data": features_npz, "noise": "sym:0.3", "warmup_epochs": 2}, ["uniform", "prune4rel"], [0.3, 0.6],
            [0], "ce")
    # Results depend on torch's thread count: one thread here, and 2 // 2 = 1 per worker.
    torch.set_num_threads(1)
    one = run_sweep(*args, learner_epochs=2, workers=1)
    torch.set_num_threads(2)
    two = run_sweep(*args, learner_epochs=2, workers=2)
    torch.set_num_threads(1)
    cols = ["method", "keep_ratio", "seed", "test_acc", "relabel_acc_all", "relabel_gain_all"]
    pd.testing.assert_frame_equal(one[cols], two[cols])


def test_sweep_reuses_a_given_warmup(features_npz, monkeypatch):
    from prune_core.data import load_dataset
    from prune_core.pipeline import RunConfig
    from prune_core.sweep import prepare_seed

    ds = load_dataset(features_npz)
    config = RunConfig(data=features_npz, noise="sym:0.3", warmup_epochs=2)
    ctx = prepare_seed(config, ds, 0)
    calls = []
    monkeypatch.setattr(warmup_module, "warmup", lambda *a, **k: calls.append(1))
    df = run_sweep(config, ["uniform"], [0.5], [0], "ce", learner_epochs=1,
                   precomputed={0: {"noisy": ctx.noisy, "wu": ctx.wu, "graph": ctx.graph, "ginfo": ctx.ginfo}})
    assert not calls and df.warmup_reused.all() and df.warmup_seconds.iloc[0] == 0


def test_cancel_stops_a_sweep_on_worker_processes(features_npz):
    import threading

    from prune_core.errors import Cancelled

    cancel = threading.Event()
    seen = []

    def on_result(row):
        seen.append(row)
        cancel.set()  # cancel as soon as the first fit is back

    with pytest.raises(Cancelled):
        run_sweep({"data": features_npz, "noise": "sym:0.3", "warmup_epochs": 2}, ["uniform", "prune4rel"],
                  [0.2, 0.4, 0.6, 0.8], [0], "ce", learner_epochs=200, workers=2, on_result=on_result,
                  cancel=cancel)
    assert len(seen) == 1  # the fits still queued or running were dropped with the pool
