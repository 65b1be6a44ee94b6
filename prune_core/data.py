"""Data sources: load a training set (and a test split) from a SPEC string.

SPEC forms (the same strings as the CLI's `--data`):

- ``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 real images), stored as
  (N,8,8) uint8 in 0..255, with a fixed stratified 20 % test split (1,437 train / 360 test).
- ``npz:PATH``: the project's file format (DESIGN 4.2): ``x_train``, ``y_train`` and optional
  ``y_train_clean``, ``x_test``, ``y_test``, ``class_names``.
- ``torchvision:NAME:ROOT``: mnist, fashionmnist, cifar10, cifar100 or svhn read from the local
  folder ROOT by torchvision (downloaded there only with ``download=True``).
- ``imagefolder:PATH``: one sub-folder per class (optionally under ``train/`` and ``test/``).
- ``csv:PATH[#image=COL,label=COL,split=COL,clean=COL]``: a table (CSV, or Parquet by its
  .parquet suffix) with one row per image: an image path (relative to the table's folder, or
  absolute), a label (class names or integers), an optional split (train/test) and an
  optional clean label. Column names default to the first header found among
  `CSV_COLUMNS` (case-insensitive); ``#`` names them explicitly. Rows keep their order.

Sources without their own test split get a stratified hold-out (``test_fraction``, ``split_seed``).
Every loaded dataset goes through `validate_dataset`, which raises `InputError` with a one-line
message for bad input and returns arrays in canonical dtypes:

- images: (N,H,W) uint8 grey or (N,H,W,3) uint8 RGB;
- features: (N,D) float32, all finite;
- labels: (N,) int64 in [0, num_classes).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputError
from .validation import check_labels, encode_label_values, image_to_uint8

SPEC_FORMS = (
    "digits, npz:PATH, torchvision:NAME:ROOT (NAME: mnist, fashionmnist, cifar10, cifar100, svhn), "
    "imagefolder:PATH, csv:PATH[#image=COL,label=COL,split=COL,clean=COL]"
)
# csv: source: the accepted names of each column, first match wins (case-insensitive).
CSV_COLUMNS = {
    "image": ("image", "path", "file", "filename", "filepath", "image_path", "img"),
    "label": ("label", "labels", "noisy_label", "given_label", "class", "target", "y", "category"),
    "split": ("split", "subset", "fold"),
    "clean": ("clean_label", "label_clean", "true_label", "y_clean", "clean"),
}
CSV_SPLITS = {"train": "train", "training": "train", "test": "test", "testing": "test"}
TORCHVISION_NAMES = ("mnist", "fashionmnist", "cifar10", "cifar100", "svhn")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass
class Dataset:
    """A labelled training set with an optional test split.

    Attributes:
        x_train: (N,H,W) uint8 grey images, (N,H,W,3) uint8 RGB images, or (N,D) float32 features.
        y_train: (N,) int64 given labels (may be noisy).
        y_train_clean: (N,) int64 ground-truth labels when known, else None.
        x_test: (M,...) same per-example shape and dtype as x_train, or None.
        y_test: (M,) int64, or None.
        num_classes: C; every label is in [0, C).
        class_names: C names, index = label.
        name: the SPEC string the dataset came from.
        label_values: (C,) int64 original label values when the source's labels were not
            0..C-1 (id i stands for label_values[i]; exports map ids back), else None.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    y_train_clean: np.ndarray | None = None
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    num_classes: int = 0
    class_names: list[str] = field(default_factory=list)
    name: str = ""
    label_values: np.ndarray | None = None

    @property
    def kind(self) -> str:
        """"grey" for (N,H,W), "rgb" for (N,H,W,3), "features" for (N,D)."""
        if self.x_train.ndim == 2:
            return "features"
        return "grey" if self.x_train.ndim == 3 else "rgb"

    @property
    def n_train(self) -> int:
        return int(len(self.y_train))

    @property
    def n_test(self) -> int:
        return 0 if self.y_test is None else int(len(self.y_test))

    def summary(self) -> dict:
        """A JSON-able description of the loaded source: name, kind, sizes, shapes, classes, class counts."""
        counts = np.bincount(self.y_train, minlength=self.num_classes)
        differs = None
        if self.y_train_clean is not None:
            differs = int(np.count_nonzero(self.y_train != self.y_train_clean))
        return {
            "name": self.name,
            "kind": self.kind,
            "n_train": self.n_train,
            "n_test": self.n_test,
            "x_train_shape": [int(s) for s in self.x_train.shape],
            "example_shape": [int(s) for s in self.x_train.shape[1:]],
            "x_dtype": str(self.x_train.dtype),
            "num_classes": int(self.num_classes),
            "class_names": [str(c) for c in self.class_names],
            "label_values": None if self.label_values is None else [int(v) for v in self.label_values],
            "class_counts": [int(c) for c in counts],
            # About the SOURCE: whether it came with clean labels of its own (injected noise
            # keeps its clean labels in the noise record, not here).
            "source_has_clean_labels": self.y_train_clean is not None,
            "source_labels_differing_from_clean": differs,
        }


