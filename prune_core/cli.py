"""Command line: `python -m prune_core run|select|sweep|methods`.

User errors end with exit code 2 and one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
import time
from pathlib import Path

from .errors import Cancelled, InputError
from .prune4rel import DEFAULT_MODE

EXIT_USAGE = 2


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line and exit code 2.

    Abbreviated flags are refused (`--seed` is not read as `--seeds`).
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")

    def parse_known_args(self, args=None, namespace=None):
        # An unknown flag is named first (argparse would report the required flags it hides:
        # `--keep 0.5` read "the following arguments are required: --keep-ratio"). A suggestion
        # only when it is close (difflib's default 0.6 offered --quiet for --budget).
        if args is not None and not any(isinstance(a, argparse._SubParsersAction) for a in self._actions):
            known = [o for o in self._option_string_actions if o.startswith("--")]
            for token in args:
                if token == "--":
                    break
                name = token.split("=", 1)[0]
                if token.startswith("--") and name not in self._option_string_actions:
                    close = [o for o in known if o.startswith(name)] or difflib.get_close_matches(name, known, n=1, cutoff=0.75)
                    self.error(f"unrecognized argument {name}" + (f" (did you mean {close[0]}?)" if close else ""))
        return super().parse_known_args(args, namespace)


def _tau(text: str):
    """argparse type: 'auto' or a number in [0, 1) (checked by the graph's own tau parser)."""
    from .graph import parse_tau

    try:
        value, _ = parse_tau(text)
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return "auto" if value is None else value


def _number_list(cast):
    """argparse type: a non-empty comma-separated list of `cast` values."""

    def parse(text: str) -> list:
        from .validation import parse_number_list

        try:
            return parse_number_list(text, cast, f"comma-separated {cast.__name__}s")
        except InputError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return parse


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="digits",
                   help="digits | npz:PATH | torchvision:NAME:ROOT | imagefolder:PATH | "
                        "csv:PATH[#image=COL,label=COL,split=COL,clean=COL] (default digits)")
    p.add_argument("--noise", default="sym:0.4",
                   help="none | sym:RATE | asym:RATE[:MAP] | labels:PATH[#KEY] (default sym:0.4)")
    p.add_argument("--download", action="store_true", help="let torchvision sources download when missing")
    p.add_argument("--device", default="auto", help="auto (cuda, mps, cpu) | cpu | cuda | mps")
    p.add_argument("--model", default="auto", help="auto | mlp | small_cnn | resnet20 | resnet18 | preact_resnet18 | torchvision:ARCH[:WEIGHTS] "
                        "(a pretrained torchvision backbone, frozen, with a trained head; WEIGHTS: DEFAULT, a "
                        "weights name, none, or a local state_dict file)")
    p.add_argument("--warmup-epochs", type=int, default=None, help="warm-up epochs (default per model)")
    p.add_argument("--lr", type=float, default=None, help="warm-up learning rate (default per model)")
    p.add_argument("--batch-size", type=int, default=None, help="warm-up batch size (default per model)")
    p.add_argument("--embed-pass", default="eval", choices=["eval", "strong"],
                   help="embeddings from a deterministic eval pass (default) or the official strong-augmentation pass")
    _add_selection_options(p)


def _add_selection_options(p: argparse.ArgumentParser) -> None:
    """The graph and selection options shared by `run`, `select` and `sweep`."""
    p.add_argument("--k", type=int, default=None, help="neighbours per example in the kNN graph (default 50)")
    p.add_argument("--tau", type=_tau, default="auto",
                   help="similarity threshold on 0.5+0.5cos (the paper: 0.975 for 10 classes), or 'auto': "
                        "the median example keeps 10 neighbours (default auto)")
    p.add_argument("--search", default="auto", help="kNN search: auto | exact | ivf | hnsw")
    p.add_argument("--pca-dim", type=int, default=None, help="optional PCA reduction before the kNN search")
    p.add_argument("--mode", default=DEFAULT_MODE,
                   help=f"prune4rel mode: official (the released code's own-term score; higher re-labeling accuracy "
                        f"on CIFAR-10N, docs/results.md) | exact (true marginal gain of F) (default {DEFAULT_MODE})")
    p.add_argument("--eta", type=float, default=1.0, help="prune4rel tanh temperature (default 1)")
    p.add_argument("--balance", default="none", help="class balance: none | equal | proportional")
    p.add_argument("--confidence", default="maxprob", help="maxprob | margin | entropy")


