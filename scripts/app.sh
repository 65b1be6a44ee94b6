#!/usr/bin/env bash
# Set everything up, then serve the app; it starts the built-in demo (digits, 40% noise) at once
# when the workspace is empty. Headless (no prompt, no browser opened: works under nohup, in a
# container, over ssh); prints the URL it serves.
#
#   bash scripts/app.sh                 http://localhost:8501
#   PORT=8612 bash scripts/app.sh       another port; more Streamlit options go after the command
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
export PRUNE4REL_AUTODEMO="${PRUNE4REL_AUTODEMO:-1}"
PORT="${PORT:-8501}"
echo "[app] Prune4ReL Studio: http://localhost:$PORT (Ctrl+C stops it; PORT=NNNN picks another port)"
exec .venv/bin/python -m streamlit run app.py --server.headless true --server.port "$PORT" "$@" </dev/null
