"""Shared helpers of the app's pages (not a page itself): store, jobs, run picker, plots.

Everything heavy lives in `prune_core`; this module only caches, polls and draws.
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

import numpy as np  # noqa: E402
import streamlit as st  # noqa: E402

from prune_core import artifacts as A  # noqa: E402
from prune_core.errors import InputError  # noqa: E402
from prune_core.job_engine import JobManager  # noqa: E402
from prune_core.runstore import RunStore, default_workspace  # noqa: E402


# --------------------------------------------------------------------------- page frame


def ensure_app_frame(page_file: str) -> None:
    """Run this page inside app.py's frame (menu, run picker) also right after a server start.

    With a folder named pages/ beside app.py, a fresh Streamlit server runs in its legacy
    pages-directory mode until some session calls st.navigation: a page URL opened first
    after a server start (a reload of /explore, say) runs the page file without app.py, that
    is without the run picker and with the folder listing as menu, and the widgets' ids change
    once app.py takes over (the first click would be lost). Every page calls this first with
    its own __file__. In that mode it registers the real page list (which ends the legacy mode
    for the process) and switches to this page at once, before any widget, so the page runs
    through app.py from its first render on. AppTest starts every run in that mode and a
    rerun would drop the click under test, so there the frame is drawn inline instead.
    Otherwise it does nothing.
    """
    try:
        from streamlit.runtime.pages_manager import PagesManager
        from streamlit.runtime.scriptrunner import get_script_run_ctx
    except ImportError:  # pragma: no cover - other Streamlit versions
        return
    if not PagesManager.uses_pages_directory:
        return
    from pages import _nav

    ctx = get_script_run_ctx()
    if ctx is not None and ctx.session_id != "test session id":
        _nav.navigation()
        st.switch_page(os.path.relpath(page_file, ROOT))
    st.set_page_config(page_title="Prune4ReL Studio", page_icon=":material/content_cut:", layout="wide")
    _nav.navigation()
    sidebar_run_picker()


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


# --------------------------------------------------------------------------- current run

RUN_KEY = "run"  # the sidebar picker's key and the URL's ?run= query parameter: a run id
START_SIGNATURE_KEY = "_start_signature"  # (run id, its results' signature) when this script run began


def run_label(run: dict) -> str:
    """The picker's text for a run: its name and id, never its state (which changes)."""
    return f"{run['name']} · {run['id']}"


def request_run(run_id: str) -> None:
    """Make run_id the current run from the next script run on (then call st.rerun())."""
    st.session_state["_pending_run"] = run_id


def sidebar_run_picker() -> str | None:
    """The sidebar's run selectbox; returns the current run id (None without runs).

    The picker's value and the URL's ?run= are the run's id: a run's state shows beside the
    picker, so a state change never changes (and never resets) the choice. A run requested
    by a page wins, then the session's choice, then the URL's (a reload, a shared link).
    """
    runs = store().list_runs()
    ids = [r["id"] for r in runs]
    by_id = {r["id"]: r for r in runs}
    pending = st.session_state.pop("_pending_run", None)
    if pending in by_id:
        st.session_state[RUN_KEY] = pending
    elif st.session_state.get(RUN_KEY) not in by_id:
        st.session_state.pop(RUN_KEY, None)
        from_url = st.query_params.get(RUN_KEY)
        if from_url in by_id:
            st.session_state[RUN_KEY] = from_url
    with st.sidebar:
        if not ids:
            st.session_state.pop(START_SIGNATURE_KEY, None)
            st.caption("No runs yet: start the demo on Home or load data on the Data page.")
            return None
        run_id = st.selectbox("Run", ids, key=RUN_KEY, format_func=lambda i: run_label(by_id[i]),
                              help="Earlier runs reopen from the run store without recomputing.")
        if st.query_params.get(RUN_KEY) != run_id:
            st.query_params[RUN_KEY] = run_id
        run = by_id[run_id]
        last = run.get("last_job")
        st.caption(f"state: {run['state']}" + (f" · last job: {last['kind']} {last['state']}" if last else ""))
    # What the page about to run reads was stored no earlier than this: show_jobs reruns the
    # page when a result changed since (a fast job that ended before its poll started).
    st.session_state[START_SIGNATURE_KEY] = (run_id, store().signature(run_id), run["state"])
    return run_id


