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
selections); columns (`sweep_report.RESULT_COLUMNS`) include
method, keep_ratio, seed, learner, test_acc, relabel_acc_subset, relabel_acc_all,
noise_in_subset, given_acc_all, relabel_gain_all, select_seconds, budget, objective_F,
learner_seconds. Accuracies are in [0, 1]; a value that cannot be known (no ground truth,
learner "none") is None, an empty cell in results.csv.

No training-free predictor of re-labeling accuracy is shown: the candidate
`predicted_relabel` = mean over all examples of min(1, C(x; S)) had a Spearman correlation of
0.17 with the measured re-labeling accuracy across methods on the CIFAR-10N dev set (-0.25 to
0.34 on USPS before), below the 0.5 a number shown to users must reach (docs/results.md). The
internal rows still carry it (key "predicted_relabel", not in RESULT_COLUMNS) for the report,
which keeps measuring it.

Diagnostics per row: `uncovered_fraction` (share of examples with C(x; S) = 0),
`saturated_fraction` (share with C(x; S) >= 3 eta, where tanh(C/eta) >= 0.995 and
Prune4ReL's objective stops rewarding more support), `graph_isolated_fraction` (share of
examples without a neighbour above tau), `graph_purity` (share of graph edges, self-loops
excluded, that join two examples with the same ground-truth label; None without it).

Summaries, figures and the output files of a sweep are in `sweep_report`; the
`python -m prune_core sweep` command is in `cli`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError, check_cancel
from .sweep_report import RESULT_COLUMNS

PREDICTOR_C0 = 1.0


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


def _split_names(text) -> list[str]:
    if text is None:
        return []
    if isinstance(text, (list, tuple)):
        return [str(t).strip() for t in text if str(t).strip()]
    return [t.strip() for t in str(text).split(",") if t.strip()]



def check_sweep_inputs(methods, ratios, seeds, learner, learner_epochs=None, learner_input="from-scratch"):
    """Validate and normalise the sweep's lists (before any training).

    learner: a name, "none", a comma-separated string or a list of names.
    learner_epochs: None, a positive int, or {learner name: positive int}.
    Returns (method specs, ratios sorted ascending without duplicates, seeds without
    duplicates in the given order, learner names (["none"] for no training)). Raises InputError.
    """
    from .learners import list_learners, resolve_learner_input
    from .registry import check_balance
    from .selection import budget_for, get_method

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
        elif name not in list_learners():  # here 'none' is a choice too: name it
            raise InputError(f"unknown learner {name!r}; choose one of {', '.join([*list_learners(), 'none'])}")
        if name not in learners:
            learners.append(name)
    if "none" in learners and len(learners) > 1:
        raise InputError("learner 'none' cannot be combined with other learners")
    epochs = learner_epochs.values() if isinstance(learner_epochs, dict) else [learner_epochs]
    for e in epochs:
        if e is not None and (isinstance(e, bool) or not isinstance(e, (int, np.integer)) or e < 1):
            raise InputError(f"learner epochs must be a positive integer, got {e!r}")
    resolve_learner_input(learner_input)
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


@dataclass
class SeedContext:
    """What one seed of a sweep shares across methods, ratios and learners.

    noisy: noise.NoisyLabels (y_noisy (N,), y_clean (N,) or None, is_noisy, noise_rate)
    wu: the warm-up (WarmupResult, or any object with probs (N, C), embeddings (N, D), losses
        (N,), forgetting (N,), test_acc, model_name)
    graph, ginfo: the neighbour graph on wu.embeddings at the config's tau, and its GraphInfo
    warm_seconds: wall time of the warm-up (0 when it was reused)
    reused: True when the warm-up and graph came from the caller (e.g. the app's run)
    """

    seed: int
    noisy: object
    wu: object
    graph: object
    ginfo: object
    warm_seconds: float
    reused: bool = False


def prepare_seed(config, ds, seed: int, report=None, cancel=None, precomputed: dict | None = None) -> SeedContext:
    """Noise draw, warm-up and neighbour graph for one seed (or the caller's, `precomputed`:
    {"noisy": NoisyLabels, "wu": warm-up outputs, "graph": CSR, "ginfo": GraphInfo})."""
    from .graph import build_graph
    from .noise import apply_noise
    from .training import warmup

    report = report or (lambda *a, **k: None)
    if precomputed is not None:
        return SeedContext(seed, precomputed["noisy"], precomputed["wu"], precomputed["graph"],
                           precomputed["ginfo"], 0.0, reused=True)
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
    graph, ginfo = build_graph(wu.embeddings, k=k, tau=config.tau, search=config.search, pca_dim=config.pca_dim,
                               seed=seed, return_info=True, cancel=cancel,
                               progress=lambda f, m="", x=None: report("graph", f, m, x))
    return SeedContext(seed, noisy, wu, graph, ginfo, warm_seconds)


