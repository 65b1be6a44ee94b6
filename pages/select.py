"""Select: pick a method and a keep ratio; the stored ranking re-slices instantly."""

import json

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from pages import _figures as F
from pages import _store as S
from pages import _ui as ui
from prune_core import artifacts as A
from prune_core import jobs as J
from prune_core.errors import InputError
from prune_core.metrics import selection_metrics
from prune_core.prune4rel import MODES
from prune_core.registry import BALANCE_KINDS
from prune_core.scores import CONFIDENCE_KINDS
from prune_core.selection import get_method, list_methods

ui.ensure_app_frame(__file__)

st.title("Select")

run_id = ui.need_run()
d = ui.need_data(run_id)
wu = ui.need_warmup(run_id)
n = d.ds.n_train
C = d.ds.num_classes
s = S.store()

methods = list_methods()
cur = S.current_selection(run_id)
cur_info = S.selection(run_id, cur["key"])[1] if cur and S.selection(run_id, cur["key"]) else None
STANDARD = ("tau", "eta", "mode", "confidence", "k")

# ---- controls
c1, c2 = st.columns([1, 2])
with c1:
    if "select_method" not in st.session_state:
        st.session_state["select_method"] = cur_info["method"] if cur_info and cur_info["method"] in methods else (
            "prune4rel" if "prune4rel" in methods else methods[0])
    method = st.selectbox("Method", methods, key="select_method")
    info = get_method(method)
    st.caption(info.summary + ("" if info.nested else " · not nested: each keep ratio is its own run"))
with c2:
    if "select_keep" not in st.session_state:
        st.session_state["select_keep"] = int(round(100 * cur["keep_ratio"])) if cur else 50
    keep_pct = st.select_slider("Keep ratio", options=list(range(1, 101)), format_func=ui.keep_label,
                                key="select_keep")
keep_ratio = keep_pct / 100.0
budget = max(1, int(round(keep_ratio * n)))
st.caption(f"**{ui.keep_label(keep_pct)}**: {budget:,} of {n:,} examples kept, {n - budget:,} pruned")

cols = st.columns(6)
tau = cols[0].text_input("tau (number or auto)", value="auto", key="select_tau",
                         help="Neighbour threshold on s = 0.5 + 0.5 cos (neighbours when s > tau); auto: the "
                              "median example gets 10 neighbours. Also the graph for C(x;S) of every method.")
params = {}
if "eta" in info.defaults:
    params["eta"] = cols[1].number_input("eta", min_value=0.01, max_value=100.0, value=float(info.defaults["eta"]),
                                         step=0.1, key="select_eta")
params["balance"] = cols[2].selectbox("Class balance", BALANCE_KINDS, key="select_balance",
                                      index=BALANCE_KINDS.index(info.default_balance))
if "confidence" in info.defaults:
    params["confidence"] = cols[3].selectbox("Confidence", CONFIDENCE_KINDS, key="select_confidence",
                                             index=CONFIDENCE_KINDS.index(info.defaults["confidence"]))
if "mode" in info.defaults:
    params["mode"] = cols[4].selectbox("Mode", MODES, key="select_mode", index=MODES.index(info.defaults["mode"]),
                                       help="official (default): the released code's own-term score, the "
                                            "higher re-labeling accuracy on CIFAR-10N; exact: true marginal "
                                            "gains of F (lazy greedy), the higher objective F")
seed = cols[5].number_input("Seed", min_value=0, value=0, step=1, key="select_seed")
extra = {k: v for k, v in info.defaults.items() if k not in STANDARD}
if extra:
    ecols = st.columns(min(4, len(extra)))
    for i, (name, default) in enumerate(extra.items()):
        box = ecols[i % len(ecols)]
        wkey = f"select_param_{method}_{name}"
        if isinstance(default, bool):
            params[name] = box.checkbox(name, value=default, key=wkey)
        elif isinstance(default, int):
            params[name] = int(box.number_input(name, value=default, step=1, key=wkey))
        elif isinstance(default, float):
            params[name] = float(box.number_input(name, value=default, key=wkey, format="%.4g"))
        elif default is None or isinstance(default, str):
            text = box.text_input(name, value="" if default is None else default, key=wkey)
            params[name] = None if (default is None and not text) else text
        else:
            params[name] = default

