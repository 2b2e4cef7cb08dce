"""``dim-ssl bench``: images/s and peak memory of DIM, lightly's SimCLR and MoCo, and the floor.

Times full training steps (forward, backward, optimizer step) in one process after warm-up,
alternating the methods over ``--rounds`` and reporting medians, then measures each method's
peak memory on one more step (see ``eval.experiments.bench``). Prints a table and writes ``bench.json``,
``bench.csv`` and ``bench.md`` (and ``memory_sweep.csv`` with ``--sweep-memory``) to ``--out``.

With ``--harness CONFIG`` it measures the harness instead: the configuration's method trained by
``dim-ssl pretrain`` against a plain PyTorch loop on the same data (``eval.experiments.overhead``),
writing ``overhead.json`` and ``overhead.md``.

Examples::

    dim-ssl bench --backbone resnet18 --batch-size 256 --image-size 32 --rounds 5 --steps 3 --out runs/bench
    dim-ssl bench --harness configs/family_fmnist.yaml method.name=simclr --seconds 120 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

import torch

from eval.cli.guard import run_guarded
from eval.errors import ConfigError
from eval.experiments.bench import (
    CASES,
    DEFAULT_CASES,
    BenchConfig,
    BenchResult,
    SweepConfig,
    environment,
    format_sweep,
    format_table,
    memory_sweep,
    run_bench,
    write_outputs,
)
from eval.experiments.overhead import format_overhead, harness_overhead
from eval.training.config import resolve_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backbone",
        default="resnet18",
        help="timm model name, or paper (the DIM paper's 32x32 encoder) (default: resnet18)",
    )
    parser.add_argument(
        "--small-input",
        action="store_true",
        help="timm ResNets: the small-image stem (3x3 stride-1 first conv, no max-pool)",
    )
    parser.add_argument("--batch-size", type=int, default=256, help="images per step (default: 256)")
    parser.add_argument("--image-size", type=int, default=32, help="square input size (default: 32)")
    parser.add_argument("--channels", type=int, default=3, help="input channels (default: 3)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument(
        "--rounds", type=int, default=5, help="rounds over all methods; medians are reported (default: 5)"
    )
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per method per round (default: 3)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per method before the rounds (default: 2)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument(
        "--optimizer",
        choices=("sgd", "adam"),
        default="sgd",
        help="the same optimizer for every method (default: sgd, momentum 0.9)",
    )
    parser.add_argument(
        "--methods",
        default=None,
        help=f"comma-separated, from: {', '.join(CASES)} (default: {', '.join(DEFAULT_CASES)})",
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory step")
    parser.add_argument("--no-rss", action="store_true", help="skip the fresh-process RSS measurement (CPU)")
    parser.add_argument(
        "--sweep-memory",
        action="store_true",
        help="also measure the DIM head's memory and time as N*M^2 grows (chunked scoring)",
    )
    parser.add_argument("--sweep-only", action="store_true", help="run the memory sweep and nothing else")
    parser.add_argument("--sweep-batch-size", type=int, default=128, help="N of the memory sweep (default: 128)")
    parser.add_argument(
        "--sweep-map-sizes",
        default="4,8,16,32,64,89",
        help="map widths M of the sweep (default: 4,8,16,32,64,89; 128*89^2 > 10^6)",
    )
    parser.add_argument("--sweep-channels", type=int, default=64, help="feature-map channels in the sweep")
    parser.add_argument(
        "--sweep-max-unchunked-gib",
        type=float,
        default=6.0,
        help="skip unchunked sweep runs estimated above this (default: 6)",
    )
    parser.add_argument("--out", default="runs/bench", help="output folder (default: runs/bench)")
    parser.add_argument(
        "--harness",
        metavar="CONFIG",
        default=None,
        help="measure the harness's own cost instead: CONFIG's method by dim-ssl pretrain against a plain loop",
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="with --harness: overrides of CONFIG's keys")
    parser.add_argument(
        "--seconds", type=float, default=120.0, help="with --harness: training seconds of each loop (default: 120)"
    )


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("KINETO_LOG_LEVEL", "5")
    warnings.filterwarnings("ignore", category=UserWarning, module="pytorch_lightning")
    if args.harness is not None:
        return _run_overhead(args)
    if args.overrides:
        print(
            f"dim-ssl bench: error: key=value overrides ({args.overrides[0]} ...) need --harness CONFIG",
            file=sys.stderr,
        )
        return 2
    config = BenchConfig(
        backbone=args.backbone,
        small_input=args.small_input,
        batch_size=args.batch_size,
        image_size=args.image_size,
        channels=args.channels,
        device=args.device,
        rounds=args.rounds,
        steps=args.steps,
        warmup=args.warmup,
        threads=args.threads,
        optimizer=args.optimizer,
        methods=DEFAULT_CASES
        if args.methods is None
        else tuple(m.strip() for m in args.methods.split(",") if m.strip()),
        memory=not args.no_memory,
        rss=not args.no_rss,
    )
    outcome = run_guarded("bench", lambda: _checked(config), lambda config: _measure(config, args))
    if isinstance(outcome, int):
        return outcome
    _, result = outcome
    paths = write_outputs(result, Path(args.out))
    print("\nwrote " + ", ".join(str(p) for p in paths))
    return 0


def _checked(config: BenchConfig) -> BenchConfig:
    try:
        config.validate()
    except ValueError as err:  # the command line's options: a usage mistake
        raise ConfigError(str(err)) from None
    return config


def _measure(config: BenchConfig, args: argparse.Namespace) -> BenchResult:
    if args.sweep_only:
        if args.threads:
            torch.set_num_threads(args.threads)
        result = BenchResult(
            {**config.__dict__, "methods": []},
            environment(torch.device(args.device)),
            [],
            "peak live tensor bytes (see --help of eval.experiments.bench)",
        )
    else:
        result = run_bench(config)
        print(format_table(result), flush=True)
    if args.sweep_memory or args.sweep_only:
        sweep = SweepConfig(
            batch_size=args.sweep_batch_size,
            channels=args.sweep_channels,
            device=args.device,
            map_sizes=tuple(int(m) for m in args.sweep_map_sizes.split(",") if m.strip()),
            max_unchunked_gib=args.sweep_max_unchunked_gib,
        )
        result.sweep = memory_sweep(sweep)
        print("\n" + format_sweep(result.sweep), flush=True)
    return result


def _run_overhead(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.seconds > 0:
        print(f"dim-ssl bench: error: --seconds must be positive; got {args.seconds}", file=sys.stderr)
        return 2
    outcome = run_guarded(
        "bench",
        lambda: resolve_config(args.harness, args.overrides),
        lambda config: harness_overhead(config, args.seconds),
    )
    if isinstance(outcome, int):
        return outcome
    _, result = outcome
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = format_overhead(result)
    (out / "overhead.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "overhead.md").write_text(table + "\n")
    print("\n" + table + f"\n\nwrote {out / 'overhead.json'}, {out / 'overhead.md'}")
    return 0
