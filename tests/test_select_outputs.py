"""`python -m prune_core select` on model outputs a test writes from digits: equal to the API's
`select`, in every file form (npy, npz member, parquet and CSV columns); bad inputs exit 2
with one line."""

import csv
import json

import numpy as np
import pandas as pd
import pytest

import prune_core as pc
from prune_core.cli import main
from prune_core.errors import InputError
from prune_core.outputs import check_method_for_outputs, read_array
from tests.test_cli import run_cli


@pytest.fixture(scope="module")
def digits_outputs():
    """Out-of-sample probabilities (5-fold logistic regression on 40%-noisy labels), PCA
    embeddings, noisy and clean labels of scikit-learn's digits."""
    from sklearn.datasets import load_digits
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict

    x, y_clean = load_digits(return_X_y=True)
    y = pc.inject_noise(y_clean, "sym", 0.4, num_classes=10, seed=0)
    probs = cross_val_predict(LogisticRegression(max_iter=300), x / 16.0, y, cv=5, method="predict_proba")
    emb = PCA(16, random_state=0).fit_transform(x).astype(np.float32)
    return probs.astype(np.float32), emb, y.astype(np.int64), y_clean.astype(np.int64)


def api_ranking(probs, emb, y, method="prune4rel", keep_ratio=0.3, seed=0):
    g = pc.build_graph(emb, k=50, tau="auto", seed=seed)
    return pc.select(method, keep_ratio=keep_ratio, probs=probs, embeddings=emb, labels=y, graph=g,
                     seed=seed).indices


def kept_in_rank_order(out_dir):
    rows = [r for r in csv.DictReader(open(out_dir / "selection.csv")) if r["selected"] == "1"]
    return np.array([int(r["index"]) for r in sorted(rows, key=lambda r: int(r["rank"]))])


def write_forms(tmp_path, probs, emb, y, y_clean):
    """The same outputs as .npy files, .npz members, parquet column sets and CSV columns."""
    np.save(tmp_path / "probs.npy", probs)
    np.save(tmp_path / "emb.npy", emb)
    np.save(tmp_path / "y.npy", y)
    np.savez(tmp_path / "out.npz", probs=probs, emb=emb, y=y, y_clean=y_clean)
    table = pd.DataFrame({**{f"prob_{c}": probs[:, c] for c in range(probs.shape[1])},
                          **{f"emb_{d}": emb[:, d] for d in range(emb.shape[1])}, "label": y, "clean": y_clean})
    table.to_parquet(tmp_path / "out.parquet")
    table.to_csv(tmp_path / "out.csv", index=False)
    npz, pq, tab = tmp_path / "out.npz", tmp_path / "out.parquet", tmp_path / "out.csv"
    return {
        "npy": [str(tmp_path / "probs.npy"), str(tmp_path / "emb.npy"), str(tmp_path / "y.npy"), None],
        "npz": [f"{npz}#probs", f"{npz}#emb", f"{npz}#y", f"{npz}#y_clean"],
        "parquet": [f"{pq}#prob_*", f"{pq}#emb_*", f"{pq}#label", f"{pq}#clean"],
        "csv": [f"{tab}#prob_*", f"{tab}#emb_*", f"{tab}#label", f"{tab}#clean"],
    }


def select_args(probs, emb, y, y_clean, out, *extra):
    args = ["select", "--probs", probs, "--embeddings", emb, "--labels", y, "--out", str(out),
            "--keep-ratio", "0.3", "--quiet", *extra]
    return args + (["--labels-clean", y_clean] if y_clean else [])


def test_select_cli_equals_api_in_every_file_form(tmp_path, digits_outputs, capsys):
    probs, emb, y, y_clean = digits_outputs
    expected = api_ranking(probs, emb, y)
    forms = write_forms(tmp_path, probs, emb, y, y_clean)
    # One real subprocess (exit code, stdout JSON), the other forms in-process.
    r = run_cli(*select_args(*forms["npz"], tmp_path / "npz"))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["budget"] == round(0.3 * len(y))
    np.testing.assert_array_equal(kept_in_rank_order(tmp_path / "npz"), expected)
    for form in ("npy", "parquet", "csv"):
        assert main(select_args(*forms[form], tmp_path / form)) == 0, form
        np.testing.assert_array_equal(kept_in_rank_order(tmp_path / form), expected, err_msg=form)
    metrics = json.load(open(tmp_path / "parquet" / "metrics.json"))
    assert metrics["noise_rate_data"] == pytest.approx(float(np.mean(y != y_clean)))
    assert metrics["noise_rate_subset"] == pytest.approx(float(np.mean(y[expected] != y_clean[expected])))
    assert json.load(open(tmp_path / "npy" / "metrics.json"))["noise_rate_subset"] is None  # no clean labels
    manifest = json.load(open(tmp_path / "parquet" / "manifest.json"))
    assert manifest["inputs"]["probs"] == forms["parquet"][0]
    assert manifest["warmup"]["model"] == "model outputs"


