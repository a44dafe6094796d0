"""Screenshot of the MLflow runs table as a reviewer sees it: parents named by what changed, with the
gate's decision and its `summary.*` figures as columns.

Starts the server as `make ui` does (one worker, no job runner) on a free port, opens the experiment in
headless Chromium, shows the columns a reviewer picks with "Columns" (the browser's saved table
state, so no clicking through menus), checks that the table shows them and writes a PNG.

Needs Chromium and Playwright's Python client, neither in requirements.txt (a CPU box and CI do not
need them): `apt-get install chromium` (or any Chromium or Chrome, `--chromium PATH`) and
`.venv/bin/pip install playwright`; Playwright's own browser download is not used.

    .venv/bin/python scripts/mlflow_screenshot.py --store mlflow.db --out reports/mlflow_runs.png
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from nerdistill.results import SUMMARY_KEYS
from nerdistill.tracking import EXPERIMENT, SUMMARY_PREFIX

START_TIMEOUT_S = 90
RENDER_TIMEOUT_MS = 60_000
WIDTH, HEIGHT = 1400, 900
SHOWN = (*(f"{SUMMARY_PREFIX}{key}" for key in SUMMARY_KEYS[:4]), "gate")  # the first summary figures and the tag


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def mlflow_ui(store: Path) -> Iterator[str]:
    """The base URL of a `make ui`-like server on `store`, stopped on exit."""
    port = _free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    proc = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri",
                             f"sqlite:///{store.resolve()}", "--host", "127.0.0.1", "--port", str(port),
                             "--workers", "1"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                urllib.request.urlopen(f"{base}/health", timeout=2)
                break
            except (urllib.error.URLError, ConnectionError):
                if proc.poll() is not None:
                    raise SystemExit(f"mlflow server exited: {proc.stderr.read()[-2000:]}")
                if time.monotonic() > deadline:
                    raise SystemExit(f"mlflow server not up after {START_TIMEOUT_S} s")
                time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _experiment_id(base: str) -> str:
    with urllib.request.urlopen(f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name={EXPERIMENT}") as reply:
        return json.loads(reply.read())["experiment"]["experiment_id"]


def _table_state(experiment_id: str) -> tuple[str, str]:
    """The browser's saved runs-table state (MLflow 3's key and format) with SHOWN as columns."""
    key = f'MLflowLocalStorage-1.1-ExperimentPage-["{experiment_id}"]-ReactComponentState'
    columns = [f"metrics.`{name}`" for name in SHOWN if name.startswith(SUMMARY_PREFIX)] + ["tags.`gate`"]
    state = {"selectedColumns": columns, "orderByKey": "attributes.start_time", "orderByAsc": False,
             "lifecycleFilter": "Active", "startTime": "ALL", "columnWidths": {"tags.`mlflow.runName`": 320}}
    return key, json.dumps(state)


def screenshot(base: str, chromium: str, out: Path) -> list[str]:
    """Write the PNG; the table's column headers."""
    from playwright.sync_api import sync_playwright

    experiment_id = _experiment_id(base)
    url = f"{base}/#/experiments/{experiment_id}/runs"
    key, state = _table_state(experiment_id)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
        page.goto(url)  # the page's origin first: its storage is written before the table reads it
        page.evaluate("([key, state]) => { localStorage.setItem(key, state); "  # the assistant panel closed
                      "localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false'); "
                      "localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true'); }",
                      [key, state])
        page.reload()
        page.get_by_role("columnheader", name=SHOWN[0], exact=True).first.wait_for(timeout=RENDER_TIMEOUT_MS)
        page.wait_for_timeout(1000)  # the rows' values after the headers
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out))
        headers = [text.strip() for text in page.get_by_role("columnheader").all_inner_texts()]
        browser.close()
    return headers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, default=Path("mlflow.db"), help="the SQLite store (default: mlflow.db)")
    parser.add_argument("--out", type=Path, default=Path("reports/mlflow_runs.png"))
    parser.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser")
                        or shutil.which("google-chrome"), help="the browser (default: chromium on the PATH)")
    args = parser.parse_args()
    if not args.store.is_file():
        raise SystemExit(f"{args.store}: no MLflow store; run the pipeline first (make demo) or pass --store")
    if not args.chromium:
        raise SystemExit("no Chromium found: apt-get install chromium, or pass --chromium PATH")
    with mlflow_ui(args.store) as base:
        headers = screenshot(base, args.chromium, args.out)
    missing = [name for name in SHOWN if not any(name in header for header in headers)]
    if missing:
        raise SystemExit(f"the runs table lacks the columns {missing}; it shows {headers}")
    print(f"{args.out}: runs table with {', '.join(SHOWN)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
