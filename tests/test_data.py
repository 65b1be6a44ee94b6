"""Data sources and dataset validation, on tiny data written by the tests themselves."""

import json
import os
import pickle
import struct
from urllib.error import URLError

import numpy as np
import pytest

from prune_core.data import Dataset, dataset_fingerprint, load_dataset, validate_dataset
from prune_core.errors import InputError


def _save_npz(path, **arrays):
    np.savez(path, **arrays)
    return f"npz:{path}"


def _tiny_features(n=50, d=4, c=2, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)).astype(np.float32), np.arange(n) % c


# --------------------------------------------------------------------------- digits


def test_digits_fixed_split_uint8_images():
    ds = load_dataset("digits")
    assert (ds.n_train, ds.n_test) == (1437, 360)
    assert ds.x_train.shape == (1437, 8, 8) and ds.x_train.dtype == np.uint8
    assert ds.x_test.shape == (360, 8, 8)
    assert ds.x_train.max() == 255 and ds.x_train.min() == 0  # 16 -> 255
    assert ds.kind == "grey" and ds.num_classes == 10
    assert ds.class_names == [str(i) for i in range(10)]
    assert ds.y_train.dtype == np.int64 and ds.y_train_clean is None
    assert set(np.unique(ds.y_test)) == set(range(10))  # stratified
    summary = ds.summary()
    json.dumps(summary)
    assert summary["n_train"] == 1437 and sum(summary["class_counts"]) == 1437
    assert summary["source_has_clean_labels"] is False
    # Same data, same fingerprint: the split is fixed.
    fp = dataset_fingerprint(ds)
    assert len(fp) == 16 and int(fp, 16) >= 0
    assert dataset_fingerprint(load_dataset("digits")) == fp


# --------------------------------------------------------------------------- npz


def test_npz_features_without_test_split_holds_out_stratified(tmp_path):
    x, y = _tiny_features(n=50, c=2)
    ds = load_dataset(_save_npz(tmp_path / "f.npz", x_train=x, y_train=y))
    assert ds.kind == "features" and ds.x_train.dtype == np.float32
    assert (ds.n_train, ds.n_test) == (40, 10)
    assert np.bincount(ds.y_test).tolist() == [5, 5]
    assert ds.num_classes == 2 and ds.class_names == ["0", "1"]
    # Held-out rows are real rows of x, with their labels.
    rows = {tuple(r): lab for r, lab in zip(x, y)}
    assert all(rows[tuple(r)] == lab for r, lab in zip(ds.x_test, ds.y_test))
    # Another seed gives another split; test_fraction=0 keeps everything.
    other = load_dataset(f"npz:{tmp_path / 'f.npz'}", split_seed=1)
    assert not np.array_equal(other.x_test, ds.x_test)
    assert load_dataset(f"npz:{tmp_path / 'f.npz'}", test_fraction=0).x_test is None


def test_npz_with_test_split_clean_labels_and_class_names(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(12, 5, 5, 3), dtype=np.uint8)
    y_clean = np.arange(12) % 3
    y = y_clean.copy()
    y[0] = 1  # one wrong given label
    spec = _save_npz(
        tmp_path / "d.npz",
        x_train=x,
        y_train=y,
        y_train_clean=y_clean,
        x_test=x[:4],
        y_test=y_clean[:4],
        class_names=np.array(["cat", "dog", "bird", "fish"]),
    )
    ds = load_dataset(spec)
    assert ds.kind == "rgb" and ds.n_train == 12 and ds.n_test == 4
    assert ds.num_classes == 4 and ds.class_names == ["cat", "dog", "bird", "fish"]
    np.testing.assert_array_equal(ds.y_train_clean, y_clean)
    assert ds.name == spec
    s = ds.summary()
    assert s["source_has_clean_labels"] and s["source_labels_differing_from_clean"] == 1 and s["class_counts"] == [3, 5, 4, 0]


