"""A finished sweep's comparison in the MLflow UI, as a user sees it, in headless Chromium.

    python benchmarks/mlflow_screenshot.py                          # a smoke sweep, then its page
    python benchmarks/mlflow_screenshot.py --storage results --space width_scan --out page.png

Starts `mlflow server` on loopback against the sweep's MLflow database (`<storage>/mlflow.db`),
opens the URL the sweep printed at its end (its saved comparison view; see
`rp_tune.adapters.mlflow.view`) in Debian's Chromium driven by Playwright, waits until every
trial's run
name is on the page, and saves a screenshot of the chart view (`--out`) and of the table view
(`--table-out`). Without `--storage` it first runs `python run_sweep.py --space smoke` in a
temporary folder. Needs Chromium (`apt-get install chromium`) and the dev extras
(`pip install -e '.[dev]'`: playwright). Prints the URL and the files; asserts nothing.
`tests/test_mlflow_browser.py` uses `serve` and `open_page` from here.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Chromium's own flags for a closed machine: no sandbox as root, no background traffic
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
URL_LINE = re.compile(r"the sweep's trials compared: (\S+)")


def chromium() -> str | None:
    """Debian's Chromium, or $CHROMIUM; None when neither is installed."""
    for path in (os.environ.get("CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium"):
        if path and Path(path).is_file():
            return path
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(db: Path, port: int, artifacts: Path | None = None) -> subprocess.Popen:
    """`mlflow server` on loopback against an MLflow SQLite database, in its own process
    group, once it answers; artifacts proxied to `artifacts` if given (as the cluster's head
    runs it)."""
    extra = ["--artifacts-destination", str(artifacts)] if artifacts is not None else []
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{db}",
            *extra,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],  # fmt: skip
        cwd=db.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                os.killpg(proc.pid, 9)
                raise RuntimeError(f"mlflow server on {db} did not start") from None
            time.sleep(0.5)


@contextlib.contextmanager
def serve(db: Path, port: int | None = None) -> Iterator[str]:
    """`start_server` for the time of a `with`; yields its address."""
    port = port or free_port()
    proc = start_server(db, port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()


# every row of the runs table (ag-grid): its cells by column id, across the pinned and
# scrolled parts of the row
TABLE_ROWS = """() => {
  const rows = {};
  for (const part of document.querySelectorAll('[row-index]')) {
    const row = rows[part.getAttribute('row-index')] ??= {};
    for (const cell of part.querySelectorAll('[col-id]'))
      row[cell.getAttribute('col-id')] = cell.innerText.trim();
  }
  return Object.values(rows);
}"""


def open_page(
    url: str,
    expect: list[str],
    screenshot: Path | None = None,
    timeout_s: float = 90.0,
    size: tuple[int, int] = (1600, 1000),
) -> tuple[str, list[dict[str, str]]]:
    """Open `url` in a fresh Chromium profile, wait until every text of `expect` is on the
    page, save a screenshot if asked; returns the page's text and the runs table's rows
    (`TABLE_ROWS`: [] where no table is shown)."""
    from playwright.sync_api import sync_playwright

    exe = chromium()
    if exe is None:
        raise RuntimeError("Chromium is not installed: apt-get install chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": size[0], "height": size[1]})
            page.goto(url)
            for text in expect:
                page.get_by_text(text, exact=False).first.wait_for(timeout=timeout_s * 1000)
            close = page.get_by_role("button", name="Close")  # MLflow's assistant side panel
            if close.count():
                close.first.click()
            page.wait_for_timeout(2000)  # the charts draw after their data arrives
            if screenshot is not None:
                page.screenshot(path=str(screenshot))
            return page.inner_text("body"), page.evaluate(TABLE_ROWS)
        finally:
            browser.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--storage", help="a results root holding a finished sweep (default: run one)")
    p.add_argument("--space", default="smoke", help="the sweep's space (its --name)")
    p.add_argument("--out", default="mlflow_comparison.png", help="screenshot of the charts")
    p.add_argument("--table-out", default=None, help="screenshot of the runs table too")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rp_tune-screenshot-") as tmp:
        storage = Path(args.storage or Path(tmp, "results")).resolve()
        if args.storage is None:
            subprocess.run([sys.executable, "run_sweep.py", "--space", args.space, "--storage",
                            str(storage)], cwd=ROOT, check=True)  # fmt: skip
        status = subprocess.run(
            [sys.executable, "run_sweep.py", "--space", args.space, "--storage", str(storage),
             "--status"], cwd=ROOT, text=True, capture_output=True, check=True)  # fmt: skip
        url = URL_LINE.search(status.stdout)
        if url is None:
            print(f"no comparison URL in the sweep's --status:\n{status.stdout}", file=sys.stderr)
            return 1
        names = [ln.split()[0] for ln in status.stdout.splitlines() if " finished " in ln]
        with serve(storage / "mlflow.db") as base:
            link = url.group(1).replace("http://127.0.0.1:5000", base)
            print(f"url: {link}")
            open_page(link, names, Path(args.out))
            print(f"charts: {args.out}")
            if args.table_out:
                table = link.replace("compareRunsMode=CHART", "compareRunsMode=TABLE")
                open_page(table, names, Path(args.table_out), size=(2000, 1000))
                print(f"table: {args.table_out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
