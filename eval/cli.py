"""The ``dim-ssl`` command line: one subcommand per module in ``eval/commands``."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

# name -> (module under eval.commands, one-line help). Command modules keep their top-level
# imports light (torch, Lightning and friends are imported inside ``run``), so building the
# parser for every command stays fast.
COMMANDS: dict[str, tuple[str, str]] = {}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dim-ssl",
        description="Deep InfoMax pretraining and the evaluation harness around it.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(_module=module_name)
        _load(module_name).add_arguments(sub)
    return parser


def _load(module_name: str):
    return importlib.import_module(f"eval.commands.{module_name}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(_load(args._module).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
