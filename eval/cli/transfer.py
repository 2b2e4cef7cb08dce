"""``dim-ssl transfer CONFIG [key=value ...] [--overwrite | --reuse]``: pretrain here, probe there.

Pretrains each method of the ``transfer`` section on each source dataset (or takes the given
checkpoints), then probes the frozen features on each target dataset, read in the model's own
input format, next to the random-init encoder and the raw pixels of the target; writes the
table (Markdown, CSV, JSON) and embedding plots (see :mod:`eval.experiments.transfer`).
"""

from __future__ import annotations

import argparse

from eval.cli.guard import run_guarded
from eval.experiments.transfer import resolve_transfer, run_transfer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "config", help="YAML run configuration with a transfer: section, e.g. configs/transfer_offline.yaml"
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted overrides of the shared configuration or the transfer section: "
        "transfer.budget.seconds=60 transfer.targets=[digits]",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh in an output folder that holds earlier results (deletes its runs)",
    )
    mode.add_argument(
        "--reuse", action="store_true", help="keep finished pretraining runs whose configuration is unchanged"
    )


def run(args: argparse.Namespace) -> int:
    outcome = run_guarded(
        "transfer",
        lambda: resolve_transfer(args.config, args.overrides),
        lambda transfer: run_transfer(transfer, overwrite=args.overwrite, reuse=args.reuse),
        [args.config, *args.overrides],
        continue_flag="--reuse",
    )
    if isinstance(outcome, int):
        return outcome
    transfer, result = outcome
    print(f"\n## {result['title']}\n")
    print(result["table"])
    print(f"written to {transfer.out} in {result['seconds']:.0f} s")
    return 0
