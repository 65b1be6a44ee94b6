"""The app's cached access to the run store (not a page itself): the job manager, the run's
results as Streamlit-cached loads, the current selection, C(x; S) and label issues.

The app's first import of prune_core happens here, after NUMBA_CACHE_DIR is set. Nothing
here draws (pages/_ui.py guards pages and shows jobs; pages/_figures.py builds charts).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from prune_core.projection import default_numba_cache_dir  # noqa: E402

default_numba_cache_dir()  # before anything compiles with numba

import streamlit as st  # noqa: E402

from prune_core import artifacts as A  # noqa: E402
from prune_core.job_engine import JobManager  # noqa: E402
from prune_core.runstore import RunStore, default_workspace  # noqa: E402


# --------------------------------------------------------------------------- store and jobs


def workspace() -> str:
    return str(default_workspace().resolve())


@st.cache_resource(show_spinner=False)
def _manager_for(path: str) -> JobManager:
    # One manager per server process and workspace: jobs outlive sessions and reloads.
    store = RunStore(path)
    return JobManager(store, max_running=int(os.environ.get("PRUNE4REL_MAX_JOBS", "2")))


def manager() -> JobManager:
    return _manager_for(workspace())


def store() -> RunStore:
    return manager().store


# --------------------------------------------------------------------------- cached loads
# Keyed by the bundle's version (mtime of its info.json): a rewritten result reloads.


@st.cache_resource(max_entries=4, show_spinner=False)
def _data(path: str, run_id: str, version: int):
    return A.load_data(RunStore(path), run_id)


@st.cache_resource(max_entries=4, show_spinner=False)
def _warmup(path: str, run_id: str, version: int):
    return A.load_warmup(RunStore(path), run_id)


@st.cache_resource(max_entries=8, show_spinner=False)
def _graph(path: str, run_id: str, key: str, version: int, wu_version: int):
    return A.load_graph(RunStore(path), run_id, key)


@st.cache_resource(max_entries=16, show_spinner=False)
def _selection(path: str, run_id: str, key: str, version: int, wu_version: int):
    return A.load_selection(RunStore(path), run_id, key)


@st.cache_resource(max_entries=8, show_spinner=False)
def _map(path: str, run_id: str, which: str, v_umap: int, v_pca: int, wu_version: int):
    return A.load_map(RunStore(path), run_id, which)


def data(run_id: str):
    return _data(workspace(), run_id, store().bundle_version(run_id, "data"))


def warmup(run_id: str):
    return _warmup(workspace(), run_id, store().bundle_version(run_id, "warmup"))


def graph(run_id: str, key: str):
    s = store()
    return _graph(workspace(), run_id, key, s.bundle_version(run_id, f"graphs/{key}"), s.bundle_version(run_id, "warmup"))


def selection(run_id: str, key: str):
    s = store()
    return _selection(workspace(), run_id, key, s.bundle_version(run_id, f"selections/{key}"),
                      s.bundle_version(run_id, "warmup"))


def projection(run_id: str, which: str = "best"):
    s = store()
    return _map(workspace(), run_id, which, s.bundle_version(run_id, "maps/umap"), s.bundle_version(run_id, "maps/pca"),
                s.bundle_version(run_id, "warmup"))


# --------------------------------------------------------------------------- current selection


def current_selection(run_id: str) -> dict | None:
    """{key, keep_ratio} of the selection shown across pages (the Select page sets it).

    Falls back to the newest stored selection, at keep ratio 0.5 for nested methods.
    """
    cur = store().load_json(run_id, "current_selection")
    sels = A.list_selections(store(), run_id)
    keys = {s["key"]: s for s in sels}
    if cur and cur.get("key") in keys:
        return cur
    if not sels:
        return None
    s = sels[0]
    return {"key": s["key"], "keep_ratio": 0.5 if s.get("nested", True) else float(s["keep_ratio"])}


def set_current_selection(run_id: str, key: str, keep_ratio: float) -> None:
    cur = store().load_json(run_id, "current_selection")
    new = {"key": key, "keep_ratio": float(keep_ratio)}
    if cur != new:
        store().save_json(run_id, "current_selection", new)


def sliced(run_id: str, key: str, keep_ratio: float):
    """(Selection at keep_ratio, info) from a stored ranking, or None."""
    got = selection(run_id, key)
    if got is None:
        return None
    sel, info = got
    if sel.nested:
        return sel.prefix(min(1.0, keep_ratio)), info
    return sel, info


@st.cache_data(max_entries=16, show_spinner=False)
def _cover(path: str, run_id: str, gkey: str, skey: str, keep_ratio: float, versions: tuple, confidence: str):
    from prune_core.prune4rel import neighbourhood_confidence
    from prune_core.scores import confidence as confidence_of

    g = graph(run_id, gkey)
    wu = warmup(run_id)
    got = sliced(run_id, skey, keep_ratio)
    if g is None or wu is None or got is None:
        return None
    conf = confidence_of(wu.probs, confidence)
    return neighbourhood_confidence(g[0], conf, got[0].indices)


def cover(run_id: str, gkey: str, skey: str, keep_ratio: float, confidence: str = "maxprob"):
    """C(x; S) (N,) of the kept subset of a stored ranking, on the graph it was made with."""
    s = store()
    versions = (s.bundle_version(run_id, f"graphs/{gkey}"), s.bundle_version(run_id, f"selections/{skey}"),
                s.bundle_version(run_id, "warmup"))
    return _cover(workspace(), run_id, gkey, skey, float(keep_ratio), versions, confidence)


@st.cache_data(max_entries=8, show_spinner=False)
def _issues(path: str, run_id: str, gkey: str | None, alpha: float, versions: tuple):
    from prune_core.label_errors import find_label_issues

    d = data(run_id)
    wu = warmup(run_id)
    g = graph(run_id, gkey) if gkey else None
    return find_label_issues(wu.probs, d.y_noisy, graph=None if g is None else g[0], alpha=alpha,
                             num_classes=d.ds.num_classes, y_clean=d.y_clean)


def best_graph_key(run_id: str) -> str | None:
    """The graph of the current selection, else any graph of the current warm-up."""
    cur = current_selection(run_id)
    if cur:
        got = selection(run_id, cur["key"])
        if got is not None and graph(run_id, got[1]["graph"]) is not None:
            return got[1]["graph"]
    for name in store().list_bundles(run_id, "graphs"):
        key = name.split("/", 1)[1]
        if graph(run_id, key) is not None:
            return key
    return None


def label_issues(run_id: str, alpha: float = 0.5):
    """find_label_issues on the run's warm-up probabilities and neighbour graph (cached)."""
    gkey = best_graph_key(run_id)
    s = store()
    versions = (s.bundle_version(run_id, "warmup"), s.bundle_version(run_id, f"graphs/{gkey}") if gkey else 0,
                s.bundle_version(run_id, "data"))
    return _issues(workspace(), run_id, gkey, float(alpha), versions)
