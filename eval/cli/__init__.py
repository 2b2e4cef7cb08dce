"""The ``dim-ssl`` command line: one subcommand per module in ``eval/commands``."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

# name -> (module under eval.cli, one-line help). Command modules keep their top-level
# imports light (torch, Lightning and friends are imported inside ``run``), so building the
# parser for every command stays fast.
COMMANDS: dict[str, tuple[str, str]] = {
    "pretrain": ("pretrain", "self-supervised pretraining from a YAML config (key=value overrides, --resume)"),
    "export": ("export", "write a checkpoint's backbone as a plain timm state_dict (+ JSON)"),
    "compare": ("compare", "train DIM(L), DIM(G), SimCLR, MoCo (or any list) under one budget and probe them alike"),
    "evaluate": ("evaluate", "probe a checkpoint's frozen features: kNN and linear probe, at each position"),
    "transfer": ("transfer", "pretrain on one dataset (or take checkpoints), probe on others"),
    "bench": ("bench", "time training steps (images/s, peak memory) of DIM, SimCLR, MoCo and the backbone floor"),
}


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
    return importlib.import_module(f"eval.cli.{module_name}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(_load(args._module).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
