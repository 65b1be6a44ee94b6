"""Home: what the app does, the one-click demo, earlier runs."""

import os
import time

import numpy as np
import pandas as pd
import streamlit as st

from pages import _figures as F
from pages import _store as S
from pages import _ui as ui
from prune_core import jobs as J

ui.ensure_app_frame(__file__)

st.title("Prune4ReL Studio")
st.markdown(
    "Prune a **noisy-labelled** image-classification training set so that a re-labeling learner "
    "fixes as many wrong labels as possible. Load data and inject label noise, warm up a model, "
    "build a neighbour graph of its embeddings, and keep the subset that maximises the total "
    "*neighbourhood confidence* (Prune4ReL, NeurIPS 2023), or a baseline. Then explore the "
    "subset on a 2-D map, compare methods across keep ratios, and inspect suspected label errors."
)

m = S.manager()
s = m.store


def demo_epochs():
    v = os.environ.get("PRUNE4REL_DEMO_EPOCHS")
    return int(v) if v else None


def demo_runs() -> list[dict]:
    """Runs made by the demo button, newest first."""
    return [r for r in s.list_runs() if (r.get("config") or {}).get("kind") == "demo"]


def start_demo(new: bool = False):
    """Open the demo run: a demo already in this workspace (running or done) is reopened
    instead of computed again; new=True (or none there) starts a new demo run."""
    running = m.active(kind="demo")
    if running:  # a second click, another tab
        run_id = running[0]["run_id"]
    elif not new and demo_runs():
        run_id = demo_runs()[0]["id"]
    else:
        run_id = J.start_demo(m, epochs=demo_epochs())[0]
    ui.request_run(run_id)
    return run_id


# Auto-start (scripts/app.sh sets PRUNE4REL_AUTODEMO=1): once per server process, only with no runs.
if os.environ.get("PRUNE4REL_AUTODEMO") == "1" and not getattr(m, "autodemo_done", False):
    m.autodemo_done = True
    if not s.list_runs():
        start_demo()
        st.rerun()

has_demo = bool(demo_runs())
c1, c2, c3 = st.columns([1, 1, 3])
with c1:
    if st.button("Run the demo", key="home_demo", type="primary",
                 help="Opens this workspace's demo run when there is one. Otherwise: digits (1,437 training "
                      "images) with 40% symmetric label noise: warm-up, neighbour graph (tau auto), Prune4ReL "
                      "ranking, PCA map at once, UMAP when ready."):
        start_demo()
        st.rerun()
with c2:
    if has_demo and st.button("New demo run", key="home_demo_new",
                              help="Compute the demo again as a new run (the earlier demo run stays)."):
        start_demo(new=True)
        st.rerun()
with c3:
    st.caption("The demo: digits + sym:0.4 noise → warm-up (default epochs) → kNN graph (tau auto) → "
               "Prune4ReL ranking of all examples → PCA map, then UMAP. Under a minute on a 2-core CPU."
               + (" **Run the demo** reopens this workspace's demo run." if has_demo else ""))

run_id = ui.current_run_id()
if run_id is not None:
    run = s.get_run(run_id)
    st.subheader(f"Current run: {run['name']}")
    ui.show_jobs(run_id, key="home_jobs")
    got = S.projection(run_id)
    wu = S.warmup(run_id)
    d = S.data(run_id)
    if got is not None and wu is not None and d is not None:
        coords, minfo = got
        cur = S.current_selection(run_id)
        values, label, short = wu.probs.max(axis=1), "confidence (max softmax)", "confidence"
        if cur:
            sl = S.sliced(run_id, cur["key"], cur["keep_ratio"])
            cov = S.cover(run_id, sl[1]["graph"], cur["key"], cur["keep_ratio"]) if sl else None
            if cov is not None:
                values, short = cov, "C(x;S)"
                label = f"C(x;S), {sl[1]['method']} {ui.keep_label(round(100 * cur['keep_ratio'], 2))}"
        name = "UMAP" if minfo["name"] == "umap" and minfo.get("method") == "umap" else "PCA"
        note = "" if name == "UMAP" else " (UMAP replaces it when ready)"
        n = len(coords)
        custom = np.column_stack([np.arange(n), d.y_noisy])
        fig = F.map_figure(coords, values, "continuous", title=f"{name} map coloured by {label}{note}",
                           customdata=custom, hover="#%{customdata[0]} given %{customdata[1]}<extra></extra>",
                           height=420, colour_title=short)
        F.show_figure(fig, "home_map")
        st.caption("Open **Explore** to colour by other fields and lasso points; **Select** for the keep-ratio slider.")
    elif d is not None:
        st.caption("The map appears as soon as the warm-up has produced embeddings.")

