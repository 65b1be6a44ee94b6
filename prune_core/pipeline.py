"""One run, end to end: load, noise, warm-up, graph, select, metrics, output files.

Used by the CLI (`python -m prune_core run`) and by the app's background jobs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from .errors import InputError, check_cancel
from .graph import build_graph
from .metrics import selection_metrics
from .prune4rel import DEFAULT_MODE
from .runstore import atomic_write_bytes, atomic_write_json  # noqa: F401  (re-exported)
from .scores import confidence as confidence_of
from .selection import Selection, get_method, select
from .validation import check_k, label_values_of

STAGES = ("load", "noise", "warmup", "graph", "select", "metrics")


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run's result (serialised into the manifest)."""

    data: str = "digits"
    noise: str = "sym:0.4"
    method: str = "prune4rel"
    keep_ratio: float = 0.5
    seed: int = 0
    device: str = "auto"
    download: bool = False
    # warm-up
    model: str = "auto"
    warmup_epochs: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    embed_pass: str = "eval"
    # graph
    k: int | None = None  # None: 50, or N-1 on tiny data; an explicit k > N-1 is an error
    tau: float | str = "auto"
    search: str = "auto"
    pca_dim: int | None = None
    # prune4rel
    mode: str = DEFAULT_MODE
    eta: float = 1.0
    balance: str = "none"
    confidence: str = "maxprob"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def method_params(self) -> dict:
        """The config fields the chosen method takes (checked against the registry)."""
        info = get_method(self.method)
        params = {"balance": self.balance}
        for name in info.defaults:
            if name in ("k",):
                continue  # the pipeline builds the graph itself
            if hasattr(self, name):
                params[name] = getattr(self, name)
        return params


def check_run_options(config, n: int | None = None) -> None:
    """Check a run's options before any training (names, syntax, ranges; k against N when given).

    config: a RunConfig (or anything with its fields). Checks the method name and
    its parameters (mode, confidence, balance, eta), the kNN search backend, tau syntax,
    k and pca_dim. Raises InputError with the first problem.
    """
    from .graph import parse_tau
    from .knn import SEARCHES
    from .prune4rel import MODES
    from .registry import check_balance
    from .scores import CONFIDENCE_KINDS

    info = get_method(config.method)
    if config.search not in SEARCHES:
        raise InputError(f"unknown graph search {config.search!r}; choose one of {', '.join(SEARCHES)}")
    parse_tau(config.tau)
    check_balance(config.balance)
    if "mode" in info.defaults and config.mode not in MODES:
        raise InputError(f"unknown prune4rel mode {config.mode!r}; choose one of {', '.join(MODES)}")
    if config.confidence not in CONFIDENCE_KINDS:
        raise InputError(f"unknown confidence {config.confidence!r}; choose one of {', '.join(CONFIDENCE_KINDS)}")
    try:
        eta = float(config.eta)
    except (TypeError, ValueError):
        raise InputError(f"eta must be a positive number, got {config.eta!r}") from None
    if not (eta > 0.0 and math.isfinite(eta)):
        raise InputError(f"eta must be a positive number, got {config.eta}")
    if config.pca_dim is not None and (int(config.pca_dim) != config.pca_dim or config.pca_dim < 2):
        raise InputError(f"pca_dim must be an integer of at least 2, got {config.pca_dim}")
    if config.k is not None:
        check_k(config.k, n if n is not None else math.inf)


@dataclass
class RunResult:
    """All intermediate results of a run (arrays over the N training examples)."""

    config: RunConfig
    dataset: object
    noisy: object
    warmup: object
    graph: object
    graph_info: object
    confidence: np.ndarray  # (N,)
    selection: object
    metrics: dict
    timings: dict = field(default_factory=dict)
    inputs: dict | None = None  # select_pipeline: the model-output files used instead of a warm-up


def _hash_array(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]


