"""The ``ptdeploy`` command line: every subcommand's arguments and output, in one place.

Library modules expose plain functions (``runner.run_notebook``, ``loadtest.run_load_test``,
``bundle.write``, ``job.rehearse_job``, ``control.start``...) and know nothing of argparse;
each subcommand here has a ``configure_<name>_parser(parser)`` and a ``run_<name>(args) ->
int`` (exit status) that calls them. Library modules are imported inside those functions,
so ``ptdeploy --help`` stays fast (no torch or mlflow import).

The local workspace's server process keeps its own two-flag entry point
(``python -m ptdeploy.workspace.server``): it is a separate process that ``workspace start``
spawns, and the local workspace imports nothing from the notebook side (this module included).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ptdeploy.errors import JobDefinitionError, ParameterError, PtdeployError, WorkspaceError

if TYPE_CHECKING:
    from ptdeploy.capacity.loadtest import Task

# subcommand -> one-line help; each has configure_<name>_parser and run_<name> below
SUBCOMMANDS: dict[str, str] = {
    "workspace": "start, stop or inspect the local workspace",
    "run": "run one notebook headless with a parameters file",
    "run-all": "run every notebook template for a target",
    "loadtest": "load-test a serving endpoint at a ladder of concurrencies",
    "bundle": "write (or --check) the Databricks job bundle from parameters/",
    "plan": "size min/max provisioned throughput for a workload, with its cost",
    "cleanup": "list (and --delete) the serving endpoints ptdeploy created",
    "job": "rehearse a bundle job offline: ptdeploy job run <template>",
    "secrets": "local secrets for offline runs: ptdeploy secrets put SCOPE KEY",
    "lab": "open the templates in JupyterLab (127.0.0.1, token, the project's kernel)",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ptdeploy",
        description="Take foundation models to provisioned-throughput serving endpoints.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        attr = name.replace("-", "_")
        p.set_defaults(_run=globals()[f"run_{attr}"])
        globals()[f"configure_{attr}_parser"](p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args._run(args) or 0)


# --------------------------------------------------------------------------- lab


def configure_lab_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=None, help="port (default: a free one)")
    parser.add_argument(
        "--no-browser", action="store_true", help="print the link instead of opening a browser"
    )
    parser.add_argument(
        "--parameters",
        metavar="TARGET",
        help="seed each notebook's widgets from parameters/<notebook>/TARGET.yaml "
        "(default: the notebook's parameters cell)",
    )
    parser.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        metavar=("NAME", "VALUE"),
        help="widget seed, applied to every notebook that declares NAME",
    )


def run_lab(args: argparse.Namespace) -> int:
    from ptdeploy.errors import PtdeployError
    from ptdeploy.templates import lab

    try:
        return lab.serve(
            port=args.port,
            open_browser=not args.no_browser,
            parameters_target=args.parameters,
            overrides=dict(args.parameter or []),
        )
    except PtdeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


# --------------------------------------------------------------------------- plan


def configure_plan_parser(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``ptdeploy plan``: a workload, the chunk size and, optionally, prices."""
    from ptdeploy.capacity.cost import PRICING_SOURCES
    from ptdeploy.capacity.planner import DEFAULT_HEADROOM

    parser.add_argument(
        "--peak-rps",
        type=float_arg(0.0, strict=True),
        required=True,
        help="requests per second at peak",
    )
    parser.add_argument(
        "--rest-rps",
        type=float_arg(0.0),
        default=0.0,
        help="requests per second at rest (default 0: idle off-peak)",
    )
    parser.add_argument(
        "--input-tokens", type=float_arg(0.0), required=True, help="mean input tokens per request"
    )
    parser.add_argument(
        "--output-tokens",
        type=float_arg(0.0),
        required=True,
        help="mean output tokens per request (0 for embeddings)",
    )
    parser.add_argument(
        "--p95-latency",
        type=float_arg(0.0, strict=True),
        default=None,
        help="p95 latency target in seconds (rules out scale-to-zero)",
    )
    parser.add_argument(
        "--chunk-size",
        type=int,
        required=True,
        help="throughput_chunk_size from get-model-optimization-info",
    )
    parser.add_argument(
        "--headroom",
        type=float_arg(1.0),
        default=DEFAULT_HEADROOM,
        help=f"margin over the load (default {DEFAULT_HEADROOM:g})",
    )
    parser.add_argument(
        "--dbu-per-hour-per-unit",
        type=float_arg(0.0, strict=True),
        default=None,
        help="DBUs one chunk or model unit consumes per hour (for the cost)",
    )
    parser.add_argument(
        "--price-per-dbu",
        type=float_arg(0.0, strict=True),
        default=None,
        help="price of one DBU (for the cost)",
    )
    parser.add_argument("--currency", default="USD", help="currency of --price-per-dbu (USD)")
    parser.epilog = f"Prices are yours to give; where to find them: {PRICING_SOURCES}."


