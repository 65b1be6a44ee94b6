"""Label noise: inject synthetic noise, read real noisy-label files, and describe the noise.

NOISE spec strings (the same as the CLI's `--noise`):

- ``none``: the given labels as they are.
- ``sym:RATE``: exactly round(RATE*N) examples, chosen uniformly without replacement, get a
  label drawn uniformly from the *other* C-1 classes (so every chosen label really changes).
- ``asym:RATE`` or ``asym:RATE:MAP``: class-dependent flips. In every source class c of the map,
  exactly round(RATE*N_c) of its examples flip to MAP[c] (a per-class count, so the overall
  noise rate is RATE times the share of examples in mapped classes). MAP is a built-in name
  (``digits``, ``cifar10``, ``cifar10_pairs``, ``cyclic``) or pairs like ``2>7,3>8,5>6,6>5``.
  Without MAP, `apply_noise` picks one from the dataset (see `default_asym_map`).
- ``labels:PATH`` or ``labels:PATH#KEY``: noisy labels from a file (.npy, .csv, .npz#KEY, or a
  CIFAR-N style .pt/.pth dict such as ``CIFAR-10_human.pt#worse_label``).

Counts are rounded half up (0.5 -> 1). Flips for a map are drawn from the *original* labels,
so a swap pair (5>6,6>5) never flips an example twice. All randomness comes from
``numpy.random.default_rng(seed)``: the same seed gives the same labels.
"""

from __future__ import annotations

import importlib
import math
import pickle
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError
from .validation import check_labels, map_to_label_ids, read_label_csv

NOISE_FORMS = "none, sym:RATE, asym:RATE, asym:RATE:MAP (MAP: digits|cifar10|cifar10_pairs|cyclic|'2>7,3>8'), labels:PATH[#KEY]"

# One-way classic maps; cat<->dog and 5<->6 are swaps.
ASYM_MAPS: dict[str, dict[int, int]] = {
    # truck->automobile, bird->airplane, deer->horse, cat<->dog (the usual CIFAR-10 asym noise)
    "cifar10": {9: 1, 2: 0, 4: 7, 3: 5, 5: 3},
    # the official Prune4ReL code's pair swaps (spec 7.4): airplane<->bird, automobile<->truck,
    # cat<->dog, deer<->horse, frog<->ship; every class flips
    "cifar10_pairs": {0: 2, 2: 0, 1: 9, 9: 1, 3: 5, 5: 3, 4: 7, 7: 4, 6: 8, 8: 6},
    # look-alike handwritten digits
    "digits": {2: 7, 3: 8, 5: 6, 6: 5, 7: 1},
}
CIFAR10_CLASS_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@dataclass(frozen=True)
class NoiseSpec:
    """A parsed NOISE spec.

    kind: "none" | "sym" | "asym" | "labels"; rate: the injection rate (0.0 for none/labels);
    path/key: the label file and optional key (labels only); mapping: the asym MAP as written,
    or None for the dataset's default.
    """

    kind: str
    rate: float = 0.0
    path: str | None = None
    key: str | None = None
    mapping: str | None = None

    def to_string(self) -> str:
        """The spec string this parses from (for manifests and the CLI)."""
        if self.kind == "none":
            return "none"
        if self.kind == "sym":
            return f"sym:{self.rate:g}"
        if self.kind == "asym":
            return f"asym:{self.rate:g}" + (f":{self.mapping}" if self.mapping else "")
        return f"labels:{self.path}" + (f"#{self.key}" if self.key else "")


@dataclass
class NoisyLabels:
    """Labels to train on, with the ground truth when it is known.

    y_noisy: (N,) int64 labels to train on.
    y_clean: (N,) int64 ground truth, or None.
    is_noisy: (N,) bool, y_noisy != y_clean, or None without ground truth.
    transition: (C,C) float64, row-normalised P(noisy=j | clean=i); rows of classes with no
        examples are zeros. None without ground truth.
    spec: the resolved spec string (asym includes the map actually used).
    noise_rate: share of labels that differ from the ground truth, or None.
    """

    y_noisy: np.ndarray
    y_clean: np.ndarray | None
    is_noisy: np.ndarray | None
    transition: np.ndarray | None
    spec: str
    noise_rate: float | None

    @property
    def n_noisy(self) -> int | None:
        return None if self.is_noisy is None else int(self.is_noisy.sum())