# --------------------------------------------------------------------------- validation


def _as_labels(y, what: str) -> np.ndarray:
    """(N,) int64 non-negative labels (see `validation.check_labels`)."""
    return check_labels(y, what)


def _check_label_range(y: np.ndarray, what: str, num_classes: int) -> None:
    check_labels(y, what, num_classes=num_classes)


def _as_images_or_features(x, what: str) -> np.ndarray:
    """Canonical x: (N,D) float32 features, (N,H,W) or (N,H,W,3) uint8 images.

    Image arrays that are not uint8 are converted: float in [0,1] is scaled by 255, float or
    integer values in [0,255] are rounded; anything else is refused. (N,H,W,1) becomes (N,H,W).
    """
    x = np.asarray(x)
    if x.dtype == object or not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise InputError(f"{what} must be numeric; got dtype {x.dtype}")
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim == 2:  # features
        x = x.astype(np.float32, copy=False)
        bad_rows = int(np.count_nonzero(~np.all(np.isfinite(x), axis=1)))
        if bad_rows:
            raise InputError(f"{what} has NaN or infinite values ({bad_rows} rows)")
        return x
    if x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[-1] != 3):
        raise InputError(
            f"{what} must be (N,D) features, (N,H,W) grey or (N,H,W,3) RGB images; got shape {x.shape}"
        )
    if x.dtype == np.uint8:
        return x
    if x.size == 0:
        return x.astype(np.uint8)
    if np.issubdtype(x.dtype, np.floating) and not np.all(np.isfinite(x)):
        raise InputError(f"{what} has NaN or infinite pixel values")
    lo, hi = float(x.min()), float(x.max())
    if np.issubdtype(x.dtype, np.floating) and lo >= 0.0 and hi <= 1.0:
        return np.round(x * 255.0).astype(np.uint8)
    if lo >= 0.0 and hi <= 255.0:
        return np.round(x).astype(np.uint8)
    raise InputError(
        f"{what} images must be uint8 (or values in [0,1] or [0,255]); got {x.dtype} in [{lo:g}, {hi:g}]"
    )


