"""Keep-ratio sweeps: selection methods x keep ratios x seeds, each subset trained by a learner.

    df = run_sweep(RunConfig(data="digits", noise="sym:0.4"), methods=["prune4rel", "uniform"],
                   ratios=[0.2, 0.4, 0.6, 0.8], seeds=[0, 1, 2], learner="sop")

Work shared on purpose:
- per seed, ONE noise draw, ONE warm-up and ONE neighbour graph serve every method and ratio;
- a method whose registry entry is nested is ranked ONCE, at the largest ratio, and every
  smaller ratio is a prefix of that ranking (`Selection.prefix`); other methods (e.g. ccs)
  are selected per ratio. `select_seconds` is the time of the selection that produced the
  row's subset (for nested methods: the one shared ranking; `ranking_reused` says so).

One row per (method, keep_ratio, seed) and learner (several learners share the warm-ups and
selections); columns (`RESULT_COLUMNS`) include
method, keep_ratio, seed, learner, test_acc, relabel_acc_subset, relabel_acc_all,
noise_in_subset, select_seconds, predicted_relabel, budget, objective_F, learner_seconds.
Accuracies are in [0, 1]; a value that cannot be known (no ground truth, learner "none")
is None, an empty cell in results.csv.

`predicted_relabel` is a training-free predictor of re-labeling success, read off the
neighbourhood confidence C(x; S) = sum over kept s of w(x, s) conf(s) on the sweep's graph:

    predicted_relabel = mean over ALL training examples x of min(1, C(x; S) / c0),  c0 = 1,

i.e. an example counts as "supported" once its kept neighbourhood holds the confidence of
one fully confident, identical example; partial support counts pro rata. It uses the same
graph and confidences for every method (not the method's own eta), so rows compare.

Diagnostics per row: `uncovered_fraction` (share of examples with C(x; S) = 0),
`saturated_fraction` (share with C(x; S) >= 3 eta, where tanh(C/eta) >= 0.995 and
Prune4ReL's objective stops rewarding more support), `graph_isolated_fraction` (share of
examples without a neighbour above tau), `graph_purity` (share of graph edges, self-loops
excluded, that join two examples with the same ground-truth label; None without it).
"""

from __future__ import annotations

import dataclasses
import io
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError, check_cancel

PREDICTOR_C0 = 1.0

RESULT_COLUMNS = [
    "method", "base_method", "keep_ratio", "seed", "learner", "learner_input", "budget",
    "test_acc", "relabel_acc_subset", "relabel_acc_all", "relabel_acc_noisy", "predicted_relabel",
    "noise_in_subset", "noise_rate_data", "objective_F", "mean_neighbourhood_confidence",
    "uncovered_fraction", "saturated_fraction", "select_seconds", "ranking_reused", "learner_seconds", "learner_epochs",
    "warmup_test_acc", "warmup_seconds", "graph_tau", "graph_isolated_fraction", "graph_median_degree", "graph_purity",
    "class_counts_kept", "data", "noise", "params",
]
# Metrics averaged over seeds in summaries and plotted against the keep ratio.
CURVE_METRICS = {
    "relabel_acc_all": "re-labeling accuracy (all training examples)",
    "test_acc": "test accuracy (last epoch)",
    "predicted_relabel": "predicted re-labeling (training-free, from C(x;S))",
    "relabel_acc_subset": "re-labeling accuracy (kept subset)",
    "noise_in_subset": "noise rate in the kept subset",
}


@dataclass(frozen=True)
class MethodSpec:
    """A row label and what produces it: a registered method with parameter overrides.

    `label` names the row (the `method` column); `method` is the registry name (the
    `base_method` column); `params` override the config-derived method parameters.
    """

    label: str
    method: str
    params: tuple = ()  # sorted (name, value) pairs, hashable

    @property
    def param_dict(self) -> dict:
        return dict(self.params)


