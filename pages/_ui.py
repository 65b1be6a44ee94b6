"""Shared helpers of the app's pages (not a page itself): the page frame, the run picker,
page guards (need_*), jobs on screen and small widgets.

Everything heavy lives in `prune_core`; cached access to the run store is in pages/_store.py
(imported first: it sets NUMBA_CACHE_DIR), figures and colours in pages/_figures.py. This
module only polls and draws.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import streamlit as st

from pages import _store as S  # before any other prune_core import: it sets NUMBA_CACHE_DIR
from prune_core.errors import InputError

ROOT = Path(__file__).resolve().parent.parent


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
    runs = S.store().list_runs()
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
    st.session_state[START_SIGNATURE_KEY] = (run_id, S.store().signature(run_id), run["state"])
    return run_id


def current_run_id() -> str | None:
    # A run just requested (request_run) wins until the sidebar picker has taken it over.
    for rid in (st.session_state.get("_pending_run"), st.session_state.get(RUN_KEY)):
        if rid and S.store().get_run(rid) is not None:
            return rid
    runs = S.store().list_runs()
    return runs[0]["id"] if runs else None


def need_run() -> str:
    rid = current_run_id()
    if rid is None:
        st.info("No run yet. Start the one-click demo on the Home page, or load a dataset on the Data page.")
        st.page_link("pages/home.py", label="Home", icon=":material/home:")
        st.stop()
    return rid


def need_data(run_id: str):
    d = S.data(run_id)
    if d is None:
        st.info("This run has no data yet: load a dataset on the Data page (or start the demo on Home).")
        show_jobs(run_id)
        st.stop()
    return d


def need_warmup(run_id: str):
    wu = S.warmup(run_id)
    if wu is None:
        st.info("This run has no warm-up yet: run it on the Warm-up page.")
        show_jobs(run_id)
        st.stop()
    return wu


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
    m = S.manager()
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
    return S.manager().submit(run_id, kind, fn, params, key=key)


# --------------------------------------------------------------------------- small views


def keep_label(percent: float) -> str:
    p = float(percent)
    fmt = (lambda v: f"{v:g}")
    return f"keep {fmt(p)}% (prune {fmt(round(100 - p, 6))}%)"


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
