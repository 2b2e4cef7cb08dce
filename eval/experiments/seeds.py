"""Several seeds of one comparison: the gain over the untrained encoder, and mean ± standard deviation.

A comparison row is one method probed at one position under one seed (see
:mod:`eval.experiments.compare`). Two things turn those rows into the numbers a reader can
trust:

* :func:`add_gains`: each trained row's accuracy minus the untrained encoder's at the same
  position and seed (``knn_acc`` -> ``knn_gain``). Pairing by seed matters: a seed builds the
  initial weights every method of that seed starts from, so the gain is what training bought
  over exactly those weights.
* :func:`summarise_seeds`: one row per method and position, the mean of every number over
  its seeds, the sample standard deviation of the accuracies and gains (``knn_acc_std``) and
  the number of seeds (``seeds``).

Example::

    rows = add_gains(rows, ["knn_acc", "linear_acc"], untrained="random init")
    table = summarise_seeds(rows, ["knn_acc", "linear_acc"])
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Mapping, Sequence

__all__ = ["add_gains", "gain_column", "std_column", "summarise_seeds"]


def gain_column(accuracy_column: str) -> str:
    """``"linear_acc"`` -> ``"linear_gain"``."""
    return accuracy_column.removesuffix("_acc") + "_gain"


def std_column(column: str) -> str:
    """``"linear_acc"`` -> ``"linear_acc_std"``."""
    return f"{column}_std"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return None if math.isnan(value) else float(value)


def add_gains(
    rows: Sequence[Mapping[str, Any]],
    accuracy_columns: Sequence[str],
    untrained: str,
    without: Sequence[str] = (),
    keys: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """The rows with a gain column per accuracy column: the row's accuracy minus the untrained
    encoder's at the same position and seed.

    Args:
        rows: Comparison rows (``method``, ``position``, an optional ``seed`` and accuracies).
        accuracy_columns: The accuracies to compare (``knn_acc``, ``linear_acc``, ...).
        untrained: The untrained encoder's method label (its own rows get no gain).
        without: Other labels that get no gain (raw pixels: no encoder, no position to pair).
        keys: Further columns a row and its untrained row must share (a transfer's ``target``).

    Rows with no untrained row to pair with (a position the untrained encoder was not probed
    at) get None.
    """

    def pairing(row: Mapping[str, Any]) -> tuple[Any, ...]:
        return (row["position"], row.get("seed"), *(row.get(k) for k in keys))

    reference = {pairing(row): row for row in rows if row["method"] == untrained}
    out = []
    for row in rows:
        row = dict(row)
        if row["method"] != untrained and row["method"] not in without:
            base = reference.get(pairing(row))
            for column in accuracy_columns:
                mine = _number(row.get(column))
                theirs = _number(base.get(column)) if base is not None else None
                row[gain_column(column)] = mine - theirs if mine is not None and theirs is not None else None
        out.append(row)
    return out


def summarise_seeds(
    rows: Sequence[Mapping[str, Any]], spread_columns: Sequence[str], keys: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """One row per (method, position), in the order first seen: numbers averaged over seeds.

    Args:
        rows: Per-seed rows (a ``seed`` key each; rows without one count as one seed).
        spread_columns: Columns that also get a sample standard deviation over seeds
            (``<column>_std``; None for a single seed).
        keys: Further columns that tell rows apart (a transfer's ``source`` and ``target``).

    Returns:
        Rows with every numeric column averaged (missing values skipped; a value equal on every
        seed is kept as it is, an int stays an int), ``<column>_std`` for
        the spread columns, ``seeds`` (how many seeds) and the first row's other values.
    """
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["position"], *(row.get(k) for k in keys)), []).append(row)
    summary = []
    for members in groups.values():
        merged: dict[str, Any] = {}
        for key in dict.fromkeys(k for row in members for k in row):
            if key == "seed":
                continue
            values = [_number(row.get(key)) for row in members]
            numbers = [v for v in values if v is not None]
            raw = [row.get(key) for row in members]
            if numbers and len(set(numbers)) > 1:
                merged[key] = statistics.fmean(numbers)
            elif numbers:  # the same on every seed (features, or one seed): kept as it is
                merged[key] = next(v for v in raw if _number(v) is not None)
            else:
                merged[key] = raw[0]
            if key in spread_columns:
                merged[std_column(key)] = statistics.stdev(numbers) if len(numbers) > 1 else None
        merged["seeds"] = len(members)
        summary.append(merged)
    return summary
