"""Keep-ratio sweeps: the CLI on digits, shared warm-up and rankings, bad input before training."""

import csv
import importlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from prune_core import cli
from prune_core.errors import InputError
from prune_core.selection import _METHODS, MethodOutput, list_methods, register_method
from prune_core.sweep import RESULT_COLUMNS, check_sweep_inputs, run_sweep, sweep_figures

ROOT = Path(__file__).resolve().parents[1]
# The module, not the function `prune_core.warmup` that the package re-exports.
warmup_module = importlib.import_module("prune_core.warmup")
REQUIRED = ["method", "keep_ratio", "seed", "learner", "test_acc", "relabel_acc_subset", "relabel_acc_all",
            "noise_in_subset", "select_seconds", "predicted_relabel", "budget", "objective_F", "learner_seconds"]


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
        for col in ("test_acc", "relabel_acc_subset", "relabel_acc_all", "noise_in_subset", "predicted_relabel"):
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
    assert {"relabel_acc_all", "test_acc", "predicted_relabel"} <= set(figs)
    assert len(figs["test_acc"].data) == 3  # one line per method


def test_no_learner_and_no_ground_truth(features_npz):
    df = run_sweep({"data": features_npz, "noise": "sym:0.3", "warmup_epochs": 2}, ["uniform"], [0.5], [0], "none")
    assert df.test_acc.isna().all() and df.relabel_acc_all.isna().all() and df.noise_in_subset.notna().all()
    # No ground truth: the npz has no y_train_clean and no noise is injected.
    df = run_sweep({"data": features_npz, "noise": "none", "warmup_epochs": 2}, ["uniform"], [0.5], [0], "ce",
                   learner_epochs=2)
    assert df.relabel_acc_all.isna().all() and df.relabel_acc_subset.isna().all()
    assert df.noise_in_subset.isna().all() and df.test_acc.notna().all()
    from prune_core.sweep import results_csv

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


def test_report_script_dry_run_keeps_hand_written_text(tmp_path):
    """bench/relabel_report.py end to end on digits (tiny), in-process; a missing USPS file skips."""
    spec = importlib.util.spec_from_file_location("relabel_report", ROOT / "bench" / "relabel_report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    doc = tmp_path / "results.md"
    assert report.main(["--data", f"npz:{tmp_path / 'absent.npz'}", "--doc", str(doc)]) == 0 and not doc.exists()
    doc.write_text("# kept above\n\n" + report.BEGIN + "\nold\n" + report.END + "\n\n## Hand-written analysis\nkept\n")
    cwd = os.getcwd()
    try:
        assert report.main(["--data", "digits", "--noises", "sym:0.4", "--seeds", "0", "--ratios", "0.5",
                            "--methods", "uniform,prune4rel", "--learners", "ce", "--learner-epochs", "2",
                            "--warmup-epochs", "2", "--no-study", "--jobs", "1", "--doc", str(doc),
                            "--out", str(tmp_path / "out")]) == 0
    finally:
        os.chdir(cwd)
    text = doc.read_text()
    assert text.startswith("# kept above") and text.rstrip().endswith("kept") and "\nold\n" not in text
    assert "| uniform |" in text and "| prune4rel |" in text and "Best method per keep ratio" in text
    assert (tmp_path / "out" / "results.csv").exists() and (tmp_path / "out" / "curves_sym0.4.png").exists()
