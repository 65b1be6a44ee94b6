#!/usr/bin/env bash
# Create .venv (Python 3.11) when missing, install the pinned requirements into it and fill the
# numba cache once. Safe to run again (each step is skipped when done).
#
#   bash scripts/setup.sh        set up only
#   source scripts/setup.sh      set up, then use the venv in this shell: `python` is .venv's
#                                python (`deactivate` undoes it); no shell options are changed
#
# scripts/app.sh and scripts/test.sh source it (they also get the working directory moved to
# the repository root).
PRUNE4REL_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# numba (Prune4ReL kernels, UMAP) compiles on first use: keep its cache between runs.
export NUMBA_CACHE_DIR="${NUMBA_CACHE_DIR:-$PRUNE4REL_ROOT/.numba_cache}"
export PYTHONPATH="$PRUNE4REL_ROOT${PYTHONPATH:+:$PYTHONPATH}"
# OpenMP threads sleep instead of spinning while they wait: on shared cores spinning made
# the warm-up 18x slower. `import prune_core` sets the same default; this also covers
# processes that load torch before prune_core (test modules, scripts).
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"

# The steps run in a subshell with strict options, so sourcing this file from an interactive
# shell neither turns those options on there nor closes that shell when a step fails.
(
  set -euo pipefail
  cd "$PRUNE4REL_ROOT"
  PYTHON="${PYTHON:-}"
  if [ -z "$PYTHON" ]; then
    for candidate in python3.11 python3; do
      if command -v "$candidate" >/dev/null 2>&1; then PYTHON="$candidate"; break; fi
    done
  fi
  if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv with $($PYTHON --version 2>&1)"
    "$PYTHON" -m venv .venv
  fi
  stamp=".venv/.requirements.sha256"
  want="$(sha256sum requirements.txt | cut -d' ' -f1)"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "[setup] installing requirements (first time: a few minutes)"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -r requirements.txt
    echo "$want" > "$stamp"
  fi
  mkdir -p "$NUMBA_CACHE_DIR"
  # Fill that cache once (about 35 s on 2 cores), so the demo's first UMAP map does not wait for
  # the compiler; again whenever the requirements or a module holding numba kernels change.
  warm_stamp="$NUMBA_CACHE_DIR/.warmed"
  warm_want="$(cat requirements.txt prune_core/{graph,knn,embeddings,prune4rel,registry,baselines,projection,distributed_tasks}.py | sha256sum | cut -d' ' -f1)"
  if [ "${PRUNE4REL_SKIP_WARM_CACHE:-0}" != "1" ] && { [ ! -f "$warm_stamp" ] || [ "$(cat "$warm_stamp")" != "$warm_want" ]; }; then
    echo "[setup] compiling the numba kernels once (about half a minute)"
    if .venv/bin/python -m prune_core.warm_cache; then
      echo "$warm_want" > "$warm_stamp"
    else
      echo "[setup] warning: warming the numba cache failed; kernels will compile on first use" >&2
    fi
  fi
) || { echo "[setup] failed (see above)" >&2; return 1 2>/dev/null || exit 1; }

if [ "${BASH_SOURCE[0]}" != "$0" ]; then  # sourced
  case "$-" in
    *i*) source "$PRUNE4REL_ROOT/.venv/bin/activate" ;;  # a user's shell: python is the venv's
    *) cd "$PRUNE4REL_ROOT" ;;                             # scripts/app.sh, scripts/test.sh
  esac
fi
