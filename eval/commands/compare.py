"""``dim-ssl compare CONFIG [key=value ...] [--overwrite | --reuse]``: methods side by side.

Trains every method of the configuration's ``compare`` section (default: DIM(L), DIM(G),
SimCLR, MoCo) on the same backbone and data under the same budget, probes each one and the
random-init and raw-pixel baselines alike (kNN and linear probe), and writes the table
(Markdown, CSV, JSON), the curves and the plots into the output folder (see
:mod:`eval.compare`). Prints the table at the end.
"""

from __future__ import annotations

import argparse
import sys

_EXIT_CONFIG_ERROR = 2
_EXIT_RUN_ERROR = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML run configuration with an optional compare: section, "
                                       "e.g. configs/quickstart.yaml")
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE",
        help="dotted overrides of the shared configuration or the compare section: "
             "compare.budget.seconds=60 data.limit_train=512 encoder.name=resnet34",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--overwrite", action="store_true",
                      help="start afresh in an output folder that holds an earlier comparison (deletes its runs)")
    mode.add_argument("--reuse", action="store_true",
                      help="keep the finished method runs of an earlier comparison whose configuration is "
                           "unchanged; train only the others, then probe everything again")


def run(args: argparse.Namespace) -> int:
    from eval.checkpoint import CheckpointError
    from eval.compare import OutputInUse, resolve_comparison, run_comparison
    from eval.config import ConfigError
    from eval.data import DatasetNotFoundError
    from eval.training import RunError, TrainingInterrupted

    def fail(message: str, status: int) -> int:
        print(f"dim-ssl compare: error: {message}", file=sys.stderr)
        return status

    try:
        comparison = resolve_comparison(args.config, args.overrides)
    except ConfigError as err:
        return fail(str(err), _EXIT_CONFIG_ERROR)
    try:
        result = run_comparison(comparison, overwrite=args.overwrite, reuse=args.reuse)
    except ConfigError as err:
        return fail(str(err), _EXIT_CONFIG_ERROR)
    except (DatasetNotFoundError, CheckpointError, RunError, OutputInUse) as err:
        return fail(str(err), _EXIT_RUN_ERROR)
    except TrainingInterrupted as stop:
        command = " ".join(["dim-ssl compare", args.config, *args.overrides, "--reuse"])
        print(f"\n{stop}\nthe finished methods are kept; continue with: {command}", file=sys.stderr)
        return 128 + int(stop.signum)
    except KeyboardInterrupt:
        print("\nstopped by SIGINT", file=sys.stderr)
        return 130
    print(f"\n## {result['title']}\n")
    print(result["table"])
    print(f"written to {comparison.out} in {result['seconds']:.0f} s: "
          + ", ".join(sorted({p.rsplit('/', 1)[-1] for p in result['files'].values()})))
    return 0
