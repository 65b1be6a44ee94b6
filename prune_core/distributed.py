"""Prune4ReL past one machine: the kNN graph and the greedy selection on a Ray cluster.

`ray_select` runs the same objective as the single-machine `select` command (the total
reduced neighbourhood confidence F(S) = sum_x tanh(C(x; S) / eta), paper Sec. 3) with the
work split over P partitions; `--engine ray` of `python -m prune_core select` calls it.

1. Partition (GreeDi's first step, Mirzasoleiman et al. 2013): faiss k-means with P
   centroids on a seeded sample of the unit-normalised embeddings; every example belongs
   to its nearest centroid (its owner partition). Assignment runs in row chunks on the
   workers, reading the memory-mapped .npy file (files are shared by path, so on a
   multi-machine cluster the file must sit on storage every node mounts at the same path).
2. Graph: each partition searches its own examples against a database of its own
   examples plus the `overlap` share of all examples nearest to a partition border (each
   copied into its second-nearest partition; distance to the bisecting hyperplane of the
   two centroids), so edges across partitions are found. tau 'auto' is the lower median
   of every example's 10th-neighbour similarity, gathered from all partitions (as
   `graph.auto_tau`). Each directed edge above tau is sent to the partitions owning both
   ends, which assemble their rows (max on duplicates, unit diagonal): the graph is
   symmetric across partitions and lives as P row blocks in Ray's object store.
3. Selection, round 1: lazy greedy (`prune4rel.greedy_neighbourhood_confidence`) on each
   partition's own subgraph, then a merge of the partitions' pick sequences in order of
   decreasing greedy key (gain, ties to the lower index). When no edge crosses
   partitions, F is a sum of per-partition terms and the global greedy IS this merge
   (each partition's gains are non-increasing, and a partition's gains depend only on its
   own picks): the picks equal the single-machine exact picks. A partition whose whole
   sequence was taken is asked for a longer one (doubling), so the merge never runs dry.
4. Round 2, only when edges cross partitions (GreeDi's second round): greedy with exact
   gains on the full rows (cross edges included) over the union of the partitions'
   candidates (each partition's taken picks plus `candidate_slack` more); the better of
   the two rounds by exact F is returned (as GreeDi does), and both F values are reported.

Memory: no worker and not the driver holds all N embeddings or the whole graph. The
driver holds per-example vectors (labels, confidences, owners: O(N) numbers) and the
k-means sample; a search task holds its partition's database rows and kNN lists; round 2
holds the candidates' rows ((1 + slack) x keep ratio of the graph's rows).

Fault tolerance: every step is a Ray task (no actor state), retried by Ray when its worker
dies; tasks are deterministic (seeded, fixed reduction orders), so a retried task returns
the same arrays and the result does not change.

Class balance ('equal', 'proportional') is approximate across partitions: each partition
runs its own balanced greedy and the merge takes, per class, the best keys in the global
class sequence's counts. The equality with single-machine picks holds for balance 'none'.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .distributed_tasks import (_assemble_rows, _assign_chunk, _cover_partition, _edges_for, _greedy_partition,
                                _read_rows, _rows_of, _search_partition, _second_round)
from .errors import InputError
from .prune4rel import DEFAULT_MODE

ENGINES = ("local", "ray")
DEFAULT_OVERLAP = 0.1  # share of examples copied into their second partition's search
DEFAULT_CANDIDATE_SLACK = 0.25  # round 2 candidates: taken picks x (1 + slack) per partition
DEFAULT_PARTITION_ROWS = 500_000  # at most this many owned rows per partition (auto P)
CHUNK_ROWS = 65_536  # rows per assignment task
_KMEANS_SAMPLE_PER_CENTROID = 256


@dataclass
class DistributedResult:
    """What `ray_select` returns. Arrays are over the N training examples.

    picks (budget,) int64 in pick order; scores (budget,) the greedy key of each pick (the
    exact gain in exact mode); cover (N,) float64 C(x; S); confidence (N,) float64;
    labels (N,) int64; partition (N,) int32 owner partitions; objective_F: F of the returned picks; info: partitions, replication,
    graph statistics, both rounds' F, timings (JSON-able).
    """

    picks: np.ndarray
    scores: np.ndarray
    cover: np.ndarray
    confidence: np.ndarray
    labels: np.ndarray
    partition: np.ndarray  # (N,) int32 owner partition of every example
    objective_F: float
    info: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------
# Validation (before any cluster is started or file is read whole)


def check_ray_address(address: str | None) -> str | None:
    """None (start a local cluster), 'auto' (the running cluster this machine knows), or
    HOST:PORT / ray://HOST:PORT, checked by a TCP connection (3 s) so that a wrong address
    fails at once with one line instead of Ray's minutes of retries. Raises InputError."""
    if address is None or address == "":
        return None
    if address == "auto":
        return address
    text = address[len("ray://"):] if address.startswith("ray://") else address
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not (0 < int(port) < 65536):
        raise InputError(f"--ray-address must be HOST:PORT, ray://HOST:PORT or auto, got {address!r}")
    try:
        with socket.create_connection((host, int(port)), timeout=3.0):
            pass
    except OSError as e:
        raise InputError(f"cannot reach a Ray cluster at {address} ({e.strerror or type(e).__name__})") from None
    return address


