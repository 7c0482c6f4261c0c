"""Serving benchmarks: the local endpoint against the engine in-process, ``mlflow models
serve`` and itself with batching off; start-up times. Measured, never asserted.

    .venv/bin/python benchmarks/serving.py            # about 10-15 minutes on 2 cores
    .venv/bin/python benchmarks/serving.py --quick    # a few minutes: concurrency 1 and 8

Two workloads, each request the same, on models registered in a throwaway local
registry (``--home`` to keep and reuse it):

* SmolLM2-135M-Instruct completions: a fixed short prompt, ``max_tokens`` 16, greedy;
* all-MiniLM-L6-v2 embeddings: one sentence per request.

Servers, each at concurrency 1, 8 and 32 (closed loop: N clients, each sends its next
request when the previous one is answered; every level capped in requests and seconds):

* ``local batched``: the local workspace endpoint, as users get it (HTTP, the server,
  one worker process with batching);
* ``local unbatched``: the same, the server started with ``PTDEPLOY_BATCHING=0``;
* ``mlflow serve``: ``mlflow models serve -m models:/NAME/VERSION --env-manager local``
  on the same registered version, same request body;
* ``in-process``: the engine in this process, ``concurrency`` requests per batch (no
  HTTP, no pipes: what batching could give at best);
* ``plain generate`` (completions): transformers' ``model.generate`` on the same
  registered weights, batches of ``concurrency`` prompts, the worker's torch threads.

The results (markdown) are printed and written to ``benchmarks/results/serving-<date>.md``.
See ``benchmarks/README.md`` for how to read them.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "lib"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    HttpEndpoint,
    MlflowServe,
    Workload,
    bare_load_seconds,
    frozen_gc,
    generate_level,
    http_level,
    in_process_level,
    load_average,
    run_levels,
    wait_for_quiet_children,
    warm_up,
)
from ptdeploy.capacity.loadtest import LevelResult, Task  # noqa: E402

LOCAL_BATCHED = "local batched"
LOCAL_UNBATCHED = "local unbatched"
MLFLOW_SERVE = "mlflow serve"
IN_PROCESS = "in-process"
PLAIN_GENERATE = "plain generate"
SERVERS = (LOCAL_BATCHED, LOCAL_UNBATCHED, MLFLOW_SERVE, IN_PROCESS, PLAIN_GENERATE)
DESIGN_TARGET_RPS = 150.0  # DESIGN.md: MiniLM embeddings, local engine, concurrency 8


@dataclass(frozen=True)
class BenchModel:
    key: str
    source: str
    registered_name: str
    endpoint: str
    workload: Workload
    model_type: str | None = None


def models(quick: bool) -> list[BenchModel]:
    completion_seconds = 6.0 if quick else 20.0
    embedding_seconds = 3.0 if quick else 10.0
    return [
        BenchModel(
            "minilm",
            "all-minilm-l6-v2",
            "main.default.bench_minilm",
            "bench-minilm",
            Workload(
                "MiniLM embeddings (all-MiniLM-L6-v2, one sentence per request)",
                Task.EMBEDDINGS,
                "A cat sits on the mat while the dog sleeps by the door.",
                None,
                requests_per_level=lambda c: 1000,
                max_seconds_per_level=embedding_seconds,
            ),
            model_type="gte-large",
        ),
        BenchModel(
            "smollm2",
            "smollm2-135m-instruct",
            "main.default.bench_smollm2",
            "bench-smollm2",
            Workload(
                "SmolLM2-135M-Instruct completions (max_tokens 16, greedy)",
                Task.COMPLETIONS,
                "The capital of France is",
                16,
                # at least 8 requests (p95 of something), two rounds up to 16 clients, one
                # round at 32: an unbatched server answers 32 requests one after another
                requests_per_level=(lambda c: max(3, c))
                if quick
                else (lambda c: min(max(8, 2 * c), max(c, 32))),
                max_seconds_per_level=completion_seconds,
            ),
        ),
    ]


@dataclass
class Report:
    levels: tuple[int, ...]
    started: float = field(default_factory=time.perf_counter)
    load_before: str = field(default_factory=load_average)
    results: dict[tuple[str, str], dict[int, LevelResult]] = field(default_factory=dict)
    startup: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- setup


def setup_state(home: Path) -> None:
    """Point ptdeploy at ``home`` before any ptdeploy module reads the state directory."""
    os.environ["PTDEPLOY_HOME"] = str(home)
    os.environ.setdefault("PTDEPLOY_MODEL_CACHE", str(REPO / ".ptdeploy" / "models"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def register(model: BenchModel) -> str:
    """The registered version of ``model`` (logged and registered once per state dir)."""
    from ptdeploy.errors import RegistryError
    from ptdeploy.models import model_logging, registry, sources

    with contextlib.suppress(RegistryError):
        version = registry.latest_version(model.registered_name)
        print(f"reusing {model.registered_name} version {version}", flush=True)
        return version
    t0 = time.perf_counter()
    loaded = sources.load_model(model.source)
    logged = model_logging.log_model(
        loaded, task=model.workload.task.value, model_type=model.model_type
    )
    version = registry.register(logged.model_uri, model.registered_name).version
    print(
        f"registered {model.registered_name} version {version} ({time.perf_counter() - t0:.0f} s)",
        flush=True,
    )
    return version


@contextlib.contextmanager
def local_workspace(batching: bool) -> Iterator[Any]:
    """The local workspace server started with batching on or off, stopped afterwards."""
    from ptdeploy import targets
    from ptdeploy.workspace import control

    control.stop(quiet=True)  # a server started with the other setting
    os.environ["PTDEPLOY_BATCHING"] = "1" if batching else "0"
    try:
        yield targets.workspace_client("local")
    finally:
        control.stop(quiet=True)
        os.environ.pop("PTDEPLOY_BATCHING", None)


def create_endpoint(w: Any, model: BenchModel, version: str) -> float:
    """Create the endpoint (deleting a leftover first); seconds from create to READY."""
    from ptdeploy.serving import endpoints, optimization, throughput
    from ptdeploy.workspace import control

    endpoints.delete_endpoint(w, model.endpoint)
    info = optimization.get_optimization_info(w, model.registered_name, version)
    plan = throughput.plan_from_info(info, 1, 1)
    spec = endpoints.EndpointSpec(model.endpoint, model.registered_name, version, plan)
    # Measured as a user of a running workspace sees it: its spare worker has done its
    # imports (right after the server starts, or after the last create, it is still busy).
    wait_for_quiet_children(control.status().pid)
    t0 = time.perf_counter()
    endpoints.create_or_update(w, spec, timeout=600, progress=False, poll_interval=0.25)
    return time.perf_counter() - t0


def local_http(w: Any, model: BenchModel) -> HttpEndpoint:
    """The endpoint's invocations URL, once the server's processes are quiet: the spare
    that replaces a taken one imports torch and friends for seconds after a worker is
    READY, and a level measured meanwhile measures that import too."""
    from ptdeploy.workspace import control

    wait_for_quiet_children(control.status().pid)
    url = f"{w.config.host}/serving-endpoints/{model.endpoint}/invocations"
    return HttpEndpoint(url, token=w.config.token)


def measure_http(report: Report, server: str, model: BenchModel, endpoint: HttpEndpoint) -> None:
    warm_up(lambda: endpoint.query("bench", **model.workload.query_kwargs()))
    report.results[(model.key, server)] = run_levels(
        f"{model.key} {server}",
        lambda c: http_level(endpoint, model.workload, c),
        report.levels,
    )


# --------------------------------------------------------------------------- scenarios


def run_local(report: Report, chosen: list[BenchModel], versions: dict[str, str]) -> None:
    from ptdeploy.serving import endpoints

    print("== local workspace, batching on", flush=True)
    with local_workspace(batching=True) as w:
        for model in chosen:
            seconds = create_endpoint(w, model, versions[model.key])
            report.startup.setdefault(model.key, {})["create_to_ready_s"] = seconds
            print(f"  {model.endpoint}: create -> READY in {seconds:.1f} s", flush=True)
        for model in chosen:
            measure_http(report, LOCAL_BATCHED, model, local_http(w, model))
    print("== local workspace, batching off (PTDEPLOY_BATCHING=0)", flush=True)
    t0 = time.perf_counter()
    with local_workspace(batching=False) as w:
        for model in chosen:  # endpoints survive the restart; their workers load again
            endpoints.wait_until_ready(w, model.endpoint, timeout=600, progress=False)
        report.notes.append(
            f"Restart with PTDEPLOY_BATCHING=0 to every endpoint READY again: "
            f"{time.perf_counter() - t0:.1f} s (server start included)."
        )
        for model in chosen:
            measure_http(report, LOCAL_UNBATCHED, model, local_http(w, model))


def run_mlflow_serve(
    report: Report, chosen: list[BenchModel], versions: dict[str, str], logs: Path
) -> None:
    from ptdeploy import state

    for model in chosen:
        print(f"== mlflow models serve: {model.key}", flush=True)
        uri = f"models:/{model.registered_name}/{versions[model.key]}"
        with MlflowServe(uri, state.tracking_uri(), logs / f"mlflow-serve-{model.key}.log") as s:
            report.startup.setdefault(model.key, {})["mlflow_ping_s"] = s.ping_seconds or 0.0
            print(f"  /ping after {s.ping_seconds:.1f} s", flush=True)
            measure_http(report, MLFLOW_SERVE, model, HttpEndpoint(s.url))


def run_in_process(report: Report, chosen: list[BenchModel], versions: dict[str, str]) -> None:
    from ptdeploy import state
    from ptdeploy.workspace.engine import Engine
    from ptdeploy.workspace.worker import EntityWorker, default_torch_threads

    threads = default_torch_threads()
    # the worker's own engine settings, so "in-process" differs only by what it skips
    batch_rows = max(16, EntityWorker("x", "x", "1", tracking_uri="").config.max_batch_size)
    for model in chosen:
        print(f"== in-process engine: {model.key} ({threads} torch thread(s))", flush=True)
        t0 = time.perf_counter()
        engine = Engine.from_registry(
            model.registered_name,
            versions[model.key],
            state.tracking_uri(),
            torch_threads=threads,
            max_batch_rows=batch_rows,
        )
        report.startup[model.key]["in_process_load_s"] = time.perf_counter() - t0
        warm_up(lambda e=engine, m=model: e.infer(m.workload.query_kwargs()))
        with frozen_gc():
            report.results[(model.key, IN_PROCESS)] = run_levels(
                f"{model.key} {IN_PROCESS}",
                lambda c, e=engine, m=model: in_process_level(e, m.workload, c),
                report.levels,
            )
        del engine
        gc.collect()


def run_plain_generate(report: Report, chosen: list[BenchModel], versions: dict[str, str]) -> None:
    """``model.generate`` on the registered weights, batch = concurrency, greedy."""
    import torch
    from ptdeploy import state
    from ptdeploy.workspace.engine import resolve_model_version
    from ptdeploy.workspace.worker import default_torch_threads
    from transformers import AutoModelForCausalLM, AutoTokenizer

    threads = default_torch_threads()
    torch.set_num_threads(threads)
    for model in chosen:
        if model.workload.task is Task.EMBEDDINGS:
            continue
        print(f"== plain model.generate: {model.key} ({threads} torch thread(s))", flush=True)
        path, mlmodel = resolve_model_version(
            model.registered_name, versions[model.key], state.tracking_uri()
        )
        binary = mlmodel.flavors["transformers"].get("model_binary", "model")
        hf_model = AutoModelForCausalLM.from_pretrained(path / binary, dtype=torch.float32).eval()
        tokenizer = AutoTokenizer.from_pretrained(path / "components" / "tokenizer")
        warm_up(lambda m=hf_model, t=tokenizer, w=model.workload: generate_level(m, t, w, 1))
        with frozen_gc():
            report.results[(model.key, PLAIN_GENERATE)] = run_levels(
                f"{model.key} {PLAIN_GENERATE}",
                lambda c, m=hf_model, t=tokenizer, w=model.workload: generate_level(m, t, w, c),
                report.levels,
            )
        del hf_model
        gc.collect()


def run_bare_loads(report: Report, chosen: list[BenchModel], versions: dict[str, str]) -> None:
    from ptdeploy import state
    from ptdeploy.workspace.worker import default_torch_threads

    for model in chosen:
        print(f"== bare load in a fresh process: {model.key}", flush=True)
        timing = bare_load_seconds(
            model.registered_name,
            versions[model.key],
            state.tracking_uri(),
            default_torch_threads(),
        )
        report.startup[model.key].update(
            {
                "bare_process_s": timing["process_s"],
                "bare_from_registry_s": timing["from_registry_s"],
            }
        )
        print(f"  {timing['process_s']:.1f} s", flush=True)


# --------------------------------------------------------------------------- report


def _num(value: float | None, fmt: str = "{:.1f}") -> str:
    return "–" if value is None else fmt.format(value)


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{1000 * value:.0f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "–" if not a or not b else f"{a / b:.2f}×"


def _metric(model: BenchModel, level: LevelResult | None) -> float | None:
    """What a server is compared on: requests/s for embeddings, output tokens/s for
    completions (``mlflow models serve`` may generate a different number of tokens)."""
    if level is None:
        return None
    if model.workload.task is Task.EMBEDDINGS:
        return level.requests_per_second
    return level.output_tokens_per_second


def render(report: Report, chosen: list[BenchModel], args: argparse.Namespace) -> str:
    import mlflow
    import torch
    import transformers
    from ptdeploy.workspace.worker import default_torch_threads

    now = datetime.now(UTC)
    lines = [
        f"# Serving benchmarks, {now:%Y-%m-%d}",
        "",
        f"`{' '.join(['python', 'benchmarks/serving.py', *sys.argv[1:]])}` — "
        f"{'quick run' if args.quick else 'full run'}, "
        f"{time.perf_counter() - report.started:.0f} s in all, finished {now:%H:%M} UTC.",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, "
        f"{_cpu_model()}; Python {platform.python_version()}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}, mlflow {mlflow.__version__}. "
        f"Local worker and in-process engine: {default_torch_threads()} torch thread(s); "
        "`mlflow models serve`: torch's default. "
        f"Load average before / after: {report.load_before} / {load_average()} "
        "(other work on the machine makes every number noisier; ratios come from this "
        "one run).",
        "",
    ]
    for model in chosen:
        tokens = model.workload.task is not Task.EMBEDDINGS
        lines += [f"## {model.workload.label}", ""]
        header = "| server | concurrency | requests | errors | req/s |"
        header += " output tok/s |" if tokens else ""
        header += " p50 ms | p95 ms |"
        lines += [header, "|" + "---|" * (header.count("|") - 1)]
        for server in SERVERS:
            for c, level in report.results.get((model.key, server), {}).items():
                row = (
                    f"| {server} | {c} | {level.requests} | {level.errors} | "
                    f"{_num(level.requests_per_second)} |"
                )
                row += f" {_num(level.output_tokens_per_second)} |" if tokens else ""
                row += f" {_ms(level.p50_latency_s)} | {_ms(level.p95_latency_s)} |"
                lines.append(row)
        lines.append("")

    lines += [
        "## Ratios",
        "",
        "Embeddings compare requests/s, completions output tokens/s. p95 latency (ms) of "
        "each server at that level alongside.",
        "",
        "| workload | concurrency | local / mlflow serve | local / in-process | "
        "local / plain generate | batched / unbatched | p95 local | p95 unbatched | "
        "p95 mlflow serve | p95 in-process | p95 plain generate |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model in chosen:
        metric = "req/s" if model.workload.task is Task.EMBEDDINGS else "out tok/s"
        for c in report.levels:
            get = {s: report.results.get((model.key, s), {}).get(c) for s in SERVERS}
            value = {s: _metric(model, lv) for s, lv in get.items()}
            p95 = {s: _ms(lv.p95_latency_s) if lv else "–" for s, lv in get.items()}
            lines.append(
                f"| {model.key} ({metric}) | {c} | "
                f"{_ratio(value[LOCAL_BATCHED], value[MLFLOW_SERVE])} | "
                f"{_ratio(value[LOCAL_BATCHED], value[IN_PROCESS])} | "
                f"{_ratio(value[LOCAL_BATCHED], value[PLAIN_GENERATE])} | "
                f"{_ratio(value[LOCAL_BATCHED], value[LOCAL_UNBATCHED])} | "
                f"{p95[LOCAL_BATCHED]} | {p95[LOCAL_UNBATCHED]} | {p95[MLFLOW_SERVE]} | "
                f"{p95[IN_PROCESS]} | {p95[PLAIN_GENERATE]} |"
            )
    lines += goals(report, chosen)
    lines += [
        "",
        "## Start-up",
        "",
        "| model | endpoint create → READY (s) | bare load, fresh process (s) | "
        "of which `Engine.from_registry` (s) | in-process load, warm interpreter (s) | "
        "`mlflow models serve` → /ping (s) |",
        "|---|---|---|---|---|---|",
    ]
    for model in chosen:
        t = report.startup.get(model.key, {})
        lines.append(
            f"| {model.key} | {_num(t.get('create_to_ready_s'))} | "
            f"{_num(t.get('bare_process_s'))} | {_num(t.get('bare_from_registry_s'))} | "
            f"{_num(t.get('in_process_load_s'))} | {_num(t.get('mlflow_ping_s'))} |"
        )
    minilm = report.results.get(("minilm", LOCAL_BATCHED), {}).get(8)
    if minilm is not None and minilm.requests_per_second is not None:
        met = "met" if minilm.requests_per_second >= DESIGN_TARGET_RPS else "NOT met"
        lines += [
            "",
            f"DESIGN.md target, MiniLM embeddings on the local endpoint at concurrency 8 "
            f">= {DESIGN_TARGET_RPS:.0f} req/s: {minilm.requests_per_second:.1f} req/s, {met}.",
        ]
    if report.notes:
        lines += ["", "## Notes", "", *(f"- {note}" for note in report.notes)]
    return "\n".join(lines) + "\n"


def goals(report: Report, chosen: list[BenchModel]) -> list[str]:
    """The speed goals of issue 9, each with the ratio this run measured."""

    def level(model: str, server: str, c: int) -> LevelResult | None:
        return report.results.get((model, server), {}).get(c)

    def tok(model: str, server: str, c: int) -> float | None:
        lv = level(model, server, c)
        return lv.output_tokens_per_second if lv else None

    def check(value: float | None, goal: float, below: bool = False) -> str:
        if value is None:
            return "–"
        ok = value <= goal if below else value >= goal
        return f"{value:.2f} ({'met' if ok else 'NOT met'})"

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    rows: list[tuple[str, str, str]] = []
    keys = {m.key for m in chosen}
    if "smollm2" in keys:
        for c, vs_mlflow, vs_generate in ((1, 1.5, 0.9), (8, 3.0, 0.8)):
            local = tok("smollm2", LOCAL_BATCHED, c)
            rows.append(
                (
                    f"SmolLM2 c={c}, local / mlflow serve (out tok/s)",
                    f">= {vs_mlflow}",
                    check(ratio(local, tok("smollm2", MLFLOW_SERVE, c)), vs_mlflow),
                )
            )
            rows.append(
                (
                    f"SmolLM2 c={c}, local / plain generate at batch {c} (out tok/s)",
                    f">= {vs_generate}",
                    check(ratio(local, tok("smollm2", PLAIN_GENERATE, c)), vs_generate),
                )
            )
        c8, c1 = level("smollm2", LOCAL_BATCHED, 8), level("smollm2", LOCAL_BATCHED, 1)
        rows.append(
            (
                "SmolLM2 local, p95 at c=8 / p50 at c=1 (same max_tokens)",
                "<= 1.5",
                check(
                    ratio(c8.p95_latency_s if c8 else None, c1.p50_latency_s if c1 else None),
                    1.5,
                    below=True,
                ),
            )
        )
    if "minilm" in keys:
        local = level("minilm", LOCAL_BATCHED, 8)
        inproc = level("minilm", IN_PROCESS, 8)
        rps = local.requests_per_second if local else None
        rows.append(
            (
                "MiniLM c=8, local req/s",
                f">= {DESIGN_TARGET_RPS:.0f}",
                "–"
                if rps is None
                else f"{rps:.1f} ({'met' if rps >= DESIGN_TARGET_RPS else 'NOT met'})",
            )
        )
        rows.append(
            (
                "MiniLM c=8, local / in-process at batch 8 (req/s)",
                ">= 0.8",
                check(ratio(rps, inproc.requests_per_second if inproc else None), 0.8),
            )
        )
    for model in chosen:
        ready = report.startup.get(model.key, {}).get("create_to_ready_s")
        rows.append(
            (
                f"{model.key} endpoint create -> READY (s)",
                "<= 3",
                check(ready, 3.0, below=True),
            )
        )
    return [
        "",
        "## Issue 9 goals, from this run",
        "",
        "| goal | target | measured |",
        "|---|---|---|",
        *(f"| {name} | {target} | {value} |" for name, target, value in rows),
    ]


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="concurrency 1 and 8, short levels (a few minutes)"
    )
    parser.add_argument(
        "--models",
        default="minilm,smollm2",
        help="comma-separated subset of minilm,smollm2 (default: both)",
    )
    parser.add_argument(
        "--home",
        type=Path,
        default=None,
        help="state directory to use and keep (registry, endpoints); default: a temporary "
        "one, removed at the end",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results file (default: benchmarks/results/serving-<date>[-quick].md)",
    )
    args = parser.parse_args(argv)
    home = args.home or Path(tempfile.mkdtemp(prefix="ptdeploy-bench-"))
    home.mkdir(parents=True, exist_ok=True)
    setup_state(home.resolve())

    from ptdeploy import targets

    wanted = [k.strip() for k in args.models.split(",") if k.strip()]
    chosen = [m for m in models(args.quick) if m.key in wanted]
    unknown = set(wanted) - {m.key for m in chosen}
    if unknown or not chosen:
        parser.error(f"--models: unknown {sorted(unknown)}; choose from minilm, smollm2")
    report = Report(levels=(1, 8) if args.quick else (1, 8, 32))
    print(f"state directory: {home}", flush=True)
    targets.configure_mlflow("local")
    versions = {m.key: register(m) for m in chosen}
    try:
        run_local(report, chosen, versions)
        run_mlflow_serve(report, chosen, versions, home)
        run_in_process(report, chosen, versions)
        run_plain_generate(report, chosen, versions)
        run_bare_loads(report, chosen, versions)
    except BaseException:
        print(f"failed; logs kept in {home}", file=sys.stderr)
        raise
    finally:
        from ptdeploy.workspace import control

        control.stop(quiet=True)
    if args.home is None:  # the temporary registry holds a copy of every model: remove it
        shutil.rmtree(home, ignore_errors=True)
    report.notes.append(
        "Request bodies are identical for every HTTP server: "
        + "; ".join(f"{m.key} `{m.workload.query_kwargs()}`" for m in chosen)
        + ". `mlflow models serve` honours `max_tokens` in this top-level form (it ignores "
        "it only under `params`, see DESIGN.md)."
    )
    report.notes.append(
        "Levels are closed loops run by `ptdeploy.capacity.loadtest` with a keep-alive "
        "`http.client` connection per client thread; each level stops issuing after its "
        "request or time cap and waits for the requests in flight. In-process levels serve "
        "batches of `concurrency` requests with the worker's engine settings."
    )
    text = render(report, chosen, args)
    print(text)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d")
    out = args.out or REPO / "benchmarks" / "results" / (
        f"serving-{stamp}{'-quick' if args.quick else ''}.md"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
