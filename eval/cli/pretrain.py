"""``dim-ssl pretrain CONFIG [key=value ...] [--resume | --overwrite]``: self-supervised pretraining.

Reads a YAML run configuration (``configs/*.yaml``), applies dotted overrides
(``optimizer.lr=3e-4 trainer.max_epochs=2 data.limit_train=256``), trains with PyTorch
Lightning and writes everything into the run's output folder (see :mod:`eval.training.pretrain`).
SIGINT or SIGTERM saves a checkpoint first; ``--resume`` continues from it.
"""

from __future__ import annotations

import argparse

from eval.cli.guard import run_guarded
from eval.training.config import resolve_config
from eval.training.pretrain import pretrain


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML run configuration, e.g. configs/quickstart.yaml")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted overrides of configuration keys, values in YAML: optimizer.lr=3e-4 "
        "trainer.max_epochs=2 optimizer.betas=[0.5,0.999] trainer.max_time_s=null",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--resume", action="store_true", help="continue the run in the output folder from checkpoints/last.ckpt"
    )
    mode.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh in an output folder that holds an earlier run (deletes it)",
    )


def run(args: argparse.Namespace) -> int:
    outcome = run_guarded(
        "pretrain",
        lambda: resolve_config(args.config, args.overrides),
        lambda config: pretrain(config, resume=args.resume, overwrite=args.overwrite),
        [args.config, *args.overrides],
        continue_flag="--resume",
    )
    return outcome if isinstance(outcome, int) else 0