def validate_dataset(ds: Dataset) -> Dataset:
    """Check a dataset and return it with canonical dtypes (a new object; `ds` is not changed).

    Raises `InputError` (one line naming the problem) for: x/y length mismatch, 1-D or oddly
    shaped x, non-integer / negative / out-of-range labels, NaN or infinite features, fewer than
    two classes in y_train, inconsistent test split or y_train_clean, wrong class_names length.
    Non-uint8 images are converted to uint8 (see `_as_images_or_features`).
    """
    x_train = _as_images_or_features(ds.x_train, "x_train")
    if len(x_train) == 0:
        raise InputError("x_train is empty; need at least two labelled examples")
    y_train = _as_labels(ds.y_train, "y_train")
    if len(x_train) != len(y_train):
        raise InputError(
            f"x_train has {len(x_train)} examples but y_train has {len(y_train)} labels; they must match"
        )
    num_classes = int(ds.num_classes)
    if num_classes < 1:
        raise InputError(f"num_classes must be positive; got {num_classes}")
    _check_label_range(y_train, "y_train", num_classes)

    class_names = [str(c) for c in ds.class_names] if ds.class_names else [str(i) for i in range(num_classes)]
    if len(class_names) != num_classes:
        raise InputError(f"class_names lists {len(class_names)} names but there are {num_classes} classes")
    label_values = None
    if ds.label_values is not None:
        label_values = np.asarray(ds.label_values, dtype=np.int64)
        if label_values.shape != (num_classes,) or np.any(np.diff(label_values) <= 0):
            raise InputError(f"label_values must be {num_classes} increasing label values, one per class")

    y_clean = None
    if ds.y_train_clean is not None:
        y_clean = _as_labels(ds.y_train_clean, "y_train_clean")
        if y_clean.shape != y_train.shape:
            raise InputError(
                f"y_train_clean has {len(y_clean)} labels but y_train has {len(y_train)}; they must match"
            )
        _check_label_range(y_clean, "y_train_clean", num_classes)

    x_test = y_test = None
    if (ds.x_test is None) != (ds.y_test is None):
        given, missing = ("x_test", "y_test") if ds.x_test is not None else ("y_test", "x_test")
        raise InputError(f"{given} is given without {missing}; give both or neither")
    if ds.x_test is not None:
        x_test = _as_images_or_features(ds.x_test, "x_test")
        y_test = _as_labels(ds.y_test, "y_test")
        if len(x_test) != len(y_test):
            raise InputError(
                f"x_test has {len(x_test)} examples but y_test has {len(y_test)} labels; they must match"
            )
        if x_test.shape[1:] != x_train.shape[1:]:
            raise InputError(
                f"x_test examples have shape {x_test.shape[1:]} but x_train examples {x_train.shape[1:]}"
            )
        _check_label_range(y_test, "y_test", num_classes)

    present = np.unique(y_train)
    if len(present) < 2:
        only = class_names[int(present[0])]
        raise InputError(f"dataset has only one class ('{only}' in y_train); need at least two")

    return dataclasses.replace(
        ds,
        x_train=x_train,
        y_train=y_train,
        y_train_clean=y_clean,
        x_test=x_test,
        y_test=y_test,
        num_classes=num_classes,
        class_names=class_names,
        label_values=label_values,
    )


