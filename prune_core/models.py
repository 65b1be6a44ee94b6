"""Networks for the warm-up and the re-labeling learners, plus input conversion.

Every model maps a normalised float batch to logits and exposes the tensor that enters
its final linear layer as the *embedding* (the official code's `EmbeddingRecorder`):

    model(x)                         -> logits (B, C)
    model.forward_with_embedding(x)  -> (logits (B, C), embedding (B, model.embedding_dim))

Input kinds (as `Dataset.kind`):
    "grey"      x (N, H, W) uint8          -> tensor (N, 1, H, W)
    "rgb"       x (N, H, W, 3) uint8       -> tensor (N, 3, H, W)
    "features"  x (N, D) float             -> tensor (N, D)

Images are scaled to [0, 1] and normalised per channel; features are standardised per
dimension. Mean/std always come from the training split (`compute_normalization`).

Pretrained backbones: ``torchvision:ARCH[:WEIGHTS]`` (ARCH any torchvision classification
model, e.g. resnet18, resnet50, convnext_tiny) is that network with its final linear layer
replaced by a new head; the backbone is frozen (eval mode, no gradients), so a warm-up trains
the head only and the embeddings are the backbone's pooled features. WEIGHTS: ``DEFAULT``
(torchvision's recommended pretrained weights, fetched into torch's hub cache when not there
yet), a weights name of ARCH (``IMAGENET1K_V1``), ``none`` (random initialisation), or the path
of a local state_dict file (``torch.save(model.state_dict(), PATH)`` of the same ARCH).
Grey images are repeated to 3 channels and images under 32 px are upsampled to 32.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from prune_core.errors import InputError

MODEL_NAMES = ("mlp", "small_cnn", "resnet20", "resnet18", "preact_resnet18")
TORCHVISION_PREFIX = "torchvision:"
INPUT_KINDS = ("grey", "rgb", "features")

# Below this many training examples an RGB set gets the small CNN on a CPU even at 32x32.
# Measured on the CIFAR-10N dev set (3,000 images, worst labels; bench/training.py): the small
# CNN matched resnet20's warm-up test accuracy and graph purity at 15 epochs (0.487 / 0.444
# against 0.472 / 0.443) at about 4x its training speed, so it gets twice the epochs in half
# the time. Not measured above 4,000 examples here: above this size the deeper resnet20 is
# the CPU choice, as its capacity is what larger sets need.
FEW_EXAMPLES = 10_000


# --------------------------------------------------------------------------- models


class MLP(nn.Module):
    """Two hidden layers (Linear-BatchNorm-ReLU) for (N, D) feature vectors.

    Embedding: the last hidden layer, `embedding_dim` = hidden[-1] (128 by default).
    """

    def __init__(self, in_dim: int, num_classes: int, hidden: tuple[int, ...] = (256, 128)):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for h in hidden:
            layers += [nn.Linear(width, h, bias=False), nn.BatchNorm1d(h), nn.ReLU(inplace=True)]
            width = h
        self.body = nn.Sequential(*layers)
        self.embedding_dim = width
        self.fc = nn.Linear(width, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D) -> (B, embedding_dim)."""
        return self.body(x)

    def forward_with_embedding(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.embed(x)
        return self.fc(emb), emb

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.embed(x))


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SmallCNN(nn.Module):
    """Three conv blocks (32, 64, 128 channels) and global average pooling.

    Meant for small images (8x8 to 32x32, grey or RGB) and CPU budgets. The first two
    blocks end with a 2x2 max-pool (ceil mode, so tiny inputs never shrink to 0 pixels).
    Embedding: the pooled 128-d vector.
    """

    def __init__(self, in_channels: int, num_classes: int, widths: tuple[int, int, int] = (32, 64, 128)):
        super().__init__()
        w1, w2, w3 = widths
        self.body = nn.Sequential(
            *_conv_bn_relu(in_channels, w1),
            nn.MaxPool2d(2, ceil_mode=True),
            *_conv_bn_relu(w1, w2),
            nn.MaxPool2d(2, ceil_mode=True),
            *_conv_bn_relu(w2, w3),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.embedding_dim = w3
        self.fc = nn.Linear(w3, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, embedding_dim)."""
        return self.body(x)

    def forward_with_embedding(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.embed(x)
        return self.fc(emb), emb

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.embed(x))


class BasicBlock(nn.Module):
    """Post-activation residual block: conv-BN-ReLU-conv-BN, add shortcut, ReLU."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:  # projection when the shape changes
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class PreActBlock(nn.Module):
    """Pre-activation residual block (He et al. 2016): BN-ReLU-conv-BN-ReLU-conv + shortcut.

    The projection shortcut, when needed, takes the pre-activated input.
    """

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        identity = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv1(pre)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + identity


class _ResNet18Base(nn.Module):
    """ResNet-18 layout for small images: 3x3 stem, four stages of two blocks
    (64, 128, 256, 512 channels; strides 1, 2, 2, 2), global average pooling, 512-d embedding.

    `downsample_stem=True` adds a stride-2 stem and a max-pool (ImageNet style) so that
    larger inputs (> 64 px) cost about as much as 32x32 ones.
    """

    block: type[nn.Module]
    preact: bool

    def __init__(self, in_channels: int, num_classes: int, downsample_stem: bool = False):
        super().__init__()
        stem_stride = 2 if downsample_stem else 1
        stem: list[nn.Module] = [nn.Conv2d(in_channels, 64, 3, stride=stem_stride, padding=1, bias=False)]
        if not self.preact:  # pre-activation nets normalise inside the first block instead
            stem += [nn.BatchNorm2d(64), nn.ReLU(inplace=True)]
        if downsample_stem:
            stem.append(nn.MaxPool2d(3, stride=2, padding=1))
        self.stem = nn.Sequential(*stem)
        stages = []
        cin = 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages.append(nn.Sequential(self.block(cin, cout, stride), self.block(cout, cout, 1)))
            cin = cout
        self.stages = nn.Sequential(*stages)
        # Pre-activation: the last block's output has not been normalised yet.
        self.final_act = nn.Sequential(nn.BatchNorm2d(512), nn.ReLU(inplace=True)) if self.preact else nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)  # = the official 4x4 avg-pool at 32x32
        self.embedding_dim = 512
        self.fc = nn.Linear(512, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, 512)."""
        out = self.final_act(self.stages(self.stem(x)))
        return torch.flatten(self.pool(out), 1)

    def forward_with_embedding(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.embed(x)
        return self.fc(emb), emb

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.embed(x))


class ResNet18(_ResNet18Base):
    """ResNet-18 adapted to 32x32 inputs (3x3 stem, no max-pool), BasicBlock [2, 2, 2, 2]."""

    block = BasicBlock
    preact = False


class PreActResNet18(_ResNet18Base):
    """PreActResNet-18, the paper's CIFAR network: pre-activation blocks [2, 2, 2, 2], 512-d."""

    block = PreActBlock
    preact = True


