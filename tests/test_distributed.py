"""`select --engine ray`: the kNN graph and Prune4ReL on a local Ray cluster (2 CPUs).

Separable partitions give exactly the single-machine picks; clustered data with edges
across partitions keeps F within 1%; a worker killed mid-run is retried with the same
result; bad addresses and impossible partition counts are one line and exit 2.
"""

import csv
import json

import numpy as np
import pytest

import prune_core as pc
from prune_core import distributed
from prune_core.cli import main
from prune_core.prune4rel import DEFAULT_MODE, greedy_neighbourhood_confidence, neighbourhood_confidence, objective
from prune_core.scores import confidence

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray cluster for the module (ray_select reuses a running one)."""
    started = distributed._start_ray(None)
    yield
    if started:
        ray.shutdown()


def clustered(n, d, clusters, spread, seed, groups=None):
    """Gaussian clusters. With `groups`, cluster g % groups lives in its own block of d /
    groups coordinates (zero elsewhere), so examples of different groups are orthogonal:
    similarity 0.5 < tau, no graph edge between groups, and k-means partitions can
    separate them."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d))
    member = rng.integers(0, clusters, n)
    x = centres[member] + spread * rng.normal(size=(n, d))
    if groups:
        width = d // groups
        x = x + 2.0 * ((np.arange(d)[None, :] // width) == (member % groups)[:, None])  # a common offset per group
        block = (np.arange(d)[None, :] // width) == (member % groups)[:, None]
        x = np.where(block, x, 0.0)
    probs = rng.dirichlet(np.full(10, 0.5), n)
    return x.astype(np.float32), probs, (member % 10).astype(np.int64)


def single_machine(x, probs, keep_ratio, k, tau, mode=DEFAULT_MODE):
    g = pc.build_graph(x, k=k, tau=tau, search="exact")
    conf = confidence(probs)
    budget = round(keep_ratio * len(x))
    picks, _, _, _ = greedy_neighbourhood_confidence(g, conf, budget, mode=mode)
    return g, conf, picks


@pytest.mark.parametrize("mode", ["exact", "official"])
def test_separable_partitions_give_the_single_machine_picks(local_ray, mode):
    x, probs, y = clustered(3000, 32, 24, 0.3, 0, groups=4)
    g, conf, want = single_machine(x, probs, 0.3, 20, 0.97, mode)
    res = distributed.ray_select(x, probs, y, 0.3, k=20, tau=0.97, search="exact", mode=mode, partitions=4)
    assert res.info["partitions"] == 4 and min(res.info["partition_sizes"]) > 0
    assert res.info["cross_partition_entries"] == 0
    assert res.info["objective_F_round2"] is None  # no cross edges: round 1 is already exact
    np.testing.assert_array_equal(res.picks, want)
    assert res.objective_F == pytest.approx(objective(g, conf, want), rel=1e-9)
    # The distributed cover equals C(x; S) on the single-machine graph.
    np.testing.assert_allclose(res.cover, neighbourhood_confidence(g, conf, want), rtol=1e-6, atol=1e-9)


def test_clustered_data_with_cross_edges_keeps_f_within_one_percent(local_ray):
    x, probs, y = clustered(4000, 24, 60, 0.35, 1)
    g, conf, want = single_machine(x, probs, 0.3, 20, 0.95, mode="exact")  # F's greedy, F's ratio
    res = distributed.ray_select(x, probs, y, 0.3, k=20, tau=0.95, search="exact", partitions=3, mode="exact")
    assert res.info["cross_partition_entries"] > 0  # the partitions cut clusters: a real test of round 2
    f_single = objective(g, conf, want)
    f_ray = objective(g, conf, res.picks)  # F of the Ray picks on the single-machine graph
    print(f"F ratio {f_ray / f_single:.5f}; edges {res.info['edges']} of {g.nnz - g.shape[0]}; "
          f"cross {res.info['cross_partition_entries']}; F1 {res.info['objective_F_round1']:.3f} "
          f"F2 {res.info['objective_F_round2']:.3f}")
    assert f_ray / f_single >= 0.99
    # Borders copied into their second partition find most edges across partitions.
    assert res.info["edges"] >= 0.97 * (g.nnz - g.shape[0])
    assert res.info["objective_F_round2"] is not None
    assert res.objective_F >= max(res.info["objective_F_round1"], res.info["objective_F_round2"]) - 1e-9
    assert len(set(res.picks.tolist())) == res.picks.size == round(0.3 * len(x))


def test_tau_auto_matches_the_single_machine_rule(local_ray):
    x, probs, y = clustered(2000, 32, 16, 0.3, 2, groups=4)
    _, info = pc.build_graph(x, k=20, tau="auto", search="exact", return_info=True)
    res = distributed.ray_select(x, probs, y, 0.5, k=20, tau="auto", search="exact", partitions=4)
    assert res.info["tau"] == info.tau


def test_a_killed_worker_is_retried_and_the_result_is_the_same(local_ray, tmp_path):
    x, probs, y = clustered(2500, 16, 20, 0.3, 3)
    base = distributed.ray_select(x, probs, y, 0.4, k=15, tau=0.95, search="exact", partitions=2)
    marker = tmp_path / "killed"
    again = distributed.ray_select(x, probs, y, 0.4, k=15, tau=0.95, search="exact", partitions=2,
                                   kill_marker=str(marker))
    assert marker.exists()  # a task's worker process really was SIGKILLed
    np.testing.assert_array_equal(again.picks, base.picks)
    assert again.objective_F == base.objective_F


def test_auto_partitions_follow_cpus_rows_and_memory(monkeypatch):
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 4.0, "memory": 64e9})
    assert distributed._auto_partitions(10_000, 50, 128) == 4  # at least one per CPU
    assert distributed._auto_partitions(3_000_000, 50, 128) == 6  # 500k rows each
    assert distributed._auto_partitions(100, 50, 128) == 1  # each needs more than k examples
    # 4096-d rows: half of one CPU's 1 GB share holds ~26k of them (1.1 * 4 * 4096 + 24 * 50 bytes each).
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 4.0, "memory": 4e9})
    assert distributed._auto_partitions(1_000_000, 50, 4096) == 39


