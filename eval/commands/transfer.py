"""``dim-ssl transfer CONFIG [key=value ...] [--overwrite | --reuse]``: pretrain here, probe there.

Pretrains each method of the ``transfer`` section on each source dataset (or takes the given
checkpoints), then probes the frozen features on each target dataset, read in the model's own
input format, next to the random-init encoder and the raw pixels of the target; writes the
table (Markdown, CSV, JSON) and embedding plots (see :mod:`eval.transfer`).
"""

from __future__ import annotations

import argparse
import sys

_EXIT_CONFIG_ERROR = 2
_EXIT_RUN_ERROR = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML run configuration with a transfer: section, "
                                       "e.g. configs/transfer_offline.yaml")
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE",
        help="dotted overrides of the shared configuration or the transfer section: "
             "transfer.budget.seconds=60 transfer.targets=[digits]",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--overwrite", action="store_true",
                      help="start afresh in an output folder that holds earlier results (deletes its runs)")
    mode.add_argument("--reuse", action="store_true",
                      help="keep finished pretraining runs whose configuration is unchanged")


def run(args: argparse.Namespace) -> int:
    from eval.checkpoint import CheckpointError
    from eval.config import ConfigError
    from eval.data import DatasetNotFoundError
    from eval.training import RunError, TrainingInterrupted
    from eval.transfer import OutputInUse, resolve_transfer, run_transfer

    def fail(message: str, status: int) -> int:
        print(f"dim-ssl transfer: error: {message}", file=sys.stderr)
        return status

    try:
        transfer = resolve_transfer(args.config, args.overrides)
    except ConfigError as err:
        return fail(str(err), _EXIT_CONFIG_ERROR)
    try:
        result = run_transfer(transfer, overwrite=args.overwrite, reuse=args.reuse)
    except ConfigError as err:
        return fail(str(err), _EXIT_CONFIG_ERROR)
    except (DatasetNotFoundError, CheckpointError, RunError, OutputInUse) as err:
        return fail(str(err), _EXIT_RUN_ERROR)
    except TrainingInterrupted as stop:
        command = " ".join(["dim-ssl transfer", args.config, *args.overrides, "--reuse"])
        print(f"\n{stop}\nthe finished runs are kept; continue with: {command}", file=sys.stderr)
        return 128 + int(stop.signum)
    except KeyboardInterrupt:
        print("\nstopped by SIGINT", file=sys.stderr)
        return 130
    print(f"\n## {result['title']}\n")
    print(result["table"])
    print(f"written to {transfer.out} in {result['seconds']:.0f} s")
    return 0
