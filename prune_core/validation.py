"""The one input layer: every array, label file, image and option a user hands in passes here.

Each check returns the input in a canonical form or raises `InputError` with a one-line
message that names the problem (how many rows fail and the first one, the file, the value).
Nothing is silently clipped, renormalised or reordered. The CLI, the pipeline, `select`, the
baselines, `find_label_issues`, the data loaders and the noise readers all call these
functions, so every entry point accepts and refuses the same inputs.

- `check_probs`: softmax probabilities (N, C).
- `check_embeddings`: feature vectors (N, D) from a model (penultimate layer).
- `check_labels`, `encode_label_values`, `map_to_label_ids`: integer class labels, and labels
  whose values are not 0..C-1 (mapped to contiguous ids, the original values kept).
- `read_label_csv`: label CSV files (UTF-8 with or without a byte-order mark, UTF-16 with one;
  the header names in `LABEL_COLUMN_NAMES` / `INDEX_COLUMN_NAMES`).
- `image_to_uint8`: one PIL image to 8-bit grey (H, W) or RGB (H, W, 3).
- `check_k`: a neighbour count against N. A run's other options are checked by
  `pipeline.check_run_options`, which needs the method registry and the graph options.
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import numpy as np

from .errors import InputError

# A probability row must sum to 1 within this (float32 softmax over thousands of classes
# stays well inside it); single values may leave [0, 1] by at most VALUE_TOLERANCE.
ROW_SUM_TOLERANCE = 1e-3
VALUE_TOLERANCE = 1e-6

# Accepted CSV header names (compared after stripping blanks, case-insensitive).
LABEL_COLUMN_NAMES = ("label", "labels", "noisy_label", "given_label", "y", "target", "class")
# "" is the unnamed first column pandas writes for its index (DataFrame.to_csv()).
INDEX_COLUMN_NAMES = ("index", "idx", "")
# Identifier columns (file names, ids) are accepted but not used: rows are in example order.
ID_COLUMN_NAMES = ("id", "name", "file", "filename", "path")


def one_line(text: str) -> str:
    """`text` with its line breaks replaced by spaces (messages must stay on one line)."""
    return " ".join(str(text).split())


# --------------------------------------------------------------------------- probabilities


def _numeric_matrix(a, n: int | None, name: str, columns: str, min_columns: int) -> np.ndarray:
    """`a` as a real numeric 2-D array with N >= 1 rows (n when given) and >= min_columns columns."""
    a = np.asarray(a)
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool) or np.iscomplexobj(a):
        raise InputError(f"{name} must be a numeric (N, {columns}) array; got dtype {a.dtype}")
    if a.ndim != 2 or a.shape[1] < min_columns or a.shape[0] < 1:
        raise InputError(f"{name} must be a 2-D array (N, {columns}) with N >= 1 and {columns} >= {min_columns}; "
                         f"got shape {a.shape}")
    if n is not None and a.shape[0] != n:
        raise InputError(f"{name} have {a.shape[0]} rows but there are {n} examples")
    return a


def check_probs(probs, n: int | None = None, num_classes: int | None = None, name: str = "probs") -> np.ndarray:
    """Check softmax probabilities and return them as a float64 (N, C) array (values unchanged).

    probs: (N, C) numeric array, C >= 2, every row finite, each value in [0, 1] and the row
    summing to 1 within ROW_SUM_TOLERANCE. n / num_classes: expected N / C when given.

    Raises InputError for a wrong shape or dtype, and for rows that are not probability
    distributions: the message says how many rows fail and describes the first one.
    """
    p = _numeric_matrix(probs, n, name, "C", 2)
    if num_classes is not None and p.shape[1] != num_classes:
        raise InputError(f"{name} have {p.shape[1]} columns but there are {num_classes} classes")
    p = p.astype(np.float64)
    finite = np.isfinite(p).all(axis=1)
    with np.errstate(invalid="ignore"):
        in_range = ((p >= -VALUE_TOLERANCE) & (p <= 1.0 + VALUE_TOLERANCE)).all(axis=1)
        sums = p.sum(axis=1)
        sums_to_one = np.abs(sums - 1.0) <= ROW_SUM_TOLERANCE
    bad = ~(finite & in_range & sums_to_one)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        row = p[first]
        if not finite[first]:
            why = "has NaN or infinite values"
        elif not in_range[first]:
            why = f"has values in [{row.min():.6g}, {row.max():.6g}]"
        else:
            why = f"sums to {sums[first]:.6g}"
        raise InputError(
            f"{name}: {int(bad.sum())} of {len(p)} rows are not probability distributions (finite values "
            f"in [0, 1] summing to 1 within {ROW_SUM_TOLERANCE:g}); first is row {first}, which {why}"
        )
    return p


def check_embeddings(embeddings, n: int | None = None, name: str = "embeddings") -> np.ndarray:
    """Check per-example feature vectors and return them as a float32 (N, D) array.

    embeddings: (N, D) numeric array, D >= 1, every value finite. n: the expected N.
    Raises InputError for a wrong dtype or shape, a row count other than n, and rows with
    NaN or infinite values (how many, and the first).
    """
    e = _numeric_matrix(embeddings, n, name, "D", 1).astype(np.float32)
    bad = ~np.isfinite(e).all(axis=1)
    if bad.any():
        raise InputError(f"{name}: {int(bad.sum())} of {len(e)} rows have NaN or infinite values "
                         f"(or values too large for float32); first is row {int(np.flatnonzero(bad)[0])}")
    return e


# --------------------------------------------------------------------------- labels


def check_labels(y, name: str = "labels", num_classes: int | None = None, n: int | None = None) -> np.ndarray:
    """Check class labels and return them as an (N,) int64 array.

    y: 1-D integers; bools become 0/1 and floats are accepted when every value is a whole
    number (labels that went through pandas). Labels must be >= 0, and < num_classes when
    that is given. n: the expected length.

    Raises InputError naming `name` and the first offending value.
    """
    y = np.asarray(y)
    if y.ndim != 1:
        raise InputError(f"{name} must be 1-D (one label per example); got shape {y.shape}")
    if n is not None and len(y) != n:
        raise InputError(f"{name} has {len(y)} labels but there are {n} examples")
    if y.dtype == bool:
        y = y.astype(np.int64)
    elif np.issubdtype(y.dtype, np.floating):
        whole = np.isfinite(y) & (y == np.round(y))
        if not whole.all():
            first = int(np.flatnonzero(~whole)[0])
            raise InputError(
                f"{name} must hold integer class labels; found non-integer value {y[first]:g} at position {first}"
            )
        largest = float(np.abs(y).max()) if y.size else 0.0
        if largest >= 2.0**62:
            raise InputError(f"{name} has a label too large for a class id ({largest:g})")
    elif not np.issubdtype(y.dtype, np.integer):
        raise InputError(f"{name} must hold integer class labels; got dtype {y.dtype}")
    elif y.dtype == np.uint64 and y.size and y.max() > np.iinfo(np.int64).max:
        raise InputError(f"{name} has a label too large for a class id ({int(y.max())})")
    y = y.astype(np.int64)
    if y.size and y.min() < 0:
        raise InputError(f"{name} has negative labels (min {int(y.min())}); labels must be 0..C-1")
    if num_classes is not None and y.size and (y.min() < 0 or y.max() >= num_classes):
        bad = int(y.max()) if y.max() >= num_classes else int(y.min())
        raise InputError(
            f"{name} has label {bad} out of range; there are {num_classes} classes (labels 0..{num_classes - 1})"
        )
    return y


def encode_label_values(arrays: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Map label values that are not 0..C-1 to contiguous ids 0..C-1.

    arrays: {name: (N_i,) int64 labels} that share one class set (train, clean, test).
    When the union of their values is exactly 0..max, they are returned unchanged with None.
    Otherwise (gaps such as {0, 5, 9}, offsets such as {10, 20, 30}) every label becomes the position of its value in the sorted union, and that
    union is returned as `label_values` (C,) int64: id i stands for the original value
    label_values[i].
    """
    present = [np.unique(y) for y in arrays.values() if y.size]
    if not present:
        return dict(arrays), None
    values = np.unique(np.concatenate(present))
    if values[0] == 0 and values[-1] == len(values) - 1:
        return dict(arrays), None
    return {k: np.searchsorted(values, y).astype(np.int64) for k, y in arrays.items()}, values