def _add_one_selection(p: argparse.ArgumentParser) -> None:
    """method, keep ratio, seed, output folder: one selection written as three files (`run`, `select`)."""
    p.add_argument("--method", default="prune4rel", help="selection method (see `methods`)")
    p.add_argument("--keep-ratio", type=float, required=True, help="fraction of the training set kept, in (0, 1]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder for selection.csv, manifest.json, metrics.json")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m prune_core",
                           description="Robust data pruning under label noise (Prune4ReL).")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    run = sub.add_parser("run", help="warm up, build the graph, select one subset, write three files")
    _add_common(run)
    _add_one_selection(run)

    sel = sub.add_parser("select", help="select from model outputs you already have (no training), write three files")
    sel.add_argument("--probs", required=True,
                     help="(N, C) predicted probabilities in dataset and class order (cleanlab pred_probs; "
                          "out-of-sample, e.g. from cross-validation): "
                          "PATH.npy | PATH.npz#KEY | PATH.csv#COLUMNS | PATH.parquet#COLUMNS (globs: prob_*)")
    sel.add_argument("--embeddings", required=True, help="(N, D) embeddings, same forms")
    sel.add_argument("--labels", required=True, help="(N,) given (noisy) class ids 0..C-1, same forms or a label CSV")
    sel.add_argument("--labels-clean", default=None,
                     help="(N,) ground-truth class ids, when known (metrics then report the noise kept)")
    _add_selection_options(sel)
    _add_one_selection(sel)
    sel.add_argument("--engine", default="local", choices=["local", "ray"],
                     help="local: this process (default); ray: graph and prune4rel partitioned over a Ray cluster "
                          "(--embeddings must be a .npy file every node can read)")
    sel.add_argument("--ray-address", default=None,
                     help="--engine ray: HOST:PORT, ray://HOST:PORT or auto of a running cluster "
                          "(default: start a local one)")
    sel.add_argument("--partitions", type=int, default=None,
                     help="--engine ray: number of partitions (default: max(ceil(N / 500k), cluster CPUs), more "
                          "when a partition would not fit a CPU's share of the memory)")
    sel.add_argument("--overlap", type=float, default=None,
                     help="--engine ray: share of examples, nearest a partition border, also searched in their "
                          "second partition (default 0.1)")
    sel.add_argument("--no-second-round", action="store_true",
                     help="--engine ray: skip the GreeDi second round (the one single-worker step) when edges "
                          "cross partitions")

    sweep = sub.add_parser("sweep", help="methods x keep ratios x seeds, each trained with a re-labeling learner")
    _add_common(sweep)
    sweep.add_argument("--methods", default="prune4rel,uniform",
                       help="comma-separated selection method names, see `methods` (default prune4rel,uniform)")
    sweep.add_argument("--ratios", type=_number_list(float), default=[0.2, 0.4, 0.6, 0.8],
                       help="comma-separated keep ratios in (0, 1]; sorted, duplicates dropped (default 0.2,0.4,0.6,0.8)")
    sweep.add_argument("--seeds", type=_number_list(int), default=[0],
                       help="comma-separated seeds; each gets its own noise draw, warm-up and graph (default 0)")
    sweep.add_argument("--learner", default="sop",
                       help="re-labeling learner trained on each subset: ce | sop | dividemix | none "
                            "(none: selection only, accuracy columns empty); a comma-separated list such as "
                            "sop,ce trains each subset with each learner (default sop)")
    sweep.add_argument("--learner-epochs", type=int, default=None,
                       help="learner epochs (default per learner and input, see `python -m prune_core methods`)")
    sweep.add_argument("--learner-input", default="from-scratch",
                       help="from-scratch | frozen-features: a fresh network trained on the kept examples only "
                            "(the paper's protocol; default) or a head on the frozen warm-up embeddings, which "
                            "were trained on ALL examples, pruned ones included (fast, but it understates the "
                            "differences between subsets)")
    sweep.add_argument("--workers", type=int, default=1,
                       help="learner fits in this many worker processes, torch threads split between them "
                            "(default 1: in this process)")
    sweep.add_argument("--out", required=True,
                       help="output folder: results.csv, curves.html, curves.png, sweep.json")
    sweep.add_argument("--quiet", action="store_true", help="no progress lines on stderr")

    sub.add_parser("methods", help="list the registered selection methods and learners")
    return parser


def _progress_printer(quiet: bool):
    last = {}

    def show(stage, fraction, message, metrics):
        if quiet:
            return
        step = int(fraction * 10)
        if last.get(stage) == step and fraction < 1.0:
            return
        last[stage] = step
        print(f"[{stage}] {fraction:4.0%} {message}", file=sys.stderr, flush=True)

    return show