# --------------------------------------------------------------------------- parsing


def _parse_rate(text: str, kind: str) -> float:
    try:
        rate = float(text)
    except ValueError:
        raise InputError(f"noise rate must be a number in [0, 1); got '{text}' in {kind}:RATE") from None
    if not 0.0 <= rate < 1.0:
        raise InputError(f"noise rate must be in [0, 1); got {rate:g}")
    return rate


def parse_mapping(mapping, num_classes: int | None = None) -> dict[int, int]:
    """An asym MAP as {source class: target class}.

    `mapping`: a built-in name (digits, cifar10, cifar10_pairs, cyclic), a dict, or a string of
    pairs "2>7,3>8". With `num_classes` given, classes are checked to be in range; the named
    10-class maps require num_classes == 10 and "cyclic" needs num_classes.
    """
    if isinstance(mapping, str) and mapping.strip().lower() in ASYM_MAPS:
        name = mapping.strip().lower()
        if num_classes is not None and num_classes != 10:
            raise InputError(
                f"asym map '{name}' is for 10 classes; this data has {num_classes} (use cyclic or pairs like 2>7)"
            )
        return dict(ASYM_MAPS[name])
    if isinstance(mapping, str) and mapping.strip().lower() == "cyclic":
        if num_classes is None:
            raise InputError("the cyclic asym map needs num_classes")
        return {c: (c + 1) % num_classes for c in range(num_classes)}
    if isinstance(mapping, str):
        pairs = []
        for item in mapping.split(","):
            src, sep, dst = item.strip().partition(">")
            try:
                if not sep:
                    raise ValueError
                pairs.append((int(src), int(dst)))
            except ValueError:
                raise InputError(
                    f"bad asym map '{mapping}'; use digits, cifar10, cifar10_pairs, cyclic, or pairs like 2>7,3>8"
                ) from None
    elif isinstance(mapping, dict):
        try:
            pairs = [(int(k), int(v)) for k, v in mapping.items()]
        except (TypeError, ValueError):
            raise InputError(f"asym map must map class indices to class indices; got {mapping!r}") from None
    else:
        raise InputError(f"asym map must be a name, a dict or a string like '2>7,3>8'; got {mapping!r}")
    out: dict[int, int] = {}
    for src, dst in pairs:
        if src in out:
            raise InputError(f"asym map lists class {src} twice")
        if src == dst:
            raise InputError(f"asym map sends class {src} to itself")
        if src < 0 or dst < 0 or (num_classes is not None and max(src, dst) >= num_classes):
            raise InputError(f"asym map pair {src}>{dst} is outside classes 0..{(num_classes or 0) - 1}")
        out[src] = dst
    if not out:
        raise InputError("asym map is empty")
    return out


def parse_noise_spec(spec: str) -> NoiseSpec:
    """Parse a NOISE spec string (forms in the module docstring) into a `NoiseSpec`."""
    if isinstance(spec, NoiseSpec):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise InputError(f"noise spec must be a non-empty string; use one of: {NOISE_FORMS}")
    text = spec.strip()
    kind, _, rest = text.partition(":")
    kind = kind.lower()
    if kind == "none" and not rest:
        return NoiseSpec("none")
    if kind == "sym" and rest:
        return NoiseSpec("sym", rate=_parse_rate(rest, kind))
    if kind == "asym" and rest:
        rate_text, _, mapping = rest.partition(":")
        rate = _parse_rate(rate_text, kind)
        mapping = mapping.strip() or None
        if mapping is not None:
            if mapping.lower() in ASYM_MAPS or mapping.lower() == "cyclic":
                mapping = mapping.lower()
            else:
                parse_mapping(mapping)  # check the pairs' syntax now
        return NoiseSpec("asym", rate=rate, mapping=mapping)
    if kind == "labels" and rest:
        path, sep, key = rest.rpartition("#") if "#" in rest else (rest, "", "")
        if not path:
            raise InputError(f"labels spec needs a file path: labels:PATH or labels:PATH#KEY; got '{spec}'")
        return NoiseSpec("labels", path=path, key=key or None)
    raise InputError(f"unknown noise spec '{spec}'; use one of: {NOISE_FORMS}")


# --------------------------------------------------------------------------- injection


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5 + 1e-9))  # 1e-9: 0.4*N must not fall to .4999... and round down