def check_partitions(partitions, n: int, k: int) -> int | None:
    """None (auto) or a partition count P with 1 <= P and at least k + 1 examples per
    partition on average (P <= N // (k + 1)). Raises InputError otherwise."""
    if partitions is None:
        return None
    if isinstance(partitions, bool) or int(partitions) != partitions or partitions < 1:
        raise InputError(f"--partitions must be a positive integer, got {partitions}")
    most = max(1, n // (k + 1))
    if partitions > most:
        raise InputError(f"--partitions {partitions} is impossible for N={n} with k={k}: at most {most} "
                         f"(N // (k + 1), more than k examples per partition on average)")
    return int(partitions)


def open_embeddings(path) -> np.ndarray:
    """The (N, D) float embeddings of a .npy file, memory-mapped read-only (nothing is read
    whole). Raises InputError for other file types, pickles, and shapes or dtypes we cannot
    read faithfully."""
    p = Path(str(path))
    if p.suffix.lower() != ".npy":
        raise InputError(f"--engine ray reads --embeddings from a .npy file (memory-mapped in chunks on the "
                         f"workers), got {p.name}; save it with numpy.save")
    if not p.is_file():
        raise InputError(f"embeddings: no such file {p}")
    try:
        z = np.load(p, mmap_mode="r", allow_pickle=False)
    except ValueError:
        raise InputError(f"embeddings: {p} holds pickled Python objects, which are refused") from None
    except Exception as e:  # noqa: BLE001
        raise InputError(f"embeddings: {p} is not a readable .npy file ({type(e).__name__})") from None
    if z.ndim != 2 or z.shape[0] < 2 or z.shape[1] < 1:
        raise InputError(f"embeddings must be a 2-D array (N, D) with N >= 2, got shape {z.shape}")
    if not np.issubdtype(z.dtype, np.floating) and not np.issubdtype(z.dtype, np.integer):
        raise InputError(f"embeddings must be real numbers, got dtype {z.dtype}")
    return z


# --------------------------------------------------------------------------------------
# Driver


_REMOTE: dict = {}


def _remote():
    """The worker steps as Ray tasks (built once, after Ray is imported). Ray retries a task
    whose worker died (max_retries); InputErrors are not retried."""
    if not _REMOTE:
        import ray

        for fn, returns in ((_assign_chunk, 3), (_search_partition, 2), (_assemble_rows, 3),
                            (_greedy_partition, 3), (_rows_of, 3), (_second_round, 2), (_cover_partition, 2)):
            _REMOTE[fn.__name__] = ray.remote(num_returns=returns, max_retries=3)(fn)
        _REMOTE["_edges_for"] = ray.remote(max_retries=3)(_edges_for)
    return _REMOTE


def _start_ray(address: str | None):
    """Connect to `address` or start a local cluster; returns True when we started it."""
    import ray

    if ray.is_initialized():
        return False
    package_root = str(Path(__file__).resolve().parent.parent)
    env = {"PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p)}
    if os.environ.get("NUMBA_CACHE_DIR"):
        env["NUMBA_CACHE_DIR"] = os.environ["NUMBA_CACHE_DIR"]
    # Ray's start-up warnings (e.g. that token authentication is on) would be extra stderr
    # lines on every run; its errors still show.
    ray_logger = logging.getLogger("ray")
    level = ray_logger.level
    ray_logger.setLevel(logging.ERROR)
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False,
                 runtime_env={"env_vars": env})
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise InputError(f"cannot connect to Ray at {address or 'a new local cluster'}: {str(e).splitlines()[0]}") from None
    finally:
        ray_logger.setLevel(level)
    return True


def _get(refs):
    """ray.get that turns a task's InputError back into a plain one-line InputError."""
    import ray

    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, InputError):
            raise InputError(str(cause)) from None
        raise