def dataset_fingerprint(ds: Dataset) -> str:
    """First 16 hex chars of sha256(x_train bytes + y_train bytes), for run manifests."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(ds.x_train).tobytes())
    h.update(np.ascontiguousarray(ds.y_train).tobytes())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- loading


def load_dataset(
    spec: str,
    download: bool = False,
    test_fraction: float = 0.2,
    split_seed: int = 0,
    image_size: int | tuple[int, int] | None = None,
) -> Dataset:
    """Load a dataset from a SPEC string (see the module docstring) and validate it.

    Args:
        spec: ``digits``, ``npz:PATH``, ``torchvision:NAME:ROOT``, ``imagefolder:PATH`` or ``csv:PATH[#...]``.
        download: torchvision sources only: fetch the files into ROOT when missing.
        test_fraction: share held out as a stratified test split when the source has none
            (0 keeps everything for training).
        split_seed: seed of that hold-out split.
        image_size: imagefolder and csv: (H, W) or an int for square; default is the most common size.

    Returns:
        A validated `Dataset` whose ``name`` is `spec`.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise InputError(f"dataset spec must be a non-empty string; use one of: {SPEC_FORMS}")
    if not 0.0 <= float(test_fraction) < 1.0:
        raise InputError(f"test_fraction must be in [0, 1); got {test_fraction}")
    spec = spec.strip()
    source, _, rest = spec.partition(":")
    source = source.lower()
    if source == "digits" and not rest:
        ds = _load_digits(spec, test_fraction, split_seed)
    elif source == "npz" and rest:
        ds = _load_npz(spec, rest, test_fraction, split_seed)
    elif source == "torchvision" and rest:
        ds = _load_torchvision(spec, rest, download)
    elif source == "imagefolder" and rest:
        ds = _load_imagefolder(spec, rest, test_fraction, split_seed, image_size)
    elif source == "csv" and rest:
        ds = _load_csv(spec, rest, test_fraction, split_seed, image_size)
    else:
        hint = ""
        if spec.lower().endswith(".npz"):
            hint = f" (did you mean npz:{spec}?)"
        elif os.path.isdir(spec):
            hint = f" (did you mean imagefolder:{spec}?)"
        elif spec.lower().endswith((".csv", ".parquet")):
            hint = f" (did you mean csv:{spec}?)"
        raise InputError(f"unknown dataset source '{spec}'{hint}; use one of: {SPEC_FORMS}")
    return validate_dataset(ds)


def _holdout_split(y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, test_idx), both sorted so examples keep their original order.

    Stratified by `y` when every class can contribute to both sides; otherwise a plain seeded
    random split (tiny data with singleton classes would make sklearn refuse stratification).
    """
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    try:
        tr, te = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=y)
    except ValueError:
        tr, te = train_test_split(idx, test_size=test_fraction, random_state=seed)
    return np.sort(tr), np.sort(te)


def _with_holdout(ds: Dataset, test_fraction: float, seed: int) -> Dataset:
    """Split a dataset without a test split into train/test (no-op when test_fraction is 0)."""
    if test_fraction <= 0 or ds.x_test is not None:
        return ds
    ds = validate_dataset(ds)  # shapes must be sound before indexing with them
    tr, te = _holdout_split(ds.y_train, test_fraction, seed)
    return dataclasses.replace(
        ds,
        x_train=ds.x_train[tr],
        y_train=ds.y_train[tr],
        y_train_clean=None if ds.y_train_clean is None else ds.y_train_clean[tr],
        x_test=ds.x_train[te],
        y_test=ds.y_train[te] if ds.y_train_clean is None else ds.y_train_clean[te],
    )


def _load_digits(spec: str, test_fraction: float, seed: int) -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # 0..16 counts of the 4x4 blocks -> 0..255 grey levels.
    images = np.round(bunch.images * 255.0 / 16.0).astype(np.uint8)
    ds = Dataset(
        x_train=images,
        y_train=bunch.target.astype(np.int64),
        num_classes=10,
        class_names=[str(i) for i in range(10)],
        name=spec,
    )
    return _with_holdout(ds, test_fraction, seed)


def _require_file(path: str) -> Path:
    p = Path(path).expanduser()
    if p.is_dir():
        raise InputError(f"{path} is a folder, not a file")
    if not p.is_file():
        raise InputError(f"no such file: {path}")
    return p


def _load_npz(spec: str, path: str, test_fraction: float, seed: int) -> Dataset:
    p = _require_file(path)
    if not zipfile.is_zipfile(p):
        raise InputError(f"{path}: not a readable .npz file (not a zip archive)")
    try:
        with np.load(p, allow_pickle=False) as z:
            keys = set(z.files)
            missing = [k for k in ("x_train", "y_train") if k not in keys]
            if missing:
                raise InputError(f"{path}: missing key(s) {', '.join(missing)}; found {', '.join(sorted(keys))}")
            arrays = {k: z[k] for k in ("x_train", "y_train", "y_train_clean", "x_test", "y_test", "class_names") if k in keys}
    except InputError:
        raise
    except ValueError:  # object arrays need pickle, which we refuse
        raise InputError(f"{path}: holds pickled Python objects, which are refused; store plain numeric/str arrays") from None
    except Exception as e:  # not a zip / corrupt file
        raise InputError(f"{path}: not a readable .npz file ({type(e).__name__}: {e})") from None

    label_keys = [k for k in ("y_train", "y_train_clean", "y_test") if k in arrays]
    class_names = None
    label_values = None
    if "class_names" in arrays:
        names = arrays["class_names"]
        if names.ndim != 1:
            raise InputError(f"{path}: class_names must be 1-D; got shape {names.shape}")
        class_names = [str(n) for n in names.tolist()]
    if class_names is not None:
        num_classes = len(class_names)
        labels = {k: _as_labels(arrays[k], k) for k in label_keys}
        for k, y in labels.items():
            if y.size and y.max() >= num_classes:
                raise InputError(
                    f"{k} has label {int(y.max())} but class_names lists only {num_classes} classes"
                )
    else:
        # Labels that are not 0..C-1 ({10, 20, 30}, {0, 5, 9}) get contiguous ids;
        # the original values become the class names and `label_values` (exports map back).
        labels = {k: check_labels(arrays[k], k) for k in label_keys}
        labels, label_values = encode_label_values(labels)
        if label_values is None:
            num_classes = max((int(y.max()) for y in labels.values() if y.size), default=-1) + 1
            class_names = [str(i) for i in range(num_classes)]
        else:
            num_classes = len(label_values)
            class_names = [str(int(v)) for v in label_values]
    ds = Dataset(
        x_train=arrays["x_train"],
        y_train=labels["y_train"],
        y_train_clean=labels.get("y_train_clean"),
        x_test=arrays.get("x_test"),
        y_test=labels.get("y_test"),
        num_classes=num_classes,
        class_names=class_names,
        name=spec,
        label_values=label_values,
    )
    return _with_holdout(ds, test_fraction, seed)


def _load_torchvision(spec: str, rest: str, download: bool) -> Dataset:
    name, sep, root = rest.partition(":")
    name = name.lower().replace("-", "").replace("_", "")
    if name not in TORCHVISION_NAMES:
        raise InputError(f"unknown torchvision dataset '{name}'; use one of: {', '.join(TORCHVISION_NAMES)}")
    if not sep or not root:
        raise InputError(f"torchvision:{name}: missing ROOT folder; use torchvision:{name}:ROOT")
    import torchvision.datasets as tvd

    cls = {
        "mnist": tvd.MNIST,
        "fashionmnist": tvd.FashionMNIST,
        "cifar10": tvd.CIFAR10,
        "cifar100": tvd.CIFAR100,
        "svhn": tvd.SVHN,
    }[name]
    root = os.path.expanduser(root)
    splits = []
    for train in (True, False):
        kwargs = {"split": "train" if train else "test"} if name == "svhn" else {"train": train}
        try:
            splits.append(cls(root, download=download, **kwargs))
        except Exception as e:  # torchvision raises RuntimeError for missing files, URLError etc. for network
            if download:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise InputError(
                    f"torchvision:{name}: download into {root} failed ({first}); "
                    "check the network or copy the dataset files there"
                ) from None
            raise InputError(
                f"torchvision:{name}: no dataset files (or corrupted ones) under {root}; "
                "pass download=True (CLI --download) on a machine with network"
            ) from None

    def arrays(d) -> tuple[np.ndarray, np.ndarray]:
        # Read the in-memory arrays directly: one conversion, no per-item loop.
        data = d.data.numpy() if hasattr(d.data, "numpy") else np.asarray(d.data)
        targets = d.labels if name == "svhn" else d.targets
        targets = targets.numpy() if hasattr(targets, "numpy") else np.asarray(targets)
        if name == "svhn":  # stored (N,3,32,32)
            data = data.transpose(0, 2, 3, 1)
        return np.ascontiguousarray(data), targets.astype(np.int64)

    x_train, y_train = arrays(splits[0])
    x_test, y_test = arrays(splits[1])
    classes = getattr(splits[0], "classes", None)
    num_classes = len(classes) if classes else 10
    return Dataset(
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=num_classes,
        class_names=[str(c) for c in classes] if classes else [str(i) for i in range(num_classes)],
        name=spec,
    )


def _image_files_by_class(folder: Path) -> dict[str, list[Path]]:
    """{class name: sorted image files} for each sub-folder of `folder` holding images (recursive)."""
    out = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(
            f for f in sub.rglob("*")
            if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS and not f.name.startswith(".")
        )
        if files:
            out[sub.name] = files
    return out


def _read_images(tr_files: list, te_files: list, image_size) -> tuple[np.ndarray, np.ndarray | None]:
    """(x_train, x_test or None): image files read as uint8, all resized to one size.

    The size is `image_size` ((H, W) or an int for square) or else the most common one. The
    arrays are (N, H, W) grey when every image has equal channels, else (N, H, W, 3) RGB.
    Raises InputError naming the first file that cannot be read.
    """
    from PIL import Image

    # First pass reads headers only: the target size is the most common one.
    sizes = []
    for f in tr_files + te_files:
        try:
            with Image.open(f) as im:
                sizes.append(im.size)
        except Exception as e:
            raise InputError(f"cannot read image file {f} ({type(e).__name__})") from None
    if image_size is None:
        size = Counter(sizes).most_common(1)[0][0]
    else:
        h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
        if int(h) < 1 or int(w) < 1:
            raise InputError(f"image_size must be positive; got {image_size}")
        size = (int(w), int(h))  # PIL sizes are (width, height)

    def read(files) -> np.ndarray:
        out = np.empty((len(files), size[1], size[0], 3), dtype=np.uint8)
        for i, f in enumerate(files):
            try:
                with Image.open(f) as im:
                    pixels = image_to_uint8(im, f)  # 8-bit grey or RGB, every PIL mode (16-bit scaled)
            except InputError:
                raise
            except Exception as e:
                raise InputError(f"cannot read image file {f} ({type(e).__name__})") from None
            img = Image.fromarray(pixels)
            if img.size != size:
                img = img.resize(size, Image.BILINEAR)
            pixels = np.asarray(img)
            out[i] = pixels[..., None] if pixels.ndim == 2 else pixels
        return out

    x_train = read(tr_files)
    x_test = read(te_files) if te_files else None
    # Grey when every image has equal channels (covers "L" files and grey saved as RGB).
    all_x = [x_train] + ([x_test] if x_test is not None else [])
    grey = all(np.array_equal(x[..., 0], x[..., 1]) and np.array_equal(x[..., 0], x[..., 2]) for x in all_x)
    if grey:
        x_train = np.ascontiguousarray(x_train[..., 0])
        x_test = None if x_test is None else np.ascontiguousarray(x_test[..., 0])
    return x_train, x_test


def _load_imagefolder(spec: str, path: str, test_fraction: float, seed: int, image_size) -> Dataset:
    root = Path(path).expanduser()
    if not root.is_dir():
        raise InputError(f"no such folder: {path}")
    has_split = (root / "train").is_dir()
    train_files = _image_files_by_class(root / "train" if has_split else root)
    if not train_files:
        raise InputError(f"imagefolder:{path}: no class sub-folders with images ({', '.join(IMAGE_EXTENSIONS)})")
    classes = sorted(train_files)
    test_files = _image_files_by_class(root / "test") if has_split and (root / "test").is_dir() else {}
    unknown = sorted(set(test_files) - set(classes))
    if unknown:
        raise InputError(f"imagefolder:{path}: test class(es) {', '.join(unknown)} not among the train classes")

    def listing(by_class):
        files, labels = [], []
        for c, fs in by_class.items():
            files += fs
            labels += [classes.index(c)] * len(fs)
        return files, np.asarray(labels, dtype=np.int64)

    tr_files, y_train = listing(train_files)
    te_files, y_test = listing(test_files)

    x_train, x_test = _read_images(tr_files, te_files, image_size)
    ds = Dataset(
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test if x_test is not None else None,
        num_classes=len(classes),
        class_names=classes,
        name=spec,
    )
    return _with_holdout(ds, test_fraction, seed)


def _csv_column_choice(rest: str) -> tuple[str, dict[str, str]]:
    """(path, {role: column}) from ``PATH#role=COL,...`` (roles: image, label, split, clean)."""
    path, sep, options = rest.partition("#")
    chosen = {}
    for part in options.split(",") if sep else []:
        if not part.strip():
            continue
        role, eq, column = part.partition("=")
        role = role.strip().lower()
        if not eq or role not in CSV_COLUMNS or not column.strip():
            raise InputError(f"csv:{path}: '{part.strip()}' is not ROLE=COLUMN with ROLE one of "
                             f"{', '.join(CSV_COLUMNS)} (e.g. csv:{path}#image=file,label=class)")
        chosen[role] = column.strip()
    return path, chosen


def _read_image_table(path: str, chosen: dict[str, str]):
    """(table of str cells, {role: column name or None}) of a csv: source's table."""
    import io

    import pandas as pd

    from .validation import _decode_text, one_line

    p = _require_file(path)
    try:
        if p.suffix.lower() == ".parquet":
            table = pd.read_parquet(p).astype(str)
        else:
            text = _decode_text(p)
            first_line = next((line for line in text.splitlines() if line.strip()), "")
            separator = next((c for c in (",", ";", "\t") if c in first_line), ",")
            table = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, sep=separator)
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - pandas / pyarrow parse errors of many kinds
        raise InputError(f"csv:{path}: not a readable table ({type(e).__name__}: {one_line(e)})") from None
    table = table.apply(lambda col: col.str.strip())
    lower = {str(c).strip().lower(): c for c in table.columns}
    roles = {}
    for role, names in CSV_COLUMNS.items():
        if role in chosen:
            if chosen[role].lower() not in lower:
                raise InputError(f"csv:{path} has no column '{chosen[role]}' ({role}); columns: "
                                 f"{', '.join(map(str, table.columns))}")
            roles[role] = lower[chosen[role].lower()]
        else:
            roles[role] = next((lower[n] for n in names if n in lower), None)
    for role in ("image", "label"):
        if roles[role] is None:
            raise InputError(f"csv:{path}: no {role} column (looked for {', '.join(CSV_COLUMNS[role])}); "
                             f"columns: {', '.join(map(str, table.columns))}; name it with csv:{path}#{role}=COLUMN")
    return table, roles


