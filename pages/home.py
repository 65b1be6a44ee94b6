"""Home: what the app does, the one-click demo, earlier runs."""

import os
import time

import numpy as np
import pandas as pd
import streamlit as st

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

m = ui.manager()
s = m.store


def demo_epochs():
    v = os.environ.get("PRUNE4REL_DEMO_EPOCHS")
    return int(v) if v else None


def start_demo():
    # A demo already running (a second click, another tab) is opened instead of started again.
    running = m.active(kind="demo")
    run_id = running[0]["run_id"] if running else J.start_demo(m, epochs=demo_epochs())[0]
    ui.request_run(run_id)
    return run_id


# Auto-start (scripts/app.sh sets PRUNE4REL_AUTODEMO=1): once per server process, only with no runs.
if os.environ.get("PRUNE4REL_AUTODEMO") == "1" and not getattr(m, "autodemo_done", False):
    m.autodemo_done = True
    if not s.list_runs():
        start_demo()
        st.rerun()

c1, c2 = st.columns([1, 3])
with c1:
    if st.button("Run the demo", key="home_demo", type="primary",
                 help="digits (1,437 training images) with 40% symmetric label noise: warm-up, "
                      "neighbour graph (tau auto), Prune4ReL ranking, PCA map at once, UMAP when ready."):
        start_demo()
        st.rerun()
with c2:
    st.caption("The demo: digits + sym:0.4 noise → warm-up (default epochs) → kNN graph (tau auto) → "
               "Prune4ReL ranking of all examples → PCA map, then UMAP. Under a minute on a 2-core CPU.")

run_id = ui.current_run_id()
if run_id is not None:
    run = s.get_run(run_id)
    st.subheader(f"Current run: {run['name']}")
    ui.show_jobs(run_id, key="home_jobs")
    got = ui.projection(run_id)
    wu = ui.warmup(run_id)
    d = ui.data(run_id)
    if got is not None and wu is not None and d is not None:
        coords, minfo = got
        cur = ui.current_selection(run_id)
        values, label = wu.probs.max(axis=1), "confidence (max softmax)"
        if cur:
            sl = ui.sliced(run_id, cur["key"], cur["keep_ratio"])
            cov = ui.cover(run_id, sl[1]["graph"], cur["key"], cur["keep_ratio"]) if sl else None
            if cov is not None:
                values = cov
                label = f"C(x;S), {sl[1]['method']} {ui.keep_label(round(100 * cur['keep_ratio'], 2))}"
        name = "UMAP" if minfo["name"] == "umap" and minfo.get("method") == "umap" else "PCA"
        note = "" if name == "UMAP" else " (UMAP replaces it when ready)"
        n = len(coords)
        custom = np.column_stack([np.arange(n), d.y_noisy])
        fig = ui.map_figure(coords, values, "continuous", title=f"{name} map coloured by {label}{note}",
                            customdata=custom, hover="#%{customdata[0]} given %{customdata[1]}<extra></extra>",
                            height=420)
        st.plotly_chart(fig, key="home_map", config={"displaylogo": False})
        st.caption("Open **Explore** to colour by other fields and lasso points; **Select** for the keep-ratio slider.")
    elif d is not None:
        st.caption("The map appears as soon as the warm-up has produced embeddings.")

st.subheader("Runs")
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
    names = {r["id"]: ui.run_label(r) for r in runs}
    c1, c2, c3 = st.columns([3, 1, 1])
    pick = c1.selectbox("Reopen a run", ids, key="home_open_pick", format_func=lambda i: names[i])
    if c2.button("Open run", key="home_open"):
        ui.request_run(pick)
        st.rerun()
    if c3.button("Delete run", key="home_delete", help="Removes the run's folder and index rows."):
        if m.active(pick):
            st.error("This run has a running job: cancel it first.")
        else:
            s.delete_run(pick)
            st.rerun()