def run_pipeline(config: RunConfig, progress=None, cancel=None) -> RunResult:
    """Run every stage for `config`. progress(stage, fraction, message) is called along the way."""
    from .data import load_dataset
    from .noise import apply_noise
    from .training import warmup

    def report(stage):
        def inner(fraction, message="", metrics=None):
            if progress:
                progress(stage, fraction, message, metrics or {})
        return inner

    check_run_options(config)  # names, syntax and ranges, before any loading or training
    timings = {}
    t = time.perf_counter()
    report("load")(0.0, f"loading {config.data}")
    ds = load_dataset(config.data, download=config.download)
    check_k(config.k, ds.n_train)  # k against N, before the warm-up
    timings["load"] = time.perf_counter() - t

    t = time.perf_counter()
    noisy = apply_noise(ds, config.noise, seed=config.seed)
    timings["noise"] = time.perf_counter() - t
    check_cancel(cancel)

    t = time.perf_counter()
    wu = warmup(ds, noisy.y_noisy, epochs=config.warmup_epochs, model=config.model, lr=config.lr,
                batch_size=config.batch_size, device=config.device, seed=config.seed,
                progress=report("warmup"), cancel=cancel, embed_pass=config.embed_pass)
    timings["warmup"] = time.perf_counter() - t

    return _graph_select_metrics(config, ds, noisy, wu, timings, report, cancel)


def select_pipeline(config: RunConfig, outputs, progress=None, cancel=None) -> RunResult:
    """Graph, selection and metrics from model outputs you already have, without training.

    config: the selection options (method, keep_ratio, seed, k, tau, search, pca_dim, mode,
    eta, balance, confidence); its data, noise and warm-up fields are not used.
    outputs: an `outputs.ModelOutputs` (probs (N, C), embeddings (N, D), labels (N,),
    optional labels_clean (N,)). With the probs, embeddings and noisy labels of a warm-up
    and the same options and seed, the selection equals `run_pipeline`'s.
    Raises InputError for bad options and for methods that need a warm-up (forgetting).
    """
    from .noise import apply_noise
    from .outputs import check_method_for_outputs, outputs_dataset

    def report(stage):
        def inner(fraction, message="", metrics=None):
            if progress:
                progress(stage, fraction, message, metrics or {})
        return inner

    check_run_options(config)
    check_method_for_outputs(config.method)
    check_k(config.k, outputs.n)
    t = time.perf_counter()
    ds = outputs_dataset(outputs)
    noisy = apply_noise(ds, "none")  # the given labels, with the ground truth when known
    wu = SimpleNamespace(probs=outputs.probs, embeddings=outputs.embeddings, losses=None, forgetting=None,
                         test_acc=None, device=None, model_name="model outputs", epochs=0,
                         config={"source": "model outputs", **(outputs.sources or {})})
    timings = {"load": time.perf_counter() - t}
    result = _graph_select_metrics(config, ds, noisy, wu, timings, report, cancel)
    result.inputs = {k: v for k, v in (outputs.sources or {}).items() if v is not None}
    return result


def _graph_select_metrics(config: RunConfig, ds, noisy, wu, timings: dict, report, cancel=None) -> RunResult:
    """The stages after the warm-up (graph, select, metrics), shared by `run_pipeline` and
    `select_pipeline`: the same outputs, options and seed give the same selection."""
    t = time.perf_counter()
    report("graph")(0.0, "building the neighbour graph")
    graph, ginfo = build_graph(wu.embeddings, k=config.k or min(50, ds.n_train - 1), tau=config.tau,
                               search=config.search, pca_dim=config.pca_dim, seed=config.seed,
                               return_info=True, progress=report("graph"), cancel=cancel)
    timings["graph"] = time.perf_counter() - t

    conf = confidence_of(wu.probs, config.confidence)
    t = time.perf_counter()
    sel = select(config.method, keep_ratio=config.keep_ratio, probs=wu.probs, embeddings=wu.embeddings,
                 labels=noisy.y_noisy, graph=graph, losses=wu.losses, forgetting=wu.forgetting,
                 num_classes=ds.num_classes, seed=config.seed, progress=report("select"),
                 cancel=cancel, **config.method_params())
    timings["select"] = time.perf_counter() - t

    t = time.perf_counter()
    metrics = selection_metrics(sel, noisy.y_noisy, noisy.y_clean, ds.num_classes, graph, conf, config.eta)
    metrics.update(
        noise_spec=noisy.spec,
        warmup_test_acc=wu.test_acc,
        warmup_device=wu.device,
        graph=ginfo.to_dict(),
    )
    timings["metrics"] = time.perf_counter() - t
    metrics["seconds"] = {k: round(v, 4) for k, v in timings.items()}
    return RunResult(config, ds, noisy, wu, graph, ginfo, conf, sel, metrics, timings)