def current_run_id() -> str | None:
    # A run just requested (request_run) wins until the sidebar picker has taken it over.
    for rid in (st.session_state.get("_pending_run"), st.session_state.get(RUN_KEY)):
        if rid and store().get_run(rid) is not None:
            return rid
    runs = store().list_runs()
    return runs[0]["id"] if runs else None


def need_run() -> str:
    rid = current_run_id()
    if rid is None:
        st.info("No run yet. Start the one-click demo on the Home page, or load a dataset on the Data page.")
        st.page_link("pages/home.py", label="Home", icon=":material/home:")
        st.stop()
    return rid


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


def need_data(run_id: str):
    d = data(run_id)
    if d is None:
        st.info("This run has no data yet: load a dataset on the Data page (or start the demo on Home).")
        show_jobs(run_id)
        st.stop()
    return d


def need_warmup(run_id: str):
    wu = warmup(run_id)
    if wu is None:
        st.info("This run has no warm-up yet: run it on the Warm-up page.")
        show_jobs(run_id)
        st.stop()
    return wu


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


# --------------------------------------------------------------------------- jobs on screen


def _job_title(job: dict) -> str:
    return f"{job['kind']}: {job.get('message') or job['state']}"


def show_jobs(run_id: str, kinds: tuple[str, ...] | None = None, key: str = "jobs", extra=None,
              show_failed: bool = True, failed_filter=None) -> list[dict]:
    """Active jobs of the run (optionally of some kinds) with progress and a Cancel button.

    Polls once a second in a fragment while a job is active; when a job ends or a new
    result is saved it reruns the whole page so the new result shows up. A result saved
    since the script run began (the sidebar picker's signature) reruns the page at once:
    a job that ended before this call would otherwise leave the page on its old state. `extra(job)` draws
    more inside the fragment (e.g. live training curves). The most recent failed job of
    these kinds (newer than any success; `failed_filter(job)` narrows which count) shows its
    error once. Returns the active jobs.
    """
    m = manager()
    s = m.store

    def mine(j):
        return kinds is None or j["kind"] in kinds

    active0 = [j for j in m.active(run_id) if mine(j)]
    ids0 = tuple(j["id"] for j in active0)
    started = st.session_state.get(START_SIGNATURE_KEY)
    sig0 = started[1] if started and started[0] == run_id else s.signature(run_id)
    # The run's state as the sidebar shows it: a job's end reaches the run's row just after
    # the job itself, so while the sidebar says 'running' the panel polls for that too.
    state0 = started[2] if started and started[0] == run_id else None

    def run_state():
        run = s.get_run(run_id)
        return run["state"] if run else None

    @st.fragment(run_every=1.0 if active0 or state0 == "running" else None)
    def panel():
        active = [j for j in m.active(run_id) if mine(j)]
        if (tuple(j["id"] for j in active) != ids0 or s.signature(run_id) != sig0
                or (state0 is not None and run_state() != state0)):
            st.rerun()
        for job in active:
            with st.container(border=True):
                cols = st.columns([5, 1])
                cols[0].progress(float(job["progress"]), text=_job_title(job))
                if cols[1].button("Cancel", key=f"{key}_cancel_{job['id']}", help="Stop this job; earlier results stay."):
                    m.cancel(job["id"])
                    st.toast(f"cancelling {job['kind']}")
                if extra is not None:
                    extra(job)

    panel()
    if show_failed and not active0:
        recent = [j for j in s.list_jobs(run_id=run_id, limit=20)
                  if mine(j) and (failed_filter is None or failed_filter(j))]
        if recent and recent[0]["state"] == "failed":
            st.error(f"{recent[0]['kind']} failed: {recent[0]['error']}")
        elif recent and recent[0]["state"] == "cancelled":
            st.info(f"{recent[0]['kind']} was cancelled; earlier results are kept.")
    return active0


def submit(run_id: str, kind: str, fn, params: dict, key: str | None = None) -> str:
    return manager().submit(run_id, kind, fn, params, key=key)


# --------------------------------------------------------------------------- small views


