"""Model outputs you already have: predicted probabilities, embeddings and labels from files.

`select` (CLI `python -m prune_core select`, the app's "model outputs" source) works on the
outputs of a model trained elsewhere instead of training a warm-up. Conventions (those of
cleanlab's ``pred_probs``):

- probs: (N, C) softmax probabilities, row i for training example i, column c for class c;
  out-of-sample (each row predicted by a model that did not train on that example, e.g.
  K-fold cross-validation), since a model's probabilities on its own training examples are
  overconfident on exactly the mislabelled ones it memorised;
- embeddings: (N, D) feature vectors (e.g. the penultimate layer), same row order;
- labels: (N,) given (possibly noisy) class ids in 0..C-1, the column order of probs;
- labels_clean: (N,) ground-truth class ids when known (only for the noise metrics).

Array SPEC forms (`read_array`):

- ``PATH.npy``;
- ``PATH.npz#KEY`` (``PATH.npz`` alone when it holds one array);
- ``PATH.csv#COLUMNS`` or ``PATH.parquet#COLUMNS``: COLUMNS is a comma-separated list of
  column names or glob patterns (``prob_*``), matched in the table's column order; without
  ``#COLUMNS`` every column is used. Labels from a CSV go through the shared label-file
  reader (`validation.read_label_csv`: a header, ``index,label`` pairs, ``#COLUMN``).
"""

from __future__ import annotations

import fnmatch
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError
from .validation import check_embeddings, check_labels, check_probs, one_line, read_label_csv

ARRAY_FORMS = "PATH.npy, PATH.npz#KEY, PATH.csv#COLUMNS or PATH.parquet#COLUMNS (COLUMNS: names or globs such as prob_*)"


def _split_spec(spec: str, what: str) -> tuple[Path, str | None]:
    if not isinstance(spec, str) or not spec.strip():
        raise InputError(f"{what}: give a file ({ARRAY_FORMS})")
    path, sep, key = spec.strip().partition("#")
    p = Path(path).expanduser()
    if p.is_dir():
        raise InputError(f"{what}: {path} is a folder, not a file")
    if not p.is_file():
        raise InputError(f"{what}: no such file: {path}")
    return p, (key.strip() if sep else None)


def _matching_columns(columns: list[str], pattern: str | None, path: Path, what: str) -> list[str]:
    """The columns named or matched by a comma-separated pattern, in the table's order."""
    if pattern is None:
        return list(columns)
    wanted = [part.strip() for part in pattern.split(",") if part.strip()]
    if not wanted:
        raise InputError(f"{what}: '#' after {path.name} names no column")
    chosen = set()
    for part in wanted:
        hits = [c for c in columns if fnmatch.fnmatchcase(str(c), part)]
        if not hits:
            shown = ", ".join(map(str, columns[:20])) + (", ..." if len(columns) > 20 else "")
            raise InputError(f"{what}: {path.name} has no column matching '{part}'; columns: {shown}")
        chosen.update(hits)
    return [c for c in columns if c in chosen]


def _read_table(path: Path, pattern: str | None, what: str) -> np.ndarray:
    """The chosen columns of a CSV or Parquet table as an (N, K) array."""
    import pandas as pd

    try:
        if path.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            columns = list(pq.read_schema(path).names)
            table = pd.read_parquet(path, columns=_matching_columns(columns, pattern, path, what))
        else:
            table = pd.read_csv(path, encoding="utf-8-sig")
            table = table[_matching_columns([str(c) for c in table.columns], pattern, path, what)]
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - pandas / pyarrow parse errors of many kinds
        raise InputError(f"{what}: cannot read {path} ({type(e).__name__}: {one_line(e)})") from None
    for name in table.columns:
        if not pd.api.types.is_numeric_dtype(table[name]) and not pd.api.types.is_bool_dtype(table[name]):
            raise InputError(f"{what}: column '{name}' of {path.name} is not numeric")
    return table.to_numpy()


def read_array(spec: str, what: str = "array", labels: bool = False) -> np.ndarray:
    """Read one array from a SPEC (see the module docstring); the values are not checked here.

    labels: the array is a label vector: a CSV goes through `validation.read_label_csv` and a
    table selection must be a single column (returned as (N,)).
    Raises InputError (one line) for a missing file, a missing key or column, a file that
    cannot be read, and non-numeric table columns.
    """
    path, key = _split_spec(spec, what)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        if key is not None:
            raise InputError(f"{what}: {path.name} is one array; '#{key}' applies to .npz files and tables")
        try:
            return np.load(path, allow_pickle=False)
        except ValueError:
            raise InputError(f"{what}: {path} holds pickled Python objects, which are refused") from None
        except Exception as e:  # noqa: BLE001
            raise InputError(f"{what}: {path} is not a readable .npy file ({type(e).__name__})") from None
    if suffix == ".npz":
        if not zipfile.is_zipfile(path):
            raise InputError(f"{what}: {path} is not a readable .npz file (not a zip archive)")
        try:
            with np.load(path, allow_pickle=False) as z:
                keys = list(z.files)
                if key is None and len(keys) != 1:
                    raise InputError(f"{what}: {path.name} holds {len(keys)} arrays ({', '.join(keys)}); "
                                     f"pick one with {path.name}#KEY")
                key = keys[0] if key is None else key
                if key not in keys:
                    raise InputError(f"{what}: {path.name} has no array '{key}'; it has {', '.join(keys)}")
                return z[key]
        except InputError:
            raise
        except ValueError:
            raise InputError(f"{what}: {path} holds pickled Python objects, which are refused") from None
        except Exception as e:  # noqa: BLE001
            raise InputError(f"{what}: {path} is not a readable .npz file ({type(e).__name__})") from None
    if suffix in (".csv", ".parquet"):
        if labels and suffix == ".csv":
            return read_label_csv(path, key)
        values = _read_table(path, key, what)
        if labels:
            if values.shape[1] != 1:
                raise InputError(f"{what}: {path.name}#{key or ''} selects {values.shape[1]} columns; "
                                 "labels need exactly one")
            return values[:, 0]
        return values
    raise InputError(f"{what}: unknown file type '{path.suffix}' of {path.name}; use {ARRAY_FORMS}")