def _csv_labels(given, clean, path: str):
    """Label ids for the label and clean-label columns (str cells) sharing one class set.

    Integers (every cell of both) keep their values (mapped to 0..C-1 when they are not,
    `label_values` set); otherwise the cells are class names, sorted. Returns (given ids,
    clean ids or None, class names, label_values or None).
    """
    from .validation import _is_number

    cells = list(given) + ([] if clean is None else list(clean))
    empty = [i for i, c in enumerate(given) if c == ""]
    if empty:
        raise InputError(f"csv:{path}: data row {empty[0] + 1} has no label")
    if clean is not None and any(c == "" for c in clean):
        raise InputError(f"csv:{path}: data row {[c for c in clean].index('') + 1} has no clean label")
    if all(_is_number(c) for c in cells):
        arrays = {"given": check_labels(np.asarray(given, dtype=np.float64), f"csv:{path} labels")}
        if clean is not None:
            arrays["clean"] = check_labels(np.asarray(clean, dtype=np.float64), f"csv:{path} clean labels")
        arrays, label_values = encode_label_values(arrays)
        c = len(label_values) if label_values is not None else int(max(int(a.max()) for a in arrays.values())) + 1
        names = [str(int(v)) for v in label_values] if label_values is not None else [str(i) for i in range(c)]
        return arrays["given"], arrays.get("clean"), names, label_values
    names = sorted(set(cells))
    ids = {name: i for i, name in enumerate(names)}
    return (np.array([ids[c] for c in given], dtype=np.int64),
            None if clean is None else np.array([ids[c] for c in clean], dtype=np.int64), names, None)


