"""Validates the MI estimators on correlated Gaussians, whose MI is known in closed form.

For x ~ N(0, I_d) and y = rho * x + sqrt(1 - rho^2) * n, n ~ N(0, I_d) independent,

    I(X; Y) = -d/2 * log(1 - rho^2)  nats.

For each d and rho of a grid, ``estimate_mutual_information`` is run with each estimator on
``--samples`` pairs (the defaults: no tuning), and the estimates are tabulated and plotted
against the truth. What should show (Poole et al., "On Variational Bounds of Mutual
Information", 2019; McAllester & Stratos, 2020):

- DV (MINE) follows the truth while it is small and falls below it, with a growing spread,
  as it grows (a DV estimate needs ~e^I samples to see the tail that carries the MI);
- InfoNCE is tight for small MI and saturates at log K, K the pairs of the test half;
- JSD is not an MI value: at most 2 log 2 = 1.386, rising with the MI.

Usage::

    python -m eval.analysis.validate --out runs/mi_validation

writes ``mi_validation.csv``, ``.json``, ``.md`` (the table) and ``.png`` (the plot) into
``--out``, with one progress line per estimate.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from eval.analysis.mine import ESTIMATORS, mutual_information

__all__ = ["correlated_gaussians", "gaussian_mi", "main", "plot_validation", "validate"]

DIMS = (1, 4, 8)
RHOS = (0.0, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99)


def gaussian_mi(d: int, rho: float) -> float:
    """The MI in nats of ``correlated_gaussians(n, d, rho)``: ``-d/2 log(1 - rho^2)``."""
    return max(0.0, -d / 2 * math.log(1 - rho**2))  # max: no "-0.0" for rho = 0


def correlated_gaussians(n: int, d: int, rho: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` pairs ``(x, rho x + sqrt(1 - rho^2) noise)`` of d-dimensional standard Gaussians."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=generator)
    return x, rho * x + math.sqrt(1 - rho**2) * torch.randn(n, d, generator=generator)


def validate(
    dims: Sequence[int] = DIMS,
    rhos: Sequence[float] = RHOS,
    estimators: Sequence[str] = ESTIMATORS,
    samples: int = 6000,
    seed: int = 0,
    **options: Any,
) -> list[dict[str, Any]]:
    """One row per (d, rho, estimator): the truth, the estimate, and how training went.

    Prints a progress line per estimate with the time left (at the mean pace so far).
    ``options`` go to ``mutual_information`` unchanged.
    """
    cells = [(d, rho, estimator) for d in dims for rho in rhos for estimator in estimators]
    rows: list[dict[str, Any]] = []
    start = time.monotonic()
    for index, (d, rho, estimator) in enumerate(cells, 1):
        x, y = correlated_gaussians(samples, d, rho, seed=seed + 1000 * d + int(round(100 * rho)))
        began = time.monotonic()
        result = mutual_information(x, y, estimator, seed=seed, **options)
        truth = gaussian_mi(d, rho)
        rows.append(
            {
                "d": d,
                "rho": rho,
                "estimator": estimator,
                "true_mi": round(truth, 4),
                "estimate": round(result.value, 4),
                "ratio": round(result.value / truth, 3) if truth > 0 else None,
                "log_k": round(math.log(result.sizes[2]), 4),
                "epochs": result.epochs,
                "seconds": round(time.monotonic() - began, 2),
            }
        )
        elapsed = time.monotonic() - start
        left = elapsed / index * (len(cells) - index)
        print(
            f"[{index}/{len(cells)}] d={d} rho={rho} {estimator}: {result.value:.3f} nats "
            f"(truth {truth:.3f}, {result.epochs} epochs) elapsed {elapsed:.0f}s, ~{left:.0f}s left",
            flush=True,
        )
    return rows


def plot_validation(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Estimate against truth, one panel per d, one line per estimator, with y = x, log K and 2 log 2."""
    dims = sorted({row["d"] for row in rows})
    estimators = list(dict.fromkeys(row["estimator"] for row in rows))
    figure = Figure(figsize=(4.2 * len(dims), 4.0), constrained_layout=True)
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(dims), squeeze=False)[0]
    colours = {"dv": "tab:blue", "infonce": "tab:orange", "jsd": "tab:green"}
    for axis, d in zip(axes, dims):
        cells = [row for row in rows if row["d"] == d]
        top = max(row["true_mi"] for row in cells)
        axis.plot([0, top], [0, top], color="0.6", linestyle="--", linewidth=1, label="truth (y = x)")
        for estimator in estimators:
            points = sorted((row["true_mi"], row["estimate"]) for row in cells if row["estimator"] == estimator)
            axis.plot(*zip(*points), marker="o", color=colours.get(estimator), label=estimator)
        log_k = cells[0]["log_k"]
        axis.axhline(log_k, color=colours["infonce"], linestyle=":", linewidth=1, label=f"log K = {log_k:.2f}")
        axis.axhline(2 * math.log(2), color=colours["jsd"], linestyle=":", linewidth=1, label="2 log 2")
        axis.set_title(f"d = {d}")
        axis.set_xlabel("true MI (nats)")
        axis.set_ylabel("estimate (nats)")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="upper left")
    figure.suptitle("MI estimates on held-out pairs vs the closed form, correlated Gaussians")
    path = Path(path)
    figure.savefig(path, dpi=110)
    return path


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """One line per (d, rho): the truth and each estimator's estimate (and ratio for DV)."""
    estimators = list(dict.fromkeys(row["estimator"] for row in rows))
    header = ["d", "rho", "true MI", *estimators, "DV / truth", "log K"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    by_cell: dict[tuple[int, float], dict[str, dict[str, Any]]] = {}
    for row in rows:
        by_cell.setdefault((row["d"], row["rho"]), {})[row["estimator"]] = row
    for (d, rho), cell in by_cell.items():
        first = next(iter(cell.values()))
        ratio = cell.get("dv", {}).get("ratio")
        values = [f"{cell[name]['estimate']:.3f}" if name in cell else "" for name in estimators]
        line = [str(d), f"{rho:g}", f"{first['true_mi']:.3f}", *values, "" if ratio is None else f"{ratio:.2f}"]
        lines.append("| " + " | ".join([*line, f"{first['log_k']:.2f}"]) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m eval.analysis.validate",
        description="Validate the MI estimators on correlated Gaussians (closed-form MI).",
    )
    parser.add_argument("--out", default="runs/mi_validation", help="output folder (default: %(default)s)")
    parser.add_argument("--dims", type=int, nargs="+", default=list(DIMS), help="dimensions d (default: %(default)s)")
    parser.add_argument("--rhos", type=float, nargs="+", default=list(RHOS), help="correlations (default: %(default)s)")
    parser.add_argument(
        "--estimators", nargs="+", default=list(ESTIMATORS), choices=ESTIMATORS, help="(default: %(default)s)"
    )
    parser.add_argument("--samples", type=int, default=6000, help="pairs per cell (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    parser.add_argument("--max-epochs", type=int, default=200, help="per estimate (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    args = parser.parse_args(argv)
    if any(not 0.0 <= rho < 1.0 for rho in args.rhos):
        parser.error("every --rhos value must be in [0, 1)")
    torch.set_num_threads(args.threads)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = validate(args.dims, args.rhos, args.estimators, args.samples, args.seed, max_epochs=args.max_epochs)
    with open(out / "mi_validation.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out / "mi_validation.json").write_text(json.dumps(rows, indent=2) + "\n")
    table = markdown_table(rows)
    (out / "mi_validation.md").write_text(table)
    plot = plot_validation(rows, out / "mi_validation.png")
    print(table)
    print(f"wrote {out / 'mi_validation.csv'}, .json, .md and {plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