def inject_noise(
    y: np.ndarray,
    kind: str,
    rate: float,
    num_classes: int,
    seed: int | None = 0,
    mapping=None,
) -> np.ndarray:
    """Return a noisy copy of the labels `y` ((N,) ints in [0, num_classes)); `y` is not changed.

    kind "sym": exactly round(rate*N) examples get a uniformly drawn *different* label.
    kind "asym": in each source class c of `mapping`, exactly round(rate*N_c) examples get
    mapping[c]. `mapping`: None (= "cyclic", c -> (c+1) % C), "digits", "cifar10",
    "cifar10_pairs", "cyclic", a dict {c: c'}, or a string "2>7,3>8".
    kind "none": a copy of y.

    Returns an (N,) int64 array.
    """
    y = np.asarray(y)
    if y.ndim != 1:
        raise InputError(f"labels must be 1-D; got shape {y.shape}")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        raise InputError(f"labels must be integers; got dtype {y.dtype}")
    y = y.astype(np.int64)  # a copy: the caller's array stays as it was
    num_classes = int(num_classes)
    if num_classes < 2:
        raise InputError(f"noise needs at least two classes; got num_classes={num_classes}")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise InputError(f"labels must be in 0..{num_classes - 1}; found {int(y.min())}..{int(y.max())}")
    kind = str(kind).lower()
    if kind not in ("none", "sym", "asym"):
        raise InputError(f"unknown noise kind '{kind}'; use none, sym or asym")
    rate = float(rate)
    if not 0.0 <= rate < 1.0:
        raise InputError(f"noise rate must be in [0, 1); got {rate:g}")
    if kind == "none" or rate == 0.0:
        return y
    rng = np.random.default_rng(seed)
    if kind == "sym":
        n_flip = _round_half_up(rate * len(y))
        idx = rng.choice(len(y), size=n_flip, replace=False)
        # An offset in 1..C-1 is uniform over the other C-1 classes and never the same class.
        y[idx] = (y[idx] + rng.integers(1, num_classes, size=n_flip)) % num_classes
        return y
    flips = parse_mapping("cyclic" if mapping is None else mapping, num_classes)
    original = y.copy()
    for src in sorted(flips):
        members = np.flatnonzero(original == src)
        n_flip = _round_half_up(rate * len(members))
        chosen = rng.choice(members, size=n_flip, replace=False)
        y[chosen] = flips[src]
    return y


def transition_matrix(y_clean: np.ndarray, y_noisy: np.ndarray, num_classes: int) -> np.ndarray:
    """(C,C) float64 row-normalised P(noisy=j | clean=i); rows with no examples are zeros."""
    counts = np.zeros((num_classes, num_classes), dtype=np.float64)
    np.add.at(counts, (np.asarray(y_clean, dtype=np.int64), np.asarray(y_noisy, dtype=np.int64)), 1.0)
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def default_asym_map(ds) -> str:
    """The asym map a dataset gets without an explicit MAP.

    "cifar10" for CIFAR-10 (by source or class names), "digits" for 10-class digit data
    (digits, USPS, MNIST: class names that start with 0..9 in order), else "cyclic".
    """
    names = [str(c).strip().lower() for c in ds.class_names]
    name = str(ds.name).lower()
    if ds.num_classes == 10:
        if name.startswith("torchvision:cifar10:") or names == CIFAR10_CLASS_NAMES:
            return "cifar10"
        if name == "digits" or all(n.startswith(str(i)) for i, n in enumerate(names)):
            return "digits"
    return "cyclic"


# --------------------------------------------------------------------------- label files


