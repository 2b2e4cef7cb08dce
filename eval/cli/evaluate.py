"""``dim-ssl evaluate CHECKPOINT [--dataset NAME] [--positions P ...]``: probe a checkpoint.

Loads the checkpoint weights-only, extracts the frozen features of a dataset's training and
test splits (cached beside the run), fits the kNN and linear probes (and the MLP probe, with
``--probes knn linear mlp``) on the training split and reports their accuracy on the test split,
one row per position (see :mod:`eval.experiments.evaluate`).
"""

from __future__ import annotations

import argparse

from eval.cli.guard import run_guarded
from eval.experiments.evaluate import PROBE_NAMES, evaluate_checkpoint


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1; got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a dim-ssl checkpoint, e.g. runs/quickstart/checkpoints/last.ckpt")
    parser.add_argument(
        "--dataset",
        help="dataset to probe (default: the one it was trained on); read at the checkpoint's image size and channels",
    )
    parser.add_argument(
        "--positions",
        nargs="+",
        metavar="P",
        help="feature positions (default: all the method has; DIM: conv fc y pool, SimCLR/MoCo/BYOL: conv pool proj)",
    )
    parser.add_argument(
        "--probes",
        nargs="+",
        default=["knn", "linear"],
        choices=list(PROBE_NAMES),
        help="probes to run (default: knn linear; mlp: the DIM paper's one-hidden-layer classifier)",
    )
    parser.add_argument("--knn-k", type=_positive, default=200, help="neighbours of the kNN vote (200)")
    parser.add_argument("--knn-temperature", type=float, default=0.1, help="temperature of the kNN vote (0.1)")
    parser.add_argument("--limit-train", type=_positive, help="use the first N training images")
    parser.add_argument("--limit-test", type=_positive, help="use the first N test images")
    parser.add_argument("--data-root", help="data root (default: the checkpoint's data.root, $DIM_SSL_DATA, ...)")
    parser.add_argument("--out", help="output folder (default: RUN/evaluation/DATASET)")
    cache = parser.add_mutually_exclusive_group()
    cache.add_argument("--cache-dir", help="feature cache folder (default: RUN/features)")
    cache.add_argument("--no-cache", action="store_true", help="extract features without caching them")


def run(args: argparse.Namespace) -> int:
    outcome = run_guarded(
        "evaluate",
        lambda: args.checkpoint,
        lambda checkpoint: evaluate_checkpoint(
            checkpoint,
            dataset=args.dataset,
            positions=args.positions,
            probes=args.probes,
            knn_k=args.knn_k,
            knn_temperature=args.knn_temperature,
            limit_train=args.limit_train,
            limit_test=args.limit_test,
            data_root=args.data_root,
            out=args.out,
            cache_dir=None if args.no_cache else (args.cache_dir or "auto"),
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
