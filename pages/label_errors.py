"""Label errors: ranked suspects with image, suggested label and neighbours; accept/reject; export."""

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from pages import _figures as F
from pages import _store as S
from pages import _ui as ui
from prune_core import jobs as J
from prune_core.label_errors import average_precision, corrections_frame, ranking_precision_recall

ui.ensure_app_frame(__file__)

st.title("Label errors")
st.caption("Examples ranked by how likely their given label is wrong: the warm-up model's disagreement "
           "(1 − p[given]) mixed with the neighbour vote (weighted share of graph neighbours whose given "
           "label differs). The suggested label is the argmax of the mixed distribution.")

run_id = ui.need_run()
d = ui.need_data(run_id)
wu = ui.need_warmup(run_id)
n = d.ds.n_train
s = S.store()

gkey = S.best_graph_key(run_id)
if gkey is None:
    st.warning("No neighbour graph yet: the ranking uses the model alone.")
    if S.manager().find(run_id, "graph", active_only=True) is None:
        if st.button("Build the neighbour graph (tau auto)", key="le_graph"):
            ui.submit(run_id, "graph", J.task_graph, {"tau": "auto"})
            st.rerun()
    ui.show_jobs(run_id, kinds=("graph",), key="le_jobs")

alpha = st.slider("Weight of the model vs the neighbours", 0.0, 1.0, 0.5, step=0.05, key="le_alpha",
                  help="1: model only; 0: neighbour vote only")
issues = S.label_issues(run_id, alpha)
g = S.graph(run_id, gkey) if gkey else None

# ---- precision / recall against the ground truth
if d.is_noisy is not None and d.is_noisy.any():
    flagged = int(issues["is_issue"].sum())
    total = int(d.is_noisy.sum())
    pr = ranking_precision_recall(issues["index"], d.is_noisy)
    at = ranking_precision_recall(issues["index"], d.is_noisy, [max(1, total)]).iloc[0]
    cols = st.columns(4)
    cols[0].metric("Wrong labels (ground truth)", f"{total:,}")
    cols[1].metric(f"Precision@{total}", f"{at['precision']:.3f}")
    cols[2].metric(f"Recall@{total}", f"{at['recall']:.3f}")
    cols[3].metric("Average precision", f"{average_precision(issues['index'], d.is_noisy):.3f}")
    with st.expander("Precision and recall of the ranking", expanded=False):
        fig = go.Figure([go.Scatter(x=pr["k"], y=pr["precision"], mode="lines+markers", name="precision@k"),
                         go.Scatter(x=pr["k"], y=pr["recall"], mode="lines+markers", name="recall@k")])
        fig.add_vline(x=total, line_dash="dot")
        fig.update_layout(height=300, margin=dict(l=10, r=10, b=10), xaxis_title="top k", yaxis_range=[0, 1.02])
        F.show_figure(fig, "le_pr")
        st.caption(f"{flagged:,} examples have a suggested label different from the given one.")
else:
    st.caption("No ground truth for this data: precision and recall cannot be measured.")

# ---- decisions
decisions = s.load_json(run_id, "label_decisions", default={}) or {}


def save_decision(idx: int, label: int):
    value = st.session_state.get(f"le_dec_{idx}", "undecided")
    current = s.load_json(run_id, "label_decisions", default={}) or {}
    if value == "undecided":
        current.pop(str(idx), None)
    else:
        current[str(idx)] = {"decision": value, "label": int(label)}
    s.save_json(run_id, "label_decisions", current)


c1, c2, c3 = st.columns(3)
only_changes = c1.checkbox("Only suggested changes", value=True, key="le_only_changes")
per_page = c2.selectbox("Per page", [10, 20, 50], key="le_per_page")
view = issues[issues["is_issue"]] if only_changes else issues
pages = max(1, int(np.ceil(len(view) / per_page)))
page = c3.number_input(f"Page (of {pages})", min_value=1, max_value=pages, value=1, step=1, key="le_page")
rows = view.iloc[(page - 1) * per_page: page * per_page]

gcsr = g[0] if g else None
for _, r in rows.iterrows():
    i = int(r["index"])
    given, sugg = int(r["given_label"]), int(r["suggested_label"])
    with st.container(border=True):
        c_img, c_info, c_nb, c_dec = st.columns([1, 2, 3, 2])
        with c_img:
            ui.image_grid(d, [i], [f"#{i}"], size=72, width=88)
        c_info.markdown(f"**#{i}** · rank {int(r['rank']) + 1}  \n"
                        f"given **{F.class_name(d, given)}** → suggested **{F.class_name(d, sugg)}** "
                        f"({r['confidence']:.2f})  \n"
                        f"model p[given] {1 - r['model_disagreement']:.2f} · neighbours agreeing "
                        + ("n/a" if np.isnan(r["neighbour_disagreement"]) else f"{1 - r['neighbour_disagreement']:.2f}")
                        + (f"  \nclean label: {F.class_name(d, int(d.y_clean[i]))}" if d.y_clean is not None else ""))
        with c_nb:
            if gcsr is not None:
                lo, hi = gcsr.indptr[i], gcsr.indptr[i + 1]
                nb, w = gcsr.indices[lo:hi], gcsr.data[lo:hi]
                keep = nb != i
                nb, w = nb[keep], w[keep]
                top = nb[np.argsort(-w, kind="stable")[:6]]
                if len(top):
                    ui.image_grid(d, top, [f"#{j} {F.class_name(d, int(d.y_noisy[j]))}" for j in top], size=48, width=56)
                else:
                    st.caption("no neighbours above tau")
        key = f"le_dec_{i}"
        if key not in st.session_state:
            st.session_state[key] = decisions.get(str(i), {}).get("decision", "undecided")
        c_dec.radio("Decision", ["undecided", "accept", "reject"], key=key, horizontal=False,
                    on_change=save_decision, args=(i, sugg), label_visibility="collapsed")

# ---- export
decisions = s.load_json(run_id, "label_decisions", default={}) or {}
acc = corrections_frame(issues, decisions, d.ds.label_values)
n_rej = sum(1 for v in decisions.values() if v.get("decision") == "reject")
st.subheader("Export")
st.caption(f"{len(acc):,} accepted, {n_rej:,} rejected (decisions are saved with the run).")
st.download_button("Download corrections CSV", data=acc.to_csv(index=False).encode(),
                   file_name=f"{run_id}_corrections.csv", mime="text/csv", key="le_download",
                   help="index, given_label, corrected_label, confidence, score of every accepted suggestion")
if len(acc) and d.y_clean is not None:
    right = (acc["corrected_label"].to_numpy() == d.y_clean[acc["index"].to_numpy()]).mean()
    st.caption(f"Against the ground truth, {right:.1%} of the accepted corrections are right.")
