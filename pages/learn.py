"""Learn: step through the Prune4ReL greedy on 2-D toy data and watch C(x) fill up."""

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from pages import _figures as F
from pages import _ui as ui
from prune_core.errors import InputError
from prune_core.toy import greedy_trace, make_toy, toy_graph

ui.ensure_app_frame(__file__)

st.title("Learn")
st.markdown(
    "Each point is a training example with a (possibly wrong) given label. Prune4ReL keeps the subset $S$ "
    r"that maximises $F(S) = \sum_{x} \tanh\big(C(x;S)/\eta\big)$, where "
    r"$C(x;S) = \sum_{s \in S} w(x,s)\,\mathrm{conf}(s)$ is how much "
    "*confident* kept neighbours surround $x$. A re-labeling learner trained on $S$ can fix $x$'s label when "
    "$C(x;S)$ is high. $\\tanh$ saturates, so once an area is covered, the next pick goes elsewhere. "
    "Walk through the picks:"
)

c1, c2, c3, c4, c5 = st.columns(5)
noise = c1.slider("Label noise (%)", 0, 60, 30, step=5, key="learn_noise")
tau = c2.slider("tau (neighbour threshold)", 0.05, 0.95, 0.5, step=0.05, key="learn_tau",
                help="neighbours when the similarity exp(-d²/2h²) exceeds tau")
eta = c3.slider("eta (saturation)", 0.1, 5.0, 1.0, step=0.1, key="learn_eta",
                help="small eta: C(x) saturates fast, picks spread out")
budget = c4.slider("Budget (picks)", 5, 80, 30, step=5, key="learn_budget")
points = c5.select_slider("Points", [120, 240, 480], value=240, key="learn_points")


@st.cache_data(max_entries=16, show_spinner=False)
def trace_for(n, noise, tau, eta, budget):
    toy = make_toy(n=n, classes=3, noise_rate=noise / 100.0, spread=1.3, seed=0)
    g = toy_graph(toy.x, tau=tau)
    tr = greedy_trace(g, toy.probs, budget=budget, eta=eta)
    degree = np.diff(g.indptr) - 1
    return toy, tr, degree


try:
    toy, tr, degree = trace_for(int(points), int(noise), float(tau), float(eta), int(budget))
except InputError as e:
    st.error(str(e))
    st.stop()

if "learn_step" not in st.session_state:
    st.session_state["learn_step"] = 0
elif st.session_state["learn_step"] > tr.budget:
    st.session_state["learn_step"] = tr.budget


def move(delta):
    st.session_state["learn_step"] = int(min(tr.budget, max(0, st.session_state.get("learn_step", 0) + delta)))


b1, b2, b3 = st.columns([1, 6, 1])
b1.button("◀ Previous", key="learn_prev", on_click=move, args=(-1,))
b3.button("Next ▶", key="learn_next", on_click=move, args=(1,))
step = b2.slider("Step", 0, tr.budget, key="learn_step")

x = toy.x
cover = tr.cover[step]
cmax = float(tr.cover[-1].max()) or 1.0
symbols = ["circle", "square", "diamond", "triangle-up", "cross"]
left, right = st.columns([3, 2])
with left:
    fig = go.Figure()
    for c in range(toy.num_classes):
        idx = np.flatnonzero(toy.y_noisy == c)
        fig.add_trace(go.Scatter(
            x=x[idx, 0], y=x[idx, 1], mode="markers", name=f"given label {c}",
            customdata=np.column_stack([idx, toy.y_clean[idx], tr.conf[idx], cover[idx]]),
            hovertemplate="#%{customdata[0]} given " + str(c) + " (clean %{customdata[1]})<br>conf %{customdata[2]:.2f}"
                          " · C(x) %{customdata[3]:.2f}<extra></extra>",
            marker=dict(symbol=symbols[c % len(symbols)], size=9, color=cover[idx], colorscale="Viridis",
                        cmin=0, cmax=cmax, showscale=c == 0, colorbar=dict(title="C(x;S)", thickness=12),
                        line=dict(color=np.where(toy.is_noisy[idx], "red", "rgba(0,0,0,0.3)"),
                                  width=np.where(toy.is_noisy[idx], 2, 0.5)))))
    if step >= 1:
        # The pick's neighbours: lines drawn after (above) the markers, one trace (None breaks).
        p = int(tr.picks[step - 1])
        nbrs = [int(v) for v in tr.neighbours[step - 1] if v != p]
        xs = [c for v in nbrs for c in (x[p, 0], x[v, 0], None)]
        ys = [c for v in nbrs for c in (x[p, 1], x[v, 1], None)]
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line=dict(color="rgba(230,80,30,0.8)", width=1.5),
                                 hoverinfo="skip", name="the pick's neighbours"))
    if step >= 1:
        picked = tr.picks[:step]
        fig.add_trace(go.Scatter(x=x[picked, 0], y=x[picked, 1], mode="markers", name="kept (S)",
                                 marker=dict(symbol="circle-open", size=17, color="black", line=dict(width=2)),
                                 hoverinfo="skip"))
        fig.add_trace(go.Scatter(x=[x[p, 0]], y=[x[p, 1]], mode="markers", name="this pick",
                                 marker=dict(symbol="star", size=20, color="orange", line=dict(color="black", width=1)),
                                 hoverinfo="skip"))
    fig.update_layout(height=580, margin=dict(l=10, r=10, b=10), title=f"after {step} pick(s)")
    fig.update_yaxes(scaleanchor="x", scaleratio=1)
    F.show_figure(fig, "learn_map", legend="below")
    st.caption("Red outline: the given label is wrong. Colour: C(x;S) after this step. Lines: the pick's neighbours.")
with right:
    fig = go.Figure(go.Scatter(x=np.arange(tr.budget + 1), y=tr.objective, mode="lines+markers", name="F(S)"))
    fig.add_trace(go.Scatter(x=[step], y=[tr.objective[step]], mode="markers", marker=dict(size=14, color="orange"),
                             name="now"))
    fig.update_layout(height=300, margin=dict(l=10, r=10, b=10), title="objective F(S) vs step",
                      xaxis_title="step", showlegend=False)
    F.show_figure(fig, "learn_objective")
    if step >= 1:
        p = int(tr.picks[step - 1])
        st.metric("Objective F(S)", f"{tr.objective[step]:.2f}", delta=f"+{tr.gains[step - 1]:.3f} this step")
        st.markdown(f"Pick **#{p}**: given label {toy.y_noisy[p]}"
                    + (" (**wrong**)" if toy.is_noisy[p] else "")
                    + f", confidence {tr.conf[p]:.2f}, {int(degree[p])} neighbours.")
    else:
        st.metric("Objective F(S)", "0.00")
        st.markdown("Press **Next ▶** to make the first pick: the example whose confident neighbourhood adds most to F.")
    covered = (cover > 0).mean()
    noisy_cov = cover[toy.is_noisy].mean() if toy.is_noisy.any() else float("nan")
    st.caption(f"Covered (C(x) > 0): {covered:.0%} of all points · mean C(x) of wrong-label points {noisy_cov:.2f} · "
               f"wrong labels kept: {int(toy.is_noisy[tr.picks[:step]].sum())} of {step}")