def method_spec(item) -> MethodSpec:
    """A MethodSpec from a registry name, a MethodSpec, a (label, method, params) tuple or a
    dict {label|name, method, params}."""
    if isinstance(item, MethodSpec):
        return item
    if isinstance(item, str):
        name = item.strip()
        return MethodSpec(name, name)
    if isinstance(item, dict):
        method = item.get("method") or item.get("name")
        label = item.get("label") or item.get("name") or method
        return MethodSpec(str(label), str(method), tuple(sorted((item.get("params") or {}).items())))
    if isinstance(item, (tuple, list)) and len(item) in (2, 3):
        label, method = item[0], item[1]
        params = item[2] if len(item) == 3 else {}
        return MethodSpec(str(label), str(method), tuple(sorted((params or {}).items())))
    raise InputError(f"cannot read a method from {item!r}; give a registry name or (label, method, params)")


def _method_params(info, config, overrides: dict) -> dict:
    """Parameters for a registered method: balance and the config fields it takes, then overrides."""
    params = {"balance": config.balance}
    for name in info.defaults:
        if name == "k":
            continue  # the sweep builds the graph itself
        if hasattr(config, name):
            params[name] = getattr(config, name)
    unknown = set(overrides) - set(info.defaults) - {"balance"}
    if unknown:
        raise InputError(f"method {info.name!r} has no parameter(s) {', '.join(sorted(unknown))}")
    params.update(overrides)
    return params


def check_sweep_inputs(methods, ratios, seeds, learner, learner_epochs=None, learner_input="auto"):
    """Validate and normalise the sweep's lists (before any training).

    learner: a name, "none", a comma-separated string or a list of names.
    learner_epochs: None, a positive int, or {learner name: positive int}.
    Returns (method specs, ratios sorted ascending without duplicates, seeds without
    duplicates in the given order, learner names (["none"] for no training)). Raises InputError.
    """
    from .learners import LEARNER_INPUTS, get_learner
    from .selection import budget_for, check_balance, get_method

    if isinstance(methods, str):
        methods = [m for m in methods.split(",") if m.strip()]
    specs = [method_spec(m) for m in (methods or [])]
    if not specs:
        raise InputError("no selection methods given; name at least one (see `python -m prune_core methods`)")
    labels = [s.label for s in specs]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise InputError(f"method(s) listed twice: {', '.join(dupes)}")
    for s in specs:
        info = get_method(s.method)
        unknown = set(s.param_dict) - set(info.defaults) - {"balance"}
        if unknown:
            raise InputError(f"method {s.method!r} has no parameter(s) {', '.join(sorted(unknown))}")
        if "balance" in s.param_dict:
            check_balance(s.param_dict["balance"])
    if ratios is None or len(list(ratios)) == 0:
        raise InputError("no keep ratios given; use e.g. --ratios 0.2,0.4,0.6,0.8")
    clean_ratios = []
    for r in ratios:
        budget_for(r, 2)  # raises "keep ratio must be in (0, 1]"
        clean_ratios.append(float(r))
    clean_ratios = sorted(set(clean_ratios))
    if seeds is None or len(list(seeds)) == 0:
        raise InputError("no seeds given; use e.g. --seeds 0,1,2")
    clean_seeds = []
    for s in seeds:
        if isinstance(s, bool) or int(s) != s or s < 0:
            raise InputError(f"seeds must be non-negative integers, got {s!r}")
        if int(s) not in clean_seeds:
            clean_seeds.append(int(s))
    names = _split_names("none" if learner is None else learner)
    if not names:
        raise InputError("no learner given; use ce, sop, dividemix or none")
    learners = []
    for name in names:
        if name.lower() == "none":
            name = "none"
        else:
            get_learner(name)
        if name not in learners:
            learners.append(name)
    if "none" in learners and len(learners) > 1:
        raise InputError("learner 'none' cannot be combined with other learners")
    epochs = learner_epochs.values() if isinstance(learner_epochs, dict) else [learner_epochs]
    for e in epochs:
        if e is not None and (isinstance(e, bool) or not isinstance(e, (int, np.integer)) or e < 1):
            raise InputError(f"learner epochs must be a positive integer, got {e!r}")
    if learner_input not in LEARNER_INPUTS:
        raise InputError(f"unknown learner input {learner_input!r}; choose one of {', '.join(LEARNER_INPUTS)}")
    return specs, clean_ratios, clean_seeds, learners