def run_plan(args: argparse.Namespace) -> int:
    """``ptdeploy plan``: print the planner's arithmetic and proposal (and cost); 2 on bad input."""
    from ptdeploy.capacity.cost import pricing_from
    from ptdeploy.capacity.planner import Workload, plan_capacity
    from ptdeploy.errors import PtdeployError

    try:
        plan = plan_capacity(
            Workload(
                args.peak_rps,
                args.rest_rps,
                args.input_tokens,
                args.output_tokens,
                p95_latency_target_s=args.p95_latency,
            ),
            args.chunk_size,
            headroom=args.headroom,
            pricing=pricing_from(args.dbu_per_hour_per_unit, args.price_per_dbu, args.currency),
        )
    except PtdeployError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("\n".join(plan.explain()))
    if plan.cost is None:
        print("(Give --dbu-per-hour-per-unit and --price-per-dbu to see the cost.)")
    return 0


# --------------------------------------------------------------------------- cleanup


def configure_cleanup_parser(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``ptdeploy cleanup``."""
    parser.add_argument("--target", choices=("local", "databricks"), default="local")
    parser.add_argument("--profile", default=None, help="~/.databrickscfg profile (databricks)")
    parser.add_argument(
        "--match", default=None, help="only endpoints whose name matches this shell pattern"
    )
    parser.add_argument(
        "--delete", action="store_true", help="delete them (default: a dry run that lists them)"
    )
    parser.add_argument("--yes", action="store_true", help="do not ask before deleting")


def run_cleanup(args: argparse.Namespace, *, client: object = None, ask=input) -> int:
    """``ptdeploy cleanup``: 0 done (or listed), 1 declined, 2 nothing matched or bad input."""
    from ptdeploy.errors import PtdeployError
    from ptdeploy.serving import cleanup

    try:
        from ptdeploy import targets

        targets.check_profile(args.target, args.profile)
        if client is None:
            client = targets.workspace_client(args.target, profile=args.profile)
        found = cleanup.managed_endpoints(client, args.match)
        if not found:
            what = f"matching {args.match!r}" if args.match else "at all"
            print(
                f"error: no serving endpoint created by ptdeploy {what} on the {args.target} "
                f"target (ptdeploy tags what it creates {cleanup.MANAGED_TAG[0]}="
                f"{cleanup.MANAGED_TAG[1]}); nothing changed.",
                file=sys.stderr,
            )
            return 2
        verb = "Deleting" if args.delete else "Would delete (dry run; add --delete)"
        print(f"{verb} {len(found)} endpoint(s) created by ptdeploy on {args.target}:")
        for ep in found:
            print(f"  {ep.describe()}")
        if not args.delete:
            return 0
        if not args.yes:
            if not sys.stdin or not sys.stdin.isatty():
                print(
                    "error: not a terminal: pass --yes to delete without asking.", file=sys.stderr
                )
                return 2
            if ask(f"Delete these {len(found)} endpoint(s)? [y/N] ").strip().lower() not in (
                "y",
                "yes",
            ):
                print("Nothing deleted.")
                return 1
        cleanup.delete_endpoints(client, found, on_deleted=lambda ep: print(f"  deleted {ep.name}"))
    except PtdeployError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


# ----------------------------------------------------------- number arguments


def _concurrency_arg(text: str) -> tuple[int, ...]:
    from ptdeploy.capacity import loadtest

    try:
        return loadtest.check_concurrency(tuple(int(p) for p in text.split(",")))
    except (ValueError, ParameterError):
        raise argparse.ArgumentTypeError(
            f"got {text!r}; expected distinct whole numbers between 1 and {loadtest.MAX_CONCURRENCY}, "
            "comma-separated, e.g. 1,2,4,8"
        ) from None


def int_arg(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse ``type``: a whole number in range, or a message saying what is valid."""
    from ptdeploy.capacity import loadtest

    def parse(text: str) -> int:
        try:
            return loadtest.int_param("value", int(text), low, high)
        except (ValueError, ParameterError):
            rng = f"between {low} and {high}" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(
                f"got {text!r}; expected a whole number {rng}"
            ) from None

    return parse


def float_arg(
    low: float, high: float | None = None, *, strict: bool = False
) -> Callable[[str], float]:
    """An argparse ``type``: a finite number in range (``strict``: above ``low``)."""
    from ptdeploy.capacity import loadtest

    def parse(text: str) -> float:
        try:
            return loadtest.float_param("value", float(text), low, high, strict=strict)
        except (ValueError, ParameterError):
            lo = f"> {low:g}" if strict else f">= {low:g}"
            rng = f"{lo} and <= {high:g}" if high is not None else lo
            raise argparse.ArgumentTypeError(f"got {text!r}; expected a number {rng}") from None

    return parse


def _task_arg(text: str) -> Task:
    from ptdeploy.capacity import loadtest

    try:
        return loadtest.parse_task(text)
    except ParameterError:
        raise argparse.ArgumentTypeError(
            f"got {text!r}; expected completions, chat, embeddings (or llm/v1/<task>)"
        ) from None


# ------------------------------------------------------------------ workspace


def configure_workspace_parser(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = sub.add_parser(
        "start",
        help="start the local workspace (prints DATABRICKS_HOST/DATABRICKS_TOKEN for eval)",
        description="Start the local workspace in the background, or reuse the running one, "
        "and print `export DATABRICKS_HOST=...` and `export DATABRICKS_TOKEN=...` lines: "
        "`eval $(ptdeploy workspace start)` points the Databricks SDK, MLflow and the "
        "Databricks CLI at it.",
    )
    p.add_argument(
        "--port", type=int, default=None, help="port on 127.0.0.1 (default: any free port)"
    )
    p.add_argument("--foreground", action="store_true", help="serve in this process until Ctrl-C")
    sub.add_parser("stop", help="stop the local workspace and its workers")
    sub.add_parser("status", help="is the local workspace running, where, how many endpoints")


def _print_env(ws_host: str, token: str) -> None:
    print(f"export DATABRICKS_HOST={ws_host}")
    print(f"export DATABRICKS_TOKEN={token}", flush=True)


def run_workspace(args: argparse.Namespace) -> int:
    from ptdeploy.workspace import control

    try:
        if args.action == "start":
            if args.foreground:

                def listening(p: int) -> None:
                    _print_env(control.host_for(p), control.read_token())
                    print(
                        f"local workspace: serving on {control.host_for(p)} (Ctrl-C stops it)",
                        file=sys.stderr,
                        flush=True,
                    )

                try:
                    control.serve_foreground(args.port, on_listening=listening)
                except KeyboardInterrupt:  # Ctrl-C: uvicorn shut down cleanly, then re-raised
                    pass
                print("local workspace: stopped", file=sys.stderr)
                return 0
            ws = control.start(args.port)
            _print_env(ws.host, ws.token)
            print(
                f"local workspace: running on {ws.host} (pid {ws.pid}, log {control.log_path()})",
                file=sys.stderr,
            )
            return 0
        if args.action == "stop":
            control.stop()
            return 0
        st = control.status()
        print(f"running: {'yes' if st.running else 'no'} ({st.detail})")
        if st.host:
            print(f"host: {st.host}")
        if st.pid:
            print(f"pid: {st.pid}")
        if st.endpoints is not None:
            print(f"endpoints: {st.endpoints}")
        print(f"state dir: {st.state_dir}")
        print(f"log: {st.log_file}")
        return 0 if st.running else 1
    except WorkspaceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


# --------------------------------------------------------------- run, run-all


def _overrides(pairs: list[list[str]] | None) -> dict[str, str]:
    return {name: value for name, value in (pairs or [])}


def configure_run_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("notebook", help="path of the .ipynb template")
    parser.add_argument("-f", "--parameters-file", help="YAML parameters file")
    parser.add_argument(
        "-p", "--parameter", nargs=2, action="append", metavar=("NAME", "VALUE"), help="override"
    )
    parser.add_argument("--out", default="out", help="folder for executed notebooks (out)")
    parser.add_argument("--kernel", default="python3", help="Jupyter kernel name (python3)")
    parser.add_argument("--log-output", action="store_true", help="stream cell output")
    parser.add_argument(
        "--keep-running",
        action="store_true",
        help="target local: leave the local workspace this run started (and its workers) running",
    )
    _workspace_options(parser)


def _workspace_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--profile", help="~/.databrickscfg profile for target databricks (the SDK's unified auth)"
    )
    parser.add_argument(
        "--experiment",
        help="MLflow experiment on the workspace (default: /Users/<you>/ptdeploy)",
    )


def run_run(args: argparse.Namespace) -> int:
    from ptdeploy import targets
    from ptdeploy.templates import runner

    running_before = targets.local_workspace_running()
    try:
        result = runner.run_notebook(
            args.notebook,
            args.parameters_file,
            _overrides(args.parameter),
            out_dir=args.out,
            kernel_name=args.kernel,
            log_output=args.log_output,
            profile=args.profile,
            experiment=args.experiment,
        )
    except PtdeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not result.ok:
        print(result.describe_failure(), file=sys.stderr)
    else:
        print(f"{result.notebook}: ok in {result.seconds:.1f}s -> {result.output}")
        for key, value in (result.summary or {}).items():
            print(f"  {key}: {value}")
    target = result.parameters.get("target", "")
    if runner.stop_started_workspace(
        target, running_before=running_before, keep_running=args.keep_running
    ):
        print("stopped the local workspace this run started (--keep-running leaves it up)")
    return 0 if result.ok else 1


def configure_run_all_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", choices=("local", "databricks"), default="local")
    parser.add_argument("--out", default="out", help="folder for executed notebooks (out)")
    parser.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        metavar=("NAME", "VALUE"),
        help="override, applied to every notebook that declares NAME",
    )
    parser.add_argument("--only", action="append", help="run only this notebook (repeatable)")
    parser.add_argument(
        "--keep-running",
        action="store_true",
        help="target local: leave the local workspace (and its endpoints' workers) running",
    )
    parser.add_argument(
        "--notebooks", type=Path, help="folder of the templates (default: the project's notebooks/)"
    )
    parser.add_argument(
        "--parameters-dir",
        type=Path,
        help="folder of <notebook>/<target>.yaml files (default: the project's parameters/)",
    )
    _workspace_options(parser)


def run_run_all(args: argparse.Namespace) -> int:
    from ptdeploy.templates import runner

    try:
        results = runner.run_all(
            args.target,
            out_dir=args.out,
            overrides=_overrides(args.parameter),
            only=args.only,
            notebooks=args.notebooks,
            parameters=args.parameters_dir,
            profile=args.profile,
            experiment=args.experiment,
            keep_running=args.keep_running,
        )
    except PtdeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(runner.format_table(results))
    for r in results:
        if not r.ok:
            print(r.describe_failure(), file=sys.stderr)
    return 0 if all(r.ok for r in results) else 1


# ------------------------------------------------------------------- loadtest


def configure_loadtest_parser(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``ptdeploy loadtest``."""
    from ptdeploy.capacity import loadtest

    parser.add_argument("endpoint", metavar="ENDPOINT", help="serving endpoint name")
    parser.add_argument(
        "--concurrency",
        type=_concurrency_arg,
        default=loadtest.DEFAULT_CONCURRENCY,
        help="comma-separated concurrency levels (default: 1,2,4,8)",
    )
    parser.add_argument(
        "--requests-per-level",
        type=int_arg(1, loadtest.MAX_REQUESTS_PER_LEVEL),
        default=loadtest.DEFAULT_REQUESTS_PER_LEVEL,
        help=f"at most this many requests per level (default: {loadtest.DEFAULT_REQUESTS_PER_LEVEL})",
    )
    parser.add_argument(
        "--max-seconds-per-level",
        type=float_arg(0.0, strict=True),
        default=loadtest.DEFAULT_MAX_SECONDS_PER_LEVEL,
        help="no new request after this many seconds in a level "
        f"(default: {loadtest.DEFAULT_MAX_SECONDS_PER_LEVEL:g})",
    )
    parser.add_argument(
        "--task",
        type=_task_arg,
        default=None,
        help="completions, chat or embeddings (default: detected from the endpoint)",
    )
    parser.add_argument(
        "--prompt",
        default=None,
        help="prompt, chat user message or text to embed (default: a short question)",
    )
    parser.add_argument(
        "--max-tokens",
        type=int_arg(1),
        default=None,
        help=f"max_tokens for completions/chat (default: {loadtest.DEFAULT_MAX_TOKENS})",
    )
    parser.add_argument(
        "--temperature",
        type=float_arg(0.0, 2.0),
        default=None,
        help="temperature for completions/chat (default: the endpoint's)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output directory (default: ./loadtest/<endpoint>-<UTC time>)",
    )
    parser.add_argument(
        "--target",
        choices=["local", "databricks"],
        default="local",
        help="local workspace or Databricks (default: local)",
    )
    parser.add_argument(
        "--profile",
        default=None,
        help="~/.databrickscfg profile for --target databricks "
        "(default: the SDK's unified auth: env vars, DEFAULT profile)",
    )
    parser.add_argument(
        "--retry-throttled",
        action="store_true",
        help="let the SDK retry 429/503 (default: record them as errors)",
    )
    parser.add_argument(
        "--stream",
        action="store_true",
        help="stream completions/chat and record time to first token and inter-token latency",
    )
    parser.add_argument("--no-plots", action="store_true", help="do not write the PNG plots")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run_loadtest(args: argparse.Namespace, *, client: Any = None) -> int:
    """``ptdeploy loadtest``: 0 when some request succeeded, 1 when every one failed,
    2 for invalid arguments or an endpoint that cannot be used.

    ``client`` replaces the workspace client (tests); by default it comes from
    ``ptdeploy.targets.workspace_client(args.target, profile=args.profile)``.
    """
    from ptdeploy.capacity import loadtest

    out = args.out or Path("loadtest") / f"{args.endpoint}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    try:
        from ptdeploy import targets

        targets.check_profile(args.target, args.profile)
        if client is None:
            client = targets.workspace_client(args.target, profile=args.profile)
        result = loadtest.run_load_test(
            client,
            args.endpoint,
            task=args.task,
            concurrency=args.concurrency,
            requests_per_level=args.requests_per_level,
            max_seconds_per_level=args.max_seconds_per_level,
            prompt=args.prompt,
            max_tokens=args.max_tokens,
            temperature=args.temperature,
            out_dir=out,
            progress=not args.no_progress,
            retry_throttled=args.retry_throttled,
            stream=args.stream,
        )
    except PtdeployError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    print(f"{result.endpoint} ({result.task.short}): {result.total_requests} requests")
    print(result.to_text())
    if not args.no_plots:
        import matplotlib

        matplotlib.use("Agg")  # a command line never opens windows
        from ptdeploy.capacity import plots

        plots.save_figures(result, out)
    print(f"results written to {out}")
    if result.all_failed:
        kinds = "; ".join(f"{n} x {kind}" for kind, n in result.errors_by_kind().items())
        print(f"error: every request failed: {kinds or 'no request was sent'}", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------- bundle


def configure_bundle_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 when databricks.yml or resources/ are out of date",
    )


def run_bundle(args: argparse.Namespace) -> int:
    from ptdeploy.templates import bundle

    try:
        if args.check:
            outdated = bundle.check()
            if outdated:
                print(
                    "out of date (run `ptdeploy bundle`): " + ", ".join(map(str, outdated)),
                    file=sys.stderr,
                )
                return 1
            print("bundle up to date")
            return 0
        changed = bundle.write()
    except PtdeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("wrote " + ", ".join(map(str, changed)) if changed else "bundle already up to date")
    return 0


# ------------------------------------------------------------------------ job


def configure_job_parser(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="job_command", required=True, metavar="ACTION")
    run = sub.add_parser("run", help="rehearse a bundle job offline, task by task")
    run.add_argument("template", help="job (template) name, e.g. llama_completions")
    run.add_argument(
        "--target", default="local", help="parameters/<template>/<target>.yaml (local)"
    )
    run.add_argument(
        "-p", "--parameter", nargs=2, action="append", metavar=("NAME", "VALUE"),
        help="override a job parameter (as `databricks bundle run --params`)",
    )  # fmt: skip
    run.add_argument(
        "--var", action="append", metavar="NAME=VALUE", help="bundle variable (as the CLI's)"
    )
    run.add_argument("--out", default="out", help="folder for the run (out/jobs/...)")


def run_job(args: argparse.Namespace) -> int:
    from ptdeploy.templates import job

    if args.target == "databricks":
        print(
            "error: a job runs on Databricks with the Databricks CLI: `databricks bundle deploy "
            f"&& databricks bundle run {args.template}`; `ptdeploy job run` rehearses it "
            "offline (--target local).",
            file=sys.stderr,
        )
        return 2
    try:
        variables = {}
        for item in args.var or []:
            if "=" not in item:
                raise JobDefinitionError(f"--var {item!r}: expected NAME=VALUE")
            name, value = item.split("=", 1)
            variables[name] = value
        result = job.rehearse_job(
            args.template,
            target=args.target,
            overrides={n: v for n, v in args.parameter or []},
            variables=variables,
            out_dir=args.out,
        )
    except PtdeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(result.table())
    for t in result.tasks:
        if t.status == job.FAILED:
            print(f"{t.task_key} failed in {t.detail} (output kept: {t.output})", file=sys.stderr)
    return 0 if result.ok else 1


# -------------------------------------------------------------------- secrets


def configure_secrets_parser(parser: Any) -> None:
    sub = parser.add_subparsers(dest="secrets_command", required=True, metavar="ACTION")
    put = sub.add_parser("put", help="store a secret (value read from stdin, never an argument)")
    put.add_argument("scope")
    put.add_argument("key")
    sub.add_parser("list", help="scopes and keys (never values)")


def run_secrets(args: Any) -> int:
    from ptdeploy.templates import dbutils

    if args.secrets_command == "put":
        import getpass

        value = (
            sys.stdin.readline().rstrip("\n")
            if not sys.stdin.isatty()
            else getpass.getpass(f"value of {args.scope}/{args.key}: ")
        )
        try:
            path = dbutils.put_secret(args.scope, args.key, value)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"stored {args.scope}/{args.key} in {path} (owner-only)")
        return 0
    secrets = dbutils.Secrets()
    for scope in secrets.listScopes():
        print(f"{scope}: {', '.join(secrets.list(scope))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