def map_to_label_ids(y: np.ndarray, label_values: np.ndarray, name: str) -> np.ndarray:
    """(N,) int64 ids for labels given in the original values `label_values` (C,).

    Raises InputError naming the first value that is not one of the dataset's labels.
    """
    values = np.asarray(label_values, dtype=np.int64)
    ids = np.clip(np.searchsorted(values, y), 0, len(values) - 1)
    known = values[ids] == y
    if not known.all():
        first = int(np.flatnonzero(~known)[0])
        shown = ", ".join(str(int(v)) for v in values[:12]) + (", ..." if len(values) > 12 else "")
        raise InputError(
            f"{name} has label {int(y[first])} (position {first}), which is not one of the dataset's labels ({shown})"
        )
    return ids.astype(np.int64)


def label_values_of(ids, label_values) -> np.ndarray:
    """The original label values of ids (N,): `ids` itself when label_values is None."""
    ids = np.asarray(ids)
    return ids if label_values is None else np.asarray(label_values, dtype=np.int64)[ids]


# --------------------------------------------------------------------------- label CSV files


def _decode_text(path: Path) -> str:
    """The text of a CSV file: UTF-8 (a byte-order mark is dropped) or UTF-16 with a BOM."""
    raw = path.read_bytes()
    try:
        if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
            return raw.decode("utf-16")
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(
            f"{path}: not UTF-8 text (byte {e.start}); save the CSV as UTF-8 (e.g. Excel's 'CSV UTF-8')"
        ) from None


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def read_label_csv(path, key: str | None = None) -> np.ndarray:
    """Labels from a CSV file, in example order: (N,) float64 (range and integer checks follow).

    Forms (UTF-8 with or without a byte-order mark, or UTF-16 with one; comma, semicolon or
    tab separated; blank lines skipped):

    - one label per line, no header;
    - two columns ``index,label`` without a header;
    - a header row: one label column named as in LABEL_COLUMN_NAMES (or `key`), optionally
      one index column named as in INDEX_COLUMN_NAMES, and optionally identifier columns
      (ID_COLUMN_NAMES, not used). With `key` (``#COLUMN``), that column is the label
      column and other columns are ignored.

    An index column must list 0..N-1 once each, in any order: row i's label goes to example
    index[i]. Without one, rows are in example order; an identifier column that holds a
    shuffled 0..N-1 is refused as ambiguous. Raises InputError for a header that is not
    understood, non-numeric labels (naming the first), or a bad index column.
    """
    import io

    import pandas as pd

    path = Path(path)
    text = _decode_text(path)
    first_line = next((line for line in text.splitlines() if line.strip()), "")
    separator = next((s for s in (",", ";", "\t") if s in first_line), ",")
    try:
        table = pd.read_csv(io.StringIO(text), header=None, dtype=str, keep_default_na=False,
                            skip_blank_lines=True, sep=separator)
    except pd.errors.EmptyDataError:
        raise InputError(f"{path} has no labels") from None
    except (pd.errors.ParserError, csv.Error) as e:
        raise InputError(f"{path}: not a readable CSV ({one_line(e)})") from None
    table = table.apply(lambda col: col.str.strip())
    table = table[(table != "").any(axis=1)]
    if table.empty:
        raise InputError(f"{path} has no labels")
    first_row = list(table.iloc[0])
    has_header = not all(_is_number(c) for c in first_row if c != "")
    if has_header:
        header = [c.lower() for c in first_row]
        body = table.iloc[1:]
        label_col, index_col = _header_columns(header, key, path)
        _refuse_shuffled_ids(table.iloc[1:], header, index_col, path)
    else:
        if key is not None:
            raise InputError(f"{path} has no header, so '#{key}' names no column")
        body = table
        width = table.shape[1]
        if width == 1:
            label_col, index_col = 0, None
        elif width == 2:
            index_col, label_col = 0, 1
        else:
            raise InputError(f"{path} has {width} columns and no header; use one label per line, or a header "
                             f"with a label column ({', '.join(LABEL_COLUMN_NAMES)})")
    if body.empty:
        raise InputError(f"{path} has a header but no labels")
    labels = _numeric_column(body.iloc[:, label_col], path, "label")
    if index_col is None:
        return labels
    index = _numeric_column(body.iloc[:, index_col], path, "index")
    order = index.astype(np.int64)
    if np.any(order != index) or not np.array_equal(np.sort(order), np.arange(len(order))):
        raise InputError(f"{path}: the index column must list 0..{len(order) - 1} once each (one row per example)")
    out = np.empty_like(labels)
    out[order] = labels
    return out


