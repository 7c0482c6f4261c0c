"""Endpoint start-up: create -> READY through databricks-sdk, round after round, with the
worker's load phases. Measured, never asserted.

    .venv/bin/python benchmarks/startup.py                  # 5 rounds per model (~3-4 min)
    .venv/bin/python benchmarks/startup.py --rounds 3 --models smollm2
    .venv/bin/python benchmarks/startup.py --home /tmp/startup-home   # keep the registry

Starts the local workspace on a state directory of its own (a temporary one unless
``--home``), registers SmolLM2-135M-Instruct and all-MiniLM-L6-v2 there as
``benchmarks/serving.py`` does, then for each model and round: deletes the endpoint,
waits until the server's worker processes are quiet (the spare worker has done its
imports, as a user of a running workspace finds it), creates a fresh endpoint with
``ptdeploy.serving.endpoints.create_or_update`` (databricks-sdk, polling every 0.25 s)
and times it to ``READY / NOT_UPDATING``. The worker's own line in the server log gives
its load time and phases (registry, weights, tokenizer, packing, calibration, ...).

Round 1 on a fresh state directory is the first load on this machine (calibration and
the invariance check are measured); later rounds reuse their cached results.
``--alternate-cold`` removes the cache before rounds 1, 3, ... so that measured and
cached loads alternate under the same machine load (the machine is shared). With
``--no-spare`` the server starts with ``PTDEPLOY_SPARE_WORKERS=0``: every create spawns
a worker that does its imports first. ``--imports`` also times, in fresh interpreters,
what the spare does before it is given a model, with and without
``worker.skip_unused_imports`` (the scikit-learn import transformers' generation module
makes).

The results (markdown) are printed and written to ``benchmarks/results/startup-<date>.md``
unless ``--out -``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "lib"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import HttpEndpoint, load_average, wait_for_quiet_children  # noqa: E402
from serving import (  # noqa: E402
    BenchModel,
    _cpu_model,
    local_workspace,
    models,
    register,
    setup_state,
)

# "[worker NAME] loaded MODEL version V in 1.23 s: registry 0.05 s, weights 0.40 s, ..."
LOADED = re.compile(
    r"loaded (?P<model>\S+) version (?P<version>\S+) in (?P<total>[\d.]+) s: (?P<phases>.*)"
)
PHASE = re.compile(r"(?P<name>[a-z][a-z ]*?) (?P<seconds>[\d.]+) s")


@dataclass
class Round:
    create_to_ready_s: float
    load_s: float | None = None
    phases: dict[str, float] = field(default_factory=dict)
    first_query_s: float | None = None  # the workload's request, right after READY
    second_query_s: float | None = None

    @property
    def kind(self) -> str:
        """``measured``: the worker calibrated (first load on this machine, or the cache was
        cleared); ``cached``: it read the calibration back; ``none``: nothing to calibrate."""
        if "linear calibration" in self.phases:
            return "measured"
        return "cached" if "cache" in self.phases else "none"


def worker_line(log: Path, offset: int, model: BenchModel, timeout_s: float = 10.0) -> Round | None:
    """The worker's "loaded ..." line written after ``offset`` (it follows READY closely)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with open(log, "rb") as f:
            f.seek(offset)
            text = f.read().decode("utf-8", errors="replace")
        for line in text.splitlines():
            m = LOADED.search(line)
            if m and m["model"] == model.registered_name:
                phases = {p["name"]: float(p["seconds"]) for p in PHASE.finditer(m["phases"])}
                return Round(0.0, float(m["total"]), phases)
        time.sleep(0.2)
    return None


