"""Sweep: methods x keep ratios x seeds, each subset trained by a re-labeling learner (background job)."""

import pandas as pd
import streamlit as st

from pages import _figures as F
from pages import _store as S
from pages import _ui as ui
from prune_core import artifacts as A
from prune_core import jobs as J
from prune_core.errors import InputError
from prune_core.selection import budget_for, list_methods
from prune_core.validation import parse_number_list

ui.ensure_app_frame(__file__)

st.title("Sweep")
st.caption("For every method, keep ratio and seed: select the subset, train the re-labeling learner from "
           "scratch on the kept examples only, measure re-labeling accuracy (against the ground truth) and test "
           "accuracy. The dashed line is the accuracy of the given labels: a curve below it means re-labeling "
           "made the labels worse. Per seed the noise, warm-up and graph are shared by all methods (the run's "
           "own seed reuses the run's warm-up and graph); fits run in one worker process per core.")

run_id = ui.need_run()
d = ui.need_data(run_id)
s = S.store()
if A.is_model_outputs(S.warmup(run_id)):
    st.info("Model outputs: this sweep can only select (learner none, seed 0); training a learner needs a dataset "
            "and a warm-up.")

try:
    from prune_core import sweep as sweep_module
    from prune_core import sweep_report
    from prune_core.learners import LEARNER_INPUTS, list_learners
except ImportError as e:  # the sweep module is optional for the rest of the app
    st.error(f"The sweep module is not available: {e}")
    st.stop()

methods = list_methods()
learners = ["none", *list_learners()]


def prefill_from(sweep: dict) -> None:
    """Start a fresh form (a reload, a return to the page) from the newest sweep of the run:
    the defaults above the results of a different sweep read as if they had made them."""
    if "sweep_methods" in st.session_state:  # the form is live: the user's values stay
        return
    values = {"sweep_methods": [m for m in sweep.get("methods", []) if m in methods] or None,
              "sweep_ratios": ", ".join(f"{r:g}" for r in sweep.get("ratios", [])) or None,
              "sweep_seeds": ", ".join(str(x) for x in sweep.get("seeds", [])) or None,
              "sweep_learner": sweep.get("learner") if sweep.get("learner") in learners else None,
              "sweep_learner_epochs": int(sweep.get("learner_epochs") or 0),
              "sweep_learner_input": sweep.get("learner_input") if sweep.get("learner_input") in LEARNER_INPUTS else None,
              "sweep_tau": str(sweep.get("tau") or "auto")}
    for k, v in values.items():
        if v is not None:
            st.session_state[k] = v


earlier = A.list_sweeps(s, run_id)
if earlier:
    prefill_from(earlier[0])

c1, c2 = st.columns([3, 2])
default_methods = [m for m in ("prune4rel", "uniform", "small_loss") if m in methods] or methods[:2]
# Defaults live in the session state (the form may have been filled from the newest sweep):
# the widgets take no default of their own, so Streamlit never sees two competing values.
for wkey, default in (("sweep_methods", default_methods), ("sweep_ratios", "0.2, 0.4, 0.6, 0.8"),
                      ("sweep_seeds", "0"), ("sweep_learner", "ce" if "ce" in learners else learners[0]),
                      ("sweep_learner_epochs", 0), ("sweep_learner_input", LEARNER_INPUTS[0]), ("sweep_tau", "auto")):
    st.session_state.setdefault(wkey, default)
chosen = c1.multiselect("Methods", methods, key="sweep_methods")
ratios_text = c2.text_input("Keep ratios", key="sweep_ratios",
                            help="fractions of the training set kept, each in (0, 1]")
c1, c2, c3, c4, c5 = st.columns(5)
seeds_text = c1.text_input("Seeds", key="sweep_seeds")
learner = c2.selectbox("Learner", learners, key="sweep_learner")
epochs = c3.number_input("Learner epochs (0 = default)", min_value=0, step=1, key="sweep_learner_epochs")
lin = c4.selectbox("Learner input", LEARNER_INPUTS, key="sweep_learner_input",
                   help="from-scratch: a fresh network trained on the kept examples only (the paper's protocol). "
                        "frozen-features: a head on the warm-up embeddings, which were trained on ALL examples, "
                        "pruned ones included (fast, but it hides differences between subsets)")
tau = c5.text_input("tau (number or auto)", key="sweep_tau")