def label_accuracy_columns(y_given, y_clean, subset, labels_after=None) -> dict:
    """The given labels' accuracy (all training examples, kept subset) and, with the learner's
    labels, the re-labeling accuracies and gains (learner's labels minus given labels).

    y_given, y_clean, labels_after: (N,) int labels; subset: (s,) kept indices.
    Returns given_acc_all, given_acc_subset, and with labels_after: relabel_acc_all,
    relabel_acc_subset, relabel_gain_all, relabel_gain_subset (fractions in [0, 1], gains in
    [-1, 1]); every value is None without ground truth.
    """
    from .metrics import relabel_accuracy

    out = {"given_acc_all": relabel_accuracy(y_given, y_clean),
           "given_acc_subset": relabel_accuracy(y_given, y_clean, subset)}
    if labels_after is not None:
        out["relabel_acc_all"] = relabel_accuracy(labels_after, y_clean)
        out["relabel_acc_subset"] = relabel_accuracy(labels_after, y_clean, subset)
        for part in ("all", "subset"):
            after, given = out[f"relabel_acc_{part}"], out[f"given_acc_{part}"]
            out[f"relabel_gain_{part}"] = None if after is None or given is None else after - given
    return out


def fit_unit(task: dict) -> dict:
    """One learner fit of a sweep (picklable: runs in a worker process as well).

    task keys: learner, x_train (N, ...), x_test, y_test, y_noisy (N,), y_clean (N,) or None,
    is_noisy (N,) bool or None, subset (s,), num_classes, input, model, device, seed, epochs,
    params (learner hyper-parameters), threads (torch threads for this fit, or None), and
    optionally npz (a path holding the arrays x_train, x_test, y_test instead, read here).
    Returns the learner columns of a results row.
    """
    import torch

    from .learners import fit_learner, learner_caveat
    from .metrics import relabel_accuracy

    if task.get("threads"):
        torch.set_num_threads(int(task["threads"]))
    arrays = task
    if task.get("npz"):
        with np.load(task["npz"], allow_pickle=False) as z:
            arrays = {k: (z[k] if k in z.files else None) for k in ("x_train", "x_test", "y_test")}
    res = fit_learner(task["learner"], arrays["x_train"], task["y_noisy"], task["subset"],
                      num_classes=task["num_classes"], x_test=arrays["x_test"], y_test=arrays["y_test"],
                      input=task["input"], model=task["model"], device=task["device"], seed=task["seed"],
                      epochs=task["epochs"], progress=task.get("progress"), cancel=task.get("cancel"),
                      **(task.get("params") or {}))
    y_clean, noisy_mask, subset = task["y_clean"], task["is_noisy"], task["subset"]
    out = {"learner": task["learner"], "learner_input": res.input, "learner_caveat": learner_caveat(res.input),
           "learner_model": res.params.get("model"), "test_acc": res.test_acc,
           **label_accuracy_columns(task["y_noisy"], y_clean, subset, res.labels_all),
           "relabel_acc_noisy": (None if noisy_mask is None or not noisy_mask.any() else relabel_accuracy(
               res.labels_all, y_clean, np.flatnonzero(noisy_mask))),
           "learner_seconds": float(res.seconds), "learner_epochs": int(res.params["epochs"])}
    return out


@contextlib.contextmanager
def _spawn_without_main():
    """Spawned workers re-run the parent's __main__ module first: inside Streamlit that is the
    page script (which would start a second app, job manager included) and under pytest the
    test runner. For the moment workers start, point __main__ at a stub whose spec name ends
    in ".__main__", which multiprocessing's spawn skips; the workers need only prune_core."""
    import importlib.machinery
    import types

    stub = types.ModuleType("__main__")
    stub.__spec__ = importlib.machinery.ModuleSpec("prune_core.__main__", None)
    old = sys.modules.get("__main__")
    sys.modules["__main__"] = stub
    try:
        yield
    finally:
        if sys.modules.get("__main__") is stub:
            sys.modules["__main__"] = old


def _pool_fit(args):
    key, task = args
    return key, fit_unit(task)