def create_rounds(
    w: Any, model: BenchModel, version: str, rounds: int, alternate: bool
) -> list[Round]:
    """``rounds`` fresh endpoints; with ``alternate`` the calibration cache is removed before
    every other round (1, 3, ...), so measured and cached loads meet the same machine load."""
    from ptdeploy import state
    from ptdeploy.serving import endpoints, optimization, throughput
    from ptdeploy.workspace import control
    from ptdeploy.workspace.engine import CALIBRATION_DIR

    info = optimization.get_optimization_info(w, model.registered_name, version)
    spec = endpoints.EndpointSpec(
        model.endpoint, model.registered_name, version, throughput.plan_from_info(info, 1, 1)
    )
    log = control.status().log_file
    results = []
    for n in range(rounds):
        endpoints.delete_endpoint(w, model.endpoint)
        wait_for_quiet_children(control.status().pid)
        if alternate and n % 2 == 0:
            shutil.rmtree(state.state_dir() / CALIBRATION_DIR, ignore_errors=True)
        offset = log.stat().st_size
        t0 = time.perf_counter()
        endpoints.create_or_update(w, spec, timeout=600, progress=False, poll_interval=0.25)
        seconds = time.perf_counter() - t0
        found = worker_line(log, offset, model) or Round(0.0)
        found.create_to_ready_s = seconds
        endpoint = HttpEndpoint(
            f"{w.config.host}/serving-endpoints/{model.endpoint}/invocations", token=w.config.token
        )
        for attr in ("first_query_s", "second_query_s"):
            t0 = time.perf_counter()
            endpoint.query(model.endpoint, **model.workload.query_kwargs())
            setattr(found, attr, time.perf_counter() - t0)
        results.append(found)
        print(
            f"  {model.key} round {n + 1}: create -> READY {seconds:.2f} s "
            f"(worker {found.load_s} s: {found.phases}); first query "
            f"{found.first_query_s:.2f} s, second {found.second_query_s:.2f} s",
            flush=True,
        )
    endpoints.delete_endpoint(w, model.endpoint)
    return results


# What a spare does before it is given a model, in a fresh interpreter: wall and CPU time.
IMPORTS_CODE = """
import json, resource, sys, time
t0 = time.perf_counter()
from ptdeploy.workspace import worker
if sys.argv[1] == "off":
    worker.skip_unused_imports = lambda: None
worker.prepare_worker_process()
ru = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"wall_s": time.perf_counter() - t0, "cpu_s": ru.ru_utime + ru.ru_stime,
                  "sklearn": "sklearn.metrics" in sys.modules}))
"""


def import_times(repeats: int) -> dict[str, list[dict[str, float]]]:
    """``prepare_worker_process`` in fresh interpreters, with ``skip_unused_imports`` on and
    off, interleaved (on, off, on, off, ...) so that both see the same machine load."""
    out: dict[str, list[dict[str, float]]] = {"on": [], "off": []}
    for _ in range(repeats):
        for mode in out:
            done = subprocess.run(
                [sys.executable, "-c", IMPORTS_CODE, mode],
                capture_output=True,
                text=True,
                timeout=300,
                check=True,
                env={**os.environ, "PYTHONPATH": str(REPO / "lib")},
            )
            out[mode].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"  spare imports, skip_unused_imports {mode}: {out[mode][-1]}", flush=True)
    return out


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _stats(values: list[float]) -> str:
    if not values:
        return "–"
    med = statistics.median(values)
    return f"{med:.2f} ({min(values):.2f}–{max(values):.2f})"


