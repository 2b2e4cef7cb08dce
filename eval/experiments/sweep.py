"""A grid over configuration keys, every cell trained under one budget and probed alike; resumable.

:func:`run_sweep` is what ``dim-ssl sweep`` runs, top to bottom:

1. configuration: a pretraining configuration shared by every cell, plus its ``sweep`` section
   (:data:`SWEEP_DEFAULTS`): ``grid``, a mapping of dotted configuration keys to lists of
   values (the DIM paper's ablation: ``{method.head.alpha: [0, 0.5, 1], method.head.beta:
   [0, 0.5, 1]}``), the budget per cell, the probes and the positions, as in ``compare``;
2. cells: the Cartesian product of the grid, in the order the keys are written (the last key
   varies fastest); each cell is the shared configuration with its values set, trained by
   :func:`eval.training.pretrain` into ``cells/<cell>`` under the budget, then probed by
   :func:`eval.experiments.compare.method_rows` (kNN, linear, MLP probes of
   :mod:`eval.probes.suite` on the same splits for every cell);
3. resuming, cell by cell: a cell whose ``cell.json`` (its probe rows) exists for the same
   configuration and probes is kept as it is; a cell trained to the end but not probed is
   probed; an unfinished cell continues from its ``checkpoints/last.ckpt`` (the harness's
   exact resume, :mod:`eval.training.resume`, which also keeps a wall-clock budget's elapsed
   time); one without a usable checkpoint starts again. A folder of another configuration is
   refused unless ``overwrite``;
4. outputs, rewritten after every cell so that a running sweep can be read:
   ``sweep.md/.csv/.json`` (one row per cell and position), ``heatmap_<probe>_<position>.png``
   (the first grid key down, the second across, one panel per value of any further keys),
   ``results.json`` (everything) and ``config.yaml`` (the resolved configuration).

Example::

    sweep = resolve_sweep("configs/sweep_alpha_beta.yaml", ["sweep.budget.seconds=30"])
    result = run_sweep(sweep)          # run it again after an interruption: it continues
    print(result["table"])
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from pytorch_lightning.callbacks import Callback

from eval.errors import CheckpointError, ConfigError, OutputInUse
from eval.experiments.compare import (
    MethodEntry,
    check_single_process,
    describe_budget,
    load_sections,
    method_rows,
    method_user_config,
    probe_settings,
    section_probe_data,
    validate_section,
)
from eval.experiments.memory import PeakMemory
from eval.experiments.report import format_markdown_table, write_report
from eval.plain import plain
from eval.training.checkpoint import load_checkpoint
from eval.training.config import config_diff, dump_config, flatten, resolve_config
from eval.training.pretrain import pretrain

__all__ = [
    "SWEEP_DEFAULTS",
    "Cell",
    "Sweep",
    "cell_state",
    "grid_cells",
    "plot_heatmap",
    "resolve_sweep",
    "run_sweep",
]

# The ``sweep`` section: every key, with its default (docs/evaluation.md repeats them).
SWEEP_DEFAULTS: dict[str, Any] = {
    "grid": {},  # dotted config key -> list of values; every combination is a cell
    "budget": {
        "epochs": None,  # epochs per cell
        "seconds": None,  # wall-clock seconds of training per cell (probes not counted)
    },  # both null: the configuration's trainer.max_epochs / trainer.max_time_s
    "probes": ["knn", "linear"],  # any of knn, linear, mlp; each gets its heatmap
    "positions": ["pool"],  # probed in every cell that has them; each gets its heatmap
    "knn_k": 200,
    "knn_temperature": 0.1,
    "probe_limit_train": None,  # images of the probes' training split; null: data.limit_train
    "probe_limit_test": None,  # images of the probes' test split; null: data.limit_val
}

#: The sweep table's columns after the grid keys' own.
TABLE_COLUMNS: tuple[str, ...] = (
    "position",
    "knn_acc",
    "linear_acc",
    "mlp_acc",
    "final_loss",
    "features",
    "images_per_s",
    "wall_clock_s",
    "epochs",
    "steps",
    "resumed",
)

# Files of the sweep folder itself (cells keep theirs in cells/<cell>).
_SWEEP_FILES = ("sweep.json", "results.json")
# What a cell's result file records besides its rows: a change in any of these re-probes it.
_PROBE_KEYS = ("probes", "positions", "knn_k", "knn_temperature", "probe_limit_train", "probe_limit_test")


# --------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class Cell:
    """One point of the grid.

    Attributes:
        values: ``{dotted key: value}`` of this cell, in the grid's key order.
        label: ``"alpha=0.5, beta=1"`` (short key names where they are unambiguous).
        slug: Its folder name under ``cells/`` (``"alpha-0.5_beta-1"``).
        config: Its resolved pretraining configuration (its own output folder).
    """

    values: dict[str, Any]
    label: str
    slug: str
    config: dict[str, Any]

    @property
    def out(self) -> Path:
        return Path(self.config["output_dir"])


@dataclass
class Sweep:
    """A resolved ``dim-ssl sweep`` run.

    Attributes:
        base: The shared configuration, resolved.
        section: The ``sweep`` section, checked, every key present; ``grid`` with dotted keys.
        columns: ``{dotted key: column name}`` of the grid keys, in the grid's order.
        cells: Every cell, in grid order.
        out: The sweep's output folder.
    """

    base: dict[str, Any]
    section: dict[str, Any]
    columns: dict[str, str]
    cells: list[Cell]
    out: Path

    def resolved(self) -> dict[str, Any]:
        """The configuration written to ``config.yaml``: the shared part and the section."""
        return {**copy.deepcopy(self.base), "output_dir": str(self.out), "sweep": copy.deepcopy(self.section)}


def _column_names(keys: Sequence[str]) -> dict[str, str]:
    """``method.head.alpha`` -> ``alpha`` where the last part names one key only."""
    last = [key.rsplit(".", 1)[-1] for key in keys]
    reserved = set(TABLE_COLUMNS) | {"cell"}
    return {key: short if last.count(short) == 1 and short not in reserved else key for key, short in zip(keys, last)}


def _show(value: Any) -> str:
    """A grid value as written in YAML: ``0.5``, ``1``, ``true``, ``null``, ``simclr``, ``[1, 2]``."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...").strip()


