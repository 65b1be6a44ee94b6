"""A sweep's results table and what is made of it: the columns (`RESULT_COLUMNS`),
results.csv, summaries over seeds, the given-labels reference, figures (plotly, PNG) and
the output files of the CLI. `sweep.run_sweep` fills the table; nothing here trains or selects.

Every function takes the results as a pandas DataFrame with (a subset of) `RESULT_COLUMNS`
(`run_sweep`'s return value, or the rows saved so far by a running sweep).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

RESULT_COLUMNS = [
    "method", "base_method", "keep_ratio", "seed", "learner", "learner_input", "learner_caveat", "learner_model",
    "budget", "test_acc", "relabel_acc_subset", "relabel_acc_all", "given_acc_subset", "given_acc_all",
    "relabel_gain_subset", "relabel_gain_all", "relabel_acc_noisy",
    "noise_in_subset", "noise_rate_data", "objective_F", "mean_neighbourhood_confidence",
    "uncovered_fraction", "saturated_fraction", "select_seconds", "ranking_reused", "learner_seconds", "learner_epochs",
    "warmup_test_acc", "warmup_seconds", "warmup_reused", "graph_tau", "graph_isolated_fraction", "graph_median_degree", "graph_purity",
    "class_counts_kept", "data", "noise", "params",
]
# Metrics averaged over seeds in summaries and plotted against the keep ratio.
CURVE_METRICS = {
    "relabel_acc_all": "re-labeling accuracy (all training examples)",
    "test_acc": "test accuracy (last epoch)",
    "relabel_acc_subset": "re-labeling accuracy (kept subset)",
    "noise_in_subset": "noise rate in the kept subset",
}


def summarize(df, metrics=None):
    """Mean and std over seeds per (method, learner, keep_ratio): METRIC_mean, METRIC_std, n_seeds."""
    import pandas as pd

    metrics = [m for m in (metrics or list(CURVE_METRICS)) if m in df.columns]
    if df.empty:
        return pd.DataFrame()
    num = df[["method", "learner", "keep_ratio", *metrics]].copy()
    for m in metrics:
        num[m] = pd.to_numeric(num[m], errors="coerce")
    g = num.groupby(["method", "learner", "keep_ratio"], sort=False)
    out = g[metrics].agg(["mean", "std"])
    out.columns = [f"{a}_{b}" for a, b in out.columns]
    out["n_seeds"] = g.size()
    return out.reset_index()


def _plotted_metrics(df) -> list[str]:
    import pandas as pd

    def has(col):
        return col in df.columns and pd.to_numeric(df[col], errors="coerce").notna().any()

    main = [m for m in ("relabel_acc_all", "test_acc") if has(m)]
    if not main:  # learner "none": what a selection alone tells
        main = [m for m in ("noise_in_subset",) if has(m)]
    return main


GIVEN_LABELS_NAME = "given labels (no re-labeling)"


def given_label_reference(df) -> float | None:
    """Accuracy of the given (noisy) labels over all training examples, averaged over the
    sweep's seeds: the level a re-labeling accuracy must beat to have helped. None without
    ground truth."""
    import pandas as pd

    if df is None or df.empty or "given_acc_all" not in df.columns:
        return None
    per_seed = pd.to_numeric(df["given_acc_all"], errors="coerce").groupby(df["seed"]).first().dropna()
    return float(per_seed.mean()) if len(per_seed) else None


def relabel_worse_than_given(df, metric: str = "relabel_acc_all") -> list[dict]:
    """(method, learner, keep_ratio, mean gain) where the learner's labels were, on average over
    seeds, LESS accurate than the given labels (re-labeling made the labels worse), sorted by
    gain. `metric` relabel_acc_all compares with given_acc_all; relabel_acc_subset with
    given_acc_subset."""
    import pandas as pd

    part = metric.rsplit("_", 1)[1]
    gain_col = f"relabel_gain_{part}"
    if df is None or df.empty or gain_col not in df.columns:
        return []
    d = df.assign(_gain=pd.to_numeric(df[gain_col], errors="coerce")).dropna(subset=["_gain"])
    if d.empty:
        return []
    mean = d.groupby(["method", "learner", "keep_ratio"], sort=False)["_gain"].mean()
    worse = [{"method": m, "learner": lr, "keep_ratio": float(r), "gain": float(g)}
             for (m, lr, r), g in mean.items() if g < 0]
    return sorted(worse, key=lambda w: w["gain"])


def sweep_caveat(df) -> str | None:
    """The one-line caveat of the sweep's learner input (frozen features), or None."""
    if df is None or df.empty or "learner_caveat" not in df.columns:
        return None
    notes = [c for c in df["learner_caveat"].dropna().unique() if str(c).strip()]
    return str(notes[0]) if notes else None