try:
    plan = J.plan_selection(method, params, keep_ratio, None, tau, int(seed), n)
except InputError as e:
    # The message, and below it the last computed selection: a typo must not look like lost results.
    st.error(str(e))
    plan = None

stored = None
if plan is not None:
    stored = S.selection(run_id, plan["key"])
    job = S.manager().find(run_id, "select", key=plan["key"], active_only=True)

    if stored is None and job is None:
        same_params = [x for x in A.list_selections(s, run_id)
                       if x["method"] == method and x.get("plan_params") == plan["params"] and x["seed"] == int(seed)
                       and x["graph"] == plan["graph"]]
        if not plan["nested"] and same_params:
            # A non-nested method at a new keep ratio: re-run it right away.
            ui.submit(run_id, "select", J.task_select, {"method": method, "params": plan["params"],
                                                        "keep_ratio": keep_ratio, "tau": plan["tau"], "seed": int(seed)},
                      key=plan["key"])  # no rerun needed: the job panel below polls it
        label = "Rank all examples" if plan["nested"] else f"Run selection at {ui.keep_label(keep_pct)}"
        # Submitted in the script run of the click, with the values committed with it (a seed typed
        # just before the click counts; a callback would submit the plan of the run before).
        if st.button("Run selection", key="select_run", type="primary", help=label):
            ui.submit(run_id, "select", J.task_select, {"method": method, "params": plan["params"],
                                                        "keep_ratio": keep_ratio, "tau": plan["tau"], "seed": int(seed)},
                      key=plan["key"])  # no rerun needed: the job panel below polls it
        st.caption(("Nested method: ranks all examples once; afterwards the slider re-slices instantly."
                    if plan["nested"] else "Not nested: each keep ratio is computed on its own."))

plan_key = plan["key"] if plan is not None else None
ui.show_jobs(run_id, kinds=("select", "demo"), key="select_jobs",
             failed_filter=lambda j: j["kind"] == "demo" or j["key"] == plan_key)

# ---- results: this plan's selection, else the last one shown
shown_key = plan_key if stored is not None else (cur["key"] if cur and S.selection(run_id, cur["key"]) else None)
if shown_key is None:
    st.stop()
shown_ratio = keep_ratio
got = S.selection(run_id, shown_key)
full, sinfo = got
if not full.nested:
    shown_ratio = full.keep_ratio
if shown_key != plan_key:
    st.info(f"Showing the last computed selection ({sinfo['method']}, {ui.keep_label(100 * shown_ratio)}) "
            + ("until you run the one set above." if plan is not None else "until the settings above are valid."))
else:
    S.set_current_selection(run_id, shown_key, shown_ratio)

sel, _ = S.sliced(run_id, shown_key, shown_ratio)
g = S.graph(run_id, sinfo["graph"])
graph, ginfo = g if g else (None, {})
conf_kind = sinfo.get("params", {}).get("confidence", "maxprob")
from prune_core.scores import confidence as confidence_of  # noqa: E402

conf = confidence_of(wu.probs, conf_kind)
eta = float(sinfo.get("params", {}).get("eta", 1.0))


@st.cache_data(max_entries=32, show_spinner=False)
def metrics_for(_sel, _graph, _conf, run: str, key: str, ratio: float, eta: float, versions: tuple):
    return selection_metrics(_sel, d.y_noisy, d.y_clean, C, _graph, _conf, eta)


versions = (s.bundle_version(run_id, f"selections/{shown_key}"), s.bundle_version(run_id, "warmup"))
met = metrics_for(sel, graph, conf, run_id, shown_key, shown_ratio, eta, versions)

