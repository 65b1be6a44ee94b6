"""The CLI end to end on digits, and one-line exit-code-2 errors for bad input."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, timeout=600):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "prune_core", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_run_on_digits_writes_three_files(tmp_path):
    out = tmp_path / "out"
    r = run_cli("run", "--data", "digits", "--noise", "sym:0.4", "--method", "prune4rel",
                "--keep-ratio", "0.5", "--warmup-epochs", "3", "--tau", "auto", "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(open(out / "selection.csv")))
    assert len(rows) == 1437
    assert {"index", "rank", "selected"} <= set(rows[0])
    kept = [r for r in rows if r["selected"] == "1"]
    assert len(kept) == round(0.5 * 1437)
    assert sorted(int(r["rank"]) for r in kept) == list(range(len(kept)))
    metrics = json.load(open(out / "metrics.json"))
    for key in ("N", "budget", "keep_ratio", "noise_rate_data", "noise_rate_subset", "objective_F",
                "class_counts_kept", "seconds"):
        assert key in metrics
    assert metrics["N"] == 1437 and metrics["budget"] == 718
    assert abs(metrics["noise_rate_data"] - 0.4) < 0.001
    assert set(metrics["seconds"]) >= {"load", "warmup", "graph", "select"}
    manifest = json.load(open(out / "manifest.json"))
    assert manifest["config"]["seed"] == 0 and "embedding_hash" in manifest and "versions" in manifest
    # Same inputs and seed: the same selection.
    out2 = tmp_path / "out2"
    r2 = run_cli("run", "--data", "digits", "--noise", "sym:0.4", "--method", "prune4rel",
                 "--keep-ratio", "0.5", "--warmup-epochs", "3", "--tau", "auto", "--out", str(out2), "--quiet")
    assert r2.returncode == 0, r2.stderr
    assert (out / "selection.csv").read_text() == (out2 / "selection.csv").read_text()


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return f"npz:{path}"


@pytest.fixture
def bad_inputs(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 5)).astype(np.float32)
    y = np.arange(40) % 2
    nan_x = x.copy()
    nan_x[3, 1] = np.nan
    return {
        "missing file": (["--data", f"npz:{tmp_path / 'nope.npz'}"], "no such file"),
        "wrong shapes": (["--data", _npz(tmp_path / "shape.npz", x_train=x, y_train=y[:30])], ""),
        "labels out of range": (["--data", _npz(tmp_path / "range.npz", x_train=x, y_train=y + 5,
                                                class_names=np.array(["a", "b"]))], "label"),
        "NaN features": (["--data", _npz(tmp_path / "nan.npz", x_train=nan_x, y_train=y)], "NaN"),
        "one class": (["--data", _npz(tmp_path / "one.npz", x_train=x, y_train=np.zeros(40, int))], "class"),
        "ratio zero": (["--keep-ratio", "0"], "keep ratio"),
        "ratio above one": (["--keep-ratio", "1.5"], "keep ratio"),
        "unknown method": (["--method", "magic"], "unknown selection method"),
        "unknown noise": (["--noise", "loud:0.3"], "noise"),
        "k larger than N": (["--data", _npz(tmp_path / "small.npz", x_train=x, y_train=y), "--k", "500",
                            "--warmup-epochs", "1"], "larger than"),
        "tau without neighbours": (["--tau", "0.99999", "--warmup-epochs", "1"], "neighbour"),
        "unknown mode": (["--mode", "fast", "--warmup-epochs", "1"], "mode"),
        "unknown flag": (["--keep", "0.5"], "unrecognized argument --keep (did you mean --keep-ratio?)"),
    }


CASES = ["missing file", "wrong shapes", "labels out of range", "NaN features", "one class", "ratio zero",
         "ratio above one", "unknown method", "unknown noise", "k larger than N", "tau without neighbours",
         "unknown mode", "unknown flag"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_exit_code_2_one_line(case, bad_inputs, tmp_path):
    extra, needle = bad_inputs[case]
    args = {"--data": "digits", "--noise": "sym:0.4", "--method": "prune4rel", "--keep-ratio": "0.5",
            "--out": str(tmp_path / "o"), "--warmup-epochs": "1"}
    for flag, value in zip(extra[::2], extra[1::2]):
        args[flag] = value
    flat = [item for kv in args.items() for item in kv]
    r = run_cli("run", *flat, "--quiet")
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert needle.lower() in lines[0].lower(), lines[0]


def test_methods_lists_registry():
    r = run_cli("methods")
    assert r.returncode == 0
    assert "prune4rel" in r.stdout and "uniform" in r.stdout


def test_help_and_select_from_given_outputs_do_not_import_torch(tmp_path):
    """torch costs seconds and ~0.7 GiB to import; `import prune_core`, `--help` and a
    selection from model outputs the user brings never train, so they must not load it
    (on a machine with the NVIDIA driver the GPU probe may, legitimately)."""
    rng = np.random.default_rng(0)
    np.save(tmp_path / "emb.npy", rng.normal(size=(300, 8)).astype(np.float32))
    np.save(tmp_path / "probs.npy", rng.dirichlet(np.ones(4), 300).astype(np.float32))
    np.save(tmp_path / "labels.npy", rng.integers(0, 4, 300))
    select = ("main(['select', '--probs', 'P/probs.npy', '--embeddings', 'P/emb.npy', '--labels', 'P/labels.npy', "
              "'--keep-ratio', '0.5', '--tau', 'auto', '--out', 'P/out', '--quiet'])").replace("P", str(tmp_path))
    code = ("import sys, prune_core\n"
            "assert 'torch' not in sys.modules, 'import prune_core loaded torch'\n"
            "from prune_core.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, '--help loaded torch'\n"
            f"assert {select} == 0\n"
            "import os\n"
            "gpu = os.path.exists('/proc/driver/nvidia') or os.path.exists('/dev/dxg')\n"
            "assert gpu or 'torch' not in sys.modules, 'select from given outputs loaded torch'\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    import torch

    assert manifest["versions"]["torch"] == torch.__version__  # read without importing it, label included


def test_numba_cache_defaults_to_the_warmed_folder_without_setup_sh():
    """`python -m prune_core ...` without `source scripts/setup.sh` must use the cache that
    setup.sh warms (.numba_cache), not numba's default next to the sources (a cold compile)."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    code = "import prune_core, numba, os; print(numba.config.CACHE_DIR); print(os.environ['NUMBA_CACHE_DIR'])"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [str(ROOT / ".numba_cache")] * 2
    # A folder the user chose stays theirs.
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**env, "NUMBA_CACHE_DIR": "/tmp/mine"},
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["/tmp/mine"] * 2


def test_cli_unknown_learner_lists_none_and_far_flags_get_no_suggestion(tmp_path):
    """A trial user's findings: the sweep's learner choices must include 'none', and a flag
    like --budget must not be 'corrected' to an unrelated one (--quiet)."""
    def run(*args):
        return subprocess.run([sys.executable, "-m", "prune_core", *args], capture_output=True, text=True,
                              cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)})

    res = run("sweep", "--data", "digits", "--methods", "uniform", "--ratios", "0.5", "--learner", "nonee",
              "--out", str(tmp_path / "s"))
    assert res.returncode == 2 and "choose one of ce, sop, dividemix, none" in res.stderr, res.stderr
    res = run("run", "--data", "digits", "--method", "uniform", "--budget", "100", "--out", str(tmp_path / "r"))
    assert res.returncode == 2 and "unrecognized argument --budget" in res.stderr, res.stderr
    assert "did you mean" not in res.stderr
