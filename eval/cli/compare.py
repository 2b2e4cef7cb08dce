"""``dim-ssl compare CONFIG [key=value ...] [--overwrite | --reuse]``: methods side by side.

Trains every method of the configuration's ``compare`` section (default: DIM(L), DIM(G),
SimCLR, MoCo) on the same backbone and data under the same budget, probes each one and the
random-init and raw-pixel baselines alike (kNN and linear probe), and writes the table
(Markdown, CSV, JSON), the curves and the plots into the output folder (see
:mod:`eval.experiments.compare`). Prints the table at the end.
"""

from __future__ import annotations

import argparse

from eval.cli.guard import run_guarded
from eval.cli.output import print_table
from eval.experiments.compare import resolve_comparison, run_comparison


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "config", help="YAML run configuration with an optional compare: section, e.g. configs/quickstart.yaml"
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted overrides of the shared configuration or the compare section: "
        "compare.budget.seconds=60 data.limit_train=512 encoder.name=resnet34",
    )
    parser.add_argument(
        "--methods",
        type=lambda text: [label.strip() for label in text.split(",")],
        metavar="LABEL,...",
        help="only the methods with these labels (e.g. to run halves of a recipe search in two "
        "processes, each with its own output_dir=...)",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh in an output folder that holds an earlier comparison (deletes its runs)",
    )
    mode.add_argument(
        "--reuse",
        action="store_true",
        help="keep the finished method runs of an earlier comparison whose configuration is "
        "unchanged; train only the others, then probe everything again",
    )


def run(args: argparse.Namespace) -> int:
    only = ["--methods", ",".join(args.methods)] if args.methods else []
    outcome = run_guarded(
        "compare",
        lambda: resolve_comparison(args.config, args.overrides, only=args.methods),
        lambda comparison: run_comparison(comparison, overwrite=args.overwrite, reuse=args.reuse),
        [args.config, *args.overrides, *only],
        continue_flag="--reuse",
    )
    if isinstance(outcome, int):
        return outcome
    comparison, result = outcome
    print_table(result, comparison.out)
    plots = sorted(p for p in result["files"].values() if p.endswith(".png"))
    if plots:
        print("plots: " + "  ".join(plots))
    return 0