def grid_cells(grid: Mapping[str, Any]) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """The grid's column names and its cells' values, in order (the last key varies fastest).

    ``grid`` may be written with dotted keys (``method.head.alpha: [0, 1]``) or nested
    (``method: {head: {alpha: [0, 1]}}``).

    Raises:
        ConfigError: An empty grid, a key whose values are not a non-empty list, repeated values.
    """
    flat = flatten(grid or {}, free_form=frozenset())
    if not flat:
        raise ConfigError(
            "sweep.grid is empty: give dotted config keys and their values, e.g. "
            "{method.head.alpha: [0, 0.5, 1], method.head.beta: [0, 0.5, 1]}"
        )
    for key, values in flat.items():
        if not isinstance(values, (list, tuple)) or not values:
            raise ConfigError(f"sweep.grid.{key} must be a non-empty list of values (e.g. [0, 0.5, 1]); got {values!r}")
        shown = [_show(v) for v in values]
        if len(set(shown)) != len(shown):
            raise ConfigError(f"sweep.grid.{key} repeats a value: {values!r}")
    keys = list(flat)
    cells = [dict(zip(keys, combination)) for combination in itertools.product(*(flat[k] for k in keys))]
    return _column_names(keys), cells


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+]+", "-", text).strip("-") or "cell"


def resolve_sweep(path: str | Path, overrides: Sequence[str] = ()) -> Sweep:
    """A sweep from a configuration file and dotted overrides (``sweep.budget.seconds=60``).

    The output folder is ``output_dir`` when the file or an override sets it, else
    ``runs/<name>-sweep``; each cell trains in ``<output folder>/cells/<cell>``.

    Raises:
        ConfigError: An unknown key in the shared part, the section or the grid (naming the
            cell), a bad budget, probe or grid, several devices.
    """
    base_user, sections = load_sections(path, overrides)
    section = validate_section(sections["sweep"], "sweep", SWEEP_DEFAULTS, free_form=("grid",))
    columns, values = grid_cells(section["grid"])
    section["grid"] = flatten(section["grid"], free_form=frozenset())
    base = resolve_config(None, base=base_user)
    check_single_process(base, "sweep")
    probe_settings(section, int(base["seed"]), "sweep")
    out = Path(base_user["output_dir"]) if base_user.get("output_dir") else Path("runs") / f"{base['name']}-sweep"

    cells: list[Cell] = []
    seen: dict[str, str] = {}
    for cell_values in values:
        label = ", ".join(f"{columns[k]}={_show(v)}" for k, v in cell_values.items())
        slug = "_".join(_slug(f"{columns[k]}-{_show(v)}") for k, v in cell_values.items())
        if slug in seen:
            raise ConfigError(f"sweep.grid: the cells {seen[slug]!r} and {label!r} would share the folder {slug}")
        seen[slug] = label
        entry = MethodEntry(label, dict(cell_values))
        user = method_user_config(base_user, entry, section["budget"], f"sweep cell {label}")
        user["name"] = f"{base['name']}-{slug}"
        user["output_dir"] = str(out / "cells" / slug)
        try:
            config = resolve_config(None, base=user)
        except ConfigError as err:
            raise ConfigError(f"sweep cell {label}: {err}") from None
        check_single_process(config, "sweep")
        cells.append(Cell(dict(cell_values), label, slug, config))
    return Sweep(base, section, columns, cells, out)


