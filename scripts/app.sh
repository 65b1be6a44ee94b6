#!/usr/bin/env bash
# Set everything up, then open the app; it starts the built-in demo (digits, 40% noise) at once.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
export PRUNE4REL_AUTODEMO="${PRUNE4REL_AUTODEMO:-1}"
exec .venv/bin/python -m streamlit run app.py --server.headless "${HEADLESS:-false}" "$@"
