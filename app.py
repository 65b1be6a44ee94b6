"""Prune4ReL Studio: the Streamlit entry point (router + sidebar run picker).

    streamlit run app.py          # or: bash scripts/app.sh (starts the demo by itself)

Each page is a file in pages/; the work happens in prune_core (no Streamlit there), long
stages as background jobs of one process-wide JobManager (see prune_core/job_engine.py; the
stage tasks are in prune_core/jobs.py).
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

st.set_page_config(page_title="Prune4ReL Studio", page_icon=":material/content_cut:", layout="wide")

from pages import _nav  # noqa: E402  (Streamlit only: cheap)

nav = _nav.navigation()  # first, before the heavy imports: the sidebar lists only these pages

from pages import _ui as ui  # noqa: E402  (its pages._store import sets NUMBA_CACHE_DIR before numba loads)

ui.sidebar_run_picker()
nav.run()
