"""Explore: the 2-D map coloured by a field; box/lasso selection opens an image gallery."""

import numpy as np
import pandas as pd
import streamlit as st

from pages import _figures as F
from pages import _store as S
from pages import _ui as ui
from prune_core import jobs as J
from prune_core.errors import InputError

ui.ensure_app_frame(__file__)

st.title("Explore")

run_id = ui.need_run()
d = ui.need_data(run_id)
wu = ui.need_warmup(run_id)
n = d.ds.n_train
s = S.store()

# ---- which map
umap_map = S.projection(run_id, "umap")
pca_map = S.projection(run_id, "pca")
umap_job = S.manager().find(run_id, "umap", active_only=True)
c1, c2 = st.columns([2, 3])
with c1:
    options = (["UMAP"] if umap_map is not None else []) + ["PCA"]
    # UMAP replaces PCA when it becomes ready, unless the user picked PCA on this run.
    if umap_map is not None and not st.session_state.get(f"explore_pca_chosen_{run_id}"):
        st.session_state["explore_projection"] = "UMAP"

    def remember_choice():
        st.session_state[f"explore_pca_chosen_{run_id}"] = st.session_state["explore_projection"] == "PCA"

    proj = st.radio("Map", options, key="explore_projection", horizontal=True, on_change=remember_choice)
    if umap_map is None and umap_job is None:
        if st.button("Compute UMAP", key="explore_umap",
                     help="UMAP on the faiss kNN lists (no neighbour search inside UMAP); PCA is shown meanwhile."):
            ui.submit(run_id, "umap", J.task_maps, {"seed": 0})
            st.rerun()
    elif umap_map is not None:
        st.caption(f"UMAP: {umap_map[1].get('method')}, {umap_map[1].get('seconds', 0):.1f} s")
ui.show_jobs(run_id, kinds=("umap",), key="explore_jobs")
if proj == "UMAP" and umap_map is not None:
    coords = umap_map[0]
elif pca_map is not None:
    coords = pca_map[0]
else:
    from prune_core.projection import pca_2d

    coords = pca_2d(wu.embeddings)

# ---- the selection shown (set on the Select page)
cur = S.current_selection(run_id)
sl = S.sliced(run_id, cur["key"], cur["keep_ratio"]) if cur else None
sel = sl[0] if sl else None
cov = S.cover(run_id, sl[1]["graph"], cur["key"], cur["keep_ratio"]) if sl else None
issues = S.label_issues(run_id)
by_index = issues.sort_values("index")
suggested = by_index["suggested_label"].to_numpy()
suspect = by_index["is_issue"].to_numpy()
conf = wu.probs.max(axis=1)
pred = wu.probs.argmax(axis=1)

FIELDS = ["neighbourhood confidence C(x;S)", "confidence", "given label", "clean label", "noisy or not",
          "selected vs dropped", "suspected error"]
available = [f for f in FIELDS
             if not (f in ("clean label", "noisy or not") and d.y_clean is None)
             and not (f in ("neighbourhood confidence C(x;S)", "selected vs dropped") and sel is None)]
c1, c2 = st.columns([2, 3])
field = c1.selectbox("Colour by", available, key="explore_color")
if sel is not None:
    c2.caption(f"Selection: **{sel.method}**, {ui.keep_label(round(100 * cur['keep_ratio'], 2))} ({sel.budget:,} kept) "
               "· change it on the Select page")
else:
    c2.caption("No selection yet: run one on the Select page to colour by C(x;S) or kept/dropped.")

names = {i: f"{i}: {c}" if str(c) != str(i) else str(c) for i, c in enumerate(d.ds.class_names)}
colours = None  # qualitative colours, or named ones for a two-way split
if field == "neighbourhood confidence C(x;S)":
    kind, values, cats = "continuous", cov, None
elif field == "confidence":
    kind, values, cats = "continuous", conf, None