def _config_from_args(args, **extra):
    from .pipeline import RunConfig

    return RunConfig(
        data=args.data, noise=args.noise, device=args.device, download=args.download, model=args.model,
        warmup_epochs=args.warmup_epochs, lr=args.lr, batch_size=args.batch_size, embed_pass=args.embed_pass,
        k=args.k, tau=args.tau, search=args.search, pca_dim=args.pca_dim, mode=args.mode, eta=args.eta,
        balance=args.balance, confidence=args.confidence, **extra,
    )


def cmd_run(args) -> int:
    from .pipeline import run_pipeline

    config = _config_from_args(args, method=args.method, keep_ratio=args.keep_ratio, seed=args.seed)
    from .selection import budget_for

    budget_for(args.keep_ratio, 2)  # reject an impossible ratio before any training
    result = run_pipeline(config, progress=_progress_printer(args.quiet))
    if result.graph_info.fallback:
        print(f"note: {result.graph_info.fallback}", file=sys.stderr)
    return _write_and_summarise(result, args.out)


def _write_and_summarise(result, out_dir) -> int:
    """Write the three files of a run and print its summary as JSON on stdout."""
    from .pipeline import write_run_outputs

    paths = write_run_outputs(result, out_dir)
    m = result.metrics
    summary = {
        "method": m["method"], "N": m["N"], "budget": m["budget"], "keep_ratio": m["keep_ratio"],
        "noise_rate_data": m["noise_rate_data"], "noise_rate_subset": m["noise_rate_subset"],
        "noise": json.loads(paths["metrics"].read_text()).get("noise_description"),
        "objective_F": m.get("objective_F"), "seconds": m["seconds"],
        "files": [str(p) for p in paths.values()],
    }
    print(json.dumps(summary, indent=2))
    return 0


def _outputs_config(args):
    """The RunConfig of `select` (model outputs: no data, noise or warm-up fields)."""
    from .pipeline import RunConfig

    return RunConfig(data="model outputs", noise="none", model="none", device="none", method=args.method,
                     keep_ratio=args.keep_ratio, seed=args.seed, k=args.k, tau=args.tau, search=args.search,
                     pca_dim=args.pca_dim, mode=args.mode, eta=args.eta, balance=args.balance,
                     confidence=args.confidence)


def cmd_select(args) -> int:
    if args.engine == "ray":
        return _cmd_select_ray(args)
    ray_only = [flag for flag, value in (("--ray-address", args.ray_address), ("--partitions", args.partitions),
                                         ("--overlap", args.overlap),
                                         ("--no-second-round", args.no_second_round or None)) if value is not None]
    if ray_only:
        raise InputError(f"{', '.join(ray_only)} only apply with --engine ray")
    from .outputs import check_method_for_outputs, read_model_outputs
    from .pipeline import check_run_options, select_pipeline
    from .selection import budget_for

    config = _outputs_config(args)
    budget_for(args.keep_ratio, 2)
    check_run_options(config)  # options and method first: no file is read for a command that cannot run
    check_method_for_outputs(args.method)
    outputs = read_model_outputs(args.probs, args.embeddings, args.labels, args.labels_clean)
    result = select_pipeline(config, outputs, progress=_progress_printer(args.quiet))
    if result.graph_info.fallback:
        print(f"note: {result.graph_info.fallback}", file=sys.stderr)
    return _write_and_summarise(result, args.out)