def _reference_trace(df, summary, show_legend=True):
    """A horizontal dashed line at the given labels' accuracy over the keep-ratio range, as a
    trace (so it is in the legend and in `fig.data`), or None without ground truth."""
    import plotly.graph_objects as go

    ref = given_label_reference(df)
    if ref is None:
        return None
    x = [float(summary["keep_ratio"].min()), float(summary["keep_ratio"].max())]
    return go.Scatter(x=x, y=[ref, ref], mode="lines", name=GIVEN_LABELS_NAME, legendgroup=GIVEN_LABELS_NAME,
                      showlegend=show_legend, line={"color": "#444444", "dash": "dash", "width": 1.5},
                      hovertemplate=f"given labels: accuracy {ref:.4f}<extra></extra>")


def _title_with_caveat(title: str | None, df) -> str | None:
    caveat = sweep_caveat(df)
    if caveat is None:
        return title
    return f"{title}<br><sub>{caveat}</sub>" if title else f"<sub>{caveat}</sub>"


def _method_colors(methods) -> dict:
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
               "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd"]
    return {m: palette[i % len(palette)] for i, m in enumerate(methods)}


_DASHES = ["solid", "dash", "dot", "dashdot"]


# Metrics of the selection alone: the same for every learner, plotted once per method.
LEARNER_FREE = {"noise_in_subset"}


def _lines(summary, metric):
    """(name, method, learner index, part) per plotted line: one per method, or per
    (method, learner) when the sweep has several learners and the metric depends on it."""
    learners = list(summary["learner"].unique())
    if metric in LEARNER_FREE:
        summary = summary[summary["learner"] == learners[0]]
    for (method, learner), part in summary.groupby(["method", "learner"], sort=False):
        name = method if len(learners) == 1 or metric in LEARNER_FREE else f"{method} ({learner})"
        yield name, method, learners.index(learner), part.sort_values("keep_ratio")


def _curve_traces(summary, metric, colors, show_legend=True):
    import plotly.graph_objects as go

    traces = []
    for name, method, li, part in _lines(summary, metric):
        mean = part[f"{metric}_mean"]
        std = part[f"{metric}_std"].fillna(0.0)
        if mean.isna().all():
            continue
        traces.append(go.Scatter(
            x=part["keep_ratio"], y=mean, mode="lines+markers", name=name, legendgroup=name,
            showlegend=show_legend, line={"color": colors[method], "dash": _DASHES[li % len(_DASHES)]},
            error_y={"type": "data", "array": std, "visible": True, "thickness": 1},
            customdata=np.stack([std, part["n_seeds"]], axis=1),
            hovertemplate=(f"<b>{name}</b><br>keep %{{x:.0%}}<br>{metric} %{{y:.4f}} "
                           "± %{customdata[0]:.4f} (%{customdata[1]} seeds)<extra></extra>"),
        ))
    return traces


def sweep_figures(df) -> dict:
    """Plotly figures of a sweep, one per plotted metric: metric mean against keep ratio, one
    line per method, error bars = std over seeds. Keys are metric column names
    (relabel_acc_all, test_acc; noise_in_subset for learner "none")."""
    import plotly.graph_objects as go

    summary = summarize(df)
    figs = {}
    if summary.empty:
        return figs
    colors = _method_colors(summary["method"].unique())
    for metric in _plotted_metrics(df):
        fig = go.Figure(_curve_traces(summary, metric, colors))
        if metric == "relabel_acc_all":
            ref = _reference_trace(df, summary)
            if ref is not None:
                fig.add_trace(ref)
        fig.update_layout(title=_title_with_caveat(CURVE_METRICS[metric], df), xaxis_title="keep ratio (fraction of the training set kept)",
                          yaxis_title=metric, template="plotly_white", hovermode="closest",
                          legend_title_text="method")
        fig.update_xaxes(tickformat=".0%")
        figs[metric] = fig
    return figs