# --------------------------------------------------------------------------------------------
# The state of one cell on disk


def _same_config(out: Path, config: Mapping[str, Any]) -> bool | None:
    """Whether ``out/config.yaml`` is ``config`` (``None``: there is none, or it is unreadable)."""
    try:
        earlier = yaml.safe_load((out / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(earlier, dict):
        return None
    return not config_diff(earlier, yaml.safe_load(dump_config(config)))


def _probe_record(section: Mapping[str, Any]) -> dict[str, Any]:
    return {key: plain(section[key]) for key in _PROBE_KEYS}


def cell_state(cell: Cell, section: Mapping[str, Any]) -> str:
    """What a cell's folder holds, for the same configuration:

    - ``"done"``: trained and probed with the same probes (``cell.json``): kept;
    - ``"trained"``: trained to the end (``summary.json``), not probed (or probed otherwise);
    - ``"resumable"``: an unfinished run with a readable ``checkpoints/last.ckpt``;
    - ``"fresh"``: nothing usable (an empty folder, a run killed before its first checkpoint);
    - ``"other"``: a run of another configuration (refused without ``overwrite``).
    """
    out = cell.out
    same = _same_config(out, cell.config)
    last = out / "checkpoints" / "last.ckpt"
    if same is False:
        return "other"
    if same is None:
        return "fresh"
    if (out / "summary.json").is_file() and last.is_file():
        try:
            record = json.loads((out / "cell.json").read_text())
        except (OSError, ValueError):
            return "trained"
        return "done" if record.get("probing") == _probe_record(section) else "trained"
    if last.is_file():
        try:
            load_checkpoint(last)
        except CheckpointError:  # killed while it was written: start the cell again
            return "fresh"
        return "resumable"
    return "fresh"


def _cell_changes(cell: Cell) -> str:
    earlier = yaml.safe_load((cell.out / "config.yaml").read_text())
    changes = config_diff(earlier, yaml.safe_load(dump_config(cell.config)))
    return "; ".join(changes[:3]) + (" ..." if len(changes) > 3 else "")


# --------------------------------------------------------------------------------------------
# Heatmaps


def plot_heatmap(
    grid: Mapping[str, Sequence[Any]],
    columns: Mapping[str, str],
    cells: Sequence[Mapping[str, Any]],
    values: Sequence[float | None],
    path: str | Path,
    title: str,
    label: str,
) -> Path:
    """One heatmap of ``values`` over the grid; saved as PNG.

    The first grid key runs down, the second across; a grid of one key is one row, and any
    further keys give one panel per combination of their values. Missing values (cells not
    run yet) are left blank. Every square carries its value.

    Args:
        grid: ``{dotted key: values}`` in order.
        columns: ``{dotted key: name}`` for axis labels.
        cells: Each cell's ``{dotted key: value}``, aligned with ``values``.
        values: One number per cell (``None`` or NaN: missing).
        path: The PNG file.
        title: The figure's title.
        label: The colour bar's label (``"linear accuracy"``).
    """
    keys = list(grid)
    rows_key, cols_key = (keys[0], keys[1]) if len(keys) > 1 else (None, keys[0])
    rest = keys[2:]
    panels = list(itertools.product(*(grid[k] for k in rest))) or [()]
    shown = {(tuple(_show(c[k]) for k in keys)): v for c, v in zip(cells, values)}
    row_values = list(grid[rows_key]) if rows_key else [None]
    col_values = list(grid[cols_key])

    def lookup(panel: tuple, r: Any, c: Any) -> float:
        point = {**dict(zip(rest, panel)), cols_key: c, **({rows_key: r} if rows_key else {})}
        value = shown.get(tuple(_show(point[k]) for k in keys))
        return float("nan") if value is None else float(value)

    matrices = [np.array([[lookup(p, r, c) for c in col_values] for r in row_values]) for p in panels]
    finite = np.concatenate([m[np.isfinite(m)] for m in matrices]) if matrices else np.array([])
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if high - low < 1e-9:
        low, high = low - 0.005, high + 0.005

    per_row = min(len(panels), 3)
    n_rows = math.ceil(len(panels) / per_row)
    width = max(0.9 * len(col_values) + 1.8, 4.0)
    height = 0.7 * len(row_values) + 1.4
    figure = Figure(figsize=(width * per_row + 1.0, height * n_rows), dpi=100)
    FigureCanvasAgg(figure)  # Agg, never pyplot (see eval.experiments.plots)
    image = None
    for index, (panel, matrix) in enumerate(zip(panels, matrices)):
        axes = figure.add_subplot(n_rows, per_row, index + 1)
        image = axes.imshow(np.ma.masked_invalid(matrix), cmap="viridis", vmin=low, vmax=high, aspect="auto")
        axes.set_xticks(range(len(col_values)), [_show(c) for c in col_values])
        axes.set_yticks(range(len(row_values)), [_show(r) for r in row_values] if rows_key else [""])
        axes.set_xlabel(columns[cols_key])
        if rows_key:
            axes.set_ylabel(columns[rows_key])
        if rest:
            axes.set_title(", ".join(f"{columns[k]}={_show(v)}" for k, v in zip(rest, panel)), fontsize=9)
        middle = (low + high) / 2
        for (r, c), value in np.ndenumerate(matrix):
            if np.isfinite(value):
                colour = "black" if value > middle else "white"
                axes.text(c, r, f"{value:.3f}", ha="center", va="center", color=colour, fontsize=9)
            else:
                axes.text(c, r, "–", ha="center", va="center", color="grey", fontsize=9)
    if image is not None:
        figure.colorbar(image, ax=figure.axes, label=label, shrink=0.9)
    figure.suptitle(title, fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", bbox_inches="tight")
    return path


# --------------------------------------------------------------------------------------------
# The sweep


def _prepare(sweep: Sweep, overwrite: bool) -> None:
    """Refuses cells of another configuration unless ``overwrite``; clears everything on overwrite."""
    out = sweep.out
    if overwrite:
        for path in [out / "cells", *(out / name for name in _SWEEP_FILES)]:
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    else:
        other = [cell for cell in sweep.cells if cell_state(cell, sweep.section) == "other"]
        if other:
            cell = other[0]
            raise OutputInUse(
                f"{cell.out} holds a run of another configuration ({_cell_changes(cell)})"
                + (f" and {len(other) - 1} more cells do too" if len(other) > 1 else "")
                + ": start the sweep afresh with --overwrite, or choose another output_dir=..."
            )
    out.mkdir(parents=True, exist_ok=True)


def _train(cell: Cell, state: str, callbacks: Sequence[Callback], echo: Callable[[str], None]) -> dict[str, Any]:
    """Trains (or resumes) one cell; ``{"summary", "checkpoint", "peak_memory_mb", "resumed"}``."""
    out = cell.out
    if state == "trained":
        summary = json.loads((out / "summary.json").read_text())
        return {"summary": summary, "checkpoint": summary["last_checkpoint"], "peak_memory_mb": None, "resumed": False}
    memory = PeakMemory()
    resume = state == "resumable"
    # A fresh cell may hold the remains of a run killed before its first checkpoint (a
    # metrics.csv): they mean nothing, so the run starts over them.
    summary = pretrain(cell.config, resume=resume, overwrite=not resume, callbacks=[memory, *callbacks], echo=echo)
    return {
        "summary": summary,
        "checkpoint": summary["last_checkpoint"],
        "peak_memory_mb": memory.peak_mb,
        "resumed": resume,
    }


def _sweep_rows(sweep: Sweep, records: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for cell in sweep.cells:
        record = records.get(cell.slug)
        if record is not None:
            rows += record["rows"]
    return rows


def _write_outputs(
    sweep: Sweep, records: Mapping[str, Mapping[str, Any]], settings: Any, title: str, context: str
) -> dict[str, Path]:
    """The table, the heatmaps (``context`` under their titles) and ``results.json`` for the cells done so far."""
    out, section = sweep.out, sweep.section
    rows = _sweep_rows(sweep, records)
    columns = ["cell", *sweep.columns.values(), *settings.table_columns(TABLE_COLUMNS)]
    files = write_report(rows, out, stem="sweep", columns=columns, title=title)
    grid_values = [cell.values for cell in sweep.cells]
    for probe_column in settings.columns:
        for position in section["positions"]:
            by_cell = {row["cell"]: row.get(probe_column) for row in rows if row["position"] == position}
            values = [by_cell.get(cell.label) for cell in sweep.cells]
            if all(v is None for v in values) and any(cell.slug in records for cell in sweep.cells):
                continue  # no cell has this position (e.g. conv for a method without it)
            name = probe_column.removesuffix("_acc")
            files[f"heatmap_{name}_{position}"] = plot_heatmap(
                section["grid"],
                sweep.columns,
                grid_values,
                values,
                out / f"heatmap_{name}_{position}.png",
                title=f"{name} probe accuracy at {position}\n{context}",
                label=f"{name} accuracy ({position})",
            )
    result = {
        "title": title,
        "grid": section["grid"],
        "rows": rows,
        "cells": {cell.label: records.get(cell.slug) for cell in sweep.cells},
        "files": {k: str(v) for k, v in files.items()},
    }
    (out / "results.json").write_text(json.dumps(plain(result, finite=True), indent=2, allow_nan=False) + "\n")
    files["results"] = out / "results.json"
    return files


def run_sweep(
    sweep: Sweep,
    overwrite: bool = False,
    callbacks: Sequence[Callback] = (),
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Runs a resolved sweep, continuing an earlier one in the same folder (see the module docstring).

    Args:
        sweep: From :func:`resolve_sweep`.
        overwrite: Start afresh: delete every cell and result of an earlier sweep in the folder.
        callbacks: Extra Lightning callbacks for every cell's training (tests interrupt cells
            with them).
        echo: Where progress lines go.

    Returns:
        ``{"title", "rows", "table", "files", "seconds", "states"}``; ``states`` maps each
        cell's label to what was found on disk (``"done"``, ``"trained"``, ``"resumable"``,
        ``"fresh"``).

    Raises:
        OutputInUse: A cell folder of another configuration without ``overwrite``.
        eval.training.config.ConfigError, eval.data.DatasetNotFoundError,
        eval.training.checkpoint.CheckpointError, eval.training.TrainingInterrupted: From the
        runs; the cells finished before stay on disk, and running the sweep again continues.
    """
    began = time.monotonic()
    base, section, out = sweep.base, sweep.section, sweep.out
    _prepare(sweep, overwrite)
    (out / "config.yaml").write_text(dump_config(sweep.resolved()))
    settings = probe_settings(section, int(base["seed"]), "sweep")
    data = section_probe_data(base, section)
    budget = describe_budget(section["budget"], sweep.cells[0].config)
    grid_text = " x ".join(
        f"{sweep.columns[k]} [{', '.join(_show(v) for v in vs)}]" for k, vs in section["grid"].items()
    )
    context = f"{base['method']['name']} on {data.dataset}, {base['encoder']['name']}, {budget} per cell"
    title = f"sweep over {grid_text}: {context}"
    echo(f"{title}; {len(sweep.cells)} cells, probes on {data.describe()}; output {out}")

    records: dict[str, dict[str, Any]] = {}
    states: dict[str, str] = {}
    count = len(sweep.cells)
    for index, cell in enumerate(sweep.cells, start=1):
        state = states[cell.label] = cell_state(cell, section)
        here = f"[{index}/{count}] {cell.label}"
        if state == "done":
            records[cell.slug] = json.loads((cell.out / "cell.json").read_text())
            echo(f"{here}: finished earlier, kept ({cell.out / 'cell.json'})")
            continue
        doing = {
            "trained": "trained earlier, probing",
            "resumable": "resuming from checkpoints/last.ckpt",
            "fresh": f"training, {budget}",
        }[state]
        echo(f"{here}: {doing} -> {cell.out}")
        trained = _train(cell, state, callbacks, echo)
        extra = {
            "cell": cell.label,
            **{sweep.columns[k]: v for k, v in cell.values.items()},
            "final_loss": trained["summary"].get("final_loss"),
            "resumed": trained["resumed"],
        }
        rows, _ = method_rows(cell.label, trained, data, section["positions"], settings, out / "features", echo, extra)
        record = {
            "label": cell.label,
            "values": cell.values,
            "probing": _probe_record(section),
            "summary": trained["summary"],
            "peak_memory_mb": trained["peak_memory_mb"],
            "rows": rows,
        }
        (cell.out / "cell.json").write_text(json.dumps(plain(record, finite=True), indent=2, allow_nan=False) + "\n")
        records[cell.slug] = json.loads((cell.out / "cell.json").read_text())
        _write_outputs(sweep, records, settings, title, context)

    files = _write_outputs(sweep, records, settings, title, context)
    rows = _sweep_rows(sweep, records)
    columns = ["cell", *sweep.columns.values(), *settings.table_columns(TABLE_COLUMNS)]
    return {
        "title": title,
        "rows": rows,
        "table": format_markdown_table(rows, columns),
        "files": {k: str(v) for k, v in files.items()},
        "seconds": time.monotonic() - began,
        "states": states,
    }
