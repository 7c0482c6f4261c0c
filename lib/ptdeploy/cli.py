"""The ``ptdeploy`` command line.

Each subcommand lives in the module of its concern, which exposes
``configure_parser(parser)`` and ``run(args) -> int``; this file only wires them, and
imports them lazily so ``ptdeploy --help`` stays fast (no torch or mlflow import).
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "workspace": ("ptdeploy.workspace.control", "start, stop or inspect the local workspace"),
    "run": ("ptdeploy.runner", "run one notebook headless with a parameters file"),
    "run-all": ("ptdeploy.runner", "run every notebook template for a target"),
    "loadtest": ("ptdeploy.loadtest", "load-test a serving endpoint at a ladder of concurrencies"),
    "bundle": ("ptdeploy.bundle", "write (or --check) the Databricks job bundle from parameters/"),
    "plan": ("ptdeploy.cli", "size min/max provisioned throughput for a workload, with its cost"),
    "cleanup": ("ptdeploy.cli", "list (and --delete) the serving endpoints ptdeploy created"),
    "job": ("ptdeploy.job", "rehearse a bundle job offline: ptdeploy job run <template>"),
    "secrets": (
        "ptdeploy.dbutils",
        "local secrets for offline runs: ptdeploy secrets put SCOPE KEY",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ptdeploy",
        description="Take foundation models to provisioned-throughput serving endpoints.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module, _command=name)
        mod = importlib.import_module(module)
        configure = (
            getattr(mod, f"configure_{name.replace('-', '_')}_parser", None) or mod.configure_parser
        )
        configure(p)
    lab = sub.add_parser("lab", help=LAB_HELP, description=LAB_HELP)
    lab.set_defaults(_run=run_lab)
    configure_lab_parser(lab)
    return parser


LAB_HELP = "open the templates in JupyterLab (127.0.0.1, token, the project's kernel)"


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
    from ptdeploy import lab
    from ptdeploy.errors import PtdeployError

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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is not None:
        return int(args._run(args) or 0)
    mod = importlib.import_module(args._module)
    run = getattr(mod, f"run_{args._command.replace('-', '_')}", None) or mod.run
    return int(run(args) or 0)


# --------------------------------------------------------------------------- plan


def configure_plan_parser(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``ptdeploy plan``: a workload, the chunk size and, optionally, prices."""
    from ptdeploy.cost import PRICING_SOURCES
    from ptdeploy.loadtest import float_arg
    from ptdeploy.planner import DEFAULT_HEADROOM

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
    from ptdeploy.cost import pricing_from
    from ptdeploy.errors import PtdeployError
    from ptdeploy.planner import Workload, plan_capacity

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
    from ptdeploy import cleanup
    from ptdeploy.errors import PtdeployError

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


if __name__ == "__main__":
    sys.exit(main())
