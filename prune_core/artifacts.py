"""A run's stored results: reading and writing its bundles, and exporting a selection.

Bundles of a run (see `runstore.RunStore`): 'data' (dataset and noisy labels), 'warmup'
(probs, embeddings, ...), and results derived from the current warm-up: 'graphs/<key>',
'selections/<key>', 'maps/pca', 'maps/umap', 'knn'; plus 'sweeps/<key>'. A derived bundle
counts only while its info's warmup_id is the current warm-up's id (`current_bundle`).

The stage tasks that compute these results are in `prune_core.jobs`; this module computes
nothing and runs no job.
"""

from __future__ import annotations

import io
import time
from types import SimpleNamespace

import numpy as np

from .errors import InputError
from .runstore import RunStore, load_sparse


DERIVED_PREFIXES = ("graphs", "selections", "maps", "knn")


def load_data(store: RunStore, run_id: str):
    """The run's dataset and labels as a namespace, or None before data is saved.

    Fields: ds (a prune_core Dataset), y_noisy, y_clean (or None), is_noisy (or None),
    transition (or None), info (the bundle's info), version.
    """
    from .data import Dataset

    b = store.load_bundle(run_id, "data")
    if b is None:
        return None
    info = b.info
    ds = Dataset(
        x_train=b.array("x_train"), y_train=b.array("y_given", mmap=False),
        y_train_clean=b.array("y_train_clean", mmap=False),
        x_test=b.array("x_test"), y_test=b.array("y_test", mmap=False),
        num_classes=int(info["num_classes"]), class_names=list(info["class_names"]), name=info.get("spec", ""),
        label_values=None if info.get("label_values") is None else np.asarray(info["label_values"], dtype=np.int64),
    )
    return SimpleNamespace(ds=ds, y_noisy=b.array("y_noisy", mmap=False), y_clean=b.array("y_clean", mmap=False),
                           is_noisy=b.array("is_noisy", mmap=False), transition=b.array("transition", mmap=False),
                           info=info, version=b.version)


def load_warmup(store: RunStore, run_id: str):
    """Warm-up outputs (probs, embeddings, losses, forgetting, test_probs, info) or None."""
    b = store.load_bundle(run_id, "warmup")
    if b is None:
        return None
    return SimpleNamespace(probs=b.array("probs", mmap=False), embeddings=b.array("embeddings", mmap=False),
                           losses=b.array("losses", mmap=False), forgetting=b.array("forgetting", mmap=False),
                           test_probs=b.array("test_probs", mmap=False), info=b.info, id=b.info.get("id"),
                           version=b.version)


def current_bundle(store: RunStore, run_id: str, bundle: str):
    """A derived bundle, only when it was computed from the current warm-up."""
    b = store.load_bundle(run_id, bundle)
    if b is None:
        return None
    wu = store.load_bundle(run_id, "warmup")
    if wu is None or b.info.get("warmup_id") != wu.info.get("id"):
        return None
    return b


def load_graph(store: RunStore, run_id: str, key: str):
    """(graph CSR, info dict) for a graph key of the current warm-up, or None."""
    b = current_bundle(store, run_id, f"graphs/{key}")
    if b is None:
        return None
    return load_sparse(b, "graph"), b.info


def list_selections(store: RunStore, run_id: str) -> list[dict]:
    """Info of the stored selections of the current warm-up, newest first (with 'bundle')."""
    out = []
    for name in store.list_bundles(run_id, "selections"):
        b = current_bundle(store, run_id, name)
        if b is not None:
            out.append({**b.info, "bundle": name})
    return sorted(out, key=lambda d: d.get("saved", 0), reverse=True)


def load_selection(store: RunStore, run_id: str, key: str):
    """A stored ranking as a `Selection` (the full stored budget) plus its info, or None."""
    from .selection import Selection

    b = current_bundle(store, run_id, f"selections/{key}")
    if b is None:
        return None
    info = b.info
    sel = Selection(method=info["method"], indices=b.array("indices", mmap=False), n=int(info["n"]),
                    keep_ratio=float(info["keep_ratio"]), gains=b.array("gains", mmap=False),
                    scores=b.array("scores", mmap=False), objective=info.get("objective"),
                    seconds=float(info.get("seconds", 0.0)), params=info.get("params", {}),
                    nested=bool(info.get("nested", True)))
    return sel, info


def load_map(store: RunStore, run_id: str, which: str = "best"):
    """(coords (N, 2), info) of 'umap', 'pca' or 'best' (UMAP when ready, else PCA), or None."""
    names = ("umap", "pca") if which == "best" else (which,)
    for name in names:
        b = current_bundle(store, run_id, f"maps/{name}")
        if b is not None:
            return b.array("coords", mmap=False), {**b.info, "name": name}
    return None


# --------------------------------------------------------------------------- writing results


