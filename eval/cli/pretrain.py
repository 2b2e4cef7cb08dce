"""``dim-ssl pretrain CONFIG [key=value ...] [--resume | --overwrite]``: self-supervised pretraining.

Reads a YAML run configuration (``configs/*.yaml``), applies dotted overrides
(``optimizer.lr=3e-4 trainer.max_epochs=2 data.limit_train=256``), trains with PyTorch
Lightning and writes everything into the run's output folder (see :mod:`eval.training.pretrain`).
SIGINT or SIGTERM saves a checkpoint first; ``--resume`` continues from it.
"""

from __future__ import annotations

import argparse
import sys
from eval.errors import CheckpointError
from eval.training.config import resolve_config
from eval.errors import ConfigError
from eval.errors import DatasetNotFoundError
from eval.training.pretrain import TrainingInterrupted, pretrain
from eval.errors import RunError

# Exit statuses: 2 for a configuration error (as argparse's usage errors), 1 for a run that
# cannot start (missing data, damaged checkpoint, folder in use), and 128 + the signal number
# for a run stopped by SIGINT/SIGTERM after saving its checkpoint (the shell's convention).
_EXIT_CONFIG_ERROR = 2
_EXIT_RUN_ERROR = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML run configuration, e.g. configs/quickstart.yaml")
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE",
        help="dotted overrides of configuration keys, values in YAML: optimizer.lr=3e-4 "
             "trainer.max_epochs=2 optimizer.betas=[0.5,0.999] trainer.max_time_s=null",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true",
                      help="continue the run in the output folder from checkpoints/last.ckpt")
    mode.add_argument("--overwrite", action="store_true",
                      help="start afresh in an output folder that holds an earlier run (deletes it)")


def run(args: argparse.Namespace) -> int:
    from pytorch_lightning.utilities.exceptions import SIGTERMException


    def fail(message: str, status: int) -> int:
        print(f"dim-ssl pretrain: error: {message}", file=sys.stderr)
        return status

    try:
        config = resolve_config(args.config, args.overrides)
    except ConfigError as err:
        return fail(str(err), _EXIT_CONFIG_ERROR)
    try:
        pretrain(config, resume=args.resume, overwrite=args.overwrite)
    except ConfigError as err:
        return fail(str(err), _EXIT_CONFIG_ERROR)
    except (DatasetNotFoundError, CheckpointError, RunError) as err:
        return fail(str(err), _EXIT_RUN_ERROR)
    except TrainingInterrupted as stop:
        command = " ".join(["dim-ssl pretrain", args.config, *args.overrides, "--resume"])
        print(f"\n{stop}\ncontinue with: {command}", file=sys.stderr)
        return 128 + int(stop.signum)
    except (KeyboardInterrupt, SIGTERMException) as stop:
        # A signal before training started (or a second one): nothing new was saved.
        name = "SIGINT" if isinstance(stop, KeyboardInterrupt) else "SIGTERM"
        print(f"\nstopped by {name} without a new checkpoint", file=sys.stderr)
        return 130 if name == "SIGINT" else 143
    return 0
