"""Time from ``ptdeploy lab`` to a usable JupyterLab page, against bare JupyterLab.

Three phases per run, in a headless Chromium (Debian's, as the browser test uses):

* command -> link printed: ``ptdeploy lab --no-browser`` until it prints ``open: URL``
  (the server answers ``/api/status`` with the token by then);
* page -> usable: the browser loads the link until the file browser lists the templates;
* Ctrl-C -> exited: SIGINT to ``ptdeploy lab`` until it has stopped the server.

The floor is bare ``python -m jupyterlab --no-browser`` until ``/api/status`` answers,
measured in the same run (these machines are noisy: compare ratios, not seconds across
runs)::

    .venv/bin/python benchmarks/lab_startup.py             # 3 runs
    .venv/bin/python benchmarks/lab_startup.py --runs 1
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def bare_jupyterlab(env: dict[str, str]) -> float:
    from ptdeploy.templates.lab import free_port

    port, token = free_port(), secrets.token_hex(8)
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
         f"--ServerApp.port={port}", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={REPO / 'notebooks'}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True,
    )  # fmt: skip
    try:
        while True:
            try:
                req = urllib.request.Request(
                    f"http://127.0.0.1:{port}/api/status",
                    headers={"Authorization": f"token {token}"},
                )
                with urllib.request.urlopen(req, timeout=2):
                    return time.perf_counter() - started
            except OSError:
                if time.perf_counter() - started > 120:
                    raise
                time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def ptdeploy_lab(env: dict[str, str]) -> tuple[float, float, float]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ptdeploy.cli", "lab", "--no-browser"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    try:
        url = None
        for line in proc.stdout:
            if match := re.search(r"open: (\S+)", line):
                url = match.group(1)
                break
        if url is None:
            raise RuntimeError("ptdeploy lab exited before printing its link")
        linked = time.perf_counter()
        driver.get(url)
        WebDriverWait(driver, 120, 0.1).until(
            lambda d: d.find_elements("css selector", ".jp-DirListing-item")
        )
        usable = time.perf_counter()
    finally:
        driver.quit()
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    return linked - started, usable - linked, time.perf_counter() - usable


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="ptdeploy-bench-lab-")
    env = {
        **os.environ,
        "PTDEPLOY_HOME": home,
        "JUPYTERLAB_WORKSPACES_DIR": str(Path(home) / "workspaces"),
    }
    load_before = os.getloadavg()[0]
    floors, runs = [], []
    for _ in range(args.runs):  # interleaved: the machine's load drifts between runs
        floors.append(bare_jupyterlab(env))
        runs.append(ptdeploy_lab(env))
    load_after = os.getloadavg()[0]
    floor = statistics.median(floors)
    link, page, stop = (statistics.median(r[i] for r in runs) for i in range(3))
    lines = [
        f"# ptdeploy lab start-up, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"load average (1 min): {load_before:.1f} before, {load_after:.1f} after; "
        f"{args.runs} runs, medians",
        "",
        "| phase | seconds | vs bare JupyterLab |",
        "|---|---|---|",
        f"| bare `python -m jupyterlab` -> /api/status | {floor:.1f} | 1.00 |",
        f"| `ptdeploy lab` -> link printed | {link:.1f} | {link / floor:.2f} |",
        f"| link -> page usable (templates listed) | {page:.1f} | |",
        f"| **command -> usable page** | **{link + page:.1f}** | {(link + page) / floor:.2f} |",
        f"| Ctrl-C -> `ptdeploy lab` exited, nothing left | {stop:.1f} | |",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    out = REPO / "benchmarks" / "results" / f"lab-startup-{datetime.now(UTC):%Y%m%d}.md"
    out.write_text(text)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
