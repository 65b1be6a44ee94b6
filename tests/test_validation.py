"""The shared input layer (`prune_core.validation`): property-based tests over random inputs,
and one regression test per kind of input that used to pass silently or crash.

Every property asserts the same contract: a call returns a valid result or raises
`InputError` with a one-line message, never another exception.
"""

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

import prune_core as pc
from prune_core.data import load_dataset
from prune_core.errors import InputError
from prune_core.graph import build_graph
from prune_core.label_errors import corrections_frame, find_label_issues
from prune_core.noise import apply_noise
from prune_core.pipeline import RunConfig, run_pipeline, selection_table
from prune_core.selection import get_method
from prune_core.validation import (
    INDEX_COLUMN_NAMES,
    LABEL_COLUMN_NAMES,
    ROW_SUM_TOLERANCE,
    check_labels,
    check_probs,
    encode_label_values,
    read_label_csv,
)

ROOT = Path(__file__).resolve().parents[1]
FAST = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def assert_one_line_input_error(call):
    """Run `call`; return its result, or None when it raised InputError with a one-line message."""
    try:
        return call()
    except InputError as e:
        message = str(e)
        assert message and "\n" not in message, repr(message)
        return None


# --------------------------------------------------------------------------- properties


def _near_simplex(draw):
    n = draw(st.integers(1, 12))
    c = draw(st.integers(2, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    p = rng.dirichlet(np.ones(c), size=n)
    kind = draw(st.sampled_from(["exact", "float32", "tiny", "scaled", "negative", "nan", "shape"]))
    if kind == "float32":
        p = p.astype(np.float32)
    elif kind == "tiny":  # inside the tolerance
        p = p + draw(st.floats(-ROW_SUM_TOLERANCE / (2 * c), ROW_SUM_TOLERANCE / (2 * c)))
    elif kind == "scaled":
        p = p * draw(st.floats(0.0, 5.0))
    elif kind == "negative":
        p[rng.integers(n), rng.integers(c)] = -draw(st.floats(1e-3, 2.0))
    elif kind == "nan":
        p[rng.integers(n), rng.integers(c)] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    else:
        p = p.reshape(-1) if draw(st.booleans()) else p[:, :1]
    return p


probability_matrices = st.composite(_near_simplex)()
any_arrays = hnp.arrays(
    dtype=st.sampled_from([np.float16, np.float32, np.float64, np.int64, np.uint8, np.bool_]),
    shape=hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=6),
    elements=None,
)


@FAST
@given(st.one_of(probability_matrices, any_arrays))
def test_check_probs_returns_distributions_or_one_line_error(probs):
    p = assert_one_line_input_error(lambda: check_probs(probs))
    if p is not None:
        assert p.dtype == np.float64 and p.ndim == 2 and p.shape[1] >= 2
        assert np.isfinite(p).all() and (p >= -1e-6).all() and (p <= 1 + 1e-6).all()
        assert np.allclose(p.sum(axis=1), 1.0, atol=ROW_SUM_TOLERANCE)
        np.testing.assert_array_equal(p, np.asarray(probs, dtype=np.float64))  # never renormalised


@FAST
@given(probability_matrices, st.sampled_from(["prune4rel", "margin", "entropy", "least_confidence", "el2n",
                                              "small_loss", "ccs"]))
def test_select_and_find_label_issues_agree_on_probs(probs, method):
    """Every entry point that takes probs accepts exactly what check_probs accepts."""
    accepted = assert_one_line_input_error(lambda: check_probs(probs)) is not None
    n = len(probs) if np.ndim(probs) else 0
    c = probs.shape[1] if np.ndim(probs) == 2 else 2
    labels = np.arange(n) % c
    graph = None
    if method == "prune4rel":
        import scipy.sparse as sp

        graph = sp.identity(n, dtype=np.float32, format="csr")
    sel = assert_one_line_input_error(lambda: pc.select(method, budget=1, probs=probs, labels=labels, graph=graph))
    issues = assert_one_line_input_error(lambda: find_label_issues(probs, labels))
    if n >= 1:
        assert (sel is not None) == accepted
        assert (issues is not None) == accepted


label_sets = st.lists(st.integers(0, 1000), min_size=1, max_size=6, unique=True)


@FAST
@given(label_sets, st.integers(2, 40), st.integers(0, 2**32 - 1),
       st.sampled_from([np.int64, np.int32, np.uint16, np.float64]))
def test_label_values_with_gaps_map_to_contiguous_ids(values, n, seed, dtype):
    rng = np.random.default_rng(seed)
    y = rng.choice(np.array(values), size=n).astype(dtype)
    checked = check_labels(y, "y")
    (ids,), label_values = (lambda out: (list(out[0].values()), out[1]))(encode_label_values({"y": checked}))
    present = np.unique(checked)
    if label_values is None:
        np.testing.assert_array_equal(present, np.arange(len(present)))
        np.testing.assert_array_equal(ids, checked)
    else:
        np.testing.assert_array_equal(label_values, present)  # no empty class
        np.testing.assert_array_equal(np.unique(ids), np.arange(len(present)))
        np.testing.assert_array_equal(label_values[ids], checked)


@FAST
@given(st.one_of(any_arrays, st.lists(st.one_of(st.integers(-3, 50), st.floats(allow_nan=True)), max_size=8)))
def test_check_labels_returns_int64_or_one_line_error(y):
    out = assert_one_line_input_error(lambda: check_labels(y, "y"))
    if out is not None:
        assert out.dtype == np.int64 and out.ndim == 1 and (out >= 0).all()


HEADER_SPELLINGS = [None, "label", "Label", " LABELS ", "y", "target", "noisy_label", "lbl", "labels,extra"]
INDEX_SPELLINGS = [None, "index", "Index", "idx", ""]


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 30), st.integers(0, 2**32 - 1), st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "latin-1"]),
       st.sampled_from(HEADER_SPELLINGS), st.sampled_from(INDEX_SPELLINGS), st.sampled_from([",", ";", "\t"]),
       st.booleans(), st.booleans())