class ResNet20(nn.Module):
    """CIFAR ResNet-20 (He et al. 2016, section 4.2): 3x3 stem with 16 channels, three stages of
    three post-activation BasicBlocks (16, 32, 64 channels; strides 1, 2, 2), global average
    pooling, 64-d embedding; 0.27M parameters, about 41 MFLOPs per 32x32 image (ResNet-18: 556).

    The network sized for CPUs: on 2 cores it trains about 30x faster than ResNet-18 per image
    (bench/training.py). Projection shortcuts (1x1 conv + BN) where the shape changes.
    """

    def __init__(self, in_channels: int, num_classes: int, widths: tuple[int, int, int] = (16, 32, 64),
                 blocks_per_stage: int = 3):
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn_relu(in_channels, widths[0]))
        stages = []
        cin = widths[0]
        for i, cout in enumerate(widths):
            blocks = [BasicBlock(cin, cout, 2 if i > 0 else 1)]
            blocks += [BasicBlock(cout, cout, 1) for _ in range(blocks_per_stage - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.embedding_dim = cin
        self.fc = nn.Linear(cin, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, embedding_dim)."""
        return torch.flatten(self.pool(self.stages(self.stem(x))), 1)

    def forward_with_embedding(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.embed(x)
        return self.fc(emb), emb

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.embed(x))


def parse_torchvision_model(name: str) -> tuple[str, str]:
    """(ARCH, WEIGHTS) of ``torchvision:ARCH[:WEIGHTS]`` (WEIGHTS default "DEFAULT"; a path may hold ':').

    Raises InputError for an ARCH that is not a torchvision classification model.
    """
    import torchvision.models as tvm

    arch, _, weights = name[len(TORCHVISION_PREFIX):].partition(":")
    arch = arch.strip().lower()
    known = tvm.list_models(module=tvm)
    if arch not in known:
        raise InputError(f"unknown torchvision model {arch!r} in {name!r}; use torchvision:ARCH[:WEIGHTS] with ARCH "
                         f"a classification model such as resnet18, resnet50, convnext_tiny, efficientnet_b0")
    return arch, weights.strip() or "DEFAULT"


def _is_weights_file(weights: str) -> bool:
    return "/" in weights or "\\" in weights or weights.lower().endswith((".pth", ".pt", ".bin"))


def torchvision_state_dict(arch: str, weights: str) -> dict | None:
    """The state_dict for ``torchvision:ARCH:WEIGHTS`` (None for "none"), on the CPU.

    A local file is read with torch.load(weights_only=True) (a {"state_dict": ...} wrapper is
    unwrapped). Named weights come from torchvision's URL through torch's hub cache. Raises
    InputError in one line: no such file, not a state_dict, unknown weights name, or weights
    that cannot be fetched (with the way to use a local file instead).
    """
    import torchvision.models as tvm

    from .validation import one_line

    if weights.lower() == "none":
        return None
    if _is_weights_file(weights):
        from pathlib import Path

        path = Path(weights).expanduser()
        if not path.is_file():
            raise InputError(f"torchvision:{arch}: no such weights file: {weights}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - pickle, zip and torch errors of many kinds
            raise InputError(f"torchvision:{arch}: {path} is not a torch state_dict file "
                             f"({type(e).__name__}: {one_line(e)[:200]})") from None
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise InputError(f"torchvision:{arch}: {path} holds a {type(state).__name__}, not a state_dict; "
                             "save it with torch.save(model.state_dict(), PATH)")
        return state
    enum = tvm.get_model_weights(arch)
    try:
        chosen = enum.DEFAULT if weights.upper() == "DEFAULT" else enum[weights.upper()]
    except KeyError:
        raise InputError(f"torchvision:{arch}: unknown weights {weights!r}; use DEFAULT, none, a local file or one of "
                         f"{', '.join(w.name for w in enum)}") from None
    try:
        return torch.hub.load_state_dict_from_url(chosen.url, map_location="cpu", progress=False, check_hash=True)
    except Exception as e:  # noqa: BLE001 - URLError, HTTPError, timeouts, a bad hash
        file_name = chosen.url.rsplit("/", 1)[-1]
        raise InputError(f"torchvision:{arch}: cannot fetch the pretrained weights {chosen} "
                         f"({type(e).__name__}: {one_line(e)[:160]}); without network, download {chosen.url} "
                         f"elsewhere and use torchvision:{arch}:/path/to/{file_name}") from None


def _replace_final_linear(net: nn.Module, arch: str) -> int:
    """Replace the classifier's last nn.Linear with nn.Identity; returns its in_features."""
    for attr in ("fc", "classifier", "head", "heads"):
        layer = getattr(net, attr, None)
        if isinstance(layer, nn.Linear):
            setattr(net, attr, nn.Identity())
            return layer.in_features
        if isinstance(layer, nn.Sequential) and len(layer) and isinstance(layer[-1], nn.Linear):
            in_features = layer[-1].in_features
            layer[-1] = nn.Identity()
            return in_features
    raise InputError(f"torchvision:{arch}: no final linear layer found to put a new head on; choose another model")


class TorchvisionBackbone(nn.Module):
    """A torchvision classification network, frozen, with a new linear head of C outputs.

    The backbone stays in eval mode and gets no gradients (training the module trains the
    head only); embedding: the input of its final linear layer (e.g. 512-d for resnet18,
    2048-d for resnet50). Input (B, 1 or 3, H, W): grey is repeated to 3 channels, images
    under 32 px are upsampled (bilinear) to 32.
    """

    def __init__(self, name: str, num_classes: int):
        super().__init__()
        import torchvision.models as tvm

        arch, weights = parse_torchvision_model(name)
        state = torchvision_state_dict(arch, weights)
        net = tvm.get_model(arch, weights=None)
        if state is not None:
            try:
                net.load_state_dict(state)
            except Exception as e:  # noqa: BLE001 - missing / unexpected keys, shape mismatches
                from .validation import one_line

                raise InputError(f"torchvision:{arch}: the weights do not fit this architecture "
                                 f"({one_line(e)[:200]})") from None
        self.embedding_dim = _replace_final_linear(net, arch)
        net.requires_grad_(False)
        self.backbone = net.eval()
        self.fc = nn.Linear(self.embedding_dim, num_classes)

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()  # frozen batch-norm statistics and no dropout, always
        return self

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1 or 3, H, W) -> (B, embedding_dim), without gradients."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if min(x.shape[-2:]) < 32:
            x = F.interpolate(x, size=(max(32, x.shape[-2]), max(32, x.shape[-1])), mode="bilinear",
                              align_corners=False)
        with torch.no_grad():
            return torch.flatten(self.backbone(x), 1)

    def forward_with_embedding(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.embed(x)
        return self.fc(emb), emb

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.embed(x))


# --------------------------------------------------------------------------- factory


def infer_kind(x: np.ndarray) -> str:
    """Input kind of a training array: (N, D) -> "features", (N, H, W) -> "grey",
    (N, H, W, 3) -> "rgb". Anything else raises InputError."""
    if x.ndim == 2:
        return "features"
    if x.ndim == 3:
        return "grey"
    if x.ndim == 4 and x.shape[-1] == 3:
        return "rgb"
    raise InputError(f"x_train has shape {tuple(x.shape)}; expected (N,D), (N,H,W) or (N,H,W,3)")


def _check_kind(kind: str) -> None:
    if kind not in INPUT_KINDS:
        raise InputError(f"unknown input kind {kind!r}; expected one of {', '.join(INPUT_KINDS)}")


def resolve_model_name(name: str, kind: str, input_shape: tuple[int, ...], num_examples: int | None = None,
                       device_type: str = "cpu") -> str:
    """Resolve "auto" (or check an explicit name) for one input kind and device.

    Rule for "auto":
      - "features"                                   -> "mlp"
      - "grey" images (any size)                     -> "small_cnn"
      - "rgb" on CUDA, 32x32 or larger                -> "preact_resnet18" (the paper's network)
      - "rgb" on a CPU (or MPS) smaller than 32x32,
        or fewer than `FEW_EXAMPLES` (10,000)        -> "small_cnn" (see FEW_EXAMPLES)
      - "rgb" on a CPU, 32x32 or larger, more        -> "resnet20": sized for that hardware,
        examples                                        ~30x ResNet-18's training speed on 2 cores
                                                        (bench/training.py, docs/benchmarks.md)

    input_shape: the shape of one example, e.g. (D,), (H, W) or (H, W, 3).
    device_type: "cpu" | "cuda" | "mps" (torch.device.type of the training device).
    An unknown name, or an image model for features (and vice versa), raises InputError.
    """
    _check_kind(kind)
    if name == "auto":
        if kind == "features":
            return "mlp"
        if kind == "grey":
            return "small_cnn"
        h, w = input_shape[0], input_shape[1]
        if min(h, w) >= 32 and device_type == "cuda":
            return "preact_resnet18"
        if min(h, w) < 32 or (num_examples is not None and num_examples < FEW_EXAMPLES):
            return "small_cnn"
        return "resnet20"
    if isinstance(name, str) and name.startswith(TORCHVISION_PREFIX):
        if kind == "features":
            raise InputError(f"model {name!r} takes images, not feature vectors; use 'auto' or 'mlp'")
        parse_torchvision_model(name)
        return name
    if name not in MODEL_NAMES:
        raise InputError(f"unknown model {name!r}; expected auto, one of {', '.join(MODEL_NAMES)} or "
                         "torchvision:ARCH[:WEIGHTS]")
    if (kind == "features") != (name == "mlp"):
        what = "feature vectors" if kind == "features" else f"{kind} images"
        raise InputError(f"model {name!r} does not fit {what}; use 'auto'")
    return name


def build_model(name: str, input_kind: str, input_shape: tuple[int, ...], num_classes: int,
                num_examples: int | None = None, device_type: str = "cpu") -> nn.Module:
    """Build a freshly initialised network.

    name: one of MODEL_NAMES, "auto" (see `resolve_model_name`) or "torchvision:ARCH[:WEIGHTS]"
        (pretrained, frozen backbone with a new head; see the module docstring).
    input_kind: "grey" | "rgb" | "features".
    input_shape: one example's shape: (D,) features, (H, W) grey, (H, W, 3) rgb.
    num_classes: C, the width of the logits.
    Uses the global torch RNG for the initial weights: seed it (or fork it) first.
    """
    name = resolve_model_name(name, input_kind, tuple(input_shape), num_examples, device_type)
    if num_classes < 2:
        raise InputError(f"num_classes must be at least 2, got {num_classes}")
    if name.startswith(TORCHVISION_PREFIX):
        return TorchvisionBackbone(name, num_classes)
    if name == "mlp":
        return MLP(int(input_shape[0]), num_classes)
    in_channels = 1 if input_kind == "grey" else 3
    if name == "small_cnn":
        return SmallCNN(in_channels, num_classes)
    if name == "resnet20":
        return ResNet20(in_channels, num_classes)
    downsample = min(input_shape[0], input_shape[1]) > 64
    cls = ResNet18 if name == "resnet18" else PreActResNet18
    return cls(in_channels, num_classes, downsample_stem=downsample)


def to_device(net: nn.Module, device: str | torch.device) -> nn.Module:
    """Move a network to `device`; convolutional nets also switch to the channels_last memory
    format, which the image batches of `normalize_tensor` use (1.1-1.3x faster training on
    2 CPU cores for resnet20 / small_cnn, bench/training.py)."""
    if isinstance(net, MLP):
        return net.to(device)
    return net.to(device=device, memory_format=torch.channels_last)


# --------------------------------------------------------------------------- input conversion


@dataclass(frozen=True)
class Normalization:
    """Per-channel (images, shape (C,)) or per-dimension (features, shape (D,)) mean and std,
    in the units after scaling (images: [0, 1])."""

    mean: np.ndarray
    std: np.ndarray

    def to_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}


