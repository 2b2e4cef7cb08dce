"""The comparison table, as Markdown (for reading), CSV (for spreadsheets) and JSON (for code).

A row is a dict: one method, probed one way at one position, with its costs. The usual keys,
in the order the table shows them, are :data:`COLUMNS`; any other key a row carries is kept
and shown after them, in the order first seen.

Example::

    rows = [
        {"method": "dim", "probe": "linear", "position": "pool", "accuracy": 0.871,
         "images_per_s": 5120.0, "wall_clock_s": 610.2, "peak_memory_mb": 1830.0},
        {"method": "simclr", "probe": "linear", "position": "pool", "accuracy": 0.884, ...},
    ]
    paths = write_report(rows, "runs/compare")      # comparison.md / .csv / .json
    print(format_markdown_table(rows))
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from eval.plain import plain, scalar

__all__ = ["COLUMNS", "format_markdown_table", "report_columns", "write_report"]

COLUMNS: tuple[str, ...] = (
    "method",
    "probe",
    "position",
    "accuracy",
    "images_per_s",
    "wall_clock_s",
    "peak_memory_mb",
)

MISSING = "–"  # how a missing or NaN value shows in Markdown


def report_columns(rows: Iterable[Mapping[str, Any]], columns: Sequence[str] | None = None) -> list[str]:
    """The table's columns: ``columns`` if given, else the :data:`COLUMNS` that any row has,
    then every other key in the order first seen."""
    rows = list(rows)
    if columns is not None:
        return list(columns)
    present = {key for row in rows for key in row}
    ordered = [c for c in COLUMNS if c in present]
    for row in rows:
        for key in row:
            if key not in ordered:
                ordered.append(key)
    return ordered


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _format_cell(value: Any) -> str:
    value = scalar(value)
    if _is_missing(value):
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        magnitude = abs(value)
        if magnitude >= 1000:
            return f"{value:,.0f}"
        if magnitude >= 10:
            return f"{value:.1f}"
        return f"{value:.4f}"  # accuracies (0..1) and small numbers keep 4 decimals
    # Pipes and newlines would break the Markdown row.
    return str(value).replace("|", "\\|").replace("\n", " ")


def format_markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A GitHub-flavoured Markdown table: a header line, an alignment line, one line per row.

    Numbers are right-aligned and rounded for reading (accuracies to 4 decimals, rates and
    times to 1 or 0); the CSV and JSON files keep full precision. Missing values show as "–".
    A column ``c`` with a ``c_std`` column beside it shows as one column, ``mean ± std``.
    """
    columns = report_columns(rows, columns)
    if not columns:
        raise ValueError("no columns: the rows are empty and no columns were given")
    # A column's spread over seeds ("linear_acc_std") shows in its own cell: "0.8791 ± 0.0030".
    spread = {c: f"{c}_std" for c in columns if f"{c}_std" in columns}
    columns = [c for c in columns if c not in spread.values()]
    numeric = {
        c: any(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (scalar(r.get(c)) for r in rows))
        for c in columns
    }
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---:" if numeric[c] else "---" for c in columns) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(_format_spread(row, c, spread.get(c)) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def _format_spread(row: Mapping[str, Any], column: str, std_column: str | None) -> str:
    cell = _format_cell(row.get(column))
    std = scalar(row.get(std_column)) if std_column else None
    return cell if _is_missing(std) or cell == MISSING else f"{cell} ± {_format_cell(std)}"


def write_report(
    rows: Sequence[Mapping[str, Any]],
    out_dir: str | os.PathLike,
    stem: str = "comparison",
    columns: Sequence[str] | None = None,
    title: str | None = None,
) -> dict[str, Path]:
    """Write the table as ``{stem}.md``, ``{stem}.csv`` and ``{stem}.json`` into ``out_dir``.

    Args:
        rows: The rows (dicts); every row may carry its own extra keys.
        out_dir: Output folder (created).
        stem: File name without extension.
        columns: Columns and their order; default :func:`report_columns`.
        title: A Markdown heading above the table in the ``.md`` file.

    Returns:
        ``{"markdown": path, "csv": path, "json": path}``.

    The CSV has one header line and one line per row, empty cells for missing values; the
    JSON is a list of row objects with the same keys (NaN written as null).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    columns = report_columns(rows, columns)
    # JSON has no NaN or infinity: null, so every JSON parser reads the file.
    clean = [{c: plain(row.get(c), finite=True) for c in columns} for row in rows]

    markdown_path = out / f"{stem}.md"
    table = format_markdown_table(rows, columns) if columns else ""
    markdown_path.write_text((f"# {title}\n\n" if title else "") + table, encoding="utf-8")

    csv_path = out / f"{stem}.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in clean:
            writer.writerow({c: "" if row[c] is None else row[c] for c in columns})

    json_path = out / f"{stem}.json"
    json_path.write_text(json.dumps(clean, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return {"markdown": markdown_path, "csv": csv_path, "json": json_path}
