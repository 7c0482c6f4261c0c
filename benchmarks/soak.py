"""Soak and self-healing of the local workspace: measured, never asserted.

1. Soak: ``--requests`` identical embedding requests (default 10,000) at ``--concurrency``
   (default 32) against a local MiniLM endpoint; errors by status, requests/s, p50/p99.
2. Healing: kill -9 each endpoint's worker and time until it answers 200 again.

Bounded (``--max-seconds`` for the soak, 600 s per heal) and loopback only. Uses a fresh
temporary state directory (``--home`` to keep one), stops the server it started.

    .venv/bin/python benchmarks/soak.py                      # soak + heal MiniLM
    .venv/bin/python benchmarks/soak.py --heal minilm,smollm2 --requests 2000
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlparse

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serving import create_endpoint, local_workspace, models, register, setup_state  # noqa: E402


def post(conn: http.client.HTTPConnection, path: str, body: bytes, token: str) -> int:
    conn.request(
        "POST",
        path,
        body=body,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    resp = conn.getresponse()
    resp.read()
    return resp.status


def soak(host: str, token: str, endpoint: str, requests: int, concurrency: int, cap_s: float):
    url = urlparse(host)
    path = f"/serving-endpoints/{endpoint}/invocations"
    body = json.dumps({"input": ["A cat sits on the mat while the dog sleeps by the door."]})
    issued = iter(range(requests))
    lock = threading.Lock()
    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    start = time.perf_counter()

    def client() -> None:
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
        while time.perf_counter() - start < cap_s:
            with lock:
                if next(issued, None) is None:
                    break
            t0 = time.perf_counter()
            try:
                status = str(post(conn, path, body.encode(), token))
            except (OSError, http.client.HTTPException) as exc:
                status = type(exc).__name__
                conn.close()
                conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
            with lock:
                statuses[status] += 1
                latencies.append(time.perf_counter() - t0)
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    q = statistics.quantiles(latencies, n=100)
    return {
        "requests": sum(statuses.values()),
        "statuses": dict(statuses),
        "errors": sum(n for s, n in statuses.items() if s != "200"),
        "seconds": round(wall, 1),
        "requests_per_s": round(sum(statuses.values()) / wall, 1),
        "p50_ms": round(q[49] * 1000, 1),
        "p99_ms": round(q[98] * 1000, 1),
    }


def heal(w, endpoint: str, body: dict) -> float:
    """kill -9 the endpoint's worker; seconds until a query answers 200 again."""
    from ptdeploy.workspace import control

    pid = control.status().pid
    children = [
        int(p.name)
        for p in Path("/proc").iterdir()
        if p.name.isdigit() and _ppid(p) == pid and "spawn_main" in _cmd(p)
    ]
    # One endpoint at a time, so its worker is the only child that loaded a model; the
    # other child, if any, is the workspace's spare process (imports only, less memory).
    children.sort(key=_rss_kb, reverse=True)
    if not children:
        raise RuntimeError("no worker process of the server found")
    url = urlparse(w.config.host)
    data = json.dumps(body).encode()
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    assert post(conn, f"/serving-endpoints/{endpoint}/invocations", data, w.config.token) == 200
    os.kill(children[0], signal.SIGKILL)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < 600:
        try:
            if (
                post(conn, f"/serving-endpoints/{endpoint}/invocations", data, w.config.token)
                == 200
            ):
                return time.perf_counter() - t0
        except (OSError, http.client.HTTPException):
            conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
        time.sleep(0.1)
    raise TimeoutError(f"{endpoint} did not serve again within 600 s")


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _ppid(proc: Path) -> int | None:
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _cmd(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--max-seconds", type=float, default=600.0)
    parser.add_argument("--heal", default="minilm", help="models to kill and time: minilm,smollm2")
    parser.add_argument("--no-soak", action="store_true")
    parser.add_argument("--home", type=Path, default=None)
    args = parser.parse_args(argv)
    home = args.home or Path(tempfile.mkdtemp(prefix="ptdeploy-soak-"))
    setup_state(home.resolve())
    from ptdeploy import targets
    from ptdeploy.serving import endpoints

    targets.configure_mlflow("local")
    wanted = {"minilm"} | {k.strip() for k in args.heal.split(",") if k.strip()}
    chosen = [m for m in models(quick=True) if m.key in wanted]  # minilm first
    results: dict[str, object] = {}
    try:
        with local_workspace(batching=True) as w:
            if not args.no_soak:
                create_endpoint(w, chosen[0], register(chosen[0]))
                minilm = next(m for m in chosen if m.key == "minilm")
                results["soak"] = soak(
                    w.config.host,
                    w.config.token,
                    minilm.endpoint,
                    args.requests,
                    args.concurrency,
                    args.max_seconds,
                )
                print(json.dumps(results["soak"]), flush=True)
            for m in chosen:
                if m.key in args.heal:
                    for other in chosen:  # one endpoint at a time: its worker is the only one
                        if other is not m:
                            endpoints.delete_endpoint(w, other.endpoint)
                    create_endpoint(w, m, register(m))
                    seconds = heal(w, m.endpoint, m.workload.query_kwargs())
                    results[f"heal_{m.key}_s"] = round(seconds, 1)
                    print(f"{m.key}: killed worker served again after {seconds:.1f} s", flush=True)
    finally:
        if args.home is None:
            shutil.rmtree(home, ignore_errors=True)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