def run_sweep(
    config_base,
    methods,
    ratios,
    seeds,
    learner="sop",
    learner_epochs=None,
    learner_input: str = "from-scratch",
    progress=None,
    cancel=None,
    on_result=None,
    learner_params: dict | None = None,
    workers: int = 1,
    precomputed: dict | None = None,
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
    learner_input: "from-scratch" (default: a fresh network on the kept examples only, the
        paper's protocol) or "frozen-features" (a head on the warm-up embeddings, which saw
        the pruned examples: its rows carry `learner_caveat`). learner_params are passed to
        `learners.fit_learner` (may be {learner: {param: value}} with several learners).
    workers: learner fits run in this many spawned worker processes (torch threads split
        between them); 1 runs them in this process. Results do not depend on the order.
    precomputed: {seed: {"noisy", "wu", "graph", "ginfo"}} reuses a run's noise, warm-up and
        graph for those seeds (the app's Sweep on a run with matching settings).
    progress(stage, fraction, message, metrics): stage is "sweep" for the overall fraction,
        or the inner stage ("load", "warmup", "graph", "select", "learner").
    cancel: anything with is_set(). on_result(row: dict) is called as each row finishes.
    """
    import pandas as pd

    from .data import load_dataset
    from .learners import learner_inputs, resolve_learner_input
    from .noise import parse_noise_spec
    from .selection import get_method
    from .validation import check_k
    from .training import resolve_device

    config = _as_config(config_base)
    specs, ratios, seeds, learners = check_sweep_inputs(methods, ratios, seeds, learner, learner_epochs,
                                                        learner_input)
    learner_input = resolve_learner_input(learner_input)
    parse_noise_spec(config.noise)
    resolve_device(config.device)
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise InputError(f"workers must be a positive integer, got {workers!r}")
    train = learners != ["none"]
    learner_params = dict(learner_params or {})
    per_learner = all(isinstance(v, dict) for v in learner_params.values()) and set(learner_params) <= set(learners)
    params_for = {name: dict(learner_params.get(name, {}) if per_learner else learner_params) for name in learners}
    epochs_for = {name: (learner_epochs.get(name) if isinstance(learner_epochs, dict) else learner_epochs)
                  for name in learners}
    if train:
        from .learners import get_learner

        for name in learners:
            get_learner(name).params(learner_input, **params_for[name])
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
    pool = None
    tmpdir = None
    if train and workers > 1:
        import multiprocessing as mp
        import tempfile

        with _spawn_without_main():
            pool = mp.get_context("spawn").Pool(workers)
        tmpdir = tempfile.TemporaryDirectory(prefix="prune4rel-sweep-")
    try:
        for seed in seeds:
            ctx = prepare_seed(config, ds, seed, report, cancel, (precomputed or {}).get(seed))
            _restore_torch_threads(torch_threads)
            inputs = learner_inputs(ds, ctx.wu, learner_input, device=config.device, cancel=cancel) if train else None
            unit_done(warm_weight, f"seed {seed}: warm-up done (test acc {ctx.wu.test_acc})")
            base_rows = selection_rows(config, ds, ctx, specs, infos, params_by_label, ratios, report, cancel,
                                       graph_cache={})
            _restore_torch_threads(torch_threads)
            if not train:
                for row in base_rows:
                    row = {k: v for k, v in row.items() if k in RESULT_COLUMNS}
                    rows.append(row)
                    if on_result is not None:
                        on_result(dict(row))
                    unit_done(1, f"seed {seed}: {row['method']} keep {row['keep_ratio']:g} done")
                continue
            common = {"y_noisy": ctx.noisy.y_noisy, "y_clean": ctx.noisy.y_clean, "is_noisy": ctx.noisy.is_noisy,
                      "num_classes": ds.num_classes, "input": inputs.input, "model": inputs.model,
                      "device": config.device, "seed": seed}
            if pool is not None:
                npz = Path(tmpdir.name) / f"seed{seed}.npz"
                arrays = {"x_train": inputs.x_train}
                if inputs.x_test is not None:
                    arrays.update(x_test=inputs.x_test, y_test=inputs.y_test)
                np.savez(npz, **arrays)
                common.update(npz=str(npz), threads=max(1, torch_threads // workers))
            else:
                common.update(x_train=inputs.x_train, x_test=inputs.x_test, y_test=inputs.y_test)
            tasks = []
            for i, row in enumerate(base_rows):
                for name in learners:
                    tasks.append(((i, name), dict(common, learner=name, subset=row["_subset"],
                                                  epochs=epochs_for[name], params=params_for[name])))

            def finish(key, learner_cols):
                i, name = key
                base = base_rows[i]
                out = {k: v for k, v in base.items() if k in RESULT_COLUMNS}
                out.update(learner_cols)
                rows.append(out)
                if on_result is not None:
                    on_result(dict(out))
                unit_done(1, f"seed {seed}: {base['method']} keep {base['keep_ratio']:g} {name} done")

            if pool is None:
                for key, task in tasks:
                    check_cancel(cancel)
                    i, name = key
                    label, ratio = base_rows[i]["method"], base_rows[i]["keep_ratio"]
                    task.update(cancel=cancel, progress=lambda f, m="", x=None, label=label, ratio=ratio:
                                report("learner", f, f"{label} @ {ratio:g}: {m}", x))
                    finish(key, fit_unit(task))
            else:
                pending = pool.imap_unordered(_pool_fit, tasks)
                for _ in range(len(tasks)):
                    while True:
                        check_cancel(cancel)
                        try:
                            key, cols = pending.next(timeout=0.5)
                            break
                        except mp.TimeoutError:
                            continue
                    finish(key, cols)
    finally:
        if pool is not None:
            pool.terminate()  # also stops fits still running after a cancel
            pool.join()
        if tmpdir is not None:
            tmpdir.cleanup()
    df = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    if train:  # worker order is arbitrary: rows in (seed, method, ratio, learner) order
        order = {(s, spec.label, r, name): i for i, (s, spec, r, name) in enumerate(
            (s, spec, r, name) for s in seeds for spec in specs for r in ratios for name in learners)}
        df = df.iloc[sorted(range(len(df)), key=lambda j: order[(df["seed"].iat[j], df["method"].iat[j],
                                                                  df["keep_ratio"].iat[j], df["learner"].iat[j])])]
        df = df.reset_index(drop=True)
    return df


def selection_rows(config, ds, ctx: SeedContext, specs, infos, params_by_label, ratios, report=None, cancel=None,
                   graph_cache: dict | None = None) -> list[dict]:
    """The selection part of a sweep's rows for one seed: one row per (method, ratio), learner
    "none", with the kept indices under the private key "_subset" ((budget,) int64)."""
    from .graph import build_graph
    from .metrics import class_counts, noise_rate
    from .prune4rel import neighbourhood_confidence
    from .scores import confidence as confidence_of
    from .selection import select

    report = report or (lambda *a, **k: None)
    seed, noisy, wu, graph, ginfo = ctx.seed, ctx.noisy, ctx.wu, ctx.graph, ctx.ginfo
    graphs = graph_cache if graph_cache is not None else {}
    k = config.k or min(50, ds.n_train - 1)

    def variant_graph(tau, kk):
        key = (str(tau), kk)
        if key not in graphs:
            graphs[key] = build_graph(wu.embeddings, k=kk, tau=tau, search=config.search, pca_dim=config.pca_dim,
                                      seed=seed, cancel=cancel)
        return graphs[key]

    conf = confidence_of(wu.probs, config.confidence)
    purity = graph_purity(graph, noisy.y_clean)
    rows = []
    max_ratio = ratios[-1]
    for spec in specs:
        info = infos[spec.label]
        params = dict(params_by_label[spec.label])
        m_graph = graph
        if "tau" in spec.param_dict or "k" in spec.param_dict:  # a variant on its own graph
            m_graph = variant_graph(spec.param_dict.get("tau", config.tau), spec.param_dict.get("k", k))
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
            idx = np.asarray(sel.indices, dtype=np.int64)
            cover = neighbourhood_confidence(graph, conf, idx)
            eta = float(params.get("eta", config.eta))
            rows.append({
                "method": spec.label, "base_method": spec.method, "keep_ratio": float(ratio), "seed": seed,
                "learner": "none", "learner_input": None, "learner_caveat": None, "learner_model": None,
                "budget": int(sel.budget),
                "test_acc": None, "relabel_acc_subset": None, "relabel_acc_all": None,
                **label_accuracy_columns(noisy.y_noisy, noisy.y_clean, idx),
                "relabel_gain_all": None, "relabel_gain_subset": None, "relabel_acc_noisy": None,
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
                "warmup_test_acc": ctx.wu.test_acc, "warmup_seconds": ctx.warm_seconds,
                "warmup_reused": ctx.reused,
                "graph_tau": float(ginfo.tau), "graph_isolated_fraction": float(ginfo.isolated_fraction),
                "graph_median_degree": float(ginfo.median_degree), "graph_purity": purity,
                "class_counts_kept": " ".join(str(c) for c in class_counts(noisy.y_noisy, idx, ds.num_classes)),
                "data": config.data, "noise": noisy.spec,
                "params": json.dumps({k: v for k, v in params.items()}, sort_keys=True, default=str),
                "_subset": idx,
            })
    return rows