def _numpy_safe_globals() -> list:
    """What unpickling plain numpy arrays needs, under numpy 2 and numpy 1 module paths."""
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray, numeric
    safe = [np.ndarray, np.dtype]
    for sub, fn in (("multiarray", multiarray._reconstruct), ("multiarray", multiarray.scalar), ("numeric", numeric._frombuffer)):
        safe.append(fn)
        for package in ("numpy.core", "numpy._core"):  # files written under numpy 1 or 2
            safe.append((fn, f"{package}.{sub}.{fn.__name__}"))
    safe += [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]
    return safe


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles containers of plain numpy arrays; refuses every other global (os.system...)."""

    ALLOWED = {
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.numeric", "_frombuffer"),  # protocol 5 arrays
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # protocol-2 pickles rebuild bytes with it
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        if module == "numpy":
            return getattr(np, name)
        if module == "_codecs":
            import _codecs

            return _codecs.encode
        # numpy 1 says numpy.core, numpy 2 numpy._core: use whichever is installed.
        submodule = module.rsplit(".", 1)[1]
        try:
            return getattr(importlib.import_module(f"numpy._core.{submodule}"), name)
        except ImportError:
            return getattr(importlib.import_module(f"numpy.core.{submodule}"), name)


def _load_torch_file(path: Path):
    """Load a .pt/.pth label file without running code from it.

    torch.save files (zip or legacy format) go through torch.load(weights_only=True) with only
    numpy's array-rebuilding globals added; plain pickles through `_NumpyOnlyUnpickler`. Any
    other global (e.g. os.system in a crafted pickle) is refused with InputError.
    """
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # protocol warnings for non-torch pickles
            with torch.serialization.safe_globals(_numpy_safe_globals()):
                return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        lines = [ln for ln in str(e).splitlines() if "Unsupported" in ln or "blocked" in ln]
        torch_why = lines[0].strip() if lines else type(e).__name__
        if zipfile.is_zipfile(path):  # a torch.save file: its refusal is the answer
            raise InputError(
                f"{path}: refused or unreadable as a label file (only tensors/numpy arrays are allowed; {torch_why})"
            ) from None
    try:
        with open(path, "rb") as f:
            return _NumpyOnlyUnpickler(f).load()
    except Exception as e:
        raise InputError(
            f"{path}: refused or unreadable as a label file (only tensors/numpy arrays are allowed; {e})"
        ) from None


def _pick_key(obj, key: str | None, path: Path) -> object:
    """From a loaded container take `key`; a lone array/tensor needs no key."""
    if isinstance(obj, dict):
        keys = [str(k) for k in obj]
        if key is None:
            if len(obj) == 1:
                return next(iter(obj.values()))
            raise InputError(f"{path} holds several arrays; pick one with #KEY, one of: {', '.join(keys)}")
        if key not in obj:
            raise InputError(f"{path} has no key '{key}'; available: {', '.join(keys)}")
        return obj[key]
    if key is not None:
        raise InputError(f"{path} holds a single array, not named arrays; drop '#{key}'")
    return obj


def read_label_file(path: str, key: str | None = None) -> np.ndarray:
    """Read noisy labels ((N,) array, not yet range-checked) from .npy, .npz, .csv or .pt/.pth.

    .npz and .pt/.pth with several arrays need `key` (e.g. "worse_label" in CIFAR-10_human.pt).
    Pickled Python objects are never executed: .npy/.npz load with allow_pickle=False and
    .pt/.pth through torch's weights-only unpickler.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise InputError(f"no such file: {path}")
    suffix = p.suffix.lower()
    if suffix == ".npy":
        if key is not None:
            raise InputError(f"{path} holds a single array; drop '#{key}'")
        try:
            values = np.load(p, allow_pickle=False)
        except Exception as e:
            raise InputError(f"{path}: not a plain .npy array ({type(e).__name__})") from None
    elif suffix == ".npz":
        try:
            with np.load(p, allow_pickle=False) as z:
                values = _pick_key({k: z[k] for k in z.files}, key, p)
        except InputError:
            raise
        except Exception as e:
            raise InputError(f"{path}: not a readable .npz of plain arrays ({type(e).__name__})") from None
    elif suffix == ".csv":
        values = read_label_csv(p, key)
    elif suffix in (".pt", ".pth"):
        values = _pick_key(_load_torch_file(p), key, p)
    else:
        raise InputError(f"label file {path}: unsupported type '{suffix}'; use .npy, .npz, .csv, .pt or .pth")
    if hasattr(values, "detach"):  # a torch tensor
        values = values.detach().cpu().numpy()
    try:
        return np.asarray(values)
    except Exception:
        raise InputError(f"{path}: the labels are not an array") from None


def _check_file_labels(values: np.ndarray, n: int, num_classes: int, path: str,
                       label_values: np.ndarray | None = None) -> np.ndarray:
    """(n,) int64 class ids from a label file's values.

    Without `label_values` the file holds ids 0..num_classes-1. With them (a dataset whose own
    labels were not 0..C-1, e.g. {10, 20, 30}) the file holds the same original values, which
    are mapped to the dataset's ids; a value the dataset does not have is refused.
    """
    values = np.asarray(values)
    if values.ndim == 2 and 1 in values.shape:
        values = values.reshape(-1)
    if values.ndim == 1 and len(values) != n:
        raise InputError(f"{path} has {len(values)} labels but the training set has {n} examples")
    if label_values is None:
        return check_labels(values, path, num_classes=num_classes)
    return map_to_label_ids(check_labels(values, path), label_values, path)