def _cmd_select_ray(args) -> int:
    """`select --engine ray`: prune4rel partitioned over a Ray cluster (prune_core.distributed)."""
    from .distributed import DEFAULT_OVERLAP, check_partitions, check_ray_address, open_embeddings, ray_select
    from .outputs import read_array
    from .pipeline import _hash_array, check_run_options, write_distributed_outputs
    from .selection import budget_for
    from .validation import check_labels, check_probs

    if args.method != "prune4rel":
        raise InputError(f"--engine ray runs prune4rel; run {args.method!r} with --engine local")
    config = _outputs_config(args)
    budget_for(args.keep_ratio, 2)
    check_run_options(config)
    if args.pca_dim is not None:
        raise InputError("--pca-dim is not available with --engine ray (reduce the embeddings before)")
    address = check_ray_address(args.ray_address)  # before any file is read: a bad address fails at once
    if args.overlap is not None and not (0.0 <= args.overlap < 1.0):
        raise InputError(f"--overlap must be in [0, 1), got {args.overlap}")
    probs = check_probs(read_array(args.probs, "probs"), name="probs")  # sets N, as the local engine does
    n = probs.shape[0]
    z = open_embeddings(args.embeddings)
    if z.shape[0] != n:
        raise InputError(f"embeddings have {z.shape[0]} rows but there are {n} examples")
    del z
    k = args.k or min(50, n - 1)
    check_partitions(args.partitions, n, k)
    labels = check_labels(read_array(args.labels, "labels", labels=True), "labels", num_classes=probs.shape[1], n=n)
    clean = None
    if args.labels_clean is not None:
        clean = check_labels(read_array(args.labels_clean, "labels_clean", labels=True), "labels_clean",
                             num_classes=probs.shape[1], n=n)
    out = Path(args.out)
    try:  # before the cluster starts: a folder that cannot be made must not cost the whole run
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create output folder {out}: {e.strerror}") from None
    result = ray_select(args.embeddings, probs, labels, args.keep_ratio, k=k, tau=args.tau, search=args.search,
                        mode=args.mode, eta=args.eta, balance=args.balance, confidence=args.confidence,
                        seed=args.seed, partitions=args.partitions,
                        overlap=DEFAULT_OVERLAP if args.overlap is None else args.overlap,
                        second_round=not args.no_second_round, address=address,
                        progress=_progress_printer(args.quiet))
    sources = {"probs": args.probs, "embeddings": args.embeddings, "labels": args.labels,
               "labels_clean": args.labels_clean}
    paths = write_distributed_outputs(result, out, args.keep_ratio, probs.shape[1], clean, sources,
                                      probs_hash=_hash_array(probs))
    info = result.info
    print(json.dumps({"method": "prune4rel", "engine": "ray", "N": n, "keep_ratio": args.keep_ratio,
                      "partitions": info["partitions"], "budget": info["budget"], "objective_F": result.objective_F,
                      "objective_F_round1": info["objective_F_round1"], "objective_F_round2": info["objective_F_round2"],
                      "cross_partition_entries": info["cross_partition_entries"], "seconds": info["seconds"],
                      "files": [str(p) for p in paths.values()]}, indent=2))
    return 0


def run_sweep_cli(args, config_factory, progress_printer) -> int:
    """`python -m prune_core sweep ...`: validate everything, run, write DIR/results.csv,
    DIR/curves.html, DIR/curves.png and DIR/sweep.json, print a mean table to stdout."""
    import pandas as pd

    from .pipeline import _library_versions, atomic_write_bytes
    from .sweep import _split_names, check_sweep_inputs, run_sweep
    from .sweep_report import RESULT_COLUMNS, results_csv, summarize, write_sweep_outputs

    methods = _split_names(args.methods)
    specs, ratios, seeds, learners = check_sweep_inputs(methods, args.ratios, args.seeds, args.learner,
                                                        args.learner_epochs, args.learner_input)
    config = config_factory(args)
    # Everything else the run needs, checked before any training.
    from .noise import parse_noise_spec
    from .training import resolve_device

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
                   learner_input=args.learner_input, progress=progress, on_result=on_result,
                   workers=getattr(args, "workers", 1))
    seconds = time.perf_counter() - started
    manifest = {
        "config": config.to_dict(), "methods": [s.label for s in specs], "ratios": ratios, "seeds": seeds,
        "learner": learners, "learner_epochs": args.learner_epochs, "learner_input": args.learner_input,
        "rows": len(df), "seconds": round(seconds, 2), "versions": _library_versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    title = f"{config.data}, noise {config.noise}, learner {', '.join(learners)}"
    paths = write_sweep_outputs(df, out, title, manifest)
    summary = summarize(df, [m for m in ("test_acc", "relabel_acc_all", "given_acc_all", "noise_in_subset")])
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.max_rows", 500):
        print(summary.round(4).to_string(index=False))
    print(json.dumps({"rows": len(df), "seconds": round(seconds, 2), "files": [str(p) for p in paths.values()]}))
    sys.stdout.flush()
    return 0


def cmd_sweep(args) -> int:
    from .pipeline import check_run_options

    check_run_options(_config_from_args(args))  # graph and prune4rel options, before any training

    return run_sweep_cli(args, _config_from_args, _progress_printer(args.quiet))


def cmd_methods(args) -> int:
    from .selection import get_method, list_methods

    for name in list_methods():
        print(f"{name:18s} {get_method(name).summary}")
    try:
        from .learners import get_learner, list_learners
    except ImportError:
        return 0
    print()
    for name in list_learners():
        print(f"{name:18s} {get_learner(name).summary}")
    return 0


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {"run": cmd_run, "select": cmd_select, "sweep": cmd_sweep, "methods": cmd_methods}
    try:
        return handlers[args.command](args)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except Cancelled:
        print("error: cancelled", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