def render(
    results: dict[str, list[Round]],
    imports: dict[str, list[dict[str, float]]],
    args: argparse.Namespace,
    load_before: str,
    load_after: str,
) -> str:
    import platform

    import torch

    lines = [
        f"# Endpoint start-up, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"`python benchmarks/startup.py {' '.join(args.argv)}`".replace("  ", " "),
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, {_cpu_model()}; Python "
        f"{platform.python_version()}, torch {torch.__version__}. Spare workers: "
        f"{'off (PTDEPLOY_SPARE_WORKERS=0)' if args.no_spare else 'on'}. Load average before / "
        f"after: {load_before} / {load_after}.",
        "",
        "## create → READY (databricks-sdk, fresh endpoint each round)",
        "",
        "Median (min–max) over the rounds of each kind: *measured* = the worker calibrated "
        "(first load on this machine, or the cache was cleared), *cached* = it read the "
        "calibration back, *none* = nothing to calibrate (an encoder).",
        "",
        "| model | calibration | rounds | create → READY (s) | worker load (s) | "
        "first query after READY (s) | second query (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, rounds in results.items():
        for kind in ("measured", "cached", "none"):
            mine = [r for r in rounds if r.kind == kind]
            if not mine:
                continue
            lines.append(
                f"| {key} | {kind} | {len(mine)} | "
                f"{_stats([r.create_to_ready_s for r in mine])} | "
                f"{_stats([r.load_s for r in mine if r.load_s is not None])} | "
                f"{_stats([r.first_query_s for r in mine if r.first_query_s is not None])} | "
                f"{_stats([r.second_query_s for r in mine if r.second_query_s is not None])} |"
            )
    lines += ["", "## Worker load phases (s, from the server log)", ""]
    for key, rounds in results.items():
        names: list[str] = []
        for r in rounds:
            names += [n for n in r.phases if n not in names]
        lines += [
            f"### {key}",
            "",
            "| round | create → READY | worker load | "
            + " | ".join(names)
            + " | first query | second query |",
            "|---|---|---|" + "---|" * (len(names) + 2),
        ]
        for i, r in enumerate(rounds, 1):
            cells = [f"{r.phases[n]:.2f}" if n in r.phases else "–" for n in names]
            cells += [_num(r.first_query_s), _num(r.second_query_s)]
            lines.append(
                f"| {i} | {r.create_to_ready_s:.2f} | {_num(r.load_s)} | "
                + " | ".join(cells)
                + " |"
            )
        lines.append("")
    if imports:
        lines += [
            "## A spare's imports in a fresh interpreter (`worker.prepare_worker_process`)",
            "",
            "| `skip_unused_imports` | wall s, median (min–max) | CPU s, median (min–max) | sklearn imported |",
            "|---|---|---|---|",
        ]
        for mode, runs in imports.items():
            lines.append(
                f"| {mode} | {_stats([r['wall_s'] for r in runs])} | "
                f"{_stats([r['cpu_s'] for r in runs])} | {runs[0]['sklearn']} |"
            )
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="creates per model (default 5)")
    parser.add_argument("--models", default="smollm2,minilm", help="subset of smollm2,minilm")
    parser.add_argument("--home", type=Path, default=None, help="state directory to use and keep")
    parser.add_argument("--no-spare", action="store_true", help="PTDEPLOY_SPARE_WORKERS=0")
    parser.add_argument(
        "--alternate-cold",
        action="store_true",
        help="remove the calibration cache before rounds 1, 3, ...: measured and cached loads "
        "side by side",
    )
    parser.add_argument(
        "--imports",
        type=int,
        default=0,
        metavar="N",
        help="also time a spare's imports N times each, with and without skip_unused_imports",
    )
    parser.add_argument("--out", default=None, help="results file ('-': print only)")
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    home = args.home or Path(tempfile.mkdtemp(prefix="ptdeploy-startup-"))
    home.mkdir(parents=True, exist_ok=True)
    setup_state(home.resolve())
    if args.no_spare:
        os.environ["PTDEPLOY_SPARE_WORKERS"] = "0"

    from ptdeploy import targets
    from ptdeploy.workspace import control

    wanted = [k.strip() for k in args.models.split(",") if k.strip()]
    chosen = [m for key in wanted for m in models(quick=True) if m.key == key]
    if len(chosen) != len(wanted) or not chosen:
        parser.error("--models: choose from smollm2, minilm")
    targets.configure_mlflow("local")
    versions = {m.key: register(m) for m in chosen}
    load_before = load_average()
    results: dict[str, list[Round]] = {}
    imports: dict[str, list[dict[str, float]]] = {}
    try:
        with local_workspace(batching=True) as w:
            for model in chosen:
                results[model.key] = create_rounds(
                    w, model, versions[model.key], args.rounds, args.alternate_cold
                )
        if args.imports:
            imports = import_times(args.imports)
    finally:
        control.stop(quiet=True)
    load_after = load_average()
    if args.home is None:
        shutil.rmtree(home, ignore_errors=True)
    text = render(results, imports, args, load_before, load_after)
    print(text)
    if args.out != "-":
        out = (
            Path(args.out)
            if args.out
            else (REPO / "benchmarks" / "results" / f"startup-{datetime.now(UTC):%Y-%m-%d}.md")
        )
        out.write_text(text, encoding="utf-8")
        print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