st.subheader("Runs")


def runs_snapshot() -> tuple:
    return tuple((r["id"], r["state"], str(r.get("last_job"))) for r in s.list_runs())


# Run states change when jobs end, also jobs of other runs and sessions: while any job is
# active, poll and rerun the page when a run's state or last job changed.
shown_runs = runs_snapshot()


# Not while a deletion is being confirmed: nothing needs refreshing mid-dialogue, and a click that
# meets a polling rerun may be lost (the likely cause of a confirm that did nothing in CI runs).
@st.fragment(run_every=2.0 if m.active() and "home_delete_asked" not in st.session_state else None)
def refresh_runs():
    if runs_snapshot() != shown_runs:
        st.rerun()


refresh_runs()
runs = s.list_runs()
if not runs:
    st.info("No runs yet. Click **Run the demo**, or load your own data on the Data page.")
else:
    rows = []
    for r in runs:
        cfg = r.get("config") or {}
        last = r.get("last_job") or {}
        rows.append({
            "run": r["id"], "name": r["name"], "state": r["state"],
            "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(r["created"])),
            "data": cfg.get("data", ""), "noise": cfg.get("noise", ""),
            "last job": f"{last.get('kind', '')} {last.get('state', '')}".strip(),
            "message": r.get("message", ""),
        })
    st.dataframe(pd.DataFrame(rows), hide_index=True, key="home_runs_table")
    ids = [r["id"] for r in runs]
    by_id = {r["id"]: r for r in runs}
    c1, c2 = st.columns([3, 1])
    pick = c1.selectbox("Reopen a run", ids, key="home_open_pick", format_func=lambda i: ui.run_label(by_id[i]))
    c2.write("")  # aligns the button with the box
    if c2.button("Open run", key="home_open"):
        ui.request_run(pick)
        st.rerun()

    # The outcome of a deletion shows above the expander: the expander closes once nothing is
    # asked any more, and a note inside it would be hidden. It stays until the next deletion is
    # started: the page reruns by itself while jobs run, and a note shown once would flash by.
    note = st.session_state.get("home_delete_note")
    if note:
        (st.error if note[0] == "error" else st.success)(note[1])
    with st.expander("Delete a run", expanded="home_delete_asked" in st.session_state):
        # Nothing is preselected, and deleting asks again, naming the run. Callbacks (no rerun):
        # they act before the script draws the page, sidebar included.
        def ask_to_delete():
            st.session_state.pop("home_delete_note", None)
            st.session_state["home_delete_asked"] = st.session_state.get("home_delete_pick")

        def forget_delete():
            st.session_state.pop("home_delete_asked", None)
            st.session_state["home_delete_pick"] = None

        def delete_asked():
            run_id_ = st.session_state.pop("home_delete_asked", None)
            if run_id_ is None or s.get_run(run_id_) is None:
                return
            if m.active(run_id_):
                st.session_state["home_delete_note"] = ("error", "That run has a running job: cancel it first.")
                return
            name = s.get_run(run_id_)["name"]
            s.delete_run(run_id_)
            st.session_state["home_delete_pick"] = None
            st.session_state["home_delete_note"] = ("success", f"Deleted run {name} ({run_id_}).")

        doomed = st.selectbox("Run to delete", ids, index=None, key="home_delete_pick",
                              format_func=lambda i: ui.run_label(by_id[i]), placeholder="choose a run")
        if doomed is None or st.session_state.get("home_delete_asked") != doomed:
            st.session_state.pop("home_delete_asked", None)
            st.button("Delete run…", key="home_delete", disabled=doomed is None, on_click=ask_to_delete,
                      help="Removes the run's folder and index rows (asks first).")
        else:
            run = by_id[doomed]
            st.warning(f"Delete run **{run['name']}** ({doomed}) with all its results? This cannot be undone.")
            d1, d2 = st.columns(2)
            d1.button(f"Delete {run['name']}", key="home_delete_confirm", type="primary", on_click=delete_asked)
            d2.button("Keep it", key="home_delete_cancel", on_click=forget_delete)

