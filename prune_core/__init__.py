"""prune_core: robust data pruning under label noise (Prune4ReL), no Streamlit inside.

Flat public API (DESIGN 4.4)::

    import prune_core as pc
    ds = pc.load_dataset("digits")
    y_noisy = pc.inject_noise(ds.y_train, "sym", 0.4, num_classes=ds.num_classes, seed=0)
    wu = pc.warmup(ds, y_noisy, epochs=10, device="auto", seed=0)
    g = pc.build_graph(wu.embeddings, k=50, tau=0.975)
    sel = pc.select("prune4rel", keep_ratio=0.5, probs=wu.probs, embeddings=wu.embeddings,
                    labels=y_noisy, graph=g, seed=0)
    pc.list_methods()
"""

from .errors import Cancelled, InputError
from .graph import build_graph
from .scores import confidence
from .selection import Selection, list_methods, select

__version__ = "0.1.0"

__all__ = [
    "Cancelled", "InputError", "Selection", "build_graph", "confidence", "list_methods", "select",
    "load_dataset", "inject_noise", "apply_noise", "warmup",
]


def __getattr__(name):
    # Data, noise and warm-up import torch/torchvision: load them on first use only,
    # so `import prune_core` stays fast for the selection-only paths.
    if name in ("load_dataset", "Dataset"):
        from . import data
        return getattr(data, name)
    if name in ("inject_noise", "apply_noise", "parse_noise_spec"):
        from . import noise
        return getattr(noise, name)
    if name in ("warmup", "WarmupResult"):
        from . import warmup as warmup_module
        return getattr(warmup_module, name)
    raise AttributeError(f"module 'prune_core' has no attribute {name!r}")
