"""``ptdeploy run-all --target local``: every template, with each next kernel started
ahead (as shipped) against every kernel started when its notebook starts (the baseline).

Both runs happen here, now, in alternating order, each in a fresh state directory (the
converted offline models are shared through ``PTDEPLOY_MODEL_CACHE``), so each starts
the local workspace and registers every model, as a user's first ``run-all`` does.
Seconds are wall-clock around ``run_all``, per notebook from the runner.

    .venv/bin/python benchmarks/run_all.py
    .venv/bin/python benchmarks/run_all.py --rounds 2
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))


def one_run(ahead: bool) -> tuple[float, list]:
    from harness import kernels_started_ahead
    from ptdeploy.templates import runner

    home = Path(tempfile.mkdtemp(prefix="ptdeploy-bench-run-all-"))
    os.environ["PTDEPLOY_HOME"] = str(home)  # read by ptdeploy.state at each call
    with kernels_started_ahead(ahead):
        t0 = time.perf_counter()
        results = runner.run_all("local", out_dir=home / "out")
        seconds = time.perf_counter() - t0
    failed = [r.describe_failure() for r in results if not r.ok]
    if failed:
        raise SystemExit("\n".join(failed))
    return seconds, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1, help="pairs of runs (1)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    os.environ.setdefault("PTDEPLOY_MODEL_CACHE", str(REPO / ".ptdeploy" / "models"))
    from harness import load_average

    lines = [f"# run-all --target local ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)", ""]
    lines += [f"load average before: {load_average()}", ""]
    runs: dict[bool, list[tuple[float, list]]] = {True: [], False: []}
    for i in range(args.rounds):
        for ahead in (True, False) if i % 2 == 0 else (False, True):
            seconds, results = one_run(ahead)
            runs[ahead].append((seconds, results))
            print(f"kernels started ahead={ahead}: {seconds:.1f} s", flush=True)
    names = [r.notebook for r in runs[True][0][1]]
    lines += [
        "| notebook | kernels started ahead (s) | not ahead (s) |",
        "|---|---|---|",
    ]
    for j, name in enumerate(names):
        ahead_s = [res[j].seconds for _, res in runs[True]]
        cold_s = [res[j].seconds for _, res in runs[False]]
        lines.append(
            f"| {name} | {' / '.join(f'{x:.1f}' for x in ahead_s)} | "
            f"{' / '.join(f'{x:.1f}' for x in cold_s)} |"
        )
    ahead_total = [s for s, _ in runs[True]]
    cold_total = [s for s, _ in runs[False]]
    lines.append(
        f"| **run-all, wall** | {' / '.join(f'{x:.1f}' for x in ahead_total)} | "
        f"{' / '.join(f'{x:.1f}' for x in cold_total)} |"
    )
    ratio = sum(ahead_total) / sum(cold_total)
    lines += [
        "",
        f"ahead / not ahead: {ratio:.2f}x",
        "",
        f"load average after: {load_average()}",
        "",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"run-all-{datetime.now(UTC):%Y%m%d}.md"
    path.write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"written {path}")


if __name__ == "__main__":
    main()