def _library_versions() -> dict:
    import faiss
    import numba
    import scipy
    import sklearn

    from . import __version__

    return {
        "prune_core": __version__, "python": platform.python_version(), "numpy": np.__version__,
        "scipy": scipy.__version__, "scikit-learn": sklearn.__version__, "torch": _torch_version(),
        "faiss": faiss.__version__, "numba": numba.__version__,
    }


def _torch_version() -> str | None:
    """torch's version without importing it (a selection from given outputs never needs
    torch, and importing it costs seconds); None when it is not installed."""
    import importlib.util
    import re
    import sys
    from importlib import metadata

    if "torch" in sys.modules:
        return sys.modules["torch"].__version__
    spec = importlib.util.find_spec("torch")
    if spec is None:
        return None
    try:  # torch/version.py holds the full version, build label included (2.14.1+cu130)
        text = Path(next(iter(spec.submodule_search_locations)), "version.py").read_text()
        return re.search(r"^__version__\s*=\s*['\"]([^'\"]+)['\"]", text, re.M).group(1)
    except Exception:  # an unusual install: the distribution's version (without the label)
        try:
            return metadata.version("torch")
        except metadata.PackageNotFoundError:
            return None


def selection_table(result: RunResult):
    """DataFrame with one row per training example: index, rank (-1 dropped), selected, labels, confidence.

    Labels are written in the dataset's original values (`Dataset.label_values`, e.g. 10, 20,
    30) when its labels were mapped to contiguous ids on loading.
    """
    import pandas as pd

    ranks = result.selection.ranks
    values = getattr(getattr(result, "dataset", None), "label_values", None)
    clean = result.noisy.y_clean
    clean = None if clean is None else label_values_of(clean, values)
    return pd.DataFrame({
        "index": np.arange(result.selection.n),
        "rank": ranks,
        "selected": (ranks >= 0).astype(np.int8),
        "given_label": label_values_of(result.noisy.y_noisy, values),
        "clean_label": pd.array(clean, dtype="Int64") if clean is not None else pd.array([pd.NA] * ranks.size, dtype="Int64"),
        "confidence": np.round(result.confidence, 6),
    })


def selection_csv(result: RunResult) -> bytes:
    """selection.csv bytes (see `selection_table`); clean_label is empty without ground truth."""
    return selection_table(result).to_csv(index=False, lineterminator="\n").encode()


def _noise_entry(result: RunResult) -> dict:
    """The noise as a reader should see it: the spec, the share of ALL training labels that
    are wrong, and for asym noise the rate within the flipped (source) classes."""
    from .noise import describe_noise, noise_rates

    n = result.dataset.num_classes
    rates = noise_rates(result.noisy, n)
    return {"spec": result.noisy.spec, "noise_rate": rates["share_all"],
            "source_classes": rates["source_classes"], "noise_rate_in_source_classes": rates["share_in_source"],
            "description": describe_noise(result.noisy, n, result.dataset.class_names)}


