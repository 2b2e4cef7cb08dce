"""One table from comparisons run in parts: ``dim-ssl merge OUT PART [PART ...]``.

A long comparison is often run as parts in separate processes (``dim-ssl compare CONFIG
output_dir=runs/race-a --methods "DIM(L),MV-DIM"`` beside ``... output_dir=runs/race-b
--methods "SimCLR,SimCLR+DIM" compare.random_init=false``). :func:`merge_comparisons` reads the
parts' ``results.json`` and writes the table the whole comparison would have written: every
seed's rows, each trained row's gain over the untrained encoder of its seed (whichever part
probed it), mean ± standard deviation over seeds, and one accuracy-against-time plot.

Parts may also split the seeds (``compare.seeds=[0]`` in one part, ``[1]`` in another, of the
same methods): the merged table then holds every seed the parts ran, as long as each method
and the untrained encoder have all of them (a mean over two seeds beside one over three would
read as alike and is not).

The parts must agree on what makes their numbers comparable (dataset, encoder, budget, and
the probes: their settings and the seed that fixes them); a baseline row (untrained encoder
of one seed, raw pixels) found in several parts is kept once, and a method's seed found in two
parts is refused.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from eval.errors import ConfigError
from eval.experiments.compare import RANDOM_INIT, RAW_PIXELS, write_curves, write_tables
from eval.experiments.report import format_markdown_table
from eval.plain import plain

__all__ = ["merge_comparisons"]

# What the parts must share for their rows to sit in one table.
_SHARED = ("dataset", "encoder", "budget")
# The probe settings in a part's config.yaml (``seed`` fixes the probes' random splits).
_PROBE_KEYS = (
    "probes",
    "knn_k",
    "knn_temperature",
    "linear_l2_grid",
    "probe_limit_train",
    "probe_limit_test",
)


def _read_part(folder: Path) -> dict[str, Any]:
    path = folder / "results.json"
    if not path.is_file():
        raise ConfigError(f"{folder} holds no finished comparison (no results.json): run dim-ssl compare there first")
    try:
        result = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path} cannot be read ({err}): run that part's dim-ssl compare again") from None
    result.setdefault("seeds", None)
    result["probing"] = _probing(folder)
    return result


def _probing(folder: Path) -> dict[str, Any] | None:
    """The part's probe settings, from the ``config.yaml`` its comparison wrote (None: not known)."""
    try:
        config = yaml.safe_load((folder / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(config, dict) or not isinstance(config.get("compare"), dict):
        return None
    section = config["compare"]
    return {"seed": config.get("seed"), **{key: section.get(key) for key in _PROBE_KEYS}}


def _seed_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """A part's rows, each with its seed (a one-seed part's rows name none; raw pixels have none)."""
    rows = result.get("seed_rows") or result["rows"]
    only = (result["seeds"] or [None])[0]
    return [{**row, "seed": row.get("seed", None if row["method"] == RAW_PIXELS else only)} for row in rows]


def merge_comparisons(
    out: str | Path, parts: Sequence[str | Path], echo: Callable[[str], None] = print
) -> dict[str, Any]:
    """Writes the merged tables, ``curves.csv``, ``accuracy_vs_time.png`` and ``results.json`` to ``out``.

    Raises:
        ConfigError: Fewer than two parts, a part without results, parts that disagree on the
            dataset, encoder, budget or probes, a method's seed in two parts, or a method (or
            the untrained encoder) without every seed of the merged table.
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
                    "only comparisons with the same dataset, encoder and budget merge into one table"
                )
        if None not in (result["probing"], first["probing"]) and result["probing"] != first["probing"]:
            differ = [k for k in first["probing"] if first["probing"][k] != result["probing"][k]]
            raise ConfigError(
                f"{folder} was probed with other settings than {folders[0]} ({', '.join(differ)}): "
                "their accuracies are not comparable; probe the parts alike (the same seed and compare.* probe keys)"
            )

    rows: list[dict[str, Any]] = []
    seen_baselines: set[tuple[Any, ...]] = set()
    owner: dict[tuple[str, Any], Path] = {}
    curves: dict[str, tuple[Any, Any]] = {}  # label -> (seed, points): the plots show a method's first seed
    accuracies: list[str] = []
    for folder, result in zip(folders, results):
        part_seeds = result["seeds"] or [None]
        for row in _seed_rows(result):
            label = row["method"]
            if label in (RANDOM_INIT, RAW_PIXELS):
                key = (label, row["position"], row["seed"])
                if key in seen_baselines:
                    continue
                seen_baselines.add(key)
            elif owner.setdefault((label, row["seed"]), folder) != folder:
                seed = "" if row["seed"] is None else f" (seed {row['seed']})"
                raise ConfigError(
                    f"the method {label!r}{seed} is in both {owner[(label, row['seed'])]} and {folder}: "
                    "merge each method's seed once"
                )
            rows.append({k: v for k, v in row.items() if not k.endswith(("_gain", "_std")) and k != "seeds"})
            accuracies += [c for c in row if c.endswith("_acc") and row[c] is not None and c not in accuracies]
        for label, points in result.get("curves", {}).items():
            if points and (label not in curves or _before(part_seeds[0], curves[label][0])):
                curves[label] = (part_seeds[0], points)

    seeds = sorted({row["seed"] for row in rows if row["seed"] is not None}) or [None]
    _check_every_seed(rows, seeds)
    if len(seeds) == 1:  # one seed: rows as a one-seed comparison writes them, without a seed
        rows = [{k: v for k, v in row.items() if k != "seed"} for row in rows]

    # The trained methods first, in the parts' order, then the baselines (as one comparison lists them).
    rows.sort(key=lambda row: row["method"] in (RANDOM_INIT, RAW_PIXELS))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    labels = list(dict.fromkeys(row["method"] for row in rows if row["method"] not in (RANDOM_INIT, RAW_PIXELS)))
    title = f"{', '.join(labels)} on {first['dataset']}, {first['encoder']}, {first['budget']} per method"
    tables = write_tables(rows, out, accuracies, seeds, title)
    files = dict(tables.files)
    points = {label: points for label, (_, points) in curves.items()}
    files.update(write_curves(points, out, title="kNN accuracy against training time (the parts' curves)"))
    merged = {
        "title": tables.title,
        "dataset": first["dataset"],
        "encoder": first["encoder"],
        "budget": first["budget"],
        "seeds": None if seeds == [None] else seeds,
        "rows": tables.rows,
        "seed_rows": tables.seed_rows if len(seeds) > 1 else None,
        "curves": points,
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


def _before(seed: Any, other: Any) -> bool:
    return seed is not None and (other is None or seed < other)


def _check_every_seed(rows: Sequence[dict[str, Any]], seeds: Sequence[Any]) -> None:
    """Every method, and the untrained encoder, has a row for every seed of the merged table."""
    held: dict[str, set[Any]] = {}
    for row in rows:
        if row["method"] != RAW_PIXELS:
            held.setdefault(row["method"], set()).add(row["seed"])
    for label, have in held.items():
        missing = [s for s in seeds if s not in have]
        if missing:
            raise ConfigError(
                f"{label!r} has seeds {sorted(s for s in have if s is not None)} but the parts together ran seeds "
                f"{list(seeds)}: merge it with a part that ran its seeds {missing} (compare.seeds=[...]), "
                "or leave out the parts of the extra seeds"
            )