def test_merge_asks_a_dry_partition_for_more():
    # Partition 0's whole stream was taken and it has more examples: it must produce more.
    streams = [(np.array([0, 1]), np.array([5.0, 4.0]), np.zeros(2, np.int64)),
               (np.array([10, 11, 12]), np.array([3.0, 2.0, 1.0]), np.zeros(3, np.int64))]
    chosen, dry = distributed._merge(streams, [3], [np.array([5]), np.array([3])])
    np.testing.assert_array_equal(chosen[0][0], [0, 1, 10])
    assert dry == {0}
    # Ties in the key go to the lower id, as in the single-machine heap.
    streams = [(np.array([7]), np.array([2.0]), np.zeros(1, np.int64)),
               (np.array([3]), np.array([2.0]), np.zeros(1, np.int64))]
    chosen, dry = distributed._merge(streams, [1], [np.array([1]), np.array([1])])
    np.testing.assert_array_equal(chosen[0][0], [3])
    assert dry == set()


def test_cli_engine_ray_writes_the_three_files(local_ray, tmp_path, capsys):
    x, probs, y = clustered(2000, 32, 16, 0.3, 4, groups=4)
    np.save(tmp_path / "emb.npy", x)
    np.save(tmp_path / "probs.npy", probs)
    np.save(tmp_path / "y.npy", y)
    out = tmp_path / "out"
    rc = main(["select", "--engine", "ray", "--partitions", "4", "--probs", str(tmp_path / "probs.npy"),
               "--embeddings", str(tmp_path / "emb.npy"), "--labels", str(tmp_path / "y.npy"),
               "--labels-clean", str(tmp_path / "y.npy"), "--keep-ratio", "0.25", "--k", "20", "--tau", "0.97",
               "--search", "exact", "--out", str(out), "--quiet"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["engine"] == "ray" and summary["partitions"] == 4
    rows = list(csv.DictReader(open(out / "selection.csv")))
    kept = sorted((r for r in rows if r["selected"] == "1"), key=lambda r: int(r["rank"]))
    _, _, want = single_machine(x, probs, 0.25, 20, 0.97)
    np.testing.assert_array_equal([int(r["index"]) for r in kept], want)
    manifest = json.load(open(out / "manifest.json"))
    assert manifest["engine"]["partitions"] == 4 and manifest["versions"]["ray"] == ray.__version__
    metrics = json.load(open(out / "metrics.json"))
    assert metrics["noise_rate_subset"] == 0.0 and metrics["objective_F"] == pytest.approx(summary["objective_F"])


def _one_line_exit_2(capsys, argv):
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("extra, message", [
    (["--engine", "ray", "--ray-address", "127.0.0.1:1"], "cannot reach a Ray cluster"),
    (["--engine", "ray", "--ray-address", "nonsense"], "--ray-address must be"),
    (["--engine", "ray", "--partitions", "0"], "--partitions must be a positive integer"),
    (["--engine", "ray", "--partitions", "60"], "is impossible for N=300"),
    (["--engine", "ray", "--overlap", "1.5"], "--overlap must be in [0, 1)"),
    (["--engine", "ray", "--method", "uniform"], "--engine ray runs prune4rel"),
    (["--partitions", "2"], "only apply with --engine ray"),
    (["--no-second-round"], "only apply with --engine ray"),
])
def test_cli_bad_engine_options_are_one_line_and_exit_2(tmp_path, capsys, extra, message):
    x, probs, y = clustered(300, 8, 6, 0.2, 5)
    np.save(tmp_path / "emb.npy", x)
    np.save(tmp_path / "probs.npy", probs)
    np.save(tmp_path / "y.npy", y)
    err = _one_line_exit_2(capsys, ["select", "--probs", str(tmp_path / "probs.npy"), "--embeddings",
                                    str(tmp_path / "emb.npy"), "--labels", str(tmp_path / "y.npy"), "--keep-ratio",
                                    "0.5", "--out", str(tmp_path / "o"), "--quiet", *extra])
    assert message in err
    assert not (tmp_path / "o").exists()


def test_cli_engine_ray_names_the_first_bad_row_and_checks_the_output_folder_first(local_ray, tmp_path, capsys):
    x, probs, y = clustered(300, 8, 6, 0.2, 5)
    x[123, 4] = np.nan
    np.save(tmp_path / "emb.npy", x)
    np.save(tmp_path / "probs.npy", probs)
    np.save(tmp_path / "y.npy", y)
    args = ["select", "--engine", "ray", "--probs", str(tmp_path / "probs.npy"), "--embeddings",
            str(tmp_path / "emb.npy"), "--labels", str(tmp_path / "y.npy"), "--keep-ratio", "0.5", "--quiet"]
    err = _one_line_exit_2(capsys, args + ["--out", str(tmp_path / "o")])
    assert "NaN or infinite values: row 123" in err
    (tmp_path / "file").write_text("not a folder")
    err = _one_line_exit_2(capsys, args + ["--out", str(tmp_path / "file" / "o")])
    assert "cannot create output folder" in err


def test_cli_engine_ray_refuses_embeddings_it_cannot_memory_map(tmp_path, capsys):
    x, probs, y = clustered(300, 8, 6, 0.2, 5)
    np.savez(tmp_path / "e.npz", emb=x)
    np.save(tmp_path / "probs.npy", probs)
    np.save(tmp_path / "y.npy", y)
    err = _one_line_exit_2(capsys, ["select", "--engine", "ray", "--probs", str(tmp_path / "probs.npy"),
                                    "--embeddings", f"{tmp_path / 'e.npz'}#emb", "--labels", str(tmp_path / "y.npy"),
                                    "--keep-ratio", "0.5", "--out", str(tmp_path / "o"), "--quiet"])
    assert "reads --embeddings from a .npy file" in err
