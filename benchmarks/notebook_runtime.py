"""Headless notebook run time against the import floor, in one script.

The floor is a fresh ``python -c "import mlflow, transformers, torch"``: what any
notebook that uses them pays before doing anything. Each notebook run (papermill, the
same runner as ``ptdeploy run``) is reported as seconds and as a ratio to that floor,
both measured here, now, on this machine (these machines are noisy: compare ratios, not
seconds across runs).

    .venv/bin/python benchmarks/notebook_runtime.py            # tiny-llama and SmolLM2
    .venv/bin/python benchmarks/notebook_runtime.py --quick    # tiny-llama only
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "llama_completions.ipynb"
PARAMS = REPO / "parameters" / "llama_completions" / "local.yaml"


def import_floor(repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import mlflow, transformers, torch"], check=True)
        times.append(time.perf_counter() - start)
    return times


def notebook_run(model_source: str, out: Path) -> float:
    from ptdeploy.templates import runner

    result = runner.run_notebook(
        NOTEBOOK,
        PARAMS,
        {
            "model_source": model_source,
            "model_name": "bench_" + model_source.replace("-", "_"),
            "endpoint_name": "bench-" + model_source,
            "teardown": "true",
        },
        out_dir=out,
        progress=False,
    )
    if not result.ok:
        raise SystemExit(result.describe_failure())
    return result.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny-llama only")
    parser.add_argument("--repeats", type=int, default=3, help="import-floor repeats (3)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # A throwaway state dir: the benchmark must not touch the user's registry.
    os.environ["PTDEPLOY_MODEL_CACHE"] = str(REPO / ".ptdeploy" / "models")
    os.environ["PTDEPLOY_HOME"] = tempfile.mkdtemp(prefix="ptdeploy-bench-")
    from ptdeploy.models.sources import smollm2_dir
    from ptdeploy.workspace import control

    if not args.quick:
        smollm2_dir()  # conversion is a one-off cost: keep it out of the run time
    floor = statistics.median(import_floor(args.repeats))
    out = Path(os.environ["PTDEPLOY_HOME"]) / "out"
    rows = []
    try:
        for source in ["tiny-llama"] + ([] if args.quick else ["smollm2-135m-instruct"]):
            seconds = notebook_run(source, out / source)
            rows.append((source, seconds, seconds / floor))
    finally:
        control.stop(quiet=True)
    lines = [
        f"# Notebook run time vs import floor ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)",
        "",
        f'import floor (`python -c "import mlflow, transformers, torch"`, median of '
        f"{args.repeats}): {floor:.1f} s",
        "",
        "| model | headless run (s) | ratio to import floor |",
        "|---|---|---|",
        *(f"| {s} | {t:.1f} | {r:.1f}x |" for s, t, r in rows),
        "",
        "The run includes: kernel start, imports, load, log + register, registry smoke test,",
        "local workspace start (first run), endpoint create and READY, queries, teardown.",
    ]
    text = "\n".join(lines)
    print(text)
    results = REPO / "benchmarks" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / f"notebook-runtime-{datetime.now(UTC):%Y%m%d}.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
