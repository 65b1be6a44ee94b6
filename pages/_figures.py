"""Plotly figure builders and colours of the app's pages (not a page itself).

Pure drawing: no run store, no prune_core (pages/_store.py loads what the figures show).
"""

from __future__ import annotations

import numpy as np
import streamlit as st


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


def class_name(d, c: int) -> str:
    names = d.ds.class_names
    return str(names[c]) if 0 <= c < len(names) else str(c)


def class_axis(fig, d, axis: str = "x") -> None:
    """Label every class on a class axis (by name when the data has names); values are 0..C-1."""
    names = [class_name(d, c) for c in range(d.ds.num_classes)]
    # "id: name" on every tick as soon as one name differs from its id (labels 0, 10, ..., 90
    # read "0: 0, 1: 10, ..."; without the prefix on the first, "0" and "1: 10" looked unlike)
    plain = all(n == str(c) for c, n in enumerate(names))
    ticks = names if plain else [f"{c}: {n}" for c, n in enumerate(names)]
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