def _as_config(config_base):
    from .pipeline import RunConfig

    if isinstance(config_base, RunConfig):
        return config_base
    if isinstance(config_base, dict):
        names = {f.name for f in dataclasses.fields(RunConfig)}
        unknown = set(config_base) - names
        if unknown:
            raise InputError(f"unknown config field(s): {', '.join(sorted(unknown))}")
        return RunConfig(**config_base)
    raise InputError(f"config must be a RunConfig or a dict, got {type(config_base).__name__}")


def predicted_relabel(cover: np.ndarray, c0: float = PREDICTOR_C0) -> float:
    """Training-free predictor: mean over all examples of min(1, C(x; S) / c0)."""
    return float(np.minimum(1.0, np.asarray(cover, dtype=np.float64) / c0).mean())


def graph_purity(graph, y_clean) -> float | None:
    """Share of the graph's edges (self-loops excluded) joining two examples of the same
    ground-truth class; None without ground truth or without edges."""
    if y_clean is None:
        return None
    coo = graph.tocoo()
    off = coo.row != coo.col
    if not off.any():
        return None
    y = np.asarray(y_clean)
    return float((y[coo.row[off]] == y[coo.col[off]]).mean())


def _restore_torch_threads(n: int) -> None:
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def run_sweep(
    config_base,
    methods,
    ratios,
    seeds,
    learner="sop",
    learner_epochs=None,
    learner_input: str = "auto",
    progress=None,
    cancel=None,
    on_result=None,
    learner_params: dict | None = None,
):
    """Run a keep-ratio sweep and return a pandas DataFrame, one row per (method, ratio, seed).

    config_base: RunConfig or dict of its fields (data, noise, warm-up, graph, prune4rel
        parameters; its method / keep_ratio / seed are ignored).
    methods: registry names, or (label, method, params) / MethodSpec items for variants
        of one method (e.g. ("p4r_tau0.95", "prune4rel", {"tau": 0.95}) with a graph tau:
        a variant whose tau differs from the config gets its own graph per seed).
    ratios: keep ratios in (0, 1] (sorted, duplicates dropped). seeds: non-negative ints.
    learner: a registered learner name, or "none" (selection only; accuracy columns None);
        a list (or comma-separated string) of names trains every subset with each learner,
        one row per learner, sharing warm-ups and selections.
    learner_epochs: None (the learner's default), an int, or {learner: int}.
    learner_input / learner_params: passed to `learners.fit_learner` (learner_params may be
        {learner: {param: value}} when several learners are given).
    progress(stage, fraction, message, metrics): stage is "sweep" for the overall fraction,
        or the inner stage ("load", "warmup", "graph", "select", "learner").
    cancel: anything with is_set(). on_result(row: dict) is called as each row finishes.
    """
    import pandas as pd

    from .data import load_dataset
    from .graph import build_graph
    from .learners import fit_learner, learner_inputs
    from .metrics import class_counts, noise_rate, relabel_accuracy
    from .noise import apply_noise, parse_noise_spec
    from .prune4rel import neighbourhood_confidence
    from .scores import confidence as confidence_of
    from .selection import get_method, select
    from .validation import check_k
    from .warmup import resolve_device, warmup

    config = _as_config(config_base)
    specs, ratios, seeds, learners = check_sweep_inputs(methods, ratios, seeds, learner, learner_epochs,
                                                        learner_input)
    parse_noise_spec(config.noise)
    resolve_device(config.device)
    train = learners != ["none"]
    learner_params = dict(learner_params or {})
    per_learner = all(isinstance(v, dict) for v in learner_params.values()) and set(learner_params) <= set(learners)
    params_for = {name: dict(learner_params.get(name, {}) if per_learner else learner_params) for name in learners}
    epochs_for = {name: (learner_epochs.get(name) if isinstance(learner_epochs, dict) else learner_epochs)
                  for name in learners}
    if train:
        from .learners import get_learner, resolve_learner_input

        for name in learners:
            get_learner(name).params(resolve_learner_input(learner_input, config.device), **params_for[name])
    infos = {s.label: get_method(s.method) for s in specs}
    params_by_label = {s.label: _method_params(infos[s.label], config, s.param_dict) for s in specs}

    def report(stage, fraction, message="", metrics=None):
        if progress is not None:
            progress(stage, fraction, message, metrics or {})

    # Units of work for the overall fraction: a warm-up counts as much as a few fits.
    n_fits = len(specs) * len(ratios) * len(learners)
    warm_weight = max(1, n_fits // 4)
    total_units = len(seeds) * (warm_weight + n_fits)
    done_units = 0

    def unit_done(k=1, message=""):
        nonlocal done_units
        done_units += k
        report("sweep", done_units / total_units, message)

    # build_graph limits OpenMP/BLAS threads with threadpoolctl, and leaving that context can
    # reset torch's intra-op thread count to the OpenMP default: keep the caller's setting
    # (on a busy machine 2 spinning threads made the small learners 10x slower).
    import torch

    torch_threads = torch.get_num_threads()
    report("load", 0.0, f"loading {config.data}")
    ds = load_dataset(config.data, download=config.download)
    check_k(config.k, ds.n_train)  # before any warm-up
    rows: list[dict] = []
    max_ratio = ratios[-1]
    for seed in seeds:
        check_cancel(cancel)
        noisy = apply_noise(ds, config.noise, seed=seed)
        t = time.perf_counter()
        wu = warmup(ds, noisy.y_noisy, epochs=config.warmup_epochs, model=config.model, lr=config.lr,
                    batch_size=config.batch_size, device=config.device, seed=seed,
                    progress=lambda f, m="", x=None: report("warmup", f, f"seed {seed}: {m}", x),
                    cancel=cancel, embed_pass=config.embed_pass)
        warm_seconds = time.perf_counter() - t
        report("graph", 0.0, f"seed {seed}: building the neighbour graph")
        k = config.k or min(50, ds.n_train - 1)
        graphs = {}

        def graph_for(tau, k=k):
            key = (str(tau), k)
            if key not in graphs:
                graphs[key] = build_graph(wu.embeddings, k=k, tau=tau, search=config.search,
                                          pca_dim=config.pca_dim, seed=seed, return_info=True,
                                          progress=lambda f, m="", x=None: report("graph", f, m, x), cancel=cancel)
                _restore_torch_threads(torch_threads)
            return graphs[key]

        graph, ginfo = graph_for(config.tau)
        conf = confidence_of(wu.probs, config.confidence)
        purity = graph_purity(graph, noisy.y_clean)
        inputs = None
        if train:
            inputs = learner_inputs(ds, wu, learner_input, device=config.device, cancel=cancel)
        unit_done(warm_weight, f"seed {seed}: warm-up done (test acc {wu.test_acc})")

        for spec in specs:
            info = infos[spec.label]
            params = dict(params_by_label[spec.label])
            m_graph = graph
            if "tau" in spec.param_dict or "k" in spec.param_dict:  # a variant on its own graph
                m_graph = graph_for(spec.param_dict.get("tau", config.tau), spec.param_dict.get("k", k))[0]
            conf_m = confidence_of(wu.probs, params.get("confidence", config.confidence))

            def do_select(ratio):
                check_cancel(cancel)
                return select(spec.method, keep_ratio=ratio, probs=wu.probs, embeddings=wu.embeddings,
                              labels=noisy.y_noisy, graph=m_graph, losses=wu.losses, forgetting=wu.forgetting,
                              num_classes=ds.num_classes, seed=seed,
                              progress=lambda f, m="", x=None: report("select", f, f"{spec.label}: {m}", x),
                              cancel=cancel, **params)

            ranking = do_select(max_ratio) if info.nested else None
            for ratio in ratios:
                sel = (ranking if ratio == max_ratio else ranking.prefix(ratio)) if info.nested else do_select(ratio)
                idx = sel.indices
                cover = neighbourhood_confidence(graph, conf, idx)
                eta = float(params.get("eta", config.eta))
                row = {
                    "method": spec.label, "base_method": spec.method, "keep_ratio": float(ratio), "seed": seed,
                    "learner": "none", "learner_input": None, "budget": int(sel.budget),
                    "test_acc": None, "relabel_acc_subset": None, "relabel_acc_all": None,
                    "relabel_acc_noisy": None,
                    "predicted_relabel": predicted_relabel(cover),
                    "noise_in_subset": noise_rate(noisy.y_noisy, noisy.y_clean, idx),
                    "noise_rate_data": noisy.noise_rate,
                    "objective_F": float(np.tanh(neighbourhood_confidence(m_graph, conf_m, idx) / eta).sum()),
                    "mean_neighbourhood_confidence": float(cover.mean()),
                    "uncovered_fraction": float((cover == 0).mean()),
                    "saturated_fraction": float((cover >= 3.0 * eta).mean()),
                    "select_seconds": float(sel.seconds),
                    "ranking_reused": bool(info.nested and ratio != max_ratio),
                    "learner_seconds": None, "learner_epochs": None,
                    "warmup_test_acc": wu.test_acc, "warmup_seconds": warm_seconds,
                    "graph_tau": float(ginfo.tau), "graph_isolated_fraction": float(ginfo.isolated_fraction),
                    "graph_median_degree": float(ginfo.median_degree), "graph_purity": purity,
                    "class_counts_kept": " ".join(str(c) for c in class_counts(noisy.y_noisy, idx, ds.num_classes)),
                    "data": config.data, "noise": noisy.spec,
                    "params": json.dumps({k: v for k, v in params.items()}, sort_keys=True, default=str),
                }
                for name in learners:
                    out = dict(row, learner=name)
                    if name != "none":
                        res = fit_learner(
                            name, inputs.x_train, noisy.y_noisy, idx, num_classes=ds.num_classes,
                            x_test=inputs.x_test, y_test=inputs.y_test, input=inputs.input, model=inputs.model,
                            device=config.device, seed=seed, epochs=epochs_for[name], cancel=cancel,
                            progress=lambda f, m="", x=None: report("learner", f, f"{spec.label} @ {ratio:g}: {m}", x),
                            **params_for[name])
                        noisy_mask = noisy.is_noisy
                        out.update(
                            learner_input=res.input, test_acc=res.test_acc,
                            relabel_acc_subset=relabel_accuracy(res.labels_all, noisy.y_clean, idx),
                            relabel_acc_all=relabel_accuracy(res.labels_all, noisy.y_clean),
                            relabel_acc_noisy=(None if noisy_mask is None or not noisy_mask.any() else relabel_accuracy(
                                res.labels_all, noisy.y_clean, np.flatnonzero(noisy_mask))),
                            learner_seconds=float(res.seconds), learner_epochs=int(res.params["epochs"]),
                        )
                    rows.append(out)
                    if on_result is not None:
                        on_result(dict(out))
                    unit_done(1, f"seed {seed}: {spec.label} keep {ratio:g} {name} done")
    df = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    return df


# --------------------------------------------------------------------------- summaries and figures


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
    return main + [m for m in ("predicted_relabel",) if has(m)]


def _method_colors(methods) -> dict:
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
               "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd"]
    return {m: palette[i % len(palette)] for i, m in enumerate(methods)}


