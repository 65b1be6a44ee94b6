"""Re-labeling learners: registry, SOP+/DivideMix beat CE at re-labeling, determinism, errors."""

import threading

import numpy as np
import pytest

from prune_core.errors import Cancelled, InputError
from prune_core.learners import (
    LearnerResult,
    fit_learner,
    get_learner,
    learner_inputs,
    list_learners,
    resolve_learner_input,
    learner_caveat,
    FROZEN_FEATURES_CAVEAT,
)
from prune_core.metrics import relabel_accuracy


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Small models on a shared 2-core machine: one thread is faster than two fighting.
    threadpoolctl also pins OpenMP, so a nested limit elsewhere restores 1, not the default."""
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    with threadpool_limits(1):
        torch.set_num_threads(1)
        yield
    torch.set_num_threads(before)


def gaussian_task(seed=0, n=600, c=5, d=16, sep=0.8, noise=0.4):
    """Gaussian clusters as stand-in embeddings, with exactly round(noise*n) symmetric flips."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(c, d)) * sep
    y = np.arange(n) % c
    x = centers[y] + rng.normal(size=(n, d))
    y_test = np.arange(300) % c
    x_test = centers[y_test] + rng.normal(size=(300, d))
    y_noisy = y.copy()
    flip = rng.choice(n, int(round(noise * n)), replace=False)
    y_noisy[flip] = (y[flip] + rng.integers(1, c, flip.size)) % c
    return x.astype(np.float32), y, y_noisy, x_test.astype(np.float32), y_test


def test_registry_lists_the_three_learners():
    names = list_learners()
    assert {"ce", "sop", "dividemix"} <= set(names)
    for name in names:
        info = get_learner(name)
        assert info.summary and info.defaults["epochs"] > 0
    with pytest.raises(InputError, match="unknown learner"):
        get_learner("magic")
    x, _, y_noisy, _, _ = gaussian_task(n=50)
    with pytest.raises(InputError, match="unknown learner"):
        fit_learner("magic", x, y_noisy)
    with pytest.raises(InputError, match="no parameter"):
        fit_learner("ce", x, y_noisy, num_classes=5, lr_u=3.0)
    with pytest.raises(InputError, match="subset"):
        fit_learner("ce", x, y_noisy, [0, 0, 1], num_classes=5)
    with pytest.raises(InputError, match="epochs"):
        fit_learner("ce", x, y_noisy, num_classes=5, epochs=0)


@pytest.mark.parametrize("task_seed", [0, 1])
def test_sop_and_dividemix_relabel_better_than_ce(task_seed):
    """40% symmetric noise: the re-labeling learners correct labels that CE memorises."""
    x, y, y_noisy, x_test, y_test = gaussian_task(seed=task_seed)
    subset = np.random.default_rng(task_seed).permutation(len(y))[:420]
    acc = {}
    for name in ("ce", "sop", "dividemix"):
        res = fit_learner(name, x, y_noisy, subset, num_classes=5, x_test=x_test, y_test=y_test, seed=0)
        assert isinstance(res, LearnerResult)
        assert res.labels_all.shape == (600,) and res.labels_all.dtype == np.int64
        assert res.probs_all.shape == (600, 5)
        assert res.test_pred.shape == (300,)
        assert res.test_acc == pytest.approx(float((res.test_pred == y_test).mean()))
        assert res.test_acc == pytest.approx(res.history[-1]["test_acc"])  # last epoch, not the best
        assert res.input == "from-scratch"
        acc[name] = (relabel_accuracy(res.labels_all, y, subset), relabel_accuracy(res.labels_all, y))
    for name in ("sop", "dividemix"):
        assert acc[name][0] > acc["ce"][0] + 0.03, acc
        assert acc[name][1] > acc["ce"][1] + 0.03, acc


@pytest.mark.parametrize("name", ["ce", "sop", "dividemix"])
def test_same_seed_same_result(name):
    x, _, y_noisy, x_test, y_test = gaussian_task(n=200)
    subset = np.arange(0, 200, 2)
    kw = dict(num_classes=5, x_test=x_test, y_test=y_test, epochs=6)
    if name == "dividemix":
        kw["warmup_epochs"] = 2
    a = fit_learner(name, x, y_noisy, subset, seed=3, **kw)
    b = fit_learner(name, x, y_noisy, subset, seed=3, **kw)
    np.testing.assert_array_equal(a.labels_all, b.labels_all)
    np.testing.assert_array_equal(a.probs_all, b.probs_all)
    assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]
    c = fit_learner(name, x, y_noisy, subset, seed=4, **kw)
    assert not np.array_equal(a.probs_all, c.probs_all)


def test_no_ground_truth_gives_none():
    x, _, y_noisy, _, _ = gaussian_task(n=100)
    res = fit_learner("ce", x, y_noisy, np.arange(50), num_classes=5, epochs=2)
    assert res.test_acc is None and res.test_pred is None
    assert relabel_accuracy(res.labels_all, None) is None
    assert relabel_accuracy(res.labels_all, None, np.arange(50)) is None