elif field == "given label":
    kind, values, cats = "categorical", d.y_noisy, names
elif field == "clean label":
    kind, values, cats = "categorical", d.y_clean, names
elif field == "noisy or not":
    kind, values, cats = "categorical", d.is_noisy.astype(int), {0: "label correct", 1: "label wrong"}
    colours = {0: F.QUIET, 1: "#d62728"}
elif field == "selected vs dropped":
    mask = np.zeros(n, dtype=int)
    mask[sel.indices] = 1
    kind, values, cats = "categorical", mask, {0: "dropped", 1: "kept"}
    colours = {0: F.QUIET, 1: "#1f77b4"}
else:
    kind, values, cats = "categorical", suspect.astype(int), {0: "label looks fine", 1: "suspected error"}
    colours = {0: F.QUIET, 1: "#d62728"}

clean = d.y_clean if d.y_clean is not None else np.full(n, -1)
custom = np.column_stack([np.arange(n), d.y_noisy, clean, np.round(conf, 3), pred, suggested]).astype(np.float32)
hover = ("#%{customdata[0]}<br>given %{customdata[1]} · clean %{customdata[2]}<br>"
         "predicted %{customdata[4]} (conf %{customdata[3]:.2f}) · suggested %{customdata[5]}<extra></extra>")
fig = F.map_figure(coords, values, kind, customdata=custom, hover=hover, categories=cats, height=620,
                   colorscale="Viridis", colour_title={"neighbourhood confidence C(x;S)": "C(x;S)"}.get(field, field),
                   colours=colours)
event = F.show_figure(fig, "explore_map", on_select="rerun", selection_mode=("points", "box", "lasso"),
                      config={"scrollZoom": True})
st.caption("Box or lasso points (toolbar, top right) to open them below. "
           + ("Labels are class numbers: " + ", ".join(names.values()) if any(":" in v for v in names.values()) else ""))

# ---- gallery of the selected points
picked = F.selected_indices(event)
text = st.text_input("Or show examples by index", key="explore_indices", placeholder="e.g. 3, 17, 100-110")
if not picked and text.strip():
    try:
        picked = ui.parse_indices(text, n)
    except InputError as e:
        st.error(str(e))
        picked = []

if picked:
    # The heading is filled in last: once it shows, the gallery below it has arrived too.
    heading = st.empty()
    kept = np.zeros(n, dtype=bool)
    if sel is not None:
        kept[sel.indices] = True
    table = pd.DataFrame({
        "index": picked,
        "given": [F.class_name(d, int(d.y_noisy[i])) for i in picked],
        "clean": [F.class_name(d, int(clean[i])) if clean[i] >= 0 else "" for i in picked],
        "predicted": [F.class_name(d, int(pred[i])) for i in picked],
        "suggested": [F.class_name(d, int(suggested[i])) for i in picked],
        "confidence": conf[picked],
        "C(x;S)": cov[picked] if cov is not None else np.nan,
        "kept": kept[picked],
    })
    limit = 60
    show = picked[:limit]
    caps = []
    for i in show:
        cap = f"#{i} given {F.class_name(d, int(d.y_noisy[i]))} · pred {F.class_name(d, int(pred[i]))}"
        if suggested[i] != d.y_noisy[i]:
            cap += f" · sugg {F.class_name(d, int(suggested[i]))}"
        caps.append(cap)
    ui.image_grid(d, show, caps, size=72, width=96)
    if len(picked) > limit:
        st.caption(f"Showing the first {limit} images; the table lists all {len(picked):,}.")
    st.dataframe(table, hide_index=True, key="explore_table")
    st.download_button("Download these indices", data=table.to_csv(index=False).encode(),
                       file_name=f"{run_id}_picked.csv", mime="text/csv", key="explore_download")
    heading.subheader(f"{len(picked):,} selected example{'s' if len(picked) != 1 else ''}")
else:
    st.caption("Nothing selected yet.")
