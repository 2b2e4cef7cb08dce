"""``dim-ssl merge OUT PART [PART ...]``: one table from a comparison (or a transfer) run in parts.

See :mod:`eval.experiments.merge`: the parts' rows in one table, the gain over the untrained
encoder whichever part probed it, mean ± standard deviation over seeds, one curve plot (for
comparisons). Parts may split the methods, the seeds, or both.
"""

from __future__ import annotations

import argparse

from eval.cli.guard import run_guarded
from eval.cli.output import print_table
from eval.experiments.merge import merge_parts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", help="output folder of the merged table, e.g. runs/race")
    parser.add_argument(
        "parts",
        nargs="+",
        metavar="PART",
        help="output folders of dim-ssl compare runs (or of dim-ssl transfer runs), e.g. runs/race-a runs/race-b",
    )


def run(args: argparse.Namespace) -> int:
    outcome = run_guarded(
        "merge",
        lambda: (args.out, args.parts),
        lambda job: merge_parts(*job),
        [args.out, *args.parts],
    )
    if isinstance(outcome, int):
        return outcome
    _, result = outcome
    print_table(result, args.out, timed=False)
    return 0
