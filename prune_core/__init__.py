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

import os as _os

# OpenMP threads that spin at their barriers stall when other processes share the cores: the
# digits warm-up (2 torch threads on 2 cores) took 114 s instead of 5 s next to two busy
# processes. Passive waiting costs about 1 s of 3 on an idle machine. A default only, read
# when torch loads OpenMP: set OMP_WAIT_POLICY yourself (before importing torch) to choose.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# numba keeps compiled kernels under NUMBA_CACHE_DIR, else next to the sources, where the cache
# that scripts/setup.sh fills (.numba_cache) is not looked for: a CLI run without
# `source scripts/setup.sh` compiled for 17 s first. A default only, set before numba loads.
from .projection import default_numba_cache_dir as _default_numba_cache_dir  # noqa: E402

_default_numba_cache_dir()

from .data import Dataset, load_dataset  # noqa: E402
from .errors import Cancelled, InputError  # noqa: E402
from .distributed import ray_select  # noqa: E402
from .graph import build_graph  # noqa: E402
from .label_errors import find_label_issues  # noqa: E402
from .noise import apply_noise, inject_noise, parse_noise_spec  # noqa: E402
from .scores import confidence  # noqa: E402
from .selection import Selection, list_methods, select  # noqa: E402


# `warmup` and `WarmupResult` live in `.training`, which imports torch (~4 s, ~0.7 GiB): they
# load on first use, so `import prune_core` (the CLI's --help and select, the Ray workers)
# does not pay for torch when it trains nothing (PEP 562 module __getattr__).
_LAZY = {"warmup": "training", "WarmupResult": "training"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))

__version__ = "0.1.0"

__all__ = [
    "Cancelled", "Dataset", "InputError", "Selection", "WarmupResult", "apply_noise", "build_graph",
    "confidence", "find_label_issues", "inject_noise", "list_methods", "load_dataset", "parse_noise_spec", "ray_select", "select",
    "warmup",
]