cols = st.columns(5)
cols[0].metric("Kept examples", f"{sel.budget:,}",
               help=f"of {n:,} training examples: {ui.keep_label(round(100 * shown_ratio, 2))}")
nr_sub, nr_all = met.get("noise_rate_subset"), met.get("noise_rate_data")
cols[1].metric("Wrong labels kept", "unknown" if nr_sub is None else f"{100 * nr_sub:.1f}%",
               # the difference of the two shown (rounded) percentages, so the user's subtraction agrees
               delta=None if nr_sub is None else f"{round(100 * nr_sub, 1) - round(100 * nr_all, 1):+.1f} pts vs data",
               delta_color="inverse",
               help="share of kept examples whose given label is wrong (ground truth); delta: vs the whole "
                    "training set. Prune4ReL does not filter noise: it keeps what a re-labeling learner can fix.")
cols[2].metric("Objective F(S)", "n/a" if met.get("objective_F") is None else f"{met['objective_F']:.1f}",
               help="sum over all examples of tanh(C(x;S)/eta)")
cols[3].metric("Covered examples", "n/a" if met.get("uncovered_fraction") is None
               else f"{100 * (1 - met['uncovered_fraction']):.1f}%", help="examples with C(x;S) > 0")
cols[4].metric("Selection time", f"{sinfo.get('seconds', 0):.2f} s",
               help="computing the stored ranking; re-slicing takes no time")
st.caption(f"graph: tau {ginfo.get('tau', float('nan')):.4f} ({ginfo.get('tau_requested', '?')}), "
           f"median {ginfo.get('median_degree', 0):.0f} neighbours, {100 * ginfo.get('isolated_fraction', 0):.1f}% "
           f"isolated · params {json.dumps(sinfo.get('params', {}), default=str)}")

c1, c2 = st.columns(2)
with c1:
    kept = np.asarray(met["class_counts_kept"])
    sizes = np.asarray(met["class_counts_data"])
    bal = sinfo.get("params", {}).get("balance", "none")
    quota = np.minimum(sizes, sel.budget / C) if bal == "equal" else sel.budget * sizes / max(1, sizes.sum())
    classes = np.arange(C)
    fig = go.Figure([go.Bar(x=classes, y=kept, name="kept", marker_color=F.QUALITATIVE[0]),
                     go.Scatter(x=classes, y=quota, mode="markers",
                                marker=dict(symbol="line-ew-open", size=24, color=F.QUALITATIVE[1]),
                                name="quota (equal)" if bal == "equal" else "quota (proportional share)")])
    fig.update_layout(title="Kept per (given-label) class vs quota", height=340, margin=dict(l=10, r=10, b=10),
                      xaxis_title="given label", yaxis_title="examples")
    F.class_axis(fig, d)
    F.show_figure(fig, "select_class_counts", legend="below")