def manifest(result: RunResult) -> dict:
    from .data import dataset_fingerprint

    return {
        "config": result.config.to_dict(),
        "seed": result.config.seed,
        "versions": _library_versions(),
        "dataset": {**result.dataset.summary(), "fingerprint": dataset_fingerprint(result.dataset)},
        "noise": _noise_entry(result),
        "warmup": {"device": result.warmup.device, "model": result.warmup.model_name,
                   "epochs": result.warmup.epochs, "test_acc": result.warmup.test_acc,
                   "config": result.warmup.config},
        "embedding_hash": _hash_array(result.warmup.embeddings),
        "probs_hash": _hash_array(result.warmup.probs),
        "selection_hash": _hash_array(result.selection.indices),
        "graph": result.graph_info.to_dict(),
        "selection_params": result.selection.params,
        "timings_seconds": {k: round(v, 4) for k, v in result.timings.items()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **({"inputs": result.inputs} if result.inputs is not None else {}),
    }


def write_run_outputs(result: RunResult, out_dir) -> dict[str, Path]:
    """Write selection.csv, manifest.json and metrics.json (each atomically) into out_dir."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create output folder {out}: {e.strerror}") from None
    paths = {"selection": out / "selection.csv", "manifest": out / "manifest.json", "metrics": out / "metrics.json"}
    atomic_write_bytes(paths["selection"], selection_csv(result))
    atomic_write_json(paths["manifest"], manifest(result))
    noise = _noise_entry(result)
    atomic_write_json(paths["metrics"], {**result.metrics, "noise_description": noise["description"],
                                         "noise_rate_in_source_classes": noise["noise_rate_in_source_classes"]})
    return paths


def _streamed_hash(path: str) -> str:
    """sha256 of a .npy file's array as float32 rows (what the local engine hashes), read in chunks."""
    from .distributed import CHUNK_ROWS

    z = np.load(path, mmap_mode="r", allow_pickle=False)
    h = hashlib.sha256()
    for start in range(0, z.shape[0], CHUNK_ROWS):
        h.update(np.ascontiguousarray(z[start:start + CHUNK_ROWS], dtype=np.float32).tobytes())
    return h.hexdigest()[:16]


# F and tau of a Ray run are those of its own graph: the partitions' kNN lists, approximate
# across borders, give a slightly different graph (and tau 'auto') than one machine's.
GRAPH_NOTE = ("objective_F, tau and the degrees are those of the Ray engine's partitioned graph; compare "
              "engines by evaluating both selections on one graph")


def write_distributed_outputs(result, out_dir, keep_ratio: float, num_classes: int,
                              labels_clean: np.ndarray | None = None, sources: dict | None = None,
                              probs_hash: str | None = None) -> dict:
    """selection.csv, manifest.json and metrics.json of a Ray run (a
    `distributed.DistributedResult`) in the formats of `write_run_outputs` (DESIGN section 4);
    the manifest's `engine` entry holds `result.info`. Returns {name: path}. Raises InputError when out_dir cannot
    be created."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create output folder {out}: {e.strerror}") from None
    n = result.labels.shape[0]
    info = result.info
    select_seconds = info["seconds"]["round1"] + info["seconds"]["round2"]  # as the local engine: the greedy only
    sel = Selection("prune4rel", result.picks, n, keep_ratio, None, result.scores, result.objective_F,
                    select_seconds, {k: info[k] for k in ("mode", "tau", "eta", "confidence", "k", "balance")})
    view = SimpleNamespace(selection=sel, dataset=None, confidence=result.confidence,
                           noisy=SimpleNamespace(y_noisy=result.labels, y_clean=labels_clean))
    metrics = selection_metrics(sel, result.labels, labels_clean, num_classes, cover=result.cover, eta=info["eta"])
    metrics.update(engine="ray", objective_F_round1=info["objective_F_round1"],
                   objective_F_round2=info["objective_F_round2"], seconds=info["seconds"],
                   graph={k: info[k] for k in ("k", "tau", "tau_requested", "search", "edges", "mean_degree",
                                               "median_degree", "isolated_fraction", "cross_partition_entries")},
                   objective_F_note=GRAPH_NOTE)
    versions = _library_versions()
    import ray

    versions["ray"] = ray.__version__
    manifest = {
        "config": {"data": "model outputs", "method": "prune4rel", "keep_ratio": keep_ratio, "seed": info["seed"],
                   **{k: info[k] for k in ("k", "tau_requested", "search", "mode", "eta", "balance", "confidence")}},
        "seed": info["seed"], "versions": versions, "engine": info,
        "embedding_hash": _streamed_hash(sources["embeddings"]) if sources and sources.get("embeddings") else None,
        "probs_hash": probs_hash,
        "selection_hash": _hash_array(sel.indices),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **({"inputs": {k: v for k, v in sources.items() if v is not None}} if sources else {}),
    }
    paths = {"selection": out / "selection.csv", "manifest": out / "manifest.json", "metrics": out / "metrics.json"}
    atomic_write_bytes(paths["selection"], selection_csv(view))
    atomic_write_json(paths["manifest"], manifest)
    atomic_write_json(paths["metrics"], metrics)
    return paths
