"""The ``dim-ssl`` command line: one module per verb in ``eval/cli``.

Every verb module defines ``add_arguments(parser)`` and ``run(args) -> int`` and imports what it
runs at its top (torch, Lightning, the experiments). So that ``dim-ssl --help`` and a mistyped
verb answer at once, :func:`main` imports only the module of the verb on the command line
(``importlib``, the one deferred import of the harness's own modules).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from types import ModuleType
from typing import Sequence

# verb -> one-line help; the verb's module is eval.cli.<verb>.
COMMANDS: dict[str, str] = {
    "pretrain": "self-supervised pretraining from a YAML config (key=value overrides, --resume)",
    "export": "write a checkpoint's backbone as a plain timm state_dict (+ JSON)",
    "compare": "train DIM(L), DIM(G), SimCLR, MoCo (or any list) under one budget and probe them alike",
    "merge": "one table (gains, mean ± std over seeds) from a comparison run in parts in several folders",
    "evaluate": "probe a checkpoint's frozen features: kNN and linear probe, at each position",
    "transfer": "pretrain on one dataset (or take checkpoints), probe on others",
    "bench": "time training steps (images/s, peak memory) of DIM, SimCLR, MoCo, BYOL and the backbone floor",
    "sweep": "a grid over config keys (e.g. DIM's alpha x beta), each cell trained and probed alike; resumable",
    "diagnose": "the DIM paper's diagnostics of checkpoints: MI(X;Y), MI(local;Y), NDM of y, probe accuracies",
}


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The parser; the arguments of ``verb`` (every verb when ``None``) are read from its module."""
    parser = argparse.ArgumentParser(
        prog="dim-ssl",
        description="Deep InfoMax pretraining and the evaluation harness around it.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if verb is None or name == verb:
            load_command(name).add_arguments(sub)
    return parser


def load_command(verb: str) -> ModuleType:
    """The module of a verb of :data:`COMMANDS`."""
    return importlib.import_module(f"eval.cli.{verb}")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verb = next((word for word in argv if not word.startswith("-")), None)
    # Only the verb being run is imported; without a known verb, argparse answers (usage, help).
    args = build_parser(verb if verb in COMMANDS else "").parse_args(argv)
    return int(load_command(args.command).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