def test_npz_holdout_splits_clean_labels_with_the_rows(tmp_path):
    x = np.arange(40, dtype=np.float32).reshape(20, 2)
    y_clean = np.arange(20) % 2
    y = 1 - y_clean  # all given labels wrong, to see which one the split uses
    ds = load_dataset(_save_npz(tmp_path / "c.npz", x_train=x, y_train=y, y_train_clean=y_clean))
    rows = ds.x_train[:, 0].astype(int) // 2
    np.testing.assert_array_equal(ds.y_train_clean, y_clean[rows])
    np.testing.assert_array_equal(ds.y_train, y[rows])
    # The test split is scored against the ground truth.
    np.testing.assert_array_equal(ds.y_test, y_clean[ds.x_test[:, 0].astype(int) // 2])


def test_npz_float_images_become_uint8(tmp_path):
    x = np.linspace(0, 1, 6 * 4 * 4).reshape(6, 4, 4)
    ds = load_dataset(_save_npz(tmp_path / "g.npz", x_train=x, y_train=np.arange(6) % 2), test_fraction=0)
    assert ds.x_train.dtype == np.uint8 and ds.x_train.max() == 255 and ds.kind == "grey"


def test_npz_missing_key_and_labels_beyond_class_names(tmp_path):
    with pytest.raises(InputError, match="missing key.*y_train"):
        load_dataset(_save_npz(tmp_path / "a.npz", x_train=np.zeros((4, 2))))
    x, y = _tiny_features(n=10, c=3)
    spec = _save_npz(tmp_path / "b.npz", x_train=x, y_train=y, class_names=np.array(["a", "b"]))
    with pytest.raises(InputError, match="label 2 .*only 2 classes"):
        load_dataset(spec)


def test_npz_refuses_pickled_objects(tmp_path):
    path = tmp_path / "o.npz"
    np.savez(path, x_train=np.zeros((4, 2)), y_train=np.array([0, 1, "a", None], dtype=object))
    with pytest.raises(InputError, match="pickle"):
        load_dataset(f"npz:{path}")


# --------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    "x, y, message",
    [
        (np.zeros((5, 3)), np.array([0, 1, 0, 1]), "5 examples but y_train has 4"),
        (np.zeros(4), np.array([0, 1, 0, 1]), "shape"),
        (np.zeros((4, 3)), np.array([[0, 1], [0, 1]]), "1-D"),
        (np.zeros((4, 3)), np.array([0, 1, -1, 1]), "negative"),
        (np.zeros((4, 3)), np.array([0, 1, 0.5, 1]), "integer"),
        (np.zeros((4, 3)), np.array(["a", "b", "a", "b"]), "integer"),
        (np.zeros((4, 3)), np.array([2, 2, 2, 2]), r"only one class \('2' in y_train\); need at least two"),
        (np.array([[0, 1.0], [np.nan, 1], [np.inf, 0], [1, 1]]), np.array([0, 1, 0, 1]), r"NaN or infinite values \(2 rows\)"),
        (np.zeros((4, 3, 3, 4), dtype=np.uint8), np.array([0, 1, 0, 1]), "shape"),
        (np.full((4, 3, 3), 300.0), np.array([0, 1, 0, 1]), "uint8"),
    ],
)
def test_bad_arrays_raise_input_error(tmp_path, x, y, message):
    spec = _save_npz(tmp_path / "bad.npz", x_train=x, y_train=y)
    with pytest.raises(InputError, match=message):
        load_dataset(spec, test_fraction=0)


def test_validate_dataset_checks_ranges_and_test_split():
    x, y = _tiny_features(n=6, c=2)
    with pytest.raises(InputError, match="label 1 out of range"):
        validate_dataset(Dataset(x, y, num_classes=1))
    with pytest.raises(InputError, match="y_train_clean has 5 labels"):
        validate_dataset(Dataset(x, y, y_train_clean=y[:5], num_classes=2))
    with pytest.raises(InputError, match="y_train_clean has label 7"):
        validate_dataset(Dataset(x, y, y_train_clean=np.full(6, 7), num_classes=2))
    with pytest.raises(InputError, match="x_test is given without y_test"):
        validate_dataset(Dataset(x, y, x_test=x, num_classes=2))
    with pytest.raises(InputError, match="x_test has 6 examples but y_test has 2"):
        validate_dataset(Dataset(x, y, x_test=x, y_test=y[:2], num_classes=2))
    with pytest.raises(InputError, match="x_test examples have shape"):
        validate_dataset(Dataset(x, y, x_test=x[:, :2], y_test=y, num_classes=2))
    with pytest.raises(InputError, match="y_test has label 5"):
        validate_dataset(Dataset(x, y, x_test=x, y_test=np.full(6, 5), num_classes=2))
    with pytest.raises(InputError, match="class_names lists 3"):
        validate_dataset(Dataset(x, y, num_classes=2, class_names=["a", "b", "c"]))
    ok = validate_dataset(Dataset(x, y.astype(np.int32), num_classes=2))
    assert ok.y_train.dtype == np.int64 and ok.class_names == ["0", "1"]


def test_missing_files_and_unknown_sources(tmp_path):
    with pytest.raises(InputError, match="no such file: .*nope.npz"):
        load_dataset(f"npz:{tmp_path / 'nope.npz'}")
    with pytest.raises(InputError, match="is a folder, not a file"):
        load_dataset(f"npz:{tmp_path}")
    with pytest.raises(InputError, match="no such folder"):
        load_dataset(f"imagefolder:{tmp_path / 'nope'}")
    with pytest.raises(InputError, match="unknown dataset source 'cifar'.*npz:PATH"):
        load_dataset("cifar")
    with pytest.raises(InputError, match="did you mean npz:"):
        load_dataset("data.npz")
    with pytest.raises(InputError, match="unknown torchvision dataset 'imagenet'"):
        load_dataset(f"torchvision:imagenet:{tmp_path}")
    with pytest.raises(InputError, match="test_fraction"):
        load_dataset("digits", test_fraction=1.0)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="not a readable .npz"):
        load_dataset(f"npz:{tmp_path / 'junk.npz'}")