_DASHES = ["solid", "dash", "dot", "dashdot"]


# Metrics of the selection alone: the same for every learner, plotted once per method.
LEARNER_FREE = {"predicted_relabel", "noise_in_subset"}


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
    (relabel_acc_all, test_acc, predicted_relabel; noise_in_subset for learner "none")."""
    import plotly.graph_objects as go

    summary = summarize(df)
    figs = {}
    if summary.empty:
        return figs
    colors = _method_colors(summary["method"].unique())
    for metric in _plotted_metrics(df):
        fig = go.Figure(_curve_traces(summary, metric, colors))
        fig.update_layout(title=CURVE_METRICS[metric], xaxis_title="keep ratio (fraction of the training set kept)",
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
        fig.update_xaxes(title_text="keep ratio", tickformat=".0%", row=1, col=j)
    fig.update_layout(title=title, template="plotly_white", height=450, width=max(500, 430 * len(metrics)),
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
        ax.set_title(CURVE_METRICS[metric], fontsize=9)
        ax.set_xlabel("keep ratio")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
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


# --------------------------------------------------------------------------- CLI


def _split_names(text) -> list[str]:
    if text is None:
        return []
    if isinstance(text, (list, tuple)):
        return [str(t).strip() for t in text if str(t).strip()]
    return [t.strip() for t in str(text).split(",") if t.strip()]


def run_sweep_cli(args, config_factory, progress_printer) -> int:
    """`python -m prune_core sweep ...`: validate everything, run, write DIR/results.csv,
    DIR/curves.html, DIR/curves.png and DIR/sweep.json, print a mean table to stdout."""
    import pandas as pd

    from .pipeline import _library_versions, atomic_write_bytes

    methods = _split_names(args.methods)
    specs, ratios, seeds, learners = check_sweep_inputs(methods, args.ratios, args.seeds, args.learner,
                                                        args.learner_epochs, args.learner_input)
    config = config_factory(args)
    # Everything else the run needs, checked before any training.
    from .noise import parse_noise_spec
    from .warmup import resolve_device

    parse_noise_spec(config.noise)
    resolve_device(config.device)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create output folder {out}: {e.strerror}") from None

    rows = []

    def on_result(row):  # keep results.csv current, so an interrupted sweep leaves its rows
        rows.append(row)
        atomic_write_bytes(out / "results.csv", results_csv(pd.DataFrame(rows, columns=RESULT_COLUMNS)))

    def progress(stage, fraction, message, metrics):  # per-fit learner/select lines would flood stderr
        if stage in ("load", "warmup", "graph", "sweep"):
            progress_printer(stage, fraction, message, metrics)

    started = time.perf_counter()
    df = run_sweep(config, [s.label for s in specs], ratios, seeds, learners, learner_epochs=args.learner_epochs,
                   learner_input=args.learner_input, progress=progress, on_result=on_result)
    seconds = time.perf_counter() - started
    manifest = {
        "config": config.to_dict(), "methods": [s.label for s in specs], "ratios": ratios, "seeds": seeds,
        "learner": learners, "learner_epochs": args.learner_epochs, "learner_input": args.learner_input,
        "rows": len(df), "seconds": round(seconds, 2), "versions": _library_versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    title = f"{config.data}, noise {config.noise}, learner {', '.join(learners)}"
    paths = write_sweep_outputs(df, out, title, manifest)
    summary = summarize(df, [m for m in ("test_acc", "relabel_acc_all", "predicted_relabel", "noise_in_subset")])
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.max_rows", 500):
        print(summary.round(4).to_string(index=False))
    print(json.dumps({"rows": len(df), "seconds": round(seconds, 2), "files": [str(p) for p in paths.values()]}))
    sys.stdout.flush()
    return 0