@dataclass
class ModelOutputs:
    """Checked model outputs over N training examples and C classes.

    probs: (N, C) float32 or float64 probability rows (float32 kept as given, other dtypes as float64); embeddings: (N, D) float32; labels: (N,) int64
    given labels in 0..C-1; labels_clean: (N,) int64 ground truth or None; sources: the SPEC
    strings they were read from (for manifests), or {} for arrays handed in directly.
    """

    probs: np.ndarray
    embeddings: np.ndarray
    labels: np.ndarray
    labels_clean: np.ndarray | None = None
    sources: dict | None = None

    @property
    def n(self) -> int:
        return int(self.probs.shape[0])

    @property
    def num_classes(self) -> int:
        return int(self.probs.shape[1])


def check_model_outputs(probs, embeddings, labels, labels_clean=None, sources: dict | None = None) -> ModelOutputs:
    """Check arrays against each other and return a `ModelOutputs`.

    probs (N, C) through `validation.check_probs` (N is set by its rows), embeddings (N, D)
    through `validation.check_embeddings`, labels and labels_clean (N,) through
    `validation.check_labels` with C classes. Raises InputError with the first problem.
    """
    p = check_probs(probs, name="probs")
    given = np.asarray(probs)
    if given.dtype in (np.float32, np.float64):
        p = given  # float32 stays float32: the same confidences as a warm-up's own probs
    n, c = p.shape
    e = check_embeddings(embeddings, n=n, name="embeddings")
    y = check_labels(labels, "labels", num_classes=c, n=n)
    yc = None if labels_clean is None else check_labels(labels_clean, "labels_clean", num_classes=c, n=n)
    return ModelOutputs(p, e, y, yc, dict(sources or {}))


def read_model_outputs(probs: str, embeddings: str, labels: str, labels_clean: str | None = None) -> ModelOutputs:
    """Read and check model outputs from SPEC strings (see the module docstring)."""
    sources = {"probs": probs, "embeddings": embeddings, "labels": labels, "labels_clean": labels_clean}
    return check_model_outputs(
        read_array(probs, "probs"), read_array(embeddings, "embeddings"), read_array(labels, "labels", labels=True),
        None if labels_clean is None else read_array(labels_clean, "labels_clean", labels=True), sources,
    )


def read_model_outputs_npz(path) -> ModelOutputs:
    """Model outputs from one .npz file with arrays probs, embeddings, labels and optional labels_clean."""
    p, _ = _split_spec(str(path), "model outputs")
    if not zipfile.is_zipfile(p):
        raise InputError(f"model outputs: {p} is not a readable .npz file (not a zip archive)")
    try:
        with np.load(p, allow_pickle=False) as z:
            keys = set(z.files)
    except Exception as e:  # noqa: BLE001
        raise InputError(f"model outputs: {p} is not a readable .npz file ({type(e).__name__})") from None
    missing = [k for k in ("probs", "embeddings", "labels") if k not in keys]
    if missing:
        raise InputError(f"model outputs: {p} lacks {', '.join(missing)}; it needs arrays probs, embeddings, "
                         f"labels (and optionally labels_clean); it has {', '.join(sorted(keys))}")
    return read_model_outputs(f"{p}#probs", f"{p}#embeddings", f"{p}#labels",
                              f"{p}#labels_clean" if "labels_clean" in keys else None)


def outputs_dataset(outputs: ModelOutputs, x=None, name: str = "model outputs"):
    """A `Dataset` for model outputs: x_train is `x` (images for thumbnails) or the embeddings.

    The dataset has no test split; class names are 0..C-1 (the probability columns).
    """
    from .data import Dataset, validate_dataset

    x_train = outputs.embeddings if x is None else x
    if len(x_train) != outputs.n:
        raise InputError(f"there are {len(x_train)} images but the model outputs have {outputs.n} rows; "
                         "give one image per row, in the same order")
    return validate_dataset(Dataset(x_train=x_train, y_train=outputs.labels, y_train_clean=outputs.labels_clean,
                                    num_classes=outputs.num_classes,
                                    class_names=[str(i) for i in range(outputs.num_classes)], name=name))


# What model outputs provide to the selection methods (no losses or forgetting counts).
PROVIDED = ("probs", "embeddings", "labels")


def check_method_for_outputs(method: str, params: dict | None = None) -> None:
    """Refuse methods that need signals only a warm-up records (forgetting events).

    Every other method works from probs, embeddings and labels: small_loss computes the loss
    from probs and labels, and el2n / grand use the given probabilities (the training-time
    probabilities of the EL2N paper are not available here). Raises InputError in one line.
    """
    from .selection import get_method, list_methods

    info = get_method(method)
    missing = [name for name in info.needs if name not in PROVIDED]
    if method == "ccs" and (params or {}).get("score", info.defaults.get("score")) == "forgetting":
        missing.append("forgetting")
    if missing:
        usable = [m for m in list_methods() if all(x in PROVIDED for x in get_method(m).needs)]
        raise InputError(
            f"method {method!r} needs {', '.join(missing)} (forgetting events counted while training a warm-up), "
            f"which model outputs do not have: use `run`, or one of {', '.join(usable)}"
        )