def sweep_figure(df, title: str | None = None):
    """All plotted metrics side by side in one plotly figure (shared legend), for HTML export."""
    from plotly.subplots import make_subplots

    summary = summarize(df)
    metrics = _plotted_metrics(df) if not summary.empty else []
    fig = make_subplots(rows=1, cols=max(1, len(metrics)), subplot_titles=[CURVE_METRICS[m] for m in metrics])
    if not metrics:
        return fig
    colors = _method_colors(summary["method"].unique())
    for j, metric in enumerate(metrics, start=1):
        for tr in _curve_traces(summary, metric, colors, show_legend=(j == 1)):
            fig.add_trace(tr, row=1, col=j)
        if metric == "relabel_acc_all":
            ref = _reference_trace(df, summary)
            if ref is not None:
                fig.add_trace(ref, row=1, col=j)
        fig.update_xaxes(title_text="keep ratio", tickformat=".0%", row=1, col=j)
    fig.update_layout(title=_title_with_caveat(title, df), template="plotly_white", height=450, width=max(500, 430 * len(metrics)),
                      legend_title_text="method")
    return fig


def sweep_png(df, path, title: str | None = None) -> None:
    """The same curves as a PNG (matplotlib, Agg backend), mean with a ±std band over seeds."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    summary = summarize(df)
    metrics = _plotted_metrics(df) if not summary.empty else []
    ncols = max(1, len(metrics))
    fig, axes = plt.subplots(1, ncols, figsize=(4.6 * ncols, 3.8), squeeze=False)
    colors = _method_colors(summary["method"].unique()) if metrics else {}
    for ax, metric in zip(axes[0], metrics):
        for name, method, li, part in _lines(summary, metric):
            mean = part[f"{metric}_mean"].to_numpy(dtype=float)
            if np.isnan(mean).all():
                continue
            std = part[f"{metric}_std"].fillna(0.0).to_numpy(dtype=float)
            x = part["keep_ratio"].to_numpy(dtype=float)
            ax.plot(x, mean, marker="o", ms=3, lw=1.5, color=colors[method], label=name,
                    ls=["-", "--", ":", "-."][li % 4])
            ax.fill_between(x, mean - std, mean + std, color=colors[method], alpha=0.15, lw=0)
        ref = given_label_reference(df) if metric == "relabel_acc_all" else None
        if ref is not None:
            ax.axhline(ref, color="#444444", ls="--", lw=1.2, label=GIVEN_LABELS_NAME)
        ax.set_title(CURVE_METRICS[metric], fontsize=9)
        ax.set_xlabel("keep ratio")
        ax.grid(alpha=0.3)
    caveat = sweep_caveat(df)
    if title or caveat:
        fig.suptitle("\n".join(t for t in (title, caveat) if t), fontsize=9 if caveat else 10)
    fig.tight_layout()
    if metrics:  # one legend for all panels, outside on the right
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    from .pipeline import atomic_write_bytes

    atomic_write_bytes(Path(path), buf.getvalue())


def results_csv(df) -> bytes:
    """results.csv bytes: RESULT_COLUMNS first, None/NaN as empty cells."""
    cols = [c for c in RESULT_COLUMNS if c in df.columns] + [c for c in df.columns if c not in RESULT_COLUMNS]
    return df[cols].to_csv(index=False, na_rep="", float_format="%.6g").encode()


def write_sweep_outputs(df, out_dir, title: str | None = None, manifest: dict | None = None) -> dict:
    """Write results.csv, curves.html (self-contained plotly), curves.png and sweep.json, atomically."""
    from .pipeline import atomic_write_bytes, atomic_write_json

    out = Path(out_dir)
    paths = {"results": out / "results.csv", "html": out / "curves.html", "png": out / "curves.png"}
    atomic_write_bytes(paths["results"], results_csv(df))
    fig = sweep_figure(df, title)
    atomic_write_bytes(paths["html"], fig.to_html(include_plotlyjs=True, full_html=True).encode())
    sweep_png(df, paths["png"], title)
    if manifest is not None:
        paths["manifest"] = out / "sweep.json"
        atomic_write_json(paths["manifest"], manifest)
    return paths