def _header_columns(header: list[str], key: str | None, path: Path) -> tuple[int, int | None]:
    """(label column, index column or None) of a CSV header (lower-cased names)."""
    index_cols = [i for i, h in enumerate(header) if h in INDEX_COLUMN_NAMES]
    if key is not None:
        wanted = key.strip().lower()
        if wanted not in header:
            raise InputError(f"{path} has no column '{key}'; columns: {', '.join(header)}")
        label_col = header.index(wanted)
        index_cols = [i for i in index_cols if i != label_col]
    else:
        label_cols = [i for i, h in enumerate(header) if h in LABEL_COLUMN_NAMES]
        unknown = [h for i, h in enumerate(header)
                   if i not in label_cols and i not in index_cols and h not in ID_COLUMN_NAMES]
        if len(label_cols) != 1 or unknown or len(index_cols) > 1:
            raise InputError(
                f"{path}: header '{','.join(header)}' not understood; use one label column named "
                f"{'/'.join(LABEL_COLUMN_NAMES)}, optionally one index column named "
                f"{'/'.join(n for n in INDEX_COLUMN_NAMES if n)} and id columns "
                f"{'/'.join(ID_COLUMN_NAMES)} (or pick the label column with #COLUMN)"
            )
        label_col = label_cols[0]
    if len(index_cols) > 1:
        raise InputError(f"{path}: several index columns ({', '.join(header[i] or '(unnamed)' for i in index_cols)})")
    return label_col, (index_cols[0] if index_cols else None)