# --------------------------------------------------------------------------- torchvision


def _write_cifar10(root, n_per_batch=4):
    """The real CIFAR-10 python layout: pickled dicts with (n,3072) uint8 rows, CHW order."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]
    for i, name in enumerate(names):
        data = rng.integers(0, 256, size=(n_per_batch, 3072), dtype=np.uint8)
        labels = [(i + j) % 10 for j in range(n_per_batch)]
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels, "batch_label": name}, f)
    with open(folder / "batches.meta", "wb") as f:
        classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
        pickle.dump({"label_names": classes, "num_vis": 3072}, f)
    with open(folder / "data_batch_1", "rb") as f:
        return pickle.load(f)


def test_torchvision_cifar10_tiny_folder(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    first = _write_cifar10(tmp_path)
    # Tiny fake files cannot match the real md5 sums: check presence only.
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))
    ds = load_dataset(f"torchvision:cifar10:{tmp_path}")
    assert ds.x_train.shape == (20, 32, 32, 3) and ds.x_train.dtype == np.uint8
    assert ds.x_test.shape == (4, 32, 32, 3) and ds.kind == "rgb"
    assert ds.num_classes == 10 and ds.class_names[9] == "truck"
    # Row 0 of batch 1, CHW -> HWC.
    np.testing.assert_array_equal(ds.x_train[0], first["data"][0].reshape(3, 32, 32).transpose(1, 2, 0))
    assert ds.y_train[:4].tolist() == first["labels"]


def test_torchvision_missing_files_and_failed_download(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    with pytest.raises(InputError, match=r"torchvision:cifar10: no dataset files .* pass download=True \(CLI --download\)"):
        load_dataset(f"torchvision:cifar10:{tmp_path / 'empty'}")
    with pytest.raises(InputError, match="torchvision:mnist: no dataset files"):
        load_dataset(f"torchvision:mnist:{tmp_path}")

    def no_network(self):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tvd.CIFAR10, "download", no_network)
    with pytest.raises(InputError, match="download into .* failed .*name resolution"):
        load_dataset(f"torchvision:cifar10:{tmp_path}", download=True)
    with pytest.raises(InputError, match="missing ROOT"):
        load_dataset("torchvision:cifar10")


def _write_idx(path, array):
    """An uncompressed MNIST idx file: big-endian magic (type 0x08 = uint8, ndim) and dims."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_torchvision_mnist_tiny_raw_files(tmp_path):
    raw = tmp_path / "MNIST" / "raw"  # torchvision looks in ROOT/<ClassName>/raw
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    x_tr = rng.integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    y_tr = np.array([0, 1, 2, 3, 4, 5, 9])
    _write_idx(raw / "train-images-idx3-ubyte", x_tr)
    _write_idx(raw / "train-labels-idx1-ubyte", y_tr)
    _write_idx(raw / "t10k-images-idx3-ubyte", x_tr[:3])
    _write_idx(raw / "t10k-labels-idx1-ubyte", y_tr[:3])
    ds = load_dataset(f"torchvision:mnist:{tmp_path}")
    assert ds.x_train.shape == (7, 28, 28) and ds.kind == "grey" and ds.n_test == 3
    np.testing.assert_array_equal(ds.x_train, x_tr)
    np.testing.assert_array_equal(ds.y_train, y_tr)
    assert ds.num_classes == 10 and ds.class_names[0].startswith("0")


