"""One table from comparisons (or transfers) run in parts: ``dim-ssl merge OUT PART [PART ...]``.

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

:func:`merge_transfers` does the same for ``dim-ssl transfer`` runs that split the seeds
(``transfer.seeds=[1]`` beside ``[2]``): the parts must be the same transfer in every other
setting, and the merged ``transfer.*`` tables are those one run of all the seeds writes.
:func:`merge_parts` (the command) tells the two kinds apart by the files a part holds.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from eval.errors import ConfigError
from eval.experiments.compare import RANDOM_INIT, RAW_PIXELS, probe_settings, write_curves, write_tables
from eval.experiments.report import format_markdown_table
from eval.experiments.transfer import TRANSFER_COLUMNS
from eval.plain import plain
from eval.training.config import flatten

__all__ = ["merge_comparisons", "merge_parts", "merge_transfers"]

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


def _folders(parts: Sequence[str | Path]) -> list[Path]:
    folders = [Path(p) for p in parts]
    if len(folders) < 2:
        raise ConfigError("dim-ssl merge needs two or more comparison (or transfer) folders to merge")
    twice = [str(f) for i, f in enumerate(folders) if f.resolve() in {g.resolve() for g in folders[:i]}]
    if twice:
        raise ConfigError(f"{', '.join(twice)} given twice: name each part once")
    return folders


def merge_parts(out: str | Path, parts: Sequence[str | Path], echo: Callable[[str], None] = print) -> dict[str, Any]:
    """:func:`merge_transfers` when every part is a transfer run, else :func:`merge_comparisons`."""
    folders = _folders(parts)
    transfers = [(f / "transfer.json").is_file() for f in folders]
    if any(transfers) and not all(transfers):
        shown = ", ".join(str(f) for f, t in zip(folders, transfers) if t)
        raise ConfigError(f"{shown} hold transfer runs, the other parts comparisons: merge each kind on its own")
    return (merge_transfers if all(transfers) else merge_comparisons)(out, folders, echo)


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
    folders = _folders(parts)
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

    rows, accuracies = _collect_rows(folders, [_seed_rows(r) for r in results], baseline=("position",))
    curves: dict[str, tuple[Any, Any]] = {}  # label -> (seed, points): the plots show a method's first seed
    for result in results:
        part_seeds = result["seeds"] or [None]
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


def _collect_rows(
    folders: Sequence[Path],
    part_rows: Sequence[Sequence[dict[str, Any]]],
    baseline: Sequence[str],
    trained: Sequence[str] = (),
) -> tuple[list[dict[str, Any]], list[str]]:
    """The parts' rows as one list (without their gains and spreads, which the merge recomputes)
    and the accuracy columns they fill.

    A baseline row (untrained encoder, raw pixels) is the same in every part that probed it with
    the same ``baseline`` keys and seed, so it is kept once; a trained row is one method's seed
    (per ``trained`` keys: a transfer's source) and may come from one part only.
    """
    rows: list[dict[str, Any]] = []
    accuracies: list[str] = []
    seen_baselines: set[tuple[Any, ...]] = set()
    owner: dict[tuple[Any, ...], Path] = {}
    for folder, part in zip(folders, part_rows):
        for row in part:
            label, seed = row["method"], row.get("seed")
            if label in (RANDOM_INIT, RAW_PIXELS):
                key = (label, *(row[k] for k in baseline), seed)
                if key in seen_baselines:
                    continue
                seen_baselines.add(key)
            else:
                key = (label, *(row[k] for k in trained), seed)
                if owner.setdefault(key, folder) != folder:
                    where = "".join(f" on {row[k]}" for k in trained)
                    shown = "" if seed is None else f" (seed {seed})"
                    raise ConfigError(
                        f"the method {label!r}{where}{shown} is in both {owner[key]} and {folder}: "
                        "merge each method's seed once"
                    )
            rows.append({k: v for k, v in row.items() if not k.endswith(("_gain", "_std")) and k != "seeds"})
            accuracies += [c for c in row if c.endswith("_acc") and row[c] is not None and c not in accuracies]
    return rows, accuracies


def _before(seed: Any, other: Any) -> bool:
    return seed is not None and (other is None or seed < other)


def _check_every_seed(
    rows: Sequence[dict[str, Any]], seeds: Sequence[Any], keys: Sequence[str] = (), key: str = "compare.seeds"
) -> None:
    """Every method (per ``keys``: a transfer's source and target), and the untrained encoder,
    has a row for every seed of the merged table."""
    held: dict[tuple[Any, ...], set[Any]] = {}
    for row in rows:
        if row["method"] != RAW_PIXELS:
            held.setdefault((row["method"], *(row.get(k) for k in keys)), set()).add(row["seed"])
    for (label, *where), have in held.items():
        missing = [s for s in seeds if s not in have]
        if missing:
            shown = "".join(f", {k} {w}" for k, w in zip(keys, where) if w is not None)
            raise ConfigError(
                f"{label!r}{shown} has seeds {sorted(s for s in have if s is not None)} but the parts together ran "
                f"seeds {list(seeds)}: merge it with a part that ran its seeds {missing} ({key}=[...]), "
                "or leave out the parts of the extra seeds"
            )


# --------------------------------------------------------------------------------------------
# Transfers

# What transfer parts may differ in: where they write, their seeds, and which part probes the baselines.
_TRANSFER_FREE = ("output_dir", "transfer.seeds", "transfer.random_init", "transfer.raw_pixels")


def _transfer_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.yaml"
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{path} cannot be read ({err}): run that part's dim-ssl transfer again") from None
    if not isinstance(config, dict) or not isinstance(config.get("transfer"), dict):
        raise ConfigError(f"{path} is not a dim-ssl transfer configuration: run that part's dim-ssl transfer again")
    return config


def merge_transfers(
    out: str | Path, parts: Sequence[str | Path], echo: Callable[[str], None] = print
) -> dict[str, Any]:
    """Writes the merged ``transfer.*`` tables (and ``transfer_seeds.*``) and ``results.json`` to ``out``.

    Raises:
        ConfigError: Fewer than two parts, a part without results, parts that are not the same
            transfer but for their seeds, a method's seed in two parts, or a method (or the
            untrained encoder) without every seed of the merged table.
    """
    began = time.monotonic()
    folders = _folders(parts)
    results = [_read_part(f) for f in folders]
    configs = [_transfer_config(f) for f in folders]

    def differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
        # A key that an older run's config.yaml lacks is one it ran at its default, null.
        flat_a, flat_b = flatten(a), flatten(b)
        keys = [k for k in dict.fromkeys([*flat_a, *flat_b]) if k not in _TRANSFER_FREE]
        return [f"{k}: {flat_a.get(k)!r} -> {flat_b.get(k)!r}" for k in keys if flat_a.get(k) != flat_b.get(k)]

    for folder, config in zip(folders[1:], configs[1:]):
        differ = differences(configs[0], config)
        if differ:
            raise ConfigError(
                f"{folder} is not the transfer of {folders[0]} with other seeds ({'; '.join(differ[:3])}): "
                f"only parts that differ in {', '.join(_TRANSFER_FREE)} merge into one table"
            )

    part_rows = [result.get("seed_rows") or result["rows"] for result in results]
    rows, accuracies = _collect_rows(folders, part_rows, baseline=("position", "target"), trained=("source",))
    seeds = sorted({row["seed"] for row in rows if row.get("seed") is not None})
    _check_every_seed(rows, seeds, keys=("source", "target"), key="transfer.seeds")
    targets = list(dict.fromkeys(row["target"] for row in rows))
    # As one transfer lists them: per target, the trained models, then the baselines.
    rows.sort(key=lambda row: (targets.index(row["target"]), row["method"] in (RANDOM_INIT, RAW_PIXELS)))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    section = configs[0]["transfer"]
    settings = probe_settings(section, int(configs[0]["seed"]), "transfer")
    sources = sorted({row["source"] for row in rows if row.get("source") is not None})
    title = f"transfer from {', '.join(sources)} to {', '.join(targets)}"
    tables = write_tables(
        rows,
        out,
        accuracies,
        seeds,
        title,
        stem="transfer",
        columns=settings.table_columns(TRANSFER_COLUMNS),
        keys=("source", "target"),
        pair_by=("target",),
    )
    merged = {
        "title": tables.title,
        "rows": tables.rows,
        "seed_rows": tables.seed_rows,
        "seeds": seeds,
        "merged_from": [str(f) for f in folders],
        "seconds": time.monotonic() - began,
    }
    (out / "results.json").write_text(json.dumps(plain(merged, finite=True), indent=2, allow_nan=False) + "\n")
    files = {**tables.files, "results": out / "results.json"}
    echo(f"merged {', '.join(map(str, folders))} into {out}")
    return {
        **merged,
        "files": {k: str(v) for k, v in files.items()},
        "table": format_markdown_table(tables.rows, tables.columns),
    }
