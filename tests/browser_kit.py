"""Helpers to run the app headless and drive it with Debian's chromium (Playwright).

Shared by the browser test (tests/test_browser.py) and the demo timing benchmark
(bench/app_demo.py), so both start the server and the browser the same way.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

# Chromium as root, with the machine's closed network: no sandbox, no background traffic.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc, timeout: float = 120) -> None:
    """Wait until Streamlit's health endpoint answers 'ok' (or the server process exits)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError("streamlit did not become healthy")


@contextlib.contextmanager
def app_server(workspace: Path, log_path: Path, env_extra: dict | None = None):
    """`streamlit run app.py` headless on a free local port with its own run store; yields the URL."""
    env = {**os.environ, "PRUNE4REL_WORKSPACE": str(workspace), "PRUNE4REL_AUTODEMO": "0",
           "PYTHONPATH": str(ROOT), "NUMBA_CACHE_DIR": os.environ.get("NUMBA_CACHE_DIR", str(ROOT / ".numba_cache"))}
    env.update(env_extra or {})
    port = free_port()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
             "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(url, proc)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


@contextlib.contextmanager
def readme_app_server(workspace: Path, log_path: Path, home: Path, env_extra: dict | None = None):
    """The app started the README's way, `bash scripts/app.sh`, under nohup with no terminal
    (stdin from /dev/null, its own session) and a fresh HOME; yields the URL it printed."""
    port = free_port()
    env = {**os.environ, "HOME": str(home), "PORT": str(port), "PRUNE4REL_WORKSPACE": str(workspace),
           "PRUNE4REL_AUTODEMO": "0", "PRUNE4REL_SKIP_WARM_CACHE": "1",
           "NUMBA_CACHE_DIR": os.environ.get("NUMBA_CACHE_DIR", str(ROOT / ".numba_cache"))}
    env.update(env_extra or {})
    home.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(["nohup", "bash", "scripts/app.sh"], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://localhost:{port}"
        try:
            wait_healthy(url, proc)
            yield url
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def browser_page(playwright, width: int = 1400, height: int = 1000):
    """A fresh headless Chromium page (downloads allowed, 60 s default timeout)."""
    browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
    context = browser.new_context(viewport={"width": width, "height": height}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(60_000)
    try:
        yield page
    finally:
        context.close()
        browser.close()


# JavaScript: the title text of the first plotly chart on the page ('' while there is none).
FIRST_PLOT_TITLE_JS = ("() => { const t = document.querySelector('.js-plotly-plot .gtitle');"
                       " return t ? t.textContent : ''; }")