def test_select_cli_passes_method_options(tmp_path, digits_outputs):
    probs, emb, y, _ = digits_outputs
    forms = write_forms(tmp_path, probs, emb, y, y)
    assert main(select_args(*forms["npy"], tmp_path / "o", "--method", "el2n", "--balance", "equal",
                            "--seed", "3")) == 0
    g = pc.build_graph(emb, k=50, tau="auto", seed=3)
    want = pc.select("el2n", keep_ratio=0.3, probs=probs, embeddings=emb, labels=y, graph=g, seed=3,
                     balance="equal").indices
    np.testing.assert_array_equal(kept_in_rank_order(tmp_path / "o"), want)


def one_line_error(capsys, argv) -> str:
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse usage errors
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_select_bad_inputs_exit_2_with_one_line(tmp_path, digits_outputs, capsys):
    probs, emb, y, _ = digits_outputs
    forms = write_forms(tmp_path, probs, emb, y, y)
    p, e, lab, _ = forms["npy"]
    np.save(tmp_path / "flat.npy", probs[:, 0])
    np.save(tmp_path / "short_emb.npy", emb[:100])
    np.save(tmp_path / "short_y.npy", y[:100])
    np.save(tmp_path / "scaled.npy", probs * 2)
    np.save(tmp_path / "big_label.npy", y + 10)
    pq = tmp_path / "out.parquet"
    cases = {
        "bad shape": ((str(tmp_path / "flat.npy"), e, lab), "probs must be a 2-D array (N, C)"),
        "mismatched N (embeddings)": ((p, str(tmp_path / "short_emb.npy"), lab),
                                      "embeddings have 100 rows but there are 1797 examples"),
        "mismatched N (labels)": ((p, e, str(tmp_path / "short_y.npy")), "labels has 100 labels but there are 1797"),
        "not distributions": ((str(tmp_path / "scaled.npy"), e, lab), "rows are not probability distributions"),
        "label out of range": ((p, e, str(tmp_path / "big_label.npy")), "out of range; there are 10 classes"),
        "unknown columns": ((f"{pq}#score_*", e, lab), "out.parquet has no column matching 'score_*'"),
        "unknown npz key": ((f"{tmp_path / 'out.npz'}#nope", e, lab), "has no array 'nope'"),
        "missing file": ((str(tmp_path / "none.npy"), e, lab), "no such file"),
        "a folder": ((str(tmp_path), e, lab), "is a folder, not a file"),
    }
    for name, ((pp, ee, yy), expected) in cases.items():
        err = one_line_error(capsys, select_args(pp, ee, yy, None, tmp_path / "bad"))
        assert expected in err, (name, err)
    err = one_line_error(capsys, select_args(p, e, lab, None, tmp_path / "bad", "--method", "forgetting"))
    assert "needs forgetting" in err and "use `run`" in err
    err = one_line_error(capsys, select_args(p, e, lab, None, tmp_path / "bad", "--keep-ratio", "2"))
    assert "keep ratio" in err
    assert not (tmp_path / "bad").exists()


def test_read_array_forms_and_method_check(tmp_path):
    np.savez(tmp_path / "one.npz", only=np.arange(4))
    np.testing.assert_array_equal(read_array(str(tmp_path / "one.npz")), np.arange(4))
    np.savez(tmp_path / "two.npz", a=np.arange(4), b=np.arange(4))
    with pytest.raises(InputError, match="holds 2 arrays"):
        read_array(str(tmp_path / "two.npz"))
    pd.DataFrame({"p_10": [0.1], "p_2": [0.9], "name": ["x"]}).to_parquet(tmp_path / "t.parquet")
    # Table column order, not sorted names.
    np.testing.assert_array_equal(read_array(f"{tmp_path / 't.parquet'}#p_*"), [[0.1, 0.9]])
    with pytest.raises(InputError, match="column 'name' of t.parquet is not numeric"):
        read_array(f"{tmp_path / 't.parquet'}#name")
    with pytest.raises(InputError, match="labels need exactly one"):
        read_array(f"{tmp_path / 't.parquet'}#p_*", "labels", labels=True)
    for method in pc.list_methods():
        if method == "forgetting":
            with pytest.raises(InputError, match="needs forgetting"):
                check_method_for_outputs(method)
        else:
            check_method_for_outputs(method)
    with pytest.raises(InputError, match="needs forgetting"):
        check_method_for_outputs("ccs", {"score": "forgetting"})