start = st.button("Start sweep", key="sweep_start", type="primary")
if start:
    try:
        if not chosen:
            raise InputError("choose at least one method")
        ratios = parse_number_list(ratios_text, float, "keep ratios")
        for r in ratios:
            budget = budget_for(r, d.ds.n_train)
            if budget < 1:
                raise InputError(f"keep ratio {r} leaves no example")
        seeds = parse_number_list(seeds_text, int, "seeds")
        sweep_module.check_sweep_inputs(chosen, ratios, seeds, learner, int(epochs) or None, lin)
        from prune_core.graph import parse_tau

        parse_tau(tau)
        params = {"methods": chosen, "ratios": ratios, "seeds": seeds, "learner": learner,
                  "learner_epochs": int(epochs) or None, "learner_input": lin, "tau": tau.strip()}
        key = J.sweep_key({**params, "learner_params": {}})
        ui.submit(run_id, "sweep", J.task_sweep, {**params, "key": key}, key=key)
        st.session_state["sweep_show"] = key
        st.rerun()
    except InputError as e:
        st.error(str(e))


def draw(rows: list, key: str):
    if not rows:
        st.caption("No rows yet: the first appears once a warm-up and one fit are done.")
        return
    df = pd.DataFrame(rows)
    caveat = sweep_report.sweep_caveat(df)
    if caveat:
        st.warning(caveat, icon=":material/warning:")
    worse = sweep_report.relabel_worse_than_given(df)
    if worse:
        w = worse[0]
        where = ", ".join(sorted({f"{x['method']} ({x['learner']}) at keep {x['keep_ratio']:.0%}" for x in worse[:4]}))
        more = f" and {len(worse) - 4} more" if len(worse) > 4 else ""
        st.warning(f"Re-labeling made the labels worse than the given labels in {len(worse)} case(s): {where}{more} "
                   f"(worst: {w['gain']:+.1%} accuracy).", icon=":material/trending_down:")
    figs = sweep_report.sweep_figures(df)
    if figs:
        cols = st.columns(len(figs))
        for col, (metric, fig) in zip(cols, figs.items()):
            fig.update_layout(height=380, margin=dict(l=10, r=10, b=10), title_font_size=13,
                              legend_title_text="")
            # Fixed axes: one live point (or one keep ratio) keeps a readable scale.
            fig.update_xaxes(range=[0, 1.02])
            fig.update_yaxes(range=[0, 1.02])
            F.show_figure(fig, f"{key}_{metric}", target=col, legend="below")


def live(job):
    p = job.get("params") or {}
    if p.get("methods"):  # which sweep the live curves and warnings below belong to
        st.caption(f"Running: {', '.join(p['methods'])} · ratios {', '.join(f'{float(r):g}' for r in p.get('ratios', []))}"
                   f" · seeds {', '.join(map(str, p.get('seeds', [])))} · {p.get('learner', '')}")
    draw(job.get("metrics") or [], key=f"sweep_live_{job['id']}")


active = ui.show_jobs(run_id, kinds=("sweep",), key="sweep_jobs", extra=live)

sweeps = A.list_sweeps(s, run_id)
if not sweeps:
    st.stop()
st.subheader("Results")
labels = {x["key"]: f"{', '.join(x['methods'])} · ratios {', '.join(f'{r:g}' for r in x['ratios'])} · "
                    f"seeds {', '.join(map(str, x['seeds']))} · {x['learner']} · {x['state']} ({len(x['rows'])} rows)"
          for x in sweeps}
keys = list(labels)
if st.session_state.get("sweep_show") in keys and st.session_state.get("sweep_pick") != st.session_state["sweep_show"]:
    st.session_state["sweep_pick"] = st.session_state.pop("sweep_show")
pick = st.selectbox("Sweep", keys, key="sweep_pick", format_func=labels.get)
info = next(x for x in sweeps if x["key"] == pick)
if info.get("error"):
    st.error(f"sweep {info['state']}: {info['error']} (rows done so far are kept)")
if not any(j["key"] == pick for j in active):
    draw(info["rows"], key="sweep_done")
if info["rows"]:
    st.dataframe(pd.DataFrame(info["rows"]), hide_index=True, key="sweep_table")
st.download_button("Download sweep CSV", data=info["csv"].encode(), file_name=f"{run_id}_{pick}.csv",
                   mime="text/csv", key="sweep_download")