def test_label_csv_read_in_example_order_or_refused(n, seed, encoding, label_name, index_name, sep, shuffle, crlf):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 5, size=n)
    order = rng.permutation(n) if shuffle else np.arange(n)
    with_index = index_name is not None
    rows = [([str(i)] if with_index else []) + [str(labels[i])] for i in order]
    if label_name is not None:
        rows.insert(0, ([index_name] if with_index else []) + [label_name])
    newline = "\r\n" if crlf else "\n"
    text = newline.join(sep.join(r) for r in rows) + newline
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "labels.csv"
        path.write_bytes(text.encode(encoding))
        out = assert_one_line_input_error(lambda: read_label_csv(path))
    understood = label_name is None or (
        label_name.strip().lower() in LABEL_COLUMN_NAMES
        and (index_name is None or index_name.strip().lower() in INDEX_COLUMN_NAMES)
    )
    if out is not None:
        # Whatever is accepted lands on the right examples: by the index column when there is
        # one (shuffled rows included), else in row order.
        np.testing.assert_array_equal(out, labels if with_index else labels[order])
    elif understood:
        pytest.fail("a well-formed label file was refused")


@settings(max_examples=15, deadline=None)
@given(st.integers(2, 9), st.integers(1, 8), st.sampled_from(["auto", "exact", "blocked", "ivf", "hnsw"]),
       st.integers(0, 2**32 - 1), st.sampled_from(["auto", 0.5, 0.9]))
def test_every_knn_backend_serves_small_n(n, k, search, seed, tau):
    z = np.random.default_rng(seed).normal(size=(n, 3))
    out = assert_one_line_input_error(
        lambda: build_graph(z, k=k, tau=tau, search=search, return_info=True, allow_empty=True))
    if k <= n - 1:
        assert out is not None, (n, k, search)
        graph, info = out
        assert graph.shape == (n, n) and info.n == n
        assert (info.fallback is not None) == (search == "ivf" and n < 39)


@settings(max_examples=20, deadline=None)
@given(st.integers(2, 24), st.integers(0, 2**32 - 1), label_sets, st.booleans(),
       st.sampled_from([np.uint8, np.float32, np.int16, np.float64]), st.sampled_from([(4,), (3, 3), (3, 3, 3)]))
