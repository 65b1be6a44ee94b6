"""Label noise: exact injected rates, reproducibility, spec parsing, label files, transition."""

import math
import os
import pickle

import numpy as np
import pytest

from prune_core.data import Dataset, validate_dataset
from prune_core.errors import InputError
from prune_core.noise import (
    NoiseSpec,
    apply_noise,
    default_asym_map,
    inject_noise,
    parse_mapping,
    parse_noise_spec,
    read_label_file,
    transition_matrix,
)


def _half_up(x):
    return math.floor(x + 0.5)


def _labels(n=1000, c=10, seed=0):
    return np.random.default_rng(seed).integers(0, c, size=n)


def _dataset(y, c=10, clean=None, names=None, name="npz:test"):
    x = np.zeros((len(y), 2), dtype=np.float32)
    return validate_dataset(
        Dataset(x, np.asarray(y), y_train_clean=clean, num_classes=c, class_names=names or [], name=name)
    )


# --------------------------------------------------------------------------- injection


@pytest.mark.parametrize("n, rate", [(1000, 0.4), (1437, 0.2), (7, 0.5), (10, 0.0), (333, 0.95)])
def test_sym_flips_exactly_round_rate_n_to_other_classes(n, rate):
    y = _labels(n)
    before = y.copy()
    noisy = inject_noise(y, "sym", rate, num_classes=10, seed=3)
    np.testing.assert_array_equal(y, before)  # input untouched
    assert noisy.dtype == np.int64 and noisy.shape == y.shape
    assert np.count_nonzero(noisy != y) == _half_up(rate * n)
    assert noisy.min() >= 0 and noisy.max() < 10


def test_sym_new_labels_cover_all_other_classes():
    y = np.zeros(3000, dtype=np.int64)
    noisy = inject_noise(y, "sym", 0.9, num_classes=4, seed=0)
    counts = np.bincount(noisy[noisy != 0], minlength=4)
    assert counts[0] == 0 and counts[1:].min() > 800  # ~900 each: uniform over the other 3


def test_noise_is_reproducible_by_seed():
    y = _labels()
    for kind in ("sym", "asym"):
        a = inject_noise(y, kind, 0.3, num_classes=10, seed=7)
        np.testing.assert_array_equal(a, inject_noise(y, kind, 0.3, num_classes=10, seed=7))
        assert not np.array_equal(a, inject_noise(y, kind, 0.3, num_classes=10, seed=8))


@pytest.mark.parametrize("mapping", ["digits", "cifar10", "cifar10_pairs", "cyclic", None, {2: 7, 7: 2}, "2>7,3>8,5>6,6>5"])
def test_asym_flips_exact_per_class_counts_along_the_map(mapping):
    y = _labels(1000)
    rate = 0.3
    noisy = inject_noise(y, "asym", rate, num_classes=10, seed=1, mapping=mapping)
    flips = parse_mapping("cyclic" if mapping is None else mapping, 10)
    changed = noisy != y
    for c in range(10):
        in_c = y == c
        expected = _half_up(rate * in_c.sum()) if c in flips else 0
        assert np.count_nonzero(changed & in_c) == expected
        if c in flips:
            assert set(noisy[changed & in_c].tolist()) <= {flips[c]}  # only the mapped pair