def test_progress_and_cancel():
    x, _, y_noisy, x_test, y_test = gaussian_task(n=120)
    calls = []
    fit_learner("sop", x, y_noisy, num_classes=5, x_test=x_test, y_test=y_test, epochs=4,
                progress=lambda f, m, metrics: calls.append((f, m, metrics)))
    fractions = [f for f, _, _ in calls]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert all(isinstance(m, str) and isinstance(d, dict) for _, m, d in calls)
    assert any(d.get("phase") == "epoch" and "test_acc" in d for _, _, d in calls)
    stop = threading.Event()
    stop.set()
    with pytest.raises(Cancelled):
        fit_learner("dividemix", x, y_noisy, num_classes=5, cancel=stop)


def test_dividemix_history_has_warmup_then_codivide():
    x, _, y_noisy, _, _ = gaussian_task(n=200)
    res = fit_learner("dividemix", x, y_noisy, num_classes=5, epochs=6, warmup_epochs=2, rampup_epochs=2)
    phases = [h["phase"] for h in res.history]
    assert phases == ["warmup"] * 2 + ["mixmatch"] * 4
    ramps = [h["lambda_u"] for h in res.history[2:]]
    assert ramps == sorted(ramps) and ramps[-1] == pytest.approx(get_learner("dividemix").defaults["lambda_u"])
    assert 0 < res.history[-1]["labeled_net1"] < 200
    assert res.extra["prob_clean"].shape == (200,)


def test_images_mode_on_digits_runs_each_learner():
    import prune_core as pc

    ds = pc.load_dataset("digits")
    y = ds.y_train
    subset = np.arange(0, 300)
    for name in ("ce", "sop", "dividemix"):
        extra = {"warmup_epochs": 1} if name == "dividemix" else {}
        res = fit_learner(name, ds.x_train[:400], y[:400], subset, num_classes=10, x_test=ds.x_test[:100],
                          y_test=ds.y_test[:100], input="images", device="cpu", epochs=2, **extra)
        assert res.input == "from-scratch" and res.labels_all.shape == (400,)
        assert 0.0 <= res.test_acc <= 1.0


def test_learner_input_defaults_to_from_scratch_on_every_device():
    for alias in ("auto", "images", "from-scratch"):
        assert resolve_learner_input(alias, "cpu") == "from-scratch"
    assert resolve_learner_input("embeddings") == "frozen-features"
    with pytest.raises(InputError, match="from-scratch, frozen-features"):
        resolve_learner_input("pixels", "cpu")
    assert learner_caveat("frozen-features") == FROZEN_FEATURES_CAVEAT and "pruned" in FROZEN_FEATURES_CAVEAT
    assert learner_caveat("auto") is None

    class FakeWarmup:  # learner_inputs only reads these for embeddings without a test split
        embeddings = np.zeros((5, 3), np.float32)
        model_name = "mlp"

    class FakeData:
        x_train = np.zeros((5, 2), np.float32)
        x_test = None
        y_test = None

    li = learner_inputs(FakeData(), FakeWarmup(), "frozen-features", device="cpu")
    assert li.input == "frozen-features" and li.x_train.shape == (5, 3) and li.x_test is None
    li = learner_inputs(FakeData(), FakeWarmup(), "auto", device="cpu")
    assert li.input == "from-scratch" and li.x_train.shape == (5, 2) and li.model == "mlp"


def test_from_scratch_learner_never_touches_pruned_examples():
    """Pruned rows are NaN: a learner that trained on (or normalised with) any of them would
    end with NaN weights. Every training batch must come from the kept rows only."""
    import prune_core.learners as L

    x, y, y_noisy, x_test, y_test = gaussian_task(seed=3)
    subset = np.arange(0, 600, 3)
    pruned = np.setdiff1d(np.arange(600), subset)
    x_poisoned = x.copy()
    x_poisoned[pruned] = np.nan
    seen_rows = []
    original = L._Source.__init__

    def spy(self, x_arr, kind, norm, device):
        seen_rows.append(np.asarray(x_arr).copy())
        original(self, x_arr, kind, norm, device)

    L._Source.__init__ = spy
    try:
        for name in ("ce", "sop"):
            res = fit_learner(name, x_poisoned, y_noisy, subset, num_classes=5, x_test=x_test, y_test=y_test,
                              input="from-scratch", seed=0, epochs=3)
            assert np.isfinite(res.probs_all[subset]).all()
            assert all(np.isfinite(h["train_loss"]) for h in res.history)
            assert res.test_acc > 0.5  # it learned from the kept rows
    finally:
        L._Source.__init__ = original
    # The first source of each fit is the training source: exactly the kept rows, in order.
    train_sources = seen_rows[0::3]
    for rows in train_sources:
        np.testing.assert_array_equal(rows, x[subset])