def test_npz_datasets_load_or_refuse(n, seed, values, with_names, dtype, shape):
    rng = np.random.default_rng(seed)
    x = (rng.random(size=(n, *shape)) * rng.choice([1.0, 255.0, 70000.0])).astype(dtype)
    y = rng.choice(np.array(values), size=n)
    arrays = dict(x_train=x, y_train=y)
    if with_names:
        arrays["class_names"] = np.array([f"c{i}" for i in range(len(values))])
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(Path(tmp) / "d.npz", **arrays)
        ds = assert_one_line_input_error(lambda: load_dataset(f"npz:{Path(tmp) / 'd.npz'}", test_fraction=0))
    if ds is not None:
        assert ds.x_train.dtype in (np.uint8, np.float32)
        assert ds.y_train.min() >= 0 and ds.y_train.max() < ds.num_classes == len(ds.class_names)
        if not with_names:  # no empty classes
            assert len(np.unique(ds.y_train)) == ds.num_classes
            original = ds.y_train if ds.label_values is None else ds.label_values[ds.y_train]
            np.testing.assert_array_equal(original, y)


# --------------------------------------------------------------------------- 1. probabilities


def test_probabilities_off_the_simplex_are_refused_by_every_entry_point():
    rng = np.random.default_rng(0)
    n, c = 60, 4
    probs = 3.0 * rng.dirichlet(np.ones(c), size=n)  # values up to 3, rows summing to 3
    labels = np.arange(n) % c
    import scipy.sparse as sp

    graph = sp.identity(n, dtype=np.float32, format="csr")
    expected = ("probs: 60 of 60 rows are not probability distributions (finite values in [0, 1] summing "
                "to 1 within 0.001); first is row 0, which ")
    prob_methods = [m for m in pc.list_methods() if "probs" in get_method(m).needs] + ["small_loss", "forgetting", "ccs"]
    assert {"prune4rel", "el2n", "ccs", "margin", "entropy", "least_confidence"} <= set(prob_methods)
    for method in prob_methods:
        with pytest.raises(InputError) as e:
            pc.select(method, keep_ratio=0.5, probs=probs, labels=labels, graph=graph,
                      embeddings=rng.normal(size=(n, 3)))
        assert str(e.value).startswith(expected), (method, str(e.value))
    with pytest.raises(InputError) as e:
        find_label_issues(probs, labels)
    assert str(e.value).startswith(expected)
    with pytest.raises(InputError, match="2 of 60 rows"):
        bad = rng.dirichlet(np.ones(c), size=n)
        bad[[7, 9], 0] = np.nan
        find_label_issues(bad, labels)


# --------------------------------------------------------------------------- 2. label ids


@pytest.fixture
def gap_dataset(tmp_path):
    """digits with labels 10, 20, ..., 100 (no class names) and its own test split."""
    from sklearn.datasets import load_digits

    b = load_digits()
    x = np.round(b.images * 255 / 16).astype(np.uint8)
    y = b.target * 10 + 10
    np.savez(tmp_path / "gap.npz", x_train=x[:400], y_train=y[:400], x_test=x[400:500], y_test=y[400:500])
    return f"npz:{tmp_path / 'gap.npz'}", y[:400]


def test_labels_with_gaps_get_contiguous_ids_and_are_exported_in_original_values(gap_dataset, tmp_path):
    spec, y = gap_dataset
    ds = load_dataset(spec)
    assert ds.num_classes == 10 and ds.class_names == [str(v) for v in range(10, 101, 10)]
    np.testing.assert_array_equal(ds.label_values[ds.y_train], y)
    noisy = apply_noise(ds, "sym:0.4", seed=0)
    assert np.bincount(noisy.y_noisy, minlength=10).min() > 0  # no class left empty, none invented
    assert abs(noisy.noise_rate - 0.4) < 0.01
    # The same values in a label file given with labels: map to the same ids.
    np.save(tmp_path / "file.npy", y)
    np.testing.assert_array_equal(apply_noise(ds, f"labels:{tmp_path / 'file.npy'}").y_noisy, ds.y_train)
    np.save(tmp_path / "odd.npy", np.where(np.arange(len(y)) == 5, 15, y))
    with pytest.raises(InputError, match=r"has label 15 \(position 5\), which is not one of the dataset's labels"):
        apply_noise(ds, f"labels:{tmp_path / 'odd.npy'}")
    # Exports: selection CSV and corrections CSV carry the original values.
    sel = pc.select("uniform", keep_ratio=0.5, labels=noisy.y_noisy)
    result = SimpleNamespace(selection=sel, noisy=noisy, confidence=np.zeros(len(y)), dataset=ds)
    table = selection_table(result)
    np.testing.assert_array_equal(table["clean_label"].to_numpy(dtype=np.int64), y)
    assert set(table["given_label"]) == set(range(10, 101, 10))
    issues = find_label_issues(np.eye(10)[(noisy.y_noisy + 1) % 10] * 0.9 + 0.01, noisy.y_noisy)
    frame = corrections_frame(issues, {"3": {"decision": "accept"}}, label_values=ds.label_values)
    assert frame["given_label"].iloc[0] == ds.label_values[noisy.y_noisy[3]]
    assert frame["corrected_label"].iloc[0] == ds.label_values[(noisy.y_noisy[3] + 1) % 10]
    assert ds.summary()["label_values"] == list(range(10, 101, 10))  # in the manifest