def test_builtin_maps_are_the_documented_ones():
    assert parse_mapping("cifar10", 10) == {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}
    assert parse_mapping("digits", 10) == {2: 7, 3: 8, 5: 6, 6: 5, 7: 1}
    assert parse_mapping("cyclic", 3) == {0: 1, 1: 2, 2: 0}
    assert parse_mapping("2>7, 3>8", 10) == {2: 7, 3: 8}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(kind="sym", rate=1.0), r"\[0, 1\)"),
        (dict(kind="sym", rate=-0.1), r"\[0, 1\)"),
        (dict(kind="sym", rate=0.2, num_classes=1), "at least two classes"),
        (dict(kind="bogus", rate=0.2), "unknown noise kind"),
        (dict(kind="asym", rate=0.2, mapping="cifar10", num_classes=100), "for 10 classes"),
        (dict(kind="asym", rate=0.2, mapping="3>3"), "to itself"),
        (dict(kind="asym", rate=0.2, mapping="3>12"), "outside classes"),
        (dict(kind="asym", rate=0.2, mapping="2>7,2>8"), "twice"),
        (dict(kind="asym", rate=0.2, mapping="2-7"), "bad asym map"),
        (dict(kind="sym", rate=0.2, y=np.array([0, 1, 10])), "labels must be in"),
    ],
)
def test_inject_noise_bad_input(kwargs, message):
    kwargs = {"y": np.array([0, 1, 2, 3]), "num_classes": 10, **kwargs}
    with pytest.raises(InputError, match=message):
        inject_noise(**kwargs)


# --------------------------------------------------------------------------- spec parsing


@pytest.mark.parametrize(
    "text, expected",
    [
        ("none", NoiseSpec("none")),
        ("sym:0.4", NoiseSpec("sym", 0.4)),
        (" SYM:0.2 ", NoiseSpec("sym", 0.2)),
        ("asym:0.3", NoiseSpec("asym", 0.3)),
        ("asym:0.3:digits", NoiseSpec("asym", 0.3, mapping="digits")),
        ("asym:0.3:CIFAR10", NoiseSpec("asym", 0.3, mapping="cifar10")),
        ("asym:0.3:2>7,3>8", NoiseSpec("asym", 0.3, mapping="2>7,3>8")),
        ("labels:/data/y.npy", NoiseSpec("labels", path="/data/y.npy")),
        ("labels:CIFAR-10_human.pt#worse_label", NoiseSpec("labels", path="CIFAR-10_human.pt", key="worse_label")),
    ],
)
def test_noise_specs_parse_and_round_trip(text, expected):
    spec = parse_noise_spec(text)
    assert spec == expected
    assert parse_noise_spec(spec.to_string()) == spec


@pytest.mark.parametrize(
    "text", ["", "gauss:0.2", "sym", "sym:", "sym:abc", "sym:1.2", "asym:-0.1", "asym:0.2:3-8", "labels:", "labels:#key", "none:0.1"]
)
def test_bad_noise_specs_raise_input_error(text):
    with pytest.raises(InputError):
        parse_noise_spec(text)


def test_unknown_spec_message_lists_the_forms():
    with pytest.raises(InputError, match="sym:RATE.*labels:PATH"):
        parse_noise_spec("flip:0.2")


# --------------------------------------------------------------------------- dataset level


def test_apply_sym_on_dataset_without_clean_uses_given_labels_as_truth():
    y = _labels(500)
    out = apply_noise(_dataset(y), "sym:0.4", seed=0)
    np.testing.assert_array_equal(out.y_clean, y)
    assert out.is_noisy.sum() == 200 and out.noise_rate == pytest.approx(0.4)
    np.testing.assert_array_equal(out.is_noisy, out.y_noisy != y)
    np.testing.assert_array_equal(out.y_noisy, inject_noise(y, "sym", 0.4, num_classes=10, seed=0))
    assert out.spec == "sym:0.4" and out.n_noisy == 200


def test_apply_noise_on_top_of_given_labels_with_clean_truth():
    clean = _labels(400)
    given = inject_noise(clean, "sym", 0.1, num_classes=10, seed=1)
    ds = _dataset(given, clean=clean)
    out = apply_noise(ds, "sym:0.2", seed=2)
    np.testing.assert_array_equal(out.y_clean, clean)
    assert np.count_nonzero(out.y_noisy != given) == 80  # injected on top of y_train
    none = apply_noise(ds, "none")
    np.testing.assert_array_equal(none.y_noisy, given)
    assert none.noise_rate == pytest.approx(0.1)


