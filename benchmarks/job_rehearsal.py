"""Offline job rehearsal (``ptdeploy job run``) against ``ptdeploy run`` of the same notebook.

The job runs each task in its own kernel (as Databricks does: one notebook run per task),
so it pays the notebook's import cost once per task; ``ptdeploy run`` runs all steps in one
kernel. Both run here, now, with the same parameters, in a fresh state directory; the
report gives the seconds of each task and the ratio job / run per template.

    .venv/bin/python benchmarks/job_rehearsal.py                      # the cheap set below
    .venv/bin/python benchmarks/job_rehearsal.py --only gte_embeddings
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

# The same small models as tests/test_job_rehearsal.py.
CHEAP = {
    "llama_completions": {"model_source": "tiny-llama", "max_tokens": "4"},
    "gte_embeddings": {},
    "bge_embeddings": {},
    "deepseek_r1_distill_llama": {"model_source": "tiny-llama", "max_tokens": "8"},
    "deploy_from_unity_catalog": {"model_name": "all_minilm_l6_v2", "endpoint_name": "uc-minilm"},
    "load_test_endpoint": {"concurrency": "1", "requests_per_level": "2", "max_tokens": "4"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", help="template (repeatable)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    os.environ.setdefault("PTDEPLOY_HOME", tempfile.mkdtemp(prefix="ptdeploy-bench-job-"))
    from harness import kernels_started_ahead, load_average
    from ptdeploy.templates import job, runner
    from ptdeploy.workspace import control

    lines = [f"# Job rehearsal vs ptdeploy run ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)", ""]
    lines += [f"load average before: {load_average()}", ""]
    lines += [
        "| template | `ptdeploy run` s | job s | job, kernels not started ahead s | job / run "
        "| ahead / not ahead | tasks (s) |",
        "|---|---|---|---|---|---|---|",
    ]

    def timed_job(template: str, overrides: dict[str, str], ahead: bool) -> tuple[float, object]:
        with kernels_started_ahead(ahead):
            t0 = time.perf_counter()
            run = job.rehearse_job(template, overrides=overrides, out_dir=work, root=REPO)
            seconds = time.perf_counter() - t0
        if not run.ok:
            raise SystemExit(run.table())
        return seconds, run

    work = Path(tempfile.mkdtemp(prefix="bench-job-"))
    try:
        for i, template in enumerate(args.only or list(CHEAP)):
            overrides = CHEAP[template]
            nb = REPO / "notebooks" / f"{template}.ipynb"
            params = REPO / "parameters" / template / "local.yaml"
            single = runner.run_notebook(nb, params, overrides, out_dir=work, progress=False)
            if not single.ok:
                raise SystemExit(single.describe_failure())
            order = (True, False) if i % 2 == 0 else (False, True)
            timed = {ahead: timed_job(template, overrides, ahead) for ahead in order}
            (ahead_s, rehearsal), (cold_s, _) = timed[True], timed[False]
            tasks = ", ".join(f"{t.task_key} {t.seconds:.1f}" for t in rehearsal.tasks)
            row = (
                f"| {template} | {single.seconds:.1f} | {ahead_s:.1f} | {cold_s:.1f} | "
                f"{ahead_s / single.seconds:.2f} | {ahead_s / cold_s:.2f} | {tasks} |"
            )
            print(row, flush=True)
            lines.append(row)
    finally:
        control.stop(quiet=True)
    lines += ["", f"load average after: {load_average()}", ""]
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"job-rehearsal-{datetime.now(UTC):%Y%m%d}.md"
    path.write_text("\n".join(lines))
    print(f"written {path}")


if __name__ == "__main__":
    main()