def _load_csv(spec: str, rest: str, test_fraction: float, seed: int, image_size) -> Dataset:
    path, chosen = _csv_column_choice(rest)
    table, roles = _read_image_table(path, chosen)
    if table.empty:
        raise InputError(f"csv:{path} has a header but no rows")
    folder = Path(path).expanduser().parent
    files = []
    for i, cell in enumerate(table[roles["image"]]):
        f = Path(cell).expanduser()
        f = f if f.is_absolute() else folder / f
        if not cell or not f.is_file():
            raise InputError(f"csv:{path}: data row {i + 1}: no such image file '{cell}' (paths are relative to "
                             f"{folder})")
        files.append(f)
    clean_col = None if roles["clean"] is None else list(table[roles["clean"]])
    y, y_clean, names, label_values = _csv_labels(list(table[roles["label"]]), clean_col, path)
    is_test = np.zeros(len(files), dtype=bool)
    if roles["split"] is not None:
        split = [CSV_SPLITS.get(v.lower()) for v in table[roles["split"]]]
        if None in split:
            bad = split.index(None)
            raise InputError(f"csv:{path}: data row {bad + 1} has split '{table[roles['split']].iloc[bad]}'; "
                             f"use one of {', '.join(CSV_SPLITS)}")
        is_test = np.array([s == "test" for s in split])
        if is_test.all():
            raise InputError(f"csv:{path}: every row is in the test split; training needs train rows")
    tr, te = np.flatnonzero(~is_test), np.flatnonzero(is_test)
    x_train, x_test = _read_images([files[i] for i in tr], [files[i] for i in te], image_size)
    y_test = None
    if te.size:
        y_test = (y_clean if y_clean is not None else y)[te]
    ds = Dataset(
        x_train=x_train,
        y_train=y[tr],
        y_train_clean=None if y_clean is None else y_clean[tr],
        x_test=x_test,
        y_test=y_test,
        num_classes=len(names),
        class_names=names,
        name=spec,
        label_values=label_values,
    )
    return _with_holdout(ds, test_fraction, seed)