# --------------------------------------------------------------------------- dataset level


def apply_noise(ds, spec: str | NoiseSpec, seed: int | None = 0) -> NoisyLabels:
    """Noisy training labels for a `Dataset`, with ground truth and noise statistics.

    Ground truth (DESIGN 4.2): ds.y_train_clean when present, else ds.y_train when noise is
    injected or read from a file; with "none" it is ds.y_train_clean (possibly None).
    Injected noise is applied on top of ds.y_train.
    """
    ns = parse_noise_spec(spec)
    c = ds.num_classes
    resolved = ns.to_string()
    if ns.kind == "none":
        y_noisy = np.asarray(ds.y_train, dtype=np.int64).copy()
        y_clean = ds.y_train_clean
    elif ns.kind in ("sym", "asym"):
        mapping = None
        if ns.kind == "asym":
            mapping = ns.mapping or default_asym_map(ds)
            resolved = NoiseSpec("asym", ns.rate, mapping=mapping).to_string()
        y_noisy = inject_noise(ds.y_train, ns.kind, ns.rate, num_classes=c, seed=seed, mapping=mapping)
        y_clean = ds.y_train_clean if ds.y_train_clean is not None else ds.y_train
    else:
        values = read_label_file(ns.path, ns.key)
        y_noisy = _check_file_labels(values, len(ds.y_train), c, ns.path, getattr(ds, "label_values", None))
        y_clean = ds.y_train_clean if ds.y_train_clean is not None else ds.y_train

    if y_clean is None:
        return NoisyLabels(y_noisy, None, None, None, resolved, None)
    y_clean = np.asarray(y_clean, dtype=np.int64).copy()
    is_noisy = y_noisy != y_clean
    return NoisyLabels(
        y_noisy=y_noisy,
        y_clean=y_clean,
        is_noisy=is_noisy,
        transition=transition_matrix(y_clean, y_noisy, c),
        spec=resolved,
        noise_rate=float(is_noisy.mean()) if len(is_noisy) else 0.0,
    )


# --------------------------------------------------------------------------- reporting


def noise_rates(noisy: NoisyLabels, num_classes: int | None = None) -> dict:
    """Noise rates as a reader should see them.

    share_all: wrong labels / all N training labels (the rate of the data), or None without
        ground truth.
    source_classes: for asym noise, the classes whose labels are flipped (the map's sources,
        sorted); else None.
    share_in_source: wrong labels among examples whose TRUE class is a source class (the
        injection rate asym:RATE asks for), or None.
    Example: asym:0.3 with the digits map flips 30% of classes 2, 3, 5, 6, 7, which is about
    15% of all labels.
    """
    out = {"share_all": noisy.noise_rate, "source_classes": None, "share_in_source": None}
    ns = parse_noise_spec(noisy.spec)
    if ns.kind != "asym" or noisy.y_clean is None:
        return out
    sources = sorted(parse_mapping(ns.mapping, num_classes) if ns.mapping else [])
    if not sources:
        return out
    in_source = np.isin(noisy.y_clean, sources)
    out["source_classes"] = [int(c) for c in sources]
    out["share_in_source"] = float(noisy.is_noisy[in_source].mean()) if in_source.any() else None
    return out


def describe_noise(noisy: NoisyLabels, num_classes: int | None = None, class_names=None) -> str:
    """One line: "14.8% of all labels wrong (30.0% of classes 2, 3, 5, 6, 7)", or
    "ground truth unknown" (see `noise_rates`)."""
    rates = noise_rates(noisy, num_classes)
    if rates["share_all"] is None:
        return "ground truth unknown"
    text = f"{rates['share_all']:.1%} of all labels wrong"
    if rates["share_in_source"] is not None:
        names = [str(class_names[c]) if class_names is not None and c < len(class_names) else str(c)
                 for c in rates["source_classes"]]
        text += f" ({rates['share_in_source']:.1%} of classes {', '.join(names)})"
    return text
