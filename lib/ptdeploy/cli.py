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


if __name__ == "__main__":
    sys.exit(main())
