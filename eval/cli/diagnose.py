"""``dim-ssl diagnose CHECKPOINT [CHECKPOINT ...]``: the DIM paper's diagnostics of trained encoders.

For each checkpoint (any method), on the held-out split of its dataset: MINE-style estimates of
MI(X; Y) (the image flattened) and MI(C(X); Y) (a random location of the local map), the
neural dependency measure of y, and the probe accuracies; one row per checkpoint in a table
(Markdown, CSV, JSON) and a plot (see :mod:`eval.experiments.diagnose`).
"""

from __future__ import annotations

import argparse

from eval.cli.guard import run_guarded
from eval.experiments.diagnose import ESTIMATOR_NAMES, diagnose_checkpoints
from eval.experiments.evaluate import PROBE_NAMES


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1; got {text}")
    return value


def _positions(text: str) -> str | list[str]:
    names = [name.strip() for name in text.split(",")]
    wrong = [name for name in names if name not in ("y", "fc", "pool", "proj")]
    if wrong:
        raise argparse.ArgumentTypeError(f"positions are y, fc, pool or proj; got {', '.join(wrong)}")
    return names[0] if len(names) == 1 else names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "checkpoints", nargs="+", metavar="CHECKPOINT", help="dim-ssl checkpoints, e.g. runs/a/checkpoints/last.ckpt"
    )
    parser.add_argument(
        "--labels",
        type=lambda text: [label.strip() for label in text.split(",")],
        metavar="LABEL,...",
        help="names of the checkpoints in the table, one each (default: their run folders' names)",
    )
    parser.add_argument(
        "--position",
        type=_positions,
        metavar="P[,P...]",
        help="the representation measured: y, fc, pool or proj (a contrastive method's projection output), "
        "one for every checkpoint or one each (default: y where the method trains it, DIM; else pool)",
    )
    parser.add_argument(
        "--estimator", choices=list(ESTIMATOR_NAMES), default="dv", help="the MI bound (default: dv, MINE's)"
    )
    parser.add_argument(
        "--probes",
        nargs="*",
        default=["knn", "linear"],
        choices=list(PROBE_NAMES),
        help="probes on the representation (default: knn linear; none: --probes with no name)",
    )
    parser.add_argument("--limit-train", type=_positive, help="probes' training images (default: data.limit_train)")
    parser.add_argument(
        "--limit-test", type=_positive, help="held-out images measured (default: the checkpoint's data.limit_val)"
    )
    parser.add_argument("--knn-k", type=_positive, default=200, help="neighbours of the kNN probe (200)")
    parser.add_argument(
        "--max-epochs", type=_positive, help="most epochs of each MI critic and of the NDM discriminator"
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds the estimators, probes and random locations (0)")
    parser.add_argument("--out", help="output folder (default: RUN/diagnose; runs/diagnose for several checkpoints)")


def run(args: argparse.Namespace) -> int:
    options = {"max_epochs": args.max_epochs} if args.max_epochs else {}
    outcome = run_guarded(
        "diagnose",
        lambda: args.checkpoints,
        lambda checkpoints: diagnose_checkpoints(
            checkpoints,
            labels=args.labels,
            position=args.position,
            estimator=args.estimator,
            probes=args.probes,
            limit_train=args.limit_train,
            limit_test=args.limit_test,
            knn_k=args.knn_k,
            mi_options=options,
            ndm_options=options,
            seed=args.seed,
            out=args.out,
        ),
        also_run_errors=(ValueError,),
    )
    if isinstance(outcome, int):
        return outcome
    _, result = outcome
    print()
    print(result["table"])
    print(f"written to {result['out']} in {result['seconds']:.0f} s")
    return 0