def test_torchvision_svhn_transposes_to_hwc(tmp_path, monkeypatch):
    import scipy.io
    import torchvision.datasets.svhn as tv_svhn

    rng = np.random.default_rng(0)
    for split, n in (("train", 5), ("test", 2)):
        x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)  # the .mat layout
        y = np.array([[10], [1], [2], [3], [4]][:n], dtype=np.uint8)  # 10 means digit 0
        scipy.io.savemat(tmp_path / f"{split}_32x32.mat", {"X": x, "y": y})
        if split == "train":
            x_train = x
    monkeypatch.setattr(tv_svhn, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))
    ds = load_dataset(f"torchvision:svhn:{tmp_path}")
    assert ds.x_train.shape == (5, 32, 32, 3) and ds.n_test == 2
    np.testing.assert_array_equal(ds.x_train[1], x_train[..., 1])
    assert ds.y_train.tolist() == [0, 1, 2, 3, 4] and ds.num_classes == 10


# --------------------------------------------------------------------------- imagefolder


def _write_png(path, array):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_imagefolder_grey_with_train_test_and_resizing(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("test", 1)):
        for c in ("cat", "dog"):
            for i in range(n):
                _write_png(tmp_path / split / c / f"{i}.png", rng.integers(0, 256, size=(6, 5), dtype=np.uint8))
    # One odd-sized image is resized to the common (6 high, 5 wide) size; a text file is ignored.
    _write_png(tmp_path / "train" / "dog" / "big.png", rng.integers(0, 256, size=(12, 10), dtype=np.uint8))
    (tmp_path / "train" / "dog" / "notes.txt").write_text("not an image")
    ds = load_dataset(f"imagefolder:{tmp_path}")
    assert ds.kind == "grey" and ds.x_train.shape == (7, 6, 5) and ds.x_test.shape == (2, 6, 5)
    assert ds.class_names == ["cat", "dog"] and ds.y_train.tolist() == [0, 0, 0, 1, 1, 1, 1]
    assert ds.y_test.tolist() == [0, 1]
    sized = load_dataset(f"imagefolder:{tmp_path}", image_size=(4, 3))
    assert sized.x_train.shape == (7, 4, 3)


def test_imagefolder_rgb_without_split_holds_out(tmp_path):
    rng = np.random.default_rng(1)
    for c in ("a", "b", "c"):
        for i in range(5):
            _write_png(tmp_path / c / f"{i}.png", rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8))
    ds = load_dataset(f"imagefolder:{tmp_path}")
    assert ds.kind == "rgb" and ds.x_train.shape == (12, 4, 4, 3) and ds.n_test == 3
    assert sorted(ds.y_test.tolist()) == [0, 1, 2]


