"""Models and the warm-up stage: shapes, determinism, cancel, input errors, digits accuracy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from prune_core.errors import Cancelled, InputError
from prune_core.models import (
    MODEL_NAMES,
    build_model,
    compute_normalization,
    resolve_model_name,
    to_device,
    to_tensor_batch,
)
from prune_core.training import WarmupResult, predict, resolve_device, warmup


@pytest.fixture(autouse=True)
def _one_thread():
    # These nets are tiny: a second intra-op thread gains little on a quiet 2-core box and,
    # when other processes share the cores, OpenMP spin-waiting made digits 15x slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------- tiny datasets


def make_features(n=200, num_classes=3, dim=10, seed=0, n_test=60):
    """Gaussian blobs, well separated: (n, dim) float32."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, (num_classes, dim))
    y = np.arange(n + n_test) % num_classes
    x = (centres[y] + rng.normal(0, 1, (n + n_test, dim))).astype(np.float32)
    return SimpleNamespace(x_train=x[:n], y_train=y[:n].astype(np.int64), y_train_clean=None,
                           x_test=x[n:], y_test=y[n:].astype(np.int64), num_classes=num_classes,
                           class_names=[str(c) for c in range(num_classes)], name="blobs", kind="features")


def make_grey(n=150, num_classes=3, size=8, seed=0, with_test=True):
    """(n, size, size) uint8: class c lights up one quadrant, plus noise."""
    rng = np.random.default_rng(seed)
    total = n + (45 if with_test else 0)
    y = np.arange(total) % num_classes
    x = rng.integers(0, 60, (total, size, size))
    half = size // 2
    for c in range(num_classes):
        r, q = divmod(c, 2)
        x[y == c, r * half:(r + 1) * half, q * half:(q + 1) * half] += 180
    x = x.clip(0, 255).astype(np.uint8)
    test = (x[n:], y[n:].astype(np.int64)) if with_test else (None, None)
    return SimpleNamespace(x_train=x[:n], y_train=y[:n].astype(np.int64), y_train_clean=None,
                           x_test=test[0], y_test=test[1], num_classes=num_classes,
                           class_names=[str(c) for c in range(num_classes)], name="quadrants", kind="grey")


# --------------------------------------------------------------------------- models


@pytest.mark.parametrize("name,kind,shape", [
    ("mlp", "features", (10,)),
    ("small_cnn", "grey", (8, 8)),
    ("small_cnn", "rgb", (16, 16, 3)),
    ("resnet18", "rgb", (32, 32, 3)),
    ("resnet20", "rgb", (32, 32, 3)),
    ("resnet20", "grey", (16, 16)),
    ("preact_resnet18", "rgb", (32, 32, 3)),
    ("preact_resnet18", "grey", (32, 32)),
])
def test_model_gives_logits_and_embedding(name, kind, shape):
    torch.manual_seed(0)
    model = build_model(name, kind, shape, num_classes=5).eval()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2,) + shape).astype(np.float32) if kind == "features" else \
        rng.integers(0, 256, (2,) + shape).astype(np.uint8)
    norm = compute_normalization(x, kind)
    batch = to_tensor_batch(x, kind, norm.mean, norm.std)
    with torch.no_grad():
        logits, emb = model.forward_with_embedding(batch)
        plain = model(batch)
    assert logits.shape == (2, 5)
    assert emb.shape == (2, model.embedding_dim)
    assert model.embedding_dim == {"mlp": 128, "small_cnn": 128, "resnet20": 64}.get(name, 512)
    assert torch.allclose(plain, logits)
    if kind != "features":  # the channels_last path gives the same outputs
        cl = to_device(model, "cpu")
        assert batch.is_contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            assert torch.allclose(cl(batch), plain, atol=1e-5)