def _refuse_shuffled_ids(body, header: list[str], index_col: int | None, path: Path) -> None:
    """Without an index column, an id column holding a shuffled 0..N-1 would be ambiguous."""
    if index_col is not None:
        return
    for i, h in enumerate(header):
        if h not in ID_COLUMN_NAMES:
            continue
        column = list(body.iloc[:, i])
        if not all(c.isdigit() for c in column):
            continue
        ids = np.array([int(c) for c in column])
        if np.array_equal(np.sort(ids), np.arange(len(ids))) and not np.array_equal(ids, np.arange(len(ids))):
            raise InputError(f"{path}: column '{h}' lists 0..{len(ids) - 1} out of order; name it 'index' "
                             "if it gives each row's example, or sort the rows")


def _numeric_column(column, path: Path, what: str) -> np.ndarray:
    values = list(column)
    numbers = np.empty(len(values), dtype=np.float64)
    for i, text in enumerate(values):
        try:
            numbers[i] = float(text)
        except ValueError:
            raise InputError(f"{path}: every row needs a numeric {what}; data row {i + 1} has {text!r}") from None
    return numbers


# --------------------------------------------------------------------------- images

# Modes whose pixels are integers of more than 8 bits (scaled from their full range).
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def image_to_uint8(im, path) -> np.ndarray:
    """One PIL image as 8-bit pixels: (H, W) uint8 grey or (H, W, 3) uint8 RGB.

    - 1, L: grey as is; LA, La: grey, alpha dropped.
    - I;16 (16-bit grey, e.g. 16-bit PNGs): scaled from 0..65535 to 0..255 (v / 257, rounded).
    - I (32-bit integer): values must lie in 0..65535 and are scaled like I;16.
    - F (32-bit float): values in [0, 1] are scaled by 255, values in [0, 255] rounded.
    - every colour mode PIL converts to RGB (P, PA, RGB, RGBA, RGBX, RGBa, CMYK, YCbCr, LAB,
      HSV): RGB, alpha dropped.

    Raises InputError naming the file for anything else (or values outside those ranges).
    """
    mode = im.mode
    try:
        if mode in ("1", "L"):
            return np.asarray(im.convert("L"), dtype=np.uint8)
        if mode in ("LA", "La"):
            return np.asarray(im.getchannel(0), dtype=np.uint8)
        if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
            return _scaled_grey(np.asarray(im), mode, path)
        return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"cannot convert image file {path} (mode {mode}) to 8-bit grey or RGB ({one_line(e)})") from None


def _scaled_grey(a: np.ndarray, mode: str, path) -> np.ndarray:
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise InputError(f"image file {path} (mode {mode}) has NaN or infinite pixel values")
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if mode == "F":
        if lo >= 0.0 and hi <= 1.0:
            return np.round(a * 255.0).astype(np.uint8)
        if lo >= 0.0 and hi <= 255.0:
            return np.round(a).astype(np.uint8)
        raise InputError(f"image file {path} (mode F) has values in [{lo:g}, {hi:g}]; need [0, 1] or [0, 255]")
    if lo < 0.0 or hi > 65535.0:
        raise InputError(f"image file {path} (mode {mode}) has values in [{lo:g}, {hi:g}]; need 0..65535")
    return np.round(a / 257.0).astype(np.uint8)


# --------------------------------------------------------------------------- options


def check_k(k, n: int, what: str = "k") -> None:
    """k neighbours need N >= k + 1 examples; k must be a positive integer."""
    if k is None:
        return
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise InputError(f"{what} must be a positive integer, got {k}")
    if k >= n:
        raise InputError(f"{what}={k} is larger than N-1={n - 1} (N={n} examples)")


def parse_number_list(text: str, cast, what: str) -> list:
    """A list of numbers separated by commas or spaces, e.g. keep ratios "0.2, 0.4" or seeds "0 1 2".

    cast: int or float. An empty item ("0,,1", a trailing comma) or a value `cast` cannot
    read is refused rather than skipped, so a list is never read as something other than
    what was typed. Raises InputError (one line, naming `what`).
    """
    if not str(text).strip():
        raise InputError(f"{what}: give at least one value")
    items = re.split(r"\s*,\s*|\s+", str(text).strip())
    out = []
    for item in items:  # stripped by the split; empty only between two commas or after a last one
        if not item:
            raise InputError(f"{what}: empty item in '{text}' (separate values with single commas)")
        try:
            out.append(cast(item))
        except ValueError:
            kind = "a whole number" if cast is int else "a number"
            raise InputError(f"{what}: '{item}' is not {kind}") from None
    return out