def _embeddings_path(embeddings, address, tmpdir):
    """A .npy path the workers can read: the given path, or an in-memory array saved into
    tmpdir (only with a local cluster, whose workers share this file system)."""
    if isinstance(embeddings, (str, os.PathLike)):
        return str(Path(embeddings).resolve())
    if address is not None:
        raise InputError("with --ray-address, give the embeddings as a .npy path every node can read, "
                         "not an in-memory array")
    path = Path(tmpdir) / "embeddings.npy"
    np.save(path, np.ascontiguousarray(embeddings))
    return str(path)


def _auto_partitions(n: int, k: int, d: int) -> int:
    """P = max(ceil(N / rows per partition), cluster CPUs), at most N // (k + 1). Rows per
    partition: 500k, fewer when half of one CPU's share of the cluster memory cannot hold a
    partition's arrays (its rows plus the overlap copies in float32, its kNN lists and heaps:
    about (1 + overlap) * 4 D + 24 k bytes per row)."""
    import ray

    resources = ray.cluster_resources()
    cpus = max(1, int(resources.get("CPU", 1)))
    rows = DEFAULT_PARTITION_ROWS
    memory = resources.get("memory")
    if memory:
        per_row = (1 + DEFAULT_OVERLAP) * 4 * d + 24 * k
        rows = max(1_000, min(rows, int(0.5 * memory / cpus / per_row)))
    return max(1, min(max(math.ceil(n / rows), cpus), n // (k + 1)))


def _merge(streams, class_counts, members):
    """Round 1 merge. streams[q] = (ids, keys, classes) in partition q's pick order;
    class_counts[c]: picks the global class sequence asks of class c; members[q][c]: class
    c examples in q. Per class, the best keys (ties to the lower id) across partitions.

    Returns (picks per class as {c: (ids, keys)} in merged order, partitions whose stream
    ran dry before the merge could be sure (they must produce more)).
    """
    chosen, dry = {}, set()
    for c, need in enumerate(class_counts):
        if need == 0:
            continue
        ids = np.concatenate([s[0][s[2] == c] for s in streams])
        keys = np.concatenate([s[1][s[2] == c] for s in streams])
        part = np.concatenate([np.full(int((s[2] == c).sum()), q) for q, s in enumerate(streams)])
        order = np.lexsort((ids, -keys))[:need]
        chosen[c] = (ids[order], keys[order])
        taken = np.bincount(part[order], minlength=len(streams))
        for q, s in enumerate(streams):
            produced = int((s[2] == c).sum())
            if produced < members[q][c] and (taken[q] == produced or order.size < need):
                dry.add(q)
    return chosen, dry


def ray_select(embeddings, probs, labels, keep_ratio: float, *, k: int = 50, tau="auto", search: str = "auto",
               mode: str = DEFAULT_MODE, eta: float = 1.0, balance: str = "none", confidence: str = "maxprob",
               seed: int = 0, partitions: int | None = None, overlap: float = DEFAULT_OVERLAP,
               candidate_slack: float = DEFAULT_CANDIDATE_SLACK, second_round: bool = True,
               address: str | None = None, progress=None, kill_marker: str | None = None,
               conf: np.ndarray | None = None) -> DistributedResult:
    """Prune4ReL selection on a Ray cluster (module docstring: partitions, graph, two rounds).

    embeddings: path of an (N, D) .npy file (memory-mapped; on a multi-machine cluster on
    storage every node mounts at the same path) or an (N, D) array (local cluster only).
    probs (N, C) softmax rows, or None with conf (N,) confidences in [0, 1] given directly;
    labels (N,) class ids. keep_ratio in (0, 1]. k, tau, search,
    mode, eta, balance, confidence, seed: as in `select`/`build_graph` (search runs inside
    each partition). partitions: P (None: `_auto_partitions`: max(ceil(N / 500k), cluster
    CPUs), more when a partition would not fit half a CPU's share of memory). overlap:
    share of examples, nearest a partition border, copied into their second partition's
    search. address: None starts a local cluster, else HOST:PORT, ray://HOST:PORT or auto.
    progress(stage, fraction, message, metrics). kill_marker: test hook: the first kNN search
    or greedy task to see this path (not yet existing) kills its own worker (`_maybe_die`).
    Raises InputError for bad options, files, addresses and partition counts.
    """
    from .graph import parse_tau, tau_from_similarities
    from .prune4rel import MODES
    from .registry import check_balance, class_target_sequence
    from .scores import confidence as confidence_of
    from .selection import budget_for
    from .validation import check_k, check_labels

    def report(stage, fraction, message):
        if progress:
            progress(stage, fraction, message, {})

    if mode not in MODES:
        raise InputError(f"unknown prune4rel mode {mode!r}; choose one of {', '.join(MODES)}")
    if not (float(eta) > 0 and math.isfinite(float(eta))):
        raise InputError(f"eta must be a positive number, got {eta}")
    if not (0.0 <= overlap < 1.0):
        raise InputError(f"overlap must be in [0, 1), got {overlap}")
    check_balance(balance)
    tau_value, tau_text = parse_tau(tau)
    address = check_ray_address(address)
    if probs is not None:
        conf = confidence_of(probs, confidence)
        num_classes = np.asarray(probs).shape[1]
    else:
        conf = np.asarray(conf, dtype=np.float64)
        if conf.ndim != 1 or not np.all((conf >= 0) & (conf <= 1)):
            raise InputError("conf must be (N,) confidences in [0, 1]")
        num_classes = None
    n = conf.shape[0]
    labels = check_labels(labels, "labels", num_classes=num_classes, n=n)
    budget = budget_for(keep_ratio, n)
    check_k(k, n)
    check_partitions(partitions, n, k)
    timings = {}
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="prune_core_ray_") as tmpdir:
        path = _embeddings_path(embeddings, address, tmpdir)
        z = open_embeddings(path)
        if z.shape[0] != n:
            raise InputError(f"embeddings have {z.shape[0]} rows but probs have {n}; give one row per example")
        d = z.shape[1]
        del z
        started = _start_ray(address)
        try:
            fns = _remote()
            import ray

            p_count = partitions or _auto_partitions(n, k, d)
            # 1. Partition: k-means on a seeded sample, then owners chunk by chunk on the workers.
            t = time.perf_counter()
            report("graph", 0.0, f"partitioning {n} examples into {p_count}")
            rng = np.random.default_rng(seed)
            m = min(n, max(p_count * _KMEANS_SAMPLE_PER_CENTROID, 20_000))
            sample = _read_rows(path, np.sort(rng.choice(n, m, replace=False)))
            if p_count == 1:
                centroids = sample.mean(axis=0, keepdims=True).astype(np.float64)
            else:
                import faiss

                km = faiss.Kmeans(d, p_count, niter=20, nredo=3, seed=seed, verbose=False, min_points_per_centroid=1)
                km.train(sample)
                centroids = km.centroids.astype(np.float64)
            del sample
            parts = [fns["_assign_chunk"].remote(path, s, min(s + CHUNK_ROWS, n), centroids)
                     for s in range(0, n, CHUNK_ROWS)]
            got = _get([r for trio in parts for r in trio])
            owner = np.concatenate(got[0::3])
            second = np.concatenate(got[1::3])
            border = np.concatenate(got[2::3])
            del got, parts
            # Drop empty partitions (k-means may leave one) and renumber.
            used = np.flatnonzero(np.bincount(owner, minlength=p_count))
            remap = np.full(p_count, -1, dtype=np.int32)
            remap[used] = np.arange(used.size, dtype=np.int32)
            owner, second = remap[owner], remap[second]
            p_count = int(used.size)
            spill = np.zeros(n, dtype=bool)
            if p_count > 1 and overlap > 0:
                spill = (border <= np.quantile(border, overlap)) & (second >= 0)
            own = [np.flatnonzero(owner == q) for q in range(p_count)]
            extra = [np.flatnonzero(spill & (second == q)) for q in range(p_count)]
            timings["partition"] = time.perf_counter() - t

            # 2. Graph: search, tau, edges routed to both ends' partitions, row blocks.
            t = time.perf_counter()
            report("graph", 0.1, f"kNN search in {p_count} partitions")
            own_refs = [ray.put(o) for o in own]
            searched = [fns["_search_partition"].remote(path, own_refs[q], extra[q], k, search, seed, 10, kill_marker)
                        for q in range(p_count)]
            target_cols = _get([s[1] for s in searched])
            if tau_value is None:  # the single-machine rule on every partition's own examples
                tau_value = tau_from_similarities(np.concatenate(target_cols))
            del target_cols
            timings["search"] = time.perf_counter() - t
            t = time.perf_counter()
            report("graph", 0.6, f"assembling the graph (tau {tau_value:.4f})")
            owner_ref = ray.put(owner)
            routed = [fns["_edges_for"].options(num_returns=p_count).remote(searched[q][0], own_refs[q], owner_ref,
                                                                            tau_value, p_count)
                      for q in range(p_count)]
            if p_count == 1:
                routed = [[r] for r in routed]
            blocks = [fns["_assemble_rows"].remote(own_refs[q], owner_ref, q, *[routed[p][q] for p in range(p_count)])
                      for q in range(p_count)]
            rows_refs = [b[0] for b in blocks]
            stats = _get([r for b in blocks for r in b[1:]])
            degree = np.zeros(n, dtype=np.int64)
            for q in range(p_count):
                degree[own[q]] = stats[2 * q]
            cross_entries = int(sum(stats[1::2]))
            del searched, routed, stats
            timings["graph"] = time.perf_counter() - t

            # 3. Round 1: per-partition lazy greedy, merged by decreasing key.
            t = time.perf_counter()
            report("select", 0.0, f"round 1: lazy greedy in {p_count} partitions")
            conf_ref, labels_ref = ray.put(conf), ray.put(labels)
            if balance == "none":
                stream_labels = np.zeros(n, dtype=np.int64)
                class_counts = [budget]
                seq = np.zeros(budget, dtype=np.int64)
            else:
                stream_labels = labels
                seq = class_target_sequence(labels, budget, balance, num_classes=num_classes)
                class_counts = np.bincount(seq, minlength=int(labels.max()) + 1).tolist()
            members = [np.bincount(stream_labels[o], minlength=len(class_counts)) for o in own]
            counts = [min(o.size, math.ceil(budget * o.size / n * 1.1) + 16) for o in own]
            streams = [None] * p_count
            todo = list(range(p_count))
            rounds = 0
            while todo:
                rounds += 1
                refs = {q: fns["_greedy_partition"].remote(rows_refs[q], own_refs[q], owner_ref, q, conf_ref,
                                                           labels_ref, counts[q], eta, mode, balance, kill_marker)
                        for q in todo}
                for q, r in refs.items():
                    ids, keys, cls = _get(list(r))
                    streams[q] = (ids, keys, cls if balance != "none" else np.zeros(ids.size, dtype=np.int64))
                chosen, dry = _merge(streams, class_counts, members)
                todo = sorted(dry)
                for q in todo:
                    counts[q] = min(own[q].size, 2 * counts[q])
            picks1, keys1 = _order_picks(chosen, seq)
            timings["round1"] = time.perf_counter() - t

            # Exact F of a pick list, from every partition's rows.
            def objective_of(picks):
                mask = np.zeros(n, dtype=bool)
                mask[picks] = True
                mask_ref = ray.put(mask)
                out = _get([r for q in range(p_count) for r in
                            fns["_cover_partition"].remote(rows_refs[q], own_refs[q], mask_ref, conf_ref, eta)])
                cover = np.zeros(n, dtype=np.float64)
                for q in range(p_count):
                    cover[own[q]] = out[2 * q]
                return float(sum(out[1::2])), cover

            f1, cover1 = objective_of(picks1)
            picks, keys, cover, f_final, chosen_round = picks1, keys1, cover1, f1, 1
            f2 = None
            # 4. Round 2 (GreeDi) when edges cross partitions.
            t = time.perf_counter()
            if cross_entries > 0 and second_round and balance == "none" and p_count > 1:
                report("select", 0.7, "round 2: exact gains over the partitions' candidates")
                taken = np.bincount(owner[picks1], minlength=p_count)
                flat = []  # per partition: candidate ids, then the refs of their rows (indptr, cols, vals)
                for q in range(p_count):
                    size = min(streams[q][0].size, math.ceil(taken[q] * (1 + candidate_slack)) + 1)
                    cand = np.sort(streams[q][0][:size])
                    flat += [cand, *fns["_rows_of"].remote(rows_refs[q], own_refs[q], cand)]
                # Top-level refs: Ray hands the rows to the round-2 task without the driver fetching them.
                picks2, keys2 = _get(list(fns["_second_round"].remote(conf_ref, budget, eta, mode, *flat)))
                del flat
                f2, cover2 = objective_of(picks2)
                if f2 > f1:
                    picks, keys, cover, f_final, chosen_round = picks2, keys2, cover2, f2, 2
            timings["round2"] = time.perf_counter() - t
            cluster = {k_: float(v) for k_, v in ray.cluster_resources().items() if k_ in ("CPU", "memory", "GPU")}
        finally:
            if started:
                import ray

                ray.shutdown()
    timings["total"] = time.perf_counter() - t_all
    report("select", 1.0, f"F = {f_final:.2f} (round {chosen_round})")
    info = {
        "engine": "ray", "address": address or "local", "cluster": cluster, "partitions": p_count,
        "partition_sizes": [int(o.size) for o in own], "overlap": overlap,
        "replication": float((n + spill.sum()) / n), "k": k, "tau": float(tau_value), "tau_requested": tau_text,
        "search": search, "mode": mode, "eta": float(eta), "balance": balance, "confidence": confidence,
        "seed": seed, "budget": budget, "edges": int(degree.sum()), "mean_degree": float(degree.mean()),
        "median_degree": float(np.median(degree)), "isolated_fraction": float((degree == 0).mean()),
        "cross_partition_entries": cross_entries, "round1_greedy_calls": rounds,
        "objective_F_round1": f1, "objective_F_round2": f2, "chosen_round": chosen_round,
        "seconds": {k_: round(v, 3) for k_, v in timings.items()},
    }
    return DistributedResult(picks=picks, scores=keys, cover=cover, confidence=conf, labels=labels,
                             partition=owner, objective_F=f_final, info=info)


def _order_picks(chosen: dict, seq: np.ndarray):
    """Picks in the global class sequence's order: the t-th pick is the next best of class seq[t]."""
    picks = np.empty(seq.shape[0], dtype=np.int64)
    keys = np.empty(seq.shape[0], dtype=np.float64)
    for c, (ids, ks) in chosen.items():
        where = np.flatnonzero(seq == c)
        picks[where], keys[where] = ids[: where.size], ks[: where.size]
    return picks, keys