# --------------------------------------------------------------------------- 3. label files


def test_bom_csv_with_index_column_in_shuffled_order_lands_on_the_right_rows(gap_dataset, tmp_path):
    spec, y = gap_dataset
    ds = load_dataset(spec)
    rng = np.random.default_rng(0)
    noisy_values = y.copy()
    flip = rng.choice(len(y), size=80, replace=False)  # 20 %
    noisy_values[flip] = np.where(noisy_values[flip] == 100, 10, noisy_values[flip] + 10)
    order = rng.permutation(len(y))
    lines = ["index,label"] + [f"{i},{noisy_values[i]}" for i in order]
    (tmp_path / "bom.csv").write_text("\n".join(lines) + "\n", encoding="utf-8-sig")  # Excel's CSV UTF-8
    out = apply_noise(ds, f"labels:{tmp_path / 'bom.csv'}")
    assert out.noise_rate == pytest.approx(0.2)
    np.testing.assert_array_equal(ds.label_values[out.y_noisy], noisy_values)
    # pandas' own to_csv (unnamed index column) reads the same.
    pd.DataFrame({"label": noisy_values}).iloc[order].to_csv(tmp_path / "pandas.csv")
    np.testing.assert_array_equal(apply_noise(ds, f"labels:{tmp_path / 'pandas.csv'}").y_noisy, out.y_noisy)
    (tmp_path / "odd.csv").write_text("row,lbl\n" + "".join(f"{i},{noisy_values[i]}\n" for i in order))
    with pytest.raises(InputError, match="header 'row,lbl' not understood"):
        apply_noise(ds, f"labels:{tmp_path / 'odd.csv'}")
    (tmp_path / "ids.csv").write_text("id,label\n" + "".join(f"{i},{noisy_values[i]}\n" for i in order))
    with pytest.raises(InputError, match="column 'id' lists 0..399 out of order; name it 'index'"):
        apply_noise(ds, f"labels:{tmp_path / 'ids.csv'}")
    (tmp_path / "latin.csv").write_bytes("étiquette\n1\n".encode("latin-1"))
    with pytest.raises(InputError, match="not UTF-8 text"):
        read_label_csv(tmp_path / "latin.csv")


# --------------------------------------------------------------------------- 4. images