def test_resnet20_is_the_cifar_resnet_and_the_cpu_default():
    net = build_model("resnet20", "rgb", (32, 32, 3), 10)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 19  # stem + 3 stages x 3 blocks x 2 convs; + fc = 20 weighted layers
    assert 0.26e6 < sum(p.numel() for p in net.parameters()) < 0.28e6  # He et al.: 0.27M
    assert resolve_model_name("auto", "rgb", (32, 32, 3), num_examples=50_000) == "resnet20"
    assert resolve_model_name("auto", "rgb", (32, 32, 3), num_examples=3_000) == "small_cnn"
    for n in (500, 50_000):
        assert resolve_model_name("auto", "rgb", (32, 32, 3), num_examples=n, device_type="cuda") == "preact_resnet18"
    from prune_core.training import default_hyperparameters

    assert default_hyperparameters("small_cnn", "rgb")[0] == 30 and default_hyperparameters("small_cnn", "grey")[0] == 15


def test_to_tensor_batch_layout_and_normalisation():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (6, 5, 4, 3)).astype(np.uint8)
    norm = compute_normalization(rgb, "rgb")
    assert norm.mean.shape == (3,) and norm.std.shape == (3,)
    t = to_tensor_batch(rgb, "rgb", norm.mean, norm.std)
    assert t.shape == (6, 3, 5, 4) and t.dtype == torch.float32
    assert torch.allclose(t.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    # Channel 1 of the tensor is channel 1 of the image, scaled to [0, 1].
    expected = (rgb[:, :, :, 1] / 255.0 - norm.mean[1]) / norm.std[1]
    assert np.allclose(t[:, 1].numpy(), expected, atol=1e-5)

    grey = rng.integers(0, 256, (4, 8, 8)).astype(np.uint8)
    gnorm = compute_normalization(grey, "grey")
    assert to_tensor_batch(grey, "grey", gnorm.mean, gnorm.std).shape == (4, 1, 8, 8)

    feats = rng.normal(3.0, 2.0, (50, 7)).astype(np.float32)
    feats[:, 2] = 1.0  # a constant column must not divide by zero
    fnorm = compute_normalization(feats, "features")
    ft = to_tensor_batch(feats, "features", fnorm.mean, fnorm.std)
    assert torch.isfinite(ft).all()
    assert torch.allclose(ft.mean(0), torch.zeros(7), atol=1e-4)


def test_resolve_model_name_rule_and_errors():
    assert resolve_model_name("auto", "features", (64,)) == "mlp"
    assert resolve_model_name("auto", "grey", (28, 28)) == "small_cnn"
    assert resolve_model_name("auto", "rgb", (16, 16, 3)) == "small_cnn"
    assert resolve_model_name("auto", "rgb", (32, 32, 3), num_examples=500) == "small_cnn"
    assert resolve_model_name("auto", "rgb", (32, 32, 3), num_examples=50_000) == "resnet20"
    assert resolve_model_name("preact_resnet18", "rgb", (32, 32, 3)) == "preact_resnet18"
    assert set(MODEL_NAMES) == {"mlp", "small_cnn", "resnet20", "resnet18", "preact_resnet18"}
    with pytest.raises(InputError, match="unknown model"):
        resolve_model_name("vgg", "rgb", (32, 32, 3))
    with pytest.raises(InputError):
        build_model("nope", "grey", (8, 8), 3)
    with pytest.raises(InputError):
        build_model("resnet18", "features", (10,), 3)


# --------------------------------------------------------------------------- warm-up


def test_warmup_on_features_shapes_and_progress():
    ds = make_features()
    calls = []
    result = warmup(ds, ds.y_train, epochs=4, device="cpu", seed=0,
                    progress=lambda frac, msg, metrics: calls.append((frac, msg, metrics)))
    n, c = 200, 3
    assert isinstance(result, WarmupResult)
    assert result.model_name == "mlp" and result.device == "cpu" and result.epochs == 4
    assert result.probs.shape == (n, c) and result.probs.dtype == np.float32
    assert np.allclose(result.probs.sum(1), 1.0, atol=1e-5)
    assert result.embeddings.shape == (n, 128) and result.embeddings.dtype == np.float32
    assert np.isfinite(result.embeddings).all()
    assert result.losses.shape == (n,) and result.losses.dtype == np.float32 and (result.losses >= 0).all()
    assert result.forgetting.shape == (n,) and result.forgetting.dtype == np.int64
    assert (result.forgetting >= 0).all()
    assert len(result.history) == 4
    assert {"epoch", "train_loss", "train_acc", "test_acc", "lr"} <= set(result.history[0])
    assert result.history[-1]["train_acc"] > 0.8  # chance is 1/3
    assert result.test_acc is not None and result.test_acc > 0.8
    assert result.test_probs.shape == (60, c)
    epoch_calls = [m for _, _, m in calls if m.get("phase") == "epoch"]
    assert [m["epoch"] for m in epoch_calls] == [1, 2, 3, 4]
    fractions = [f for f, _, _ in calls]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert set(result.to_arrays()) == {"probs", "embeddings", "losses", "forgetting", "test_probs"}
    assert json.loads(json.dumps(result.meta()))["model_name"] == "mlp"
    # Losses are the CE of the returned probabilities against the training labels.
    assert np.allclose(result.losses, -np.log(result.probs[np.arange(n), ds.y_train]), atol=1e-4)


def test_warmup_on_grey_images_with_noisy_labels():
    ds = make_grey(with_test=False)
    rng = np.random.default_rng(1)
    y_noisy = ds.y_train.copy()
    flip = rng.random(len(y_noisy)) < 0.2
    y_noisy[flip] = (y_noisy[flip] + 1) % 3
    result = warmup(ds, y_noisy, epochs=3, device="cpu", seed=0)
    assert result.model_name == "small_cnn"
    assert result.probs.shape == (150, 3) and result.embeddings.shape == (150, 128)
    assert np.allclose(result.probs.sum(1), 1.0, atol=1e-5)
    assert result.test_acc is None and result.test_probs is None
    assert result.history[-1]["test_acc"] is None
    assert (result.probs.argmax(1) == ds.y_train).mean() > 0.6  # clean agreement, chance 1/3
    # predict() reproduces the deterministic inference pass.
    probs, emb = predict(result.model, ds.x_train, "grey", result.norm, device=result.device, batch_size=64)
    assert np.allclose(probs, result.probs, atol=1e-5) and np.allclose(emb, result.embeddings, atol=1e-4)


@pytest.mark.parametrize("model,size,n", [("small_cnn", 16, 40), ("resnet18", 32, 8), ("resnet20", 32, 8)])
def test_warmup_on_rgb_images_with_crop_and_flip(model, size, n):
    rng = np.random.default_rng(0)
    y = np.arange(n) % 2
    x = rng.integers(0, 100, (n, size, size, 3))
    x[y == 1, :, :, 0] += 150  # class 1 is red
    ds = SimpleNamespace(x_train=x.astype(np.uint8), num_classes=2, kind="rgb", x_test=None, y_test=None)
    result = warmup(ds, y, epochs=1, model=model, batch_size=8, device="cpu")
    assert result.config["augment"] is True
    assert result.probs.shape == (n, 2)
    assert result.embeddings.shape == (n, {"small_cnn": 128, "resnet20": 64}.get(model, 512))
    assert np.isfinite(result.embeddings).all()


def test_same_seed_gives_identical_outputs():
    ds = make_grey(n=90, with_test=False)
    a = warmup(ds, ds.y_train, epochs=2, batch_size=32, device="cpu", seed=3)
    b = warmup(ds, ds.y_train, epochs=2, batch_size=32, device="cpu", seed=3)
    c = warmup(ds, ds.y_train, epochs=2, batch_size=32, device="cpu", seed=4)
    assert np.array_equal(a.probs, b.probs)
    assert np.array_equal(a.embeddings, b.embeddings)
    assert np.array_equal(a.forgetting, b.forgetting)
    assert not np.array_equal(a.probs, c.probs)


def test_strong_embed_pass_is_seeded_and_differs_from_eval():
    ds = make_grey(n=60, with_test=False)
    kw = dict(epochs=1, batch_size=32, device="cpu", seed=0)
    eval_pass = warmup(ds, ds.y_train, **kw)
    strong = warmup(ds, ds.y_train, embed_pass="strong", **kw)
    strong_again = warmup(ds, ds.y_train, embed_pass="strong", **kw)
    assert np.array_equal(strong.probs, strong_again.probs)
    assert not np.allclose(strong.embeddings, eval_pass.embeddings)
    assert np.allclose(strong.probs.sum(1), 1.0, atol=1e-5)
    feats = make_features(n=40, n_test=0)
    out = warmup(feats, feats.y_train, epochs=1, device="cpu", embed_pass="strong")
    assert out.embeddings.shape == (40, 128) and np.isfinite(out.embeddings).all()


def test_cancel_raises_cancelled():
    ds = make_features()
    already = threading.Event()
    already.set()
    with pytest.raises(Cancelled):
        warmup(ds, ds.y_train, epochs=2, device="cpu", cancel=already)

    # Set during training (from the progress callback): stops before the next batch.
    during = threading.Event()
    with pytest.raises(Cancelled):
        warmup(ds, ds.y_train, epochs=5, device="cpu", cancel=during,
               progress=lambda *_: during.set())


def test_input_errors():
    ds = make_features(n=30, n_test=0)
    with pytest.raises(InputError, match="device"):
        warmup(ds, ds.y_train, epochs=1, device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA"):
            warmup(ds, ds.y_train, epochs=1, device="cuda")
        with pytest.raises(InputError):
            resolve_device("cuda:0")
    with pytest.raises(InputError, match="one label per example"):
        warmup(ds, ds.y_train[:-1], epochs=1, device="cpu")
    with pytest.raises(InputError, match="outside"):
        warmup(ds, np.full(30, 3), epochs=1, device="cpu")
    with pytest.raises(InputError, match="embed_pass"):
        warmup(ds, ds.y_train, epochs=1, device="cpu", embed_pass="tta")
    with pytest.raises(InputError, match="epochs"):
        warmup(ds, ds.y_train, epochs=0, device="cpu")
    with pytest.raises(InputError, match="whole number"):
        warmup(ds, ds.y_train, epochs=2.5, device="cpu")
    with pytest.raises(InputError, match="unknown model"):
        warmup(ds, ds.y_train, epochs=1, model="vgg", device="cpu")
    bad = make_features(n=30, n_test=0)
    bad.x_train[3, 2] = np.nan
    with pytest.raises(InputError, match="NaN"):
        warmup(bad, bad.y_train, epochs=1, device="cpu")
    assert str(resolve_device("cpu")) == "cpu"


def test_lone_last_example_is_merged_into_previous_batch():
    # N % batch_size == 1 would give BatchNorm a batch of one example in train mode.
    ds = make_features(n=33, n_test=0)
    result = warmup(ds, ds.y_train, epochs=2, batch_size=16, device="cpu")
    assert result.probs.shape == (33, 3)


def test_digits_with_40pct_symmetric_noise_default_epochs():
    data = pytest.importorskip("prune_core.data")
    ds = data.load_dataset("digits")
    rng = np.random.default_rng(0)
    y_noisy = ds.y_train.copy()
    flip = rng.random(len(y_noisy)) < 0.4
    y_noisy[flip] = rng.integers(0, ds.num_classes, flip.sum())  # symmetric: any class
    start = time.perf_counter()
    result = warmup(ds, y_noisy, device="cpu", seed=0)
    seconds = time.perf_counter() - start
    print(f"digits warm-up: {result.model_name}, {result.epochs} epochs, {seconds:.1f} s, "
          f"test acc {result.test_acc:.3f}")
    assert result.test_acc > 0.6
    assert len(result.history) == result.epochs


def test_random_shift_is_a_crop_of_the_padded_batch():
    from prune_core.training import random_erase, random_shift
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 8, 8) + 10  # no zeros, so padding and erased pixels are visible
    out = random_shift(x, 2, gen)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for b in range(4):
        assert any(torch.equal(padded[b, :, i:i + 8, j:j + 8], out[b]) for i in range(5) for j in range(5))
    erased = random_erase(x, gen)
    holes = (erased == 0).all(1).sum(dim=(1, 2))  # per image, pixels zeroed in every channel
    assert ((holes > 0) & (holes <= 16)).all()  # a 4x4 square (half of 8 px), clipped at borders


def test_import_sets_passive_openmp_wait_unless_user_chose():
    # Spinning OpenMP barriers made the warm-up 18x slower next to busy processes
    # (bench/warmup_contention.py); the package must default to passive waiting.
    probe = "import os, prune_core; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "PASSIVE"
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "ACTIVE"
