"""Batch inference on local Spark against the load test, in one script.

Measures, on this machine, now (compare ratios, not seconds across runs):

* Spark start-up: ``ptdeploy.inference.batch.spark_session("local")`` in a fresh process;
* an embeddings batch (all-MiniLM-L6-v2, ``--embed-rows`` rows, default 10,000) and a
  completions batch (tiny-llama, ``--complete-rows`` rows, default 200, max_tokens 16,
  greedy) through the local endpoint with ``ai_query`` at ``--concurrency`` requests in
  flight: rows/s, and that nothing was lost (``batch.check_output``);
* the load test's requests/s on the same endpoint at the same concurrency
  (``ptdeploy.capacity.loadtest.run_load_test``, the same SDK client path), the ratio batch/load test
  (goal >= 0.8);
* with ``--notebook``, the batch notebook's run time against the import floor
  (``python -c "import mlflow, transformers, torch, pyspark"``).

    .venv/bin/python benchmarks/batch.py                 # the full measurement (~5-10 min)
    .venv/bin/python benchmarks/batch.py --embed-rows 2000 --complete-rows 100   # quicker
    .venv/bin/python benchmarks/batch.py --notebook      # and the notebook against the floor

Writes ``benchmarks/results/batch-<date>.md``. Uses a fresh state directory (temporary
``PTDEPLOY_HOME``) unless ``--home`` is given, and stops the local workspace it started.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SENTENCES = (
    "Provisioned throughput reserves tokens per second for a model serving endpoint.",
    "A cat sleeps on the warm windowsill all afternoon.",
    "Spark runs the same SQL on a laptop and on a cluster.",
    "Embeddings place sentences with similar meanings close together.",
)


def spark_startup_seconds() -> float:
    code = (
        "import time; t = time.perf_counter(); from ptdeploy import batch; "
        "s = batch.spark_session('local'); s.range(1).count(); "
        "print(time.perf_counter() - t); s.stop()"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    return float(out.strip().splitlines()[-1])


def deploy(w, loaded, task: str, endpoint: str, model_type: str | None = None) -> None:
    from ptdeploy import targets
    from ptdeploy.models import model_logging, registry
    from ptdeploy.serving import endpoints, optimization, throughput

    targets.configure_mlflow("local")
    logged = model_logging.log_model(loaded, task=task, model_type=model_type)
    version = registry.register(logged.model_uri, f"main.default.{endpoint.replace('-', '_')}")
    info = optimization.optimizable_info(w, version.name, version.version)
    plan = throughput.plan_from_info(info, 1, 1)
    spec = endpoints.EndpointSpec(
        name=endpoint, entity_name=version.name, entity_version=version.version, plan=plan
    )
    endpoints.create_or_update(w, spec, timeout=600, progress=False)


def load_test_rps(w, endpoint: str, task: str, concurrency: int, requests: int, **payload) -> float:
    from ptdeploy.capacity import loadtest

    result = loadtest.run_load_test(
        w,
        endpoint,
        task=task,
        concurrency=(concurrency,),
        requests_per_level=requests,
        max_seconds_per_level=120,
        progress=False,
        **payload,
    )
    return result.levels[0].requests_per_second


def run_batch(spark, conn, workdir: Path, name: str, spec_kwargs: dict, rows: list[dict]):
    from ptdeploy.inference import batch

    source = str(workdir / f"{name}.parquet")
    batch.write_table(spark, rows, source, "local")
    spec = batch.BatchSpec(input=source, output=str(workdir / f"{name}-out"), **spec_kwargs)
    result = batch.run_batch(spark, spec, "local", connection=conn)
    counts = batch.check_output(spark, spec, "local")
    return result, counts


def notebook_vs_floor(out: Path) -> tuple[float, float]:
    from ptdeploy.templates import runner

    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", "import mlflow, transformers, torch, pyspark"], check=True
    )
    floor = time.perf_counter() - start
    start = time.perf_counter()
    result = runner.run_notebook(
        REPO / "notebooks" / "batch_inference.ipynb",
        REPO / "parameters" / "batch_inference" / "local.yaml",
        {},
        out_dir=out,
    )
    elapsed = time.perf_counter() - start
    if not result.ok:
        raise SystemExit(f"notebook failed: {result.describe_failure()}")
    return elapsed, floor


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--embed-rows", type=int, default=10_000)
    parser.add_argument("--complete-rows", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--notebook", action="store_true", help="also the notebook vs floor")
    parser.add_argument("--home", type=Path, help="state directory to use (default: temporary)")
    args = parser.parse_args()

    home = args.home or Path(tempfile.mkdtemp(prefix="ptdeploy-bench-batch-"))
    os.environ["PTDEPLOY_HOME"] = str(home)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("PTDEPLOY_MODEL_CACHE", str(REPO / ".ptdeploy" / "models"))
    from ptdeploy.inference import ai_query, batch
    from ptdeploy.models import sources
    from ptdeploy.workspace import control

    load_before = os.getloadavg()
    lines = [f"# Batch inference on local Spark — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC", ""]
    startup = spark_startup_seconds()
    ws = control.ensure_running()
    try:
        from databricks.sdk import WorkspaceClient

        w = WorkspaceClient(host=ws.host, token=ws.token, auth_type="pat")
        deploy(
            w,
            sources.load_model("all-minilm-l6-v2"),
            "llm/v1/embeddings",
            "bench-embed",
            "gte-large",
        )
        deploy(w, sources.build_tiny_llama(), "llm/v1/completions", "bench-complete")
        spark = batch.spark_session("local")
        conn = ai_query.Connection(ws.host, ws.token)
        workdir = home / "bench-batch"
        c = args.concurrency
        rows = []
        for name, task, endpoint, n, extra, payload in (
            (
                "embeddings",
                "embeddings",
                "bench-embed",
                args.embed_rows,
                {},
                {"prompt": SENTENCES[0]},
            ),
            (
                "completions",
                "completions",
                "bench-complete",
                args.complete_rows,
                {"max_tokens": 16, "temperature": 0.0},
                {"prompt": "The capital of France is", "max_tokens": 16, "temperature": 0.0},
            ),
        ):
            text = "The capital of France is" if task == "completions" else None
            data = [{"id": i, "text": text or f"{SENTENCES[i % 4]} ({i})"} for i in range(n)]
            spec_kwargs = dict(
                endpoint=endpoint,
                id_column="id",
                task=task,
                request_column="text",
                concurrency=c,
                rows_per_commit=max(100, n // 4),
                **extra,
            )
            # warm the endpoint and the Spark Python workers on a few rows first
            run_batch(spark, conn, workdir, f"{name}-warm", spec_kwargs, data[: 4 * c])
            result, counts = run_batch(spark, conn, workdir, name, spec_kwargs, data)
            rps = load_test_rps(w, endpoint, task, c, min(n, 40 * c), **payload)
            ratio = (result.rows_per_second or 0) / rps if rps else float("nan")
            rows.append(
                f"| {name} | {n} | {c} | {result.elapsed_s:.1f} | {result.rows_per_second:.1f} "
                f"| {rps:.1f} | {ratio:.2f} | {counts['rows_out']} / {counts['missing']} / "
                f"{result.rows_error} |"
            )
        spark.stop()
    finally:
        control.stop(quiet=True)
    lines += [
        f"Spark start-up (fresh process, `batch.spark_session('local')` + one job): {startup:.1f} s",
        "",
        "| batch | rows | concurrency | elapsed s | batch rows/s | load test req/s | ratio "
        "| rows out / missing / errors |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
    ]
    if args.notebook:
        try:
            elapsed, floor = notebook_vs_floor(home / "nb-out")
        finally:
            control.stop(quiet=True)  # the notebook started the workspace again
        lines += [
            "",
            f"Notebook `batch_inference.ipynb` (local.yaml, 200 sample rows, deploys MiniLM): "
            f"{elapsed:.1f} s; import floor (mlflow, transformers, torch, pyspark) {floor:.1f} s; "
            f"ratio {elapsed / floor:.1f}x",
        ]
    lines += ["", f"Load average before {load_before}, after {os.getloadavg()}."]
    text = "\n".join(lines) + "\n"
    print(text)
    out = REPO / "benchmarks" / "results" / f"batch-{datetime.now(UTC):%Y-%m-%d}.md"
    out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
