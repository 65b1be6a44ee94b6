"""Shared by the timing benchmarks: code in a fresh Python process, and busy processes beside it."""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_fresh(code: str, env_extra: dict, timeout: float) -> dict:
    """Run `code` in a new interpreter (repo root, `env_extra` added); returns the JSON of its last stdout line."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), **env_extra}
    res = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-2000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


def _busy_loop():
    while True:
        pass


@contextlib.contextmanager
def busy_processes(count: int):
    """`count` processes spinning on the cores while the block runs (a machine shared with others)."""
    hogs = [mp.Process(target=_busy_loop, daemon=True) for _ in range(count)]
    for h in hogs:
        h.start()
    try:
        yield
    finally:
        for h in hogs:
            h.terminate()