def test_apply_none_without_ground_truth():
    out = apply_noise(_dataset(_labels(50)), "none")
    assert out.y_clean is None and out.is_noisy is None and out.transition is None and out.noise_rate is None


def test_transition_matrix_rows_and_counts():
    y = _labels(600, c=4, seed=5)
    y[y == 3] = 2  # class 3 has no examples: its row stays zero
    out = apply_noise(_dataset(y, c=4), "sym:0.3", seed=0)
    t = out.transition
    assert t.shape == (4, 4)
    np.testing.assert_allclose(t[:3].sum(axis=1), 1.0)
    np.testing.assert_array_equal(t[3], 0.0)
    counts = np.zeros((4, 4))
    for a, b in zip(y, out.y_noisy):
        counts[a, b] += 1
    np.testing.assert_allclose(t[:3], counts[:3] / counts[:3].sum(axis=1, keepdims=True))
    np.testing.assert_allclose(transition_matrix(y, y, 4)[:3], np.eye(4)[:3])


def test_default_asym_map_follows_the_dataset():
    y = np.arange(100) % 10
    assert default_asym_map(_dataset(y, name="digits")) == "digits"
    assert default_asym_map(_dataset(y, names=[f"{i} - x" for i in range(10)])) == "digits"
    cifar = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert default_asym_map(_dataset(y, names=cifar)) == "cifar10"
    assert default_asym_map(_dataset(y, names=[f"c{i}" for i in range(10)])) == "cyclic"
    out = apply_noise(_dataset(y, name="digits"), "asym:0.4", seed=0)
    assert out.spec == "asym:0.4:digits"
    changed = out.y_noisy != y
    assert set(zip(y[changed].tolist(), out.y_noisy[changed].tolist())) == {(2, 7), (3, 8), (5, 6), (6, 5), (7, 1)}
    assert changed.sum() == 5 * 4


# --------------------------------------------------------------------------- label files


def test_label_files_npy_csv_npz(tmp_path):
    y = np.arange(12) % 3
    ds = _dataset(y, c=3)
    noisy = (y + 1) % 3
    np.save(tmp_path / "n.npy", noisy)
    (tmp_path / "plain.csv").write_text("\n".join(str(v) for v in noisy) + "\n")
    (tmp_path / "header.csv").write_text("id,label\n" + "".join(f"x{i},{v}\n" for i, v in enumerate(noisy)))
    order = np.random.default_rng(0).permutation(12)
    (tmp_path / "indexed.csv").write_text("".join(f"{i},{noisy[i]}\n" for i in order))
    np.savez(tmp_path / "n.npz", a=noisy, b=y)
    for spec in ["n.npy", "plain.csv", "header.csv", "indexed.csv", "n.npz#a"]:
        out = apply_noise(ds, f"labels:{tmp_path / spec}")
        np.testing.assert_array_equal(out.y_noisy, noisy)
        np.testing.assert_array_equal(out.y_clean, y)
        assert out.noise_rate == 1.0
    with pytest.raises(InputError, match="several arrays.*a, b"):
        apply_noise(ds, f"labels:{tmp_path / 'n.npz'}")


def test_cifar_n_style_pt_file(tmp_path):
    import torch

    clean = np.arange(20) % 10
    worse = clean.copy()
    worse[:8] = (worse[:8] + 3) % 10
    torch.save(
        {"clean_label": clean, "worse_label": worse, "aggre_label": clean.copy(), "random_label1": torch.as_tensor(worse)},
        tmp_path / "CIFAR-10_human.pt",
    )
    ds = _dataset(clean, c=10)
    out = apply_noise(ds, f"labels:{tmp_path / 'CIFAR-10_human.pt'}#worse_label")
    np.testing.assert_array_equal(out.y_noisy, worse)
    assert out.noise_rate == pytest.approx(0.4)
    np.testing.assert_array_equal(read_label_file(str(tmp_path / "CIFAR-10_human.pt"), "random_label1"), worse)
    with pytest.raises(InputError, match="no key 'noisy_label'; available: clean_label, worse_label"):
        apply_noise(ds, f"labels:{tmp_path / 'CIFAR-10_human.pt'}#noisy_label")


