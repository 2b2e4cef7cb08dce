"""One table from comparisons run in parts: ``dim-ssl merge OUT PART [PART ...]``.

A long comparison is often run as parts in separate processes (``dim-ssl compare CONFIG
output_dir=runs/race-a --methods "DIM(L),MV-DIM"`` beside ``... output_dir=runs/race-b
--methods "SimCLR,SimCLR+DIM" compare.random_init=false``). :func:`merge_comparisons` reads the
parts' ``results.json`` and writes the table the whole comparison would have written: every
seed's rows, each trained row's gain over the untrained encoder of its seed (whichever part
probed it), mean ± standard deviation over seeds, and one accuracy-against-time plot.

The parts must agree on what makes their numbers comparable (dataset, encoder, budget, seeds,
probes); a baseline row (untrained encoder, raw pixels) found in several parts is kept once,
and a method label found in two parts is refused.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from eval.errors import ConfigError
from eval.experiments.compare import RANDOM_INIT, RAW_PIXELS, write_curves, write_tables
from eval.experiments.report import format_markdown_table
from eval.plain import plain

__all__ = ["merge_comparisons"]

# What the parts must share for their rows to sit in one table.
_SHARED = ("dataset", "encoder", "budget", "seeds")


def _read_part(folder: Path) -> dict[str, Any]:
    path = folder / "results.json"
    if not path.is_file():
        raise ConfigError(f"{folder} holds no finished comparison (no results.json): run dim-ssl compare there first")
    try:
        result = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path} cannot be read ({err}): run that part's dim-ssl compare again") from None
    result.setdefault("seeds", None)
    return result


def merge_comparisons(
    out: str | Path, parts: Sequence[str | Path], echo: Callable[[str], None] = print
) -> dict[str, Any]:
    """Writes the merged tables, ``curves.csv``, ``accuracy_vs_time.png`` and ``results.json`` to ``out``.

    Raises:
        ConfigError: Fewer than two parts, a part without results, parts that disagree on the
            dataset, encoder, budget or seeds, or a method label in two parts.
    """
    began = time.monotonic()
    folders = [Path(p) for p in parts]
    if len(folders) < 2:
        raise ConfigError("dim-ssl merge needs two or more comparison folders to merge")
    twice = [str(f) for i, f in enumerate(folders) if f.resolve() in {g.resolve() for g in folders[:i]}]
    if twice:
        raise ConfigError(f"{', '.join(twice)} given twice: name each part once")
    results = [_read_part(f) for f in folders]
    first = results[0]
    for folder, result in zip(folders[1:], results[1:]):
        for key in _SHARED:
            if result.get(key) != first.get(key):
                raise ConfigError(
                    f"{folder} was run with {key} {result.get(key)!r}, {folders[0]} with {first.get(key)!r}: "
                    "only comparisons with the same dataset, encoder, budget and seeds merge into one table"
                )

    rows: list[dict[str, Any]] = []
    seen_baselines: set[tuple[Any, ...]] = set()
    owner: dict[str, Path] = {}
    curves: dict[str, Any] = {}
    accuracies: list[str] = []
    for folder, result in zip(folders, results):
        for row in result.get("seed_rows") or result["rows"]:
            label = row["method"]
            if label in (RANDOM_INIT, RAW_PIXELS):
                key = (label, row["position"], row.get("seed"))
                if key in seen_baselines:
                    continue
                seen_baselines.add(key)
            elif owner.setdefault(label, folder) != folder:
                raise ConfigError(
                    f"the method {label!r} is in both {owner[label]} and {folder}: merge each method once"
                )
            rows.append({k: v for k, v in row.items() if not k.endswith(("_gain", "_std")) and k != "seeds"})
            accuracies += [c for c in row if c.endswith("_acc") and row[c] is not None and c not in accuracies]
        curves.update({label: points for label, points in result.get("curves", {}).items() if points})

    # The trained methods first, in the parts' order, then the baselines (as one comparison lists them).
    rows.sort(key=lambda row: row["method"] in (RANDOM_INIT, RAW_PIXELS))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = first["seeds"] or [None]
    labels = list(dict.fromkeys(row["method"] for row in rows if row["method"] not in (RANDOM_INIT, RAW_PIXELS)))
    title = f"{', '.join(labels)} on {first['dataset']}, {first['encoder']}, {first['budget']} per method"
    tables = write_tables(rows, out, accuracies, seeds, title)
    files = dict(tables.files)
    files.update(write_curves(curves, out, title="kNN accuracy against training time (the parts' curves)"))
    merged = {
        "title": tables.title,
        "dataset": first["dataset"],
        "encoder": first["encoder"],
        "budget": first["budget"],
        "seeds": first["seeds"],
        "rows": tables.rows,
        "seed_rows": tables.seed_rows if len(seeds) > 1 else None,
        "curves": curves,
        "merged_from": [str(f) for f in folders],
        "seconds": time.monotonic() - began,
    }
    (out / "results.json").write_text(json.dumps(plain(merged, finite=True), indent=2, allow_nan=False) + "\n")
    files["results"] = out / "results.json"
    echo(f"merged {', '.join(map(str, folders))} into {out}")
    return {
        **merged,
        "files": {k: str(v) for k, v in files.items()},
        "table": format_markdown_table(tables.rows, tables.columns),
    }
