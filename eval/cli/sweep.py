"""``dim-ssl sweep CONFIG [key=value ...] [--overwrite]``: a grid over configuration keys.

Trains one run per cell of the configuration's ``sweep.grid`` (e.g. DIM's alpha x beta) under
the same budget, probes every cell alike, and writes the table (Markdown, CSV, JSON) and one
heatmap per probe and position into the output folder (see :mod:`eval.experiments.sweep`).
Resumable cell by cell: run the same command again after an interruption and the finished
cells are kept, an unfinished one continues from its checkpoint.
"""

from __future__ import annotations

import argparse

from eval.cli.guard import run_guarded
from eval.cli.output import print_table
from eval.experiments.sweep import resolve_sweep, run_sweep


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "config", help="YAML run configuration with a sweep: section, e.g. configs/sweep_alpha_beta.yaml"
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted overrides of the shared configuration or the sweep section: sweep.budget.seconds=30 "
        "'sweep.grid={method.head.alpha: [0, 1]}' data.limit_train=2000",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh: delete the cells and results of an earlier sweep in the output folder "
        "(without it, finished cells are kept and an unfinished one continues)",
    )


def run(args: argparse.Namespace) -> int:
    outcome = run_guarded(
        "sweep",
        lambda: resolve_sweep(args.config, args.overrides),
        lambda sweep: run_sweep(sweep, overwrite=args.overwrite),
        # Running the same command again continues the sweep: no flag needed.
        [args.config, *args.overrides],
    )
    if isinstance(outcome, int):
        return outcome
    sweep, result = outcome
    print_table(result, sweep.out)
    return 0
