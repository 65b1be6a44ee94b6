"""Pretrained torchvision backbones with the network off: the one-line error when weights
cannot be fetched, and a warm-up from a local weights file (a state_dict the test writes from
a randomly initialised torchvision model)."""

from urllib.error import URLError

import numpy as np
import pytest
import torch
import torchvision

from prune_core.cli import main
from prune_core.data import Dataset
from prune_core.errors import InputError
from prune_core.models import build_model, resolve_model_name
from prune_core.training import warmup


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No weights in the hub cache and no network: fetching raises as urllib does offline."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def no_network(url, *args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)


def test_offline_weights_give_one_line_with_the_local_file_hint(offline):
    with pytest.raises(InputError) as info:
        build_model("torchvision:resnet18", "rgb", (32, 32, 3), 10)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("torchvision:resnet18: cannot fetch the pretrained weights ResNet18_Weights.IMAGENET1K_V1")
    assert "torchvision:resnet18:/path/to/resnet18-f37072fd.pth" in message


def test_offline_run_exits_2_with_one_line(offline, tmp_path, capsys):
    rc = main(["run", "--data", "digits", "--model", "torchvision:resnet18", "--keep-ratio", "0.5",
               "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "cannot fetch the pretrained weights" in err, err


def small_rgb_set(n=60, classes=3):
    rng = np.random.default_rng(0)
    y = np.arange(n) % classes
    x = rng.integers(0, 256, size=(n, 16, 16, 3), dtype=np.uint8)
    x[..., 0] = np.clip(x[..., 0].astype(int) // 2 + 80 * y[:, None, None], 0, 255)  # class-dependent colour
    return Dataset(x_train=x, y_train=y, num_classes=classes, class_names=["a", "b", "c"])


def test_warmup_with_a_local_weights_file_trains_the_head_only(tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18_random.pth"
    torch.save(reference.state_dict(), path)
    ds = small_rgb_set()
    wu = warmup(ds, ds.y_train, model=f"torchvision:resnet18:{path}", epochs=2, batch_size=20, device="cpu", seed=0)
    assert wu.model_name == f"torchvision:resnet18:{path}" and wu.config["epochs"] == 2 and wu.config["lr"] == 0.05
    assert wu.embeddings.shape == (60, 512) and wu.probs.shape == (60, 3)
    np.testing.assert_allclose(wu.probs.sum(axis=1), 1.0, atol=1e-5)
    # The backbone is the file's, unchanged by training (frozen, batch-norm statistics included).
    trained = wu.model.backbone.state_dict()
    for name, value in reference.state_dict().items():
        if not name.startswith("fc."):
            assert torch.equal(trained[name], value), name
    # The head did train: it is not its seeded initialisation any more.
    torch.manual_seed(0)
    fresh = build_model(f"torchvision:resnet18:{path}", "rgb", (16, 16, 3), 3)
    assert not torch.equal(fresh.fc.weight, wu.model.fc.weight)
    # Grey images are repeated to three channels.
    grey = Dataset(x_train=ds.x_train[..., 0], y_train=ds.y_train, num_classes=3, class_names=["a", "b", "c"])
    assert warmup(grey, grey.y_train, model=f"torchvision:resnet18:{path}", epochs=1, device="cpu").embeddings.shape == (60, 512)


def test_bad_backbone_specs(tmp_path):
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), tmp_path / "r34.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    cases = {
        f"torchvision:resnet18:{tmp_path / 'r34.pth'}": "the weights do not fit this architecture",
        f"torchvision:resnet18:{tmp_path / 'junk.pth'}": "is not a torch state_dict file",
        f"torchvision:resnet18:{tmp_path / 'missing.pth'}": "no such weights file",
        "torchvision:resnet18:IMAGENET9K": "unknown weights 'IMAGENET9K'; use DEFAULT, none, a local file or one of "
                                           "IMAGENET1K_V1",
        "torchvision:notanet": "unknown torchvision model 'notanet'",
    }
    for spec, message in cases.items():
        with pytest.raises(InputError) as info:
            build_model(spec, "rgb", (32, 32, 3), 10)
        assert message in str(info.value) and "\n" not in str(info.value), (spec, str(info.value))
    with pytest.raises(InputError, match="takes images, not feature vectors"):
        resolve_model_name("torchvision:resnet18", "features", (64,))
    assert build_model("torchvision:resnet18:none", "grey", (8, 8), 4).embedding_dim == 512