def keep_label(percent: float) -> str:
    p = float(percent)
    fmt = (lambda v: f"{v:g}")
    return f"keep {fmt(p)}% (prune {fmt(round(100 - p, 6))}%)"


def class_name(d, c: int) -> str:
    names = d.ds.class_names
    return str(names[c]) if 0 <= c < len(names) else str(c)


def thumb(x: np.ndarray, size: int = 64) -> np.ndarray:
    """An image (H, W) or (H, W, 3) uint8 scaled up (nearest) to about `size` pixels."""
    img = np.asarray(x)
    if img.ndim == 1:  # features: no picture; show a stripe of the first values
        v = img[: size].astype(np.float64)
        v = (v - v.min()) / (np.ptp(v) or 1.0) * 255
        img = np.tile(v.astype(np.uint8), (8, 1))
    h = max(img.shape[0], 1)
    f = max(1, size // h)
    out = np.repeat(np.repeat(img, f, axis=0), f, axis=1)
    return np.ascontiguousarray(out.astype(np.uint8))


def image_grid(d, indices, captions=None, size: int = 64, width: int = 72) -> None:
    """A wrapping row of thumbnails with captions."""
    indices = [int(i) for i in indices]
    if not indices:
        return
    if d.ds.kind == "features":
        st.caption("Feature vectors: no images to show (indices: " + ", ".join(map(str, indices[:50])) + ")")
        return
    imgs = [thumb(d.ds.x_train[i], size) for i in indices]
    st.image(imgs, caption=captions or [f"#{i}" for i in indices], width=width)


# Categorical colourings: distinct qualitative colours (plotly's "Plotly" and "Dark24" sets,
# not the theme's shades of one hue). Two-way splits name their colours: the part that
# matters (wrong label, kept, suspect) stands out against a quiet grey.
QUALITATIVE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
               "#bcbd22", "#17becf"]
QUIET = "#c3c9d2"  # the unremarkable side of a two-way split
MODEBAR_ROOM = 34  # px at the top of every chart kept free for plotly's mode bar (top right)
CHART_CONFIG = {"displaylogo": False}


def category_colours(count: int) -> list[str]:
    if count <= len(QUALITATIVE):
        return QUALITATIVE[:count]
    import plotly.express as px

    palette = px.colors.qualitative.Dark24 + px.colors.qualitative.Light24
    return [palette[i % len(palette)] for i in range(count)]


def tidy_figure(fig, legend: str = "right"):
    """Lay a figure out so the mode bar covers nothing: the title sits below the mode bar's
    row (left-aligned), the legend on the right below that row ("right") or under the plot
    ("below"). Returns the figure."""
    title = fig.layout.title.text
    top = MODEBAR_ROOM + (24 if title else 0)
    margin = {k: v for k, v in (fig.layout.margin.to_plotly_json() or {}).items() if v is not None}
    margin.update(t=top, l=margin.get("l", 10), r=margin.get("r", 10), b=margin.get("b", 10))
    fig.update_layout(margin=margin)
    if title:
        fig.update_layout(title=dict(x=0, xanchor="left", xref="paper", y=1, yref="container", yanchor="top",
                                     pad=dict(t=MODEBAR_ROOM - 6)))
    if legend == "below":
        fig.update_layout(legend=dict(orientation="h", x=0, xanchor="left", y=-0.2, yanchor="top"))
    else:
        fig.update_layout(legend=dict(x=1.02, xanchor="left", y=1, yanchor="top"))
    return fig


def show_figure(fig, key: str, target=None, legend: str = "right", **kwargs):
    """tidy_figure, then st.plotly_chart (or target.plotly_chart) with the app's chart config."""
    config = {**CHART_CONFIG, **kwargs.pop("config", {})}
    return (target or st).plotly_chart(tidy_figure(fig, legend), key=key, config=config, **kwargs)


def class_axis(fig, d, axis: str = "x") -> None:
    """Label every class on a class axis (by name when the data has names); values are 0..C-1."""
    names = [class_name(d, c) for c in range(d.ds.num_classes)]
    ticks = [n if n == str(c) else f"{c}: {n}" for c, n in enumerate(names)]
    update = fig.update_xaxes if axis == "x" else fig.update_yaxes
    update(tickmode="array", tickvals=list(range(len(ticks))), ticktext=ticks)