def test_image_folder_converts_every_mode_to_8_bit(tmp_path):
    root = tmp_path / "imgs"
    ramp16 = (np.arange(16, dtype=np.uint16).reshape(4, 4) * 4369)  # 0..65535
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        Image.fromarray(ramp16).save(root / cls / "grey16.png")  # mode I;16
        Image.fromarray((ramp16 // 257).astype(np.uint8)).convert("P").save(root / cls / "palette.png")
        Image.fromarray((ramp16 // 257).astype(np.uint8)).convert("LA").save(root / cls / "alpha.png")
        Image.fromarray((ramp16 / 65535).astype(np.float32), mode="F").save(root / cls / "float.tif")
        Image.fromarray((ramp16 // 257).astype(np.uint8)).convert("1").save(root / cls / "bits.png")
    assert Image.open(root / "a" / "grey16.png").mode == "I;16"
    ds = load_dataset(f"imagefolder:{root}", test_fraction=0)
    assert ds.kind == "grey" and ds.x_train.dtype == np.uint8
    by_name = dict(zip([p.name for cls in ("a", "b") for p in sorted((root / cls).iterdir())], ds.x_train))
    expected = (ramp16 // 257).astype(np.uint8)
    np.testing.assert_array_equal(by_name["grey16.png"], expected)  # scaled, not clipped to {0, 255}
    np.testing.assert_array_equal(by_name["float.tif"], expected)
    np.testing.assert_array_equal(by_name["alpha.png"], expected)
    # Colour modes become RGB.
    Image.new("CMYK", (4, 4), (0, 255, 0, 0)).save(root / "a" / "cmyk.jpg")
    assert load_dataset(f"imagefolder:{root}", test_fraction=0).kind == "rgb"
    # What cannot be converted is refused, naming the file.
    Image.fromarray(np.full((4, 4), 1e6, dtype=np.float32), mode="F").save(root / "b" / "huge.tif")
    with pytest.raises(InputError, match=r"huge\.tif \(mode F\) has values in \[1e\+06, 1e\+06\]"):
        load_dataset(f"imagefolder:{root}", test_fraction=0)


# --------------------------------------------------------------------------- 5. small data, early checks


def test_ivf_on_six_examples_falls_back_to_exact_with_a_note(tmp_path):
    z = np.random.default_rng(0).normal(size=(6, 4))
    notes = []
    graph, info = build_graph(z, k=5, tau="auto", search="ivf", return_info=True,
                              progress=lambda f, m, x: notes.append(m))
    assert info.search == "exact" and graph.shape == (6, 6)
    assert info.fallback == "ivf search needs at least 39 examples (N=6); using exact search"
    assert info.fallback in notes


def test_options_are_checked_before_the_warm_up(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "six.npz", x_train=rng.normal(size=(6, 4)).astype(np.float32), y_train=np.arange(6) % 2)
    stages = []

    def progress(stage, fraction, message, metrics):
        stages.append(stage)

    data = f"npz:{tmp_path / 'six.npz'}"
    bad = [
        (dict(k=10), r"k=10 is larger than N-1=3 \(N=4 examples\)"),  # 6 examples, 2 held out
        (dict(search="kd"), "unknown graph search 'kd'"),
        (dict(tau="0.9x"), "tau must be a number"),
        (dict(mode="fast"), "unknown prune4rel mode 'fast'"),
        (dict(confidence="top"), "unknown confidence 'top'"),
        (dict(eta=0.0), "eta must be a positive number"),
    ]
    for fields, message in bad:
        with pytest.raises(InputError, match=message):
            run_pipeline(RunConfig(data=data, noise="none", **fields), progress=progress)
    assert "warmup" not in stages


def _cli(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "prune_core", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args, message", [
    (["sweep", "--seed", "0", "--out", "x"],
     "python -m prune_core sweep: error: unrecognized argument --seed (did you mean --seeds?)"),
    (["run", "--keep", "0.5", "--out", "x"],
     "python -m prune_core run: error: unrecognized argument --keep (did you mean --keep-ratio?)"),
    (["sweep", "--search", "kd", "--learner", "none", "--out", "x"], "error: unknown graph search 'kd'"),
    (["sweep", "--learner", "sopp", "--out", "x"], "error: unknown learner 'sopp'"),
])
def test_cli_refuses_abbreviated_flags_and_bad_options_in_one_line(args, message, tmp_path):
    r = _cli(*args)
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(message), r.stderr


@pytest.mark.parametrize("text, cast, expected", [
    ("0.2, 0.4", float, [0.2, 0.4]), ("0 1 2", int, [0, 1, 2]), (" 0 , 1 ", int, [0, 1]),
    ("0,,1", int, "empty item in '0,,1'"), ("0.2,", float, "empty item"), ("  ", float, "at least one"),
    ("1.5", int, "'1.5' is not a whole number"), ("0.2,abc", float, "'abc' is not a number"),
])
def test_number_lists_are_read_as_typed_or_refused(text, cast, expected):
    from prune_core.validation import parse_number_list

    if isinstance(expected, list):
        assert parse_number_list(text, cast, "values") == expected
    else:
        with pytest.raises(InputError, match=expected):
            parse_number_list(text, cast, "values")