with c2:
    if full.gains is not None and full.nested:
        curve = np.cumsum(full.gains)
        step = max(1, len(curve) // 400)
        xs = np.arange(1, len(curve) + 1)[::step]
        fig = go.Figure(go.Scatter(x=100 * xs / n, y=curve[::step], mode="lines", name="F"))
        fig.add_vline(x=100 * sel.budget / n, line_dash="dash")
        fig.update_layout(title="Objective vs keep ratio (%)", height=340, margin=dict(l=10, r=10, b=10),
                          xaxis_title="keep %", yaxis_title="F(S)", xaxis_range=[0, 100])
        F.show_figure(fig, "select_objective")
    else:
        st.caption("This method has no objective curve (a score ranking).")

# ---- compare with a second method
st.subheader("Compare")
others = ["(none)"] + [m for m in methods if m != sel.method]
other = st.selectbox("Compare with", others, key="select_compare")
if other != "(none)":
    try:
        plan2 = J.plan_selection(other, {"balance": params["balance"]}, shown_ratio, None, tau, int(seed), n)
    except InputError as e:
        st.error(str(e))
        st.stop()
    got2 = S.sliced(run_id, plan2["key"], shown_ratio)
    if got2 is None:
        if S.manager().find(run_id, "select", key=plan2["key"], active_only=True) is None:
            st.button(f"Run {other}", key="select_compare_run",
                      on_click=lambda: ui.submit(run_id, "select", J.task_select,
                                                 {"method": other, "params": plan2["params"], "keep_ratio": shown_ratio,
                                                  "tau": plan2["tau"], "seed": int(seed)}, key=plan2["key"]))
    else:
        sel2, info2 = got2
        a, b = set(sel.indices.tolist()), set(sel2.indices.tolist())
        inter = len(a & b)
        met2 = metrics_for(sel2, graph, conf, run_id, plan2["key"], shown_ratio, eta,
                           (s.bundle_version(run_id, f"selections/{plan2['key']}"), s.bundle_version(run_id, "warmup")))
        cols = st.columns(4)
        cols[0].metric("Overlap", f"{inter:,}", help="examples kept by both")
        cols[1].metric("Jaccard", f"{inter / max(1, len(a | b)):.3f}")
        for col, m_, name in ((cols[2], met, sel.method), (cols[3], met2, other)):
            v = m_.get("noise_rate_subset")
            col.metric(f"Wrong labels kept: {name}", "unknown" if v is None else f"{100 * v:.1f}%")
        mp = S.projection(run_id)
        if mp is not None:
            coords = mp[0]
            custom = np.arange(n)[:, None]
            m1, m2 = st.columns(2)
            for col, sx, name, k in ((m1, sel, sel.method, "select_map_a"), (m2, sel2, other, "select_map_b")):
                mask = np.zeros(n, dtype=int)
                mask[sx.indices] = 1
                fig = F.map_figure(coords, mask, "categorical", title=f"{name}: kept vs dropped", customdata=custom,
                                   categories={0: "dropped", 1: "kept"}, height=380,
                                   colours={0: F.QUIET, 1: F.QUALITATIVE[0]},
                                   hover="#%{customdata[0]}<extra></extra>")
                F.show_figure(fig, k, target=col)

# ---- downloads
st.subheader("Export")


@st.cache_data(max_entries=8, show_spinner=False)
def csv_bytes(run: str, key: str, ratio: float, versions: tuple) -> bytes:
    return A.selection_csv(sel, d.y_noisy, d.y_clean, conf, d.ds.label_values)


@st.cache_data(max_entries=8, show_spinner=False)
def manifest_bytes(run: str, key: str, ratio: float, versions: tuple) -> bytes:
    man = A.selection_manifest(s, run_id, key, ratio, metrics=met)
    from prune_core.runstore import to_json

    return to_json(man).encode()


stem = f"{run_id}_{sel.method}_keep{keep_pct if sel.nested else int(round(100 * shown_ratio))}"
c1, c2, c3 = st.columns(3)
c1.download_button("Download selection CSV", data=csv_bytes(run_id, shown_key, shown_ratio, versions),
                   file_name=f"{stem}.csv", mime="text/csv", key="select_download_csv",
                   help="One row per training example (N rows): index, rank (-1 when dropped), selected (1/0), "
                        "given_label, clean_label, confidence")
c2.download_button("Download selection NPY", data=A.selection_npy(sel), file_name=f"{stem}.npy",
                   mime="application/octet-stream", key="select_download_npy",
                   help="The kept indices in pick order, int64")
c3.download_button("Download manifest JSON", data=manifest_bytes(run_id, shown_key, shown_ratio, versions),
                   file_name=f"{stem}_manifest.json", mime="application/json", key="select_download_manifest")
st.caption(f"The CSV has one row per training example ({n:,} rows); `selected` marks the {sel.budget:,} kept ones.")