def _image_scale(x: np.ndarray) -> float:
    # uint8 images live in [0, 255]; float images are taken to be in [0, 1] already.
    return 255.0 if x.dtype == np.uint8 else 1.0


def compute_normalization(x_train: np.ndarray, kind: str, chunk: int = 4096) -> Normalization:
    """Mean/std of the training inputs, computed in chunks (bounded memory at N = 1M).

    x_train: (N, H, W) / (N, H, W, 3) images or (N, D) features.
    Returns Normalization with (1,) / (3,) / (D,) float32 arrays; a std below 1e-6
    (constant channel or dimension) is replaced by 1 so nothing divides by zero.
    """
    _check_kind(kind)
    n = len(x_train)
    if n == 0:
        raise InputError("the training set is empty")
    channels = x_train.shape[1] if kind == "features" else (1 if kind == "grey" else 3)
    total = np.zeros(channels, np.float64)
    total_sq = np.zeros(channels, np.float64)
    count = 0
    scale = 1.0 if kind == "features" else _image_scale(x_train)
    for start in range(0, n, chunk):
        part = np.asarray(x_train[start:start + chunk], dtype=np.float64) / scale
        flat = part.reshape(-1, channels)
        total += flat.sum(0)
        total_sq += (flat * flat).sum(0)
        count += flat.shape[0]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean * mean, 0.0))
    std = np.where(std < 1e-6, 1.0, std)
    return Normalization(mean.astype(np.float32), std.astype(np.float32))