def map_figure(coords: np.ndarray, values, kind: str, title: str = "", customdata=None, hover=None,
               categories=None, height: int = 560, colorscale: str = "Viridis", point_size: float | None = None,
               showlegend: bool = True, colour_title: str = "", colours: dict | None = None):
    """A WebGL scatter (go.Scattergl) of a 2-D map coloured by `values`.

    kind "continuous": one trace and a colour bar titled `colour_title`. kind "categorical":
    one trace per category (the legend toggles them), distinct qualitative colours (or
    `colours`: value -> colour), larger categories drawn first so a small one stays on top;
    `categories` maps value -> name. customdata (N, m) rides along with every point (column
    0 must be the global example index: point indices are per trace). hover: a hovertemplate
    using %{customdata[j]}.
    """
    import plotly.graph_objects as go

    n = len(coords)
    size = point_size or (6 if n < 3000 else 4 if n < 20000 else 3)
    fig = go.Figure()
    if customdata is None:
        customdata = np.arange(n)[:, None]
    if kind == "continuous":
        vals = np.asarray(values, dtype=np.float64)
        fig.add_trace(go.Scattergl(
            x=coords[:, 0], y=coords[:, 1], mode="markers", customdata=customdata, hovertemplate=hover,
            marker=dict(color=vals, colorscale=colorscale, size=size, showscale=True,
                        colorbar=dict(thickness=12, title=dict(text=colour_title, side="right"))),
            name="", showlegend=False))
    else:
        vals = np.asarray(values)
        cats = categories or {v: str(v) for v in np.unique(vals)}
        palette = dict(zip(cats, category_colours(len(cats))))
        palette.update(colours or {})
        members = {v: np.flatnonzero(vals == v) for v in cats}
        for v in sorted(members, key=lambda v: -len(members[v])):  # big first: small ones on top
            idx = members[v]
            if len(idx) == 0:
                continue
            fig.add_trace(go.Scattergl(
                x=coords[idx, 0], y=coords[idx, 1], mode="markers", customdata=customdata[idx],
                hovertemplate=hover, marker=dict(size=size, color=palette[v]), name=str(cats[v]),
                legendrank=list(cats).index(v)))
    fig.update_layout(title=title or None, height=height, margin=dict(l=10, r=10, b=10),
                      dragmode="lasso", showlegend=showlegend and kind != "continuous",
                      legend=dict(itemsizing="constant"))
    fig.update_xaxes(showticklabels=False, title=None)
    fig.update_yaxes(showticklabels=False, title=None, scaleanchor="x", scaleratio=1)
    return tidy_figure(fig)


def selected_indices(event) -> list[int]:
    """Global example indices of a plotly selection event (from customdata column 0)."""
    if not event:
        return []
    sel = event.get("selection") if isinstance(event, dict) else getattr(event, "selection", None)
    if not sel:
        return []
    points = sel.get("points", []) if isinstance(sel, dict) else getattr(sel, "points", [])
    out = []
    for p in points or []:
        cd = p.get("customdata")
        if isinstance(cd, dict):  # a row of a typed (base64) array arrives as {"0": v0, "1": v1, ...}
            cd = cd.get("0", cd.get(0))
        elif isinstance(cd, (list, tuple)):
            cd = cd[0] if cd else None
        if cd is None:
            continue
        out.append(int(cd))
    return sorted(set(out))


def parse_indices(text: str, n: int) -> list[int]:
    """'3, 10-12 7' -> [3, 7, 10, 11, 12]; InputError for anything else or out of range."""
    out = set()
    for tok in text.replace(",", " ").split():
        try:
            if "-" in tok[1:]:
                a, b = tok.split("-", 1)
                lo, hi = int(a), int(b)
                if hi < lo or hi - lo > 10_000:
                    raise ValueError
                out.update(range(lo, hi + 1))
            else:
                out.add(int(tok))
        except ValueError:
            raise InputError(f"'{tok}' is not an index or a range like 10-20") from None
    bad = [i for i in out if not 0 <= i < n]
    if bad:
        raise InputError(f"index {bad[0]} is out of range: there are {n} examples (0..{n - 1})")
    return sorted(out)

