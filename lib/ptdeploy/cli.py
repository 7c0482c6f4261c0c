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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    mod = importlib.import_module(args._module)
    run = getattr(mod, f"run_{args._command.replace('-', '_')}", None) or mod.run
    return int(run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