def normalize_tensor(x: torch.Tensor, kind: str, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Raw batch tensor (as stored: uint8 images or float features, any device) -> float32
    model input: images (B, C, H, W) scaled to [0, 1] and normalised, features (B, D) standardised.
    mean, std: float32 tensors of shape (C,) or (D,) on the same device."""
    if kind == "features":
        return (x.float() - mean) / std
    scale = 255.0 if x.dtype == torch.uint8 else 1.0
    x = x.float() / scale
    x = x.unsqueeze(1) if kind == "grey" else x.permute(0, 3, 1, 2)  # NHWC -> NCHW view
    # channels_last: the NHWC storage as it comes, and the layout oneDNN's CPU convolutions
    # prefer (bench/training.py); the logical shape stays (B, C, H, W).
    return ((x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)).contiguous(memory_format=torch.channels_last)


def to_tensor_batch(x_np_batch: np.ndarray, kind: str, mean: np.ndarray, std: np.ndarray,
                    device: str | torch.device = "cpu") -> torch.Tensor:
    """numpy batch -> normalised float32 torch tensor on `device`.

    x_np_batch: (B, H, W) uint8 grey -> (B, 1, H, W); (B, H, W, 3) uint8 RGB -> (B, 3, H, W);
    (B, D) features -> (B, D). mean/std: from `compute_normalization` on the training split.
    """
    _check_kind(kind)
    x = torch.from_numpy(np.ascontiguousarray(x_np_batch)).to(device)
    mean_t = torch.as_tensor(np.asarray(mean, np.float32), device=device)
    std_t = torch.as_tensor(np.asarray(std, np.float32), device=device)
    return normalize_tensor(x, kind, mean_t, std_t)