def test_plain_pickle_of_numpy_arrays_is_read(tmp_path):
    labels = np.arange(10) % 2
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        with open(tmp_path / "labels.pth", "wb") as f:
            pickle.dump({"noisy_label": labels, "n": np.int64(10)}, f, protocol=protocol)
        np.testing.assert_array_equal(read_label_file(str(tmp_path / "labels.pth"), "noisy_label"), labels)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickles_are_refused(tmp_path):
    import torch

    marker = tmp_path / "pwned"
    torch.save({"worse_label": _Exploit(marker)}, tmp_path / "evil.pt")
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"worse_label": _Exploit(marker)}, f)
    np.save(tmp_path / "evil.npy", np.array([_Exploit(marker)], dtype=object), allow_pickle=True)
    ds = _dataset(np.arange(10) % 2, c=2)
    for name in ("evil.pt#worse_label", "evil.pth#worse_label", "evil.npy"):
        with pytest.raises(InputError):
            apply_noise(ds, f"labels:{tmp_path / name}")
    assert not marker.exists()


def test_bad_label_files(tmp_path):
    ds = _dataset(np.arange(10) % 2, c=2)
    with pytest.raises(InputError, match="no such file"):
        apply_noise(ds, f"labels:{tmp_path / 'missing.npy'}")
    np.save(tmp_path / "short.npy", np.zeros(9, dtype=int))
    with pytest.raises(InputError, match="9 labels but the training set has 10"):
        apply_noise(ds, f"labels:{tmp_path / 'short.npy'}")
    np.save(tmp_path / "range.npy", np.arange(10))
    with pytest.raises(InputError, match="out of range"):
        apply_noise(ds, f"labels:{tmp_path / 'range.npy'}")
    np.save(tmp_path / "frac.npy", np.full(10, 0.5))
    with pytest.raises(InputError, match="non-integer"):
        apply_noise(ds, f"labels:{tmp_path / 'frac.npy'}")
    (tmp_path / "cols.csv").write_text("a,b\n1,0\n")
    with pytest.raises(InputError, match="header 'a,b' not understood; use one label column"):
        apply_noise(ds, f"labels:{tmp_path / 'cols.csv'}")
    (tmp_path / "y.txt").write_text("1\n")
    with pytest.raises(InputError, match="unsupported type"):
        apply_noise(ds, f"labels:{tmp_path / 'y.txt'}")


def test_noise_rates_read_as_share_of_all_labels_and_of_the_source_classes():
    """asym:0.3 with the digits map flips 30% of classes 2, 3, 5, 6, 7: about 15% of all labels."""
    import prune_core as pc
    from prune_core.noise import apply_noise, describe_noise, noise_rates

    ds = pc.load_dataset("digits")
    noisy = apply_noise(ds, "asym:0.3", seed=0)
    rates = noise_rates(noisy, ds.num_classes)
    assert rates["source_classes"] == [2, 3, 5, 6, 7]
    in_source = np.isin(noisy.y_clean, [2, 3, 5, 6, 7])
    assert rates["share_in_source"] == pytest.approx(noisy.is_noisy[in_source].mean()) and abs(
        rates["share_in_source"] - 0.3) < 0.01
    assert rates["share_all"] == pytest.approx(noisy.is_noisy.mean()) and 0.13 < rates["share_all"] < 0.17
    text = describe_noise(noisy, ds.num_classes)
    assert text == f"{rates['share_all']:.1%} of all labels wrong ({rates['share_in_source']:.1%} of classes 2, 3, 5, 6, 7)"
    sym = apply_noise(ds, "sym:0.4", seed=0)
    assert describe_noise(sym, 10) == "40.0% of all labels wrong" and noise_rates(sym, 10)["source_classes"] is None