def save_data(store: RunStore, run_id: str, ds, noisy, seed: int = 0) -> None:
    """Store a loaded dataset and its (noisy) labels as the run's 'data' bundle.

    Later results (warm-up and everything derived) are removed: they belonged to other data.
    """
    arrays = {"x_train": ds.x_train, "y_given": ds.y_train, "y_train_clean": ds.y_train_clean,
              "x_test": ds.x_test, "y_test": ds.y_test, "y_noisy": noisy.y_noisy, "y_clean": noisy.y_clean,
              "is_noisy": noisy.is_noisy, "transition": noisy.transition}
    info = {**ds.summary(), "spec": ds.name, "noise": noisy.spec, "noise_rate": noisy.noise_rate,
            "n_noisy": noisy.n_noisy, "seed": int(seed)}
    store.save_bundle(run_id, "data", arrays, info)
    for name in ["warmup", *DERIVED_PREFIXES]:
        store.delete_bundle(run_id, name)


MODEL_OUTPUTS = "model outputs"  # the 'warmup' bundle's info["source"] for outputs a user supplied


def is_model_outputs(wu) -> bool:
    """True when a run's warm-up bundle (`load_warmup`) holds model outputs a user supplied."""
    return wu is not None and (wu.info or {}).get("source") == MODEL_OUTPUTS


UMAP_KNN_COLUMNS = 31  # self + 30 neighbours kept from the graph's search for UMAP


def save_knn_lists(store: RunStore, run_id: str, ids: np.ndarray, cos: np.ndarray, warmup_id: str,
                   source: str = "") -> None:
    """Keep the graph search's kNN lists in umap-learn's layout ('knn'): self first, cosine distances."""
    n = ids.shape[0]
    m = min(UMAP_KNN_COLUMNS - 1, ids.shape[1])
    knn_ids = np.concatenate([np.arange(n, dtype=np.int64)[:, None], ids[:, :m].astype(np.int64)], axis=1)
    dists = np.clip(1.0 - cos[:, :m], 0.0, 2.0).astype(np.float32)
    dists[ids[:, :m] < 0] = np.inf
    knn_dists = np.concatenate([np.zeros((n, 1), np.float32), dists], axis=1)
    store.save_bundle(run_id, "knn", {"ids": knn_ids, "dists": knn_dists},
                      {"k": int(knn_ids.shape[1]), "warmup_id": warmup_id, "source": source})


def list_sweeps(store: RunStore, run_id: str) -> list[dict]:
    """Stored sweeps of a run (their info), newest first."""
    out = []
    for name in store.list_bundles(run_id, "sweeps"):
        b = store.load_bundle(run_id, name)
        if b is not None:
            out.append({**b.info, "bundle": name})
    return sorted(out, key=lambda d: d.get("started", 0), reverse=True)


# --------------------------------------------------------------------------- exports


def selection_csv(sel, y_noisy, y_clean, conf, label_values=None) -> bytes:
    """The CLI's selection.csv for a Selection: one row per training example (N rows).

    Columns: index, rank (pick position, -1 when dropped), selected (1/0), given_label,
    clean_label (empty without ground truth), confidence. label_values: the dataset's original
    label values ((C,), `Dataset.label_values`) when its labels were mapped to ids 0..C-1;
    the label columns are then written in those values.
    """
    from .pipeline import selection_csv as pipeline_csv

    result = SimpleNamespace(selection=sel, noisy=SimpleNamespace(y_noisy=y_noisy, y_clean=y_clean), confidence=conf,
                             dataset=SimpleNamespace(label_values=label_values))
    return pipeline_csv(result)


def selection_npy(sel) -> bytes:
    """The kept indices in pick order as an .npy file (int64, shape (budget,))."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(sel.indices, dtype=np.int64), allow_pickle=False)
    return buf.getvalue()


def selection_manifest(store: RunStore, run_id: str, key: str, keep_ratio: float, metrics: dict | None = None) -> dict:
    """A JSON-able manifest of a selection: run config, data, warm-up, graph, method, versions, hashes."""
    from .pipeline import _hash_array, _library_versions

    run = store.get_run(run_id) or {}
    data = load_data(store, run_id)
    wu = load_warmup(store, run_id)
    got = load_selection(store, run_id, key)
    if data is None or wu is None or got is None:
        raise InputError("this selection is not stored (any more)")
    sel, info = got
    if sel.nested:
        sel = sel.prefix(keep_ratio)
    g = load_graph(store, run_id, info["graph"])
    data_info = {k: v for k, v in data.info.items() if k not in ("class_counts",)}
    return {
        "run": {"id": run_id, "name": run.get("name"), "config": run.get("config")},
        "data": data_info,
        "warmup": {k: wu.info.get(k) for k in ("model_name", "device", "epochs", "seconds", "test_acc", "config")},
        "graph": None if g is None else g[1],
        "selection": {"method": sel.method, "keep_ratio": float(keep_ratio), "prune_ratio": 1.0 - sel.budget / sel.n,
                      "budget": sel.budget, "n": sel.n, "params": info.get("params"), "nested": sel.nested,
                      "objective": sel.objective, "seconds": info.get("seconds"), "stored_key": key},
        "metrics": metrics or {},
        "versions": _library_versions(),
        "embedding_hash": _hash_array(wu.embeddings),
        "probs_hash": _hash_array(wu.probs),
        "selection_hash": _hash_array(sel.indices),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