def test_imagefolder_errors(tmp_path):
    _write_png(tmp_path / "a" / "0.png", np.zeros((4, 4), dtype=np.uint8))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="cannot read image file .*broken.png"):
        load_dataset(f"imagefolder:{tmp_path}")
    (tmp_path / "b" / "broken.png").unlink()
    with pytest.raises(InputError, match="no class sub-folders"):
        load_dataset(f"imagefolder:{tmp_path / 'b'}")
    _write_png(tmp_path / "a" / "1.png", np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(InputError, match="only one class"):
        load_dataset(f"imagefolder:{tmp_path}", test_fraction=0)


# --------------------------------------------------------------------------- csv: source


def _image_table(tmp_path, header="file,class,split,true_label", sep=","):
    """A tiny image folder and a CSV listing it: 12 grey 6x6 PNGs in imgs/, two classes named
    by words, the last 4 rows in the test split, row 0's given label wrong (dog, clean cat)."""
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(12, 6, 6), dtype=np.uint8)
    classes = ["cat", "dog"] * 6
    lines = [header]
    for i in range(12):
        Image.fromarray(pixels[i]).save(tmp_path / "imgs" / f"{i}.png")
        given = "dog" if i == 0 else classes[i]
        split = "test" if i >= 8 else "train"
        lines.append(sep.join([f"imgs/{i}.png", given, split, classes[i]]))
    (tmp_path / "list.csv").write_text("\n".join(lines) + "\n")
    return pixels, classes


def test_csv_source_round_trip(tmp_path):
    pixels, classes = _image_table(tmp_path)
    ds = load_dataset(f"csv:{tmp_path / 'list.csv'}#image=file,label=class,clean=true_label")
    assert ds.class_names == ["cat", "dog"] and ds.kind == "grey"
    np.testing.assert_array_equal(ds.x_train, pixels[:8])  # rows in order, split column honoured
    np.testing.assert_array_equal(ds.x_test, pixels[8:])
    ids = np.array([c == "dog" for c in classes], dtype=np.int64)
    np.testing.assert_array_equal(ds.y_train_clean, ids[:8])
    assert ds.y_train[0] == 1 and ds.y_train_clean[0] == 0 and (ds.y_train[1:] == ids[1:8]).all()
    np.testing.assert_array_equal(ds.y_test, ids[8:])


def test_csv_source_default_columns_semicolons_and_holdout(tmp_path):
    pixels, _ = _image_table(tmp_path, header="path;label;other;y_clean", sep=";")
    ds = load_dataset(f"csv:{tmp_path / 'list.csv'}", test_fraction=0.25)
    assert ds.n_train + ds.n_test == 12 and ds.n_test == 3  # no split column: a stratified hold-out
    assert ds.y_train_clean is not None


@pytest.mark.parametrize("suffix, message", [
    ("#image=nope", "has no column 'nope' (image)"),
    ("#colour=file", "is not ROLE=COLUMN"),
    ("#image=file,label=split", "data row 1 has split"),
])
def test_csv_source_bad_columns(tmp_path, suffix, message):
    _image_table(tmp_path)
    spec = f"csv:{tmp_path / 'list.csv'}{suffix}"
    if "data row" in message:
        spec = f"csv:{tmp_path / 'list.csv'}#image=file,label=class,split=true_label"
        message = "data row 1 has split 'cat'"
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_dataset(spec)


def test_csv_source_missing_image_and_integer_labels(tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "t.csv").write_text("image,label\na.png,10\na.png,30\nb.png,10\n")
    with pytest.raises(InputError, match="data row 3: no such image file 'b.png'"):
        load_dataset(f"csv:{tmp_path / 't.csv'}")
    (tmp_path / "t.csv").write_text("image,label\na.png,10\na.png,30\na.png,10\n")
    ds = load_dataset(f"csv:{tmp_path / 't.csv'}", test_fraction=0)
    assert list(ds.label_values) == [10, 30] and list(ds.y_train) == [0, 1, 0]
