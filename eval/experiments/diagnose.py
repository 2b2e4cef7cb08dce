"""The DIM paper's diagnostics of trained encoders: MI estimates, the NDM of y, and the probes.

:func:`diagnose_checkpoints` is what ``dim-ssl diagnose`` runs. For each checkpoint (any method
of the harness), on the held-out split of the dataset it was trained on (its ``data.val_split``,
or the carved ``data.holdout`` split; the first ``limit_test`` images):

1. one encoder pass over the held-out images gives the inputs x, the local feature map C(x)
   and the representation y (``y`` for methods that train the summary MLP, DIM's; ``pool``
   for the others, SimCLR's, MoCo's, whose y would be an untrained layer);
2. **MI(X; Y)**, the paper's MINE column: :func:`eval.analysis.estimate_mutual_information`
   between the *flattened* normalised image (1 x 32 x 32 -> 1,024 numbers; no convolutional
   critic) and y, with the chosen bound (``"dv"``: MINE), reported on pairs held out from the
   critic's training;
3. **MI(C(X); Y)**, the local term's quantity: the same estimator between y and the feature
   vector at one location of the map drawn at random per image (seeded), i.e. the
   location-averaged local MI that DIM(L) maximises, one sample per image;
4. **NDM(Y)**, the paper's neural dependency measure
   (:func:`eval.analysis.neural_dependency_measure`): how far the dimensions of y are from
   independent (a discriminator between y and y with each dimension shuffled across images);
   the prior term is meant to lower it;
5. the probes of :mod:`eval.probes.suite` (kNN, linear, MLP) on the representation, trained on
   the training split (the first ``limit_train`` images) and tested on the held-out split;
6. outputs: ``diagnose.md/.csv/.json`` (one row per checkpoint), ``diagnose.png`` (one panel
   per measure, one bar per checkpoint) and ``config.yaml`` (what was measured and how).

Example::

    result = diagnose_checkpoints(["runs/a/checkpoints/last.ckpt"], labels=["DIM(L)"])
    print(result["table"])
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from eval.analysis import estimate_mutual_information, neural_dependency_measure
from eval.experiments.report import format_markdown_table, write_report
from eval.methods.base import by_position
from eval.probes.suite import ProbeSettings, input_format, model_features, probe_data, probe_threads, run_probes
from eval.training.checkpoint import load_checkpoint, model_from_checkpoint
from eval.training.config import dump_config

__all__ = ["COLUMNS", "MEASURES", "diagnose_checkpoints", "encoder_samples", "representation_position"]

#: The MI bounds ``estimator=`` can name (``dim_ssl``'s; ``"dv"`` is MINE's).
ESTIMATOR_NAMES: tuple[str, ...] = ("dv", "jsd", "infonce")

#: The measures, their table columns and what the plot calls them.
MEASURES: dict[str, str] = {
    "mi_x_y": "MI(X; Y), nats",
    "mi_local_y": "MI(C(X); Y), nats",
    "ndm": "NDM(Y)",
}

COLUMNS: tuple[str, ...] = (
    "label",
    "method",
    "representation",
    "dims",
    "mi_x_y",
    "mi_local_y",
    "ndm",
    "knn_acc",
    "linear_acc",
    "mlp_acc",
    "test_images",
    "train_images",
    "checkpoint",
)

# The steps of one checkpoint, for the progress bar.
_STEPS = ("encoder pass", "MI(X; Y)", "MI(C(X); Y)", "NDM(Y)", "probes")


def representation_position(model: Any, position: str | None = None) -> str:
    """The position whose features stand for y: ``position`` if given, else ``"y"`` where the
    method trains the summary MLP (DIM), else ``"pool"`` (SimCLR, MoCo, BYOL; their ``"proj"``,
    the projection head's output, on request).

    Raises:
        ValueError: A position the model does not have, or the map (``"conv"``).
    """
    available = tuple(getattr(model, "feature_positions", ("pool",)))
    chosen = position or ("y" if "y" in available else "pool")
    if chosen not in available or chosen == "conv":
        raise ValueError(
            f"the representation must be a vector position the model has "
            f"({', '.join(p for p in available if p != 'conv')}); got {chosen!r}"
        )
    return chosen


@torch.no_grad()
def encoder_samples(
    model: Any, dataset: Any, position: str, seed: int = 0, batch_size: int = 256
) -> dict[str, np.ndarray]:
    """One pass over ``dataset``: ``{"x", "local", "y", "labels"}`` as float32 arrays.

    ``x`` is each normalised image flattened, ``local`` the feature vector at one location of
    the map drawn at random per image (``seed``), ``y`` the features at ``position``.
    """
    model.eval()
    generator = torch.Generator().manual_seed(int(seed))
    parts: dict[str, list[np.ndarray]] = {"x": [], "local": [], "y": [], "labels": []}
    for images, labels in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        encoded = model.encoder.encode(images)
        feature_map = encoded.feature_map  # (N, C, M, M)
        n, _, height, width = feature_map.shape
        where = torch.randint(height * width, (n,), generator=generator)
        local = feature_map.flatten(2)[torch.arange(n), :, where]  # (N, C): one location per image
        parts["x"].append(images.flatten(1).numpy())
        parts["local"].append(local.numpy())
        found = by_position(encoded)
        if position not in found:  # a position the method adds (SimCLR's projection "proj")
            found = model.extra_features(encoded)
        parts["y"].append(found[position].flatten(1).numpy())
        parts["labels"].append(np.asarray(labels))
    return {
        key: np.concatenate(value).astype(np.int64 if key == "labels" else np.float32) for key, value in parts.items()
    }


def _labels(checkpoints: Sequence[Path], labels: Sequence[str] | None) -> list[str]:
    if labels is None:
        # RUN/checkpoints/last.ckpt -> RUN's folder name.
        return [p.parent.parent.name if p.parent.name == "checkpoints" else p.stem for p in checkpoints]
    if len(labels) != len(checkpoints):
        raise ValueError(f"{len(labels)} labels for {len(checkpoints)} checkpoints: give one label per checkpoint")
    return list(labels)


def plot_diagnostics(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], path: str | Path, title: str) -> Path:
    """One panel per measure (and probe), one bar per checkpoint, its value written on it."""
    shown = [c for c in columns if any(row.get(c) is not None for row in rows)]
    names = {**MEASURES, "knn_acc": "kNN accuracy", "linear_acc": "linear accuracy", "mlp_acc": "MLP accuracy"}
    labels = [str(row["label"]) for row in rows]
    figure = Figure(figsize=(3.2 * max(len(shown), 1), 3.4), dpi=100)
    FigureCanvasAgg(figure)  # Agg, never pyplot (see eval.experiments.plots)
    colours = [f"C{i % 10}" for i in range(len(rows))]
    for index, column in enumerate(shown):
        axes = figure.add_subplot(1, len(shown), index + 1)
        values = [np.nan if row.get(column) is None else float(row[column]) for row in rows]
        bars = axes.bar(range(len(rows)), values, color=colours)
        axes.bar_label(bars, labels=["–" if np.isnan(v) else f"{v:.3f}" for v in values], fontsize=7)
        axes.set_xticks(range(len(rows)), labels, rotation=35, ha="right", fontsize=8)
        axes.set_title(names.get(column, column), fontsize=9)
        if column.endswith("_acc"):
            finite = [v for v in values if not np.isnan(v)]
            if finite:  # accuracies differ in the second decimal: zoom in
                axes.set_ylim(max(0.0, min(finite) - 0.05), min(1.0, max(finite) + 0.03))
        axes.axhline(0.0, color="black", linewidth=0.5)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", bbox_inches="tight")
    return path


def diagnose_checkpoints(
    checkpoints: Sequence[str | os.PathLike],
    labels: Sequence[str] | None = None,
    position: str | Sequence[str | None] | None = None,
    estimator: str = "dv",
    probes: Sequence[str] = ("knn", "linear"),
    limit_train: int | None = None,
    limit_test: int | None = None,
    knn_k: int = 200,
    mi_options: Mapping[str, Any] | None = None,
    ndm_options: Mapping[str, Any] | None = None,
    seed: int = 0,
    out: str | os.PathLike | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Measures each checkpoint (see the module docstring) and writes the table and the plot.

    Args:
        checkpoints: dim-ssl checkpoints (``RUN/checkpoints/last.ckpt``), any method.
        labels: Their names in the table; default each run's folder name.
        position: The representation; default ``y`` where the method trains it, else ``pool``.
            One name for every checkpoint, or one per checkpoint (``None``: the default).
        estimator: The MI bound of both MI estimates: ``"dv"`` (MINE), ``"jsd"``, ``"infonce"``.
        probes: Any of ``"knn"``, ``"linear"``, ``"mlp"``; empty: no probes.
        limit_train, limit_test: Images of the probes' training split and of the held-out split
            (MI, NDM and the probes' test); default each checkpoint's ``data.limit_train`` and
            ``data.limit_val``.
        knn_k: Neighbours of the kNN probe.
        mi_options, ndm_options: Keyword options of the two estimators (``max_epochs``, ...).
        seed: Seeds the estimators, the probes' held-out part and the random locations.
        out: Output folder; default ``RUN/diagnose`` for one checkpoint, ``runs/diagnose`` for several.
        progress: Show a progress bar (where stderr is a terminal).
        echo: Where result lines go.

    Returns:
        ``{"rows", "table", "files", "out", "seconds"}``.

    Raises:
        eval.training.checkpoint.CheckpointError: Not a usable checkpoint.
        ValueError: An unknown estimator, probe or position, or labels that do not match.
        eval.data.DatasetNotFoundError: The dataset is not on this machine.
    """
    began = time.monotonic()
    paths = [Path(p) for p in checkpoints]
    if not paths:
        raise ValueError("no checkpoint to diagnose")
    if estimator not in ESTIMATOR_NAMES:
        raise ValueError(f"estimator must be one of {', '.join(ESTIMATOR_NAMES)}; got {estimator!r}")
    names = _labels(paths, labels)
    positions = list(position) if isinstance(position, (list, tuple)) else [position] * len(paths)
    if len(positions) != len(paths):
        raise ValueError(f"{len(positions)} positions for {len(paths)} checkpoints: give one, or one per checkpoint")
    settings = ProbeSettings(tuple(probes), knn_k, 0.1, int(seed)) if probes else None
    saved = [load_checkpoint(p)["dim_ssl"]["config"] for p in paths]  # every file checked first
    if out is None:
        first = paths[0].parent.parent if paths[0].parent.name == "checkpoints" else paths[0].parent
        out = first / "diagnose" if len(paths) == 1 else Path("runs") / "diagnose"
    out = Path(out)
    mi = {"seed": int(seed), **dict(mi_options or {})}
    ndm = {"seed": int(seed), **dict(ndm_options or {})}

    rows: list[dict[str, Any]] = []
    show = progress and hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    bar = tqdm(total=len(paths) * len(_STEPS), desc="diagnose", unit="step", disable=not show)
    try:
        for path, label, config, wanted in zip(paths, names, saved, positions):
            model = model_from_checkpoint(path)
            chosen = representation_position(model, wanted)
            data_config = config["data"]
            image_size, channels = input_format(data_config)
            data = probe_data(
                data_config["dataset"],
                image_size,
                channels,
                root=data_config["root"],
                limit_train=limit_train or data_config["limit_train"],
                limit_test=limit_test or data_config["limit_val"],
                test_split=data_config["val_split"],
                holdout=data_config["holdout"],
            )
            echo(f"{label}: {config['method']['name']}, {config['encoder']['name']}, y = {chosen}; {data.describe()}")

            bar.set_description(f"{label}: {_STEPS[0]}")
            with probe_threads(len(data.test)):
                samples = encoder_samples(model, data.test, chosen, seed=seed)
            bar.update()
            bar.set_description(f"{label}: {_STEPS[1]}")
            mi_x_y = float(estimate_mutual_information(samples["x"], samples["y"], estimator, **mi))
            bar.update()
            bar.set_description(f"{label}: {_STEPS[2]}")
            mi_local_y = float(estimate_mutual_information(samples["local"], samples["y"], estimator, **mi))
            bar.update()
            bar.set_description(f"{label}: {_STEPS[3]}")
            ndm_y = float(neural_dependency_measure(samples["y"], **ndm))
            bar.update()
            bar.set_description(f"{label}: {_STEPS[4]}")
            accuracies: dict[str, Any] = {}
            if settings is not None:
                features = model_features(model, data, [chosen], progress=False)[chosen]
                accuracies = run_probes(*features, settings)
            bar.update()
            row = {
                "label": label,
                "method": config["method"]["name"],
                "representation": chosen,
                "dims": int(samples["y"].shape[1]),
                "mi_x_y": mi_x_y,
                "mi_local_y": mi_local_y,
                "ndm": ndm_y,
                **{c: accuracies.get(c) for c in (settings.columns if settings else [])},
                "test_images": len(data.test),
                "train_images": len(data.train) if settings else None,
                "checkpoint": str(path),
                "head": config["method"].get("head"),
            }
            rows.append(row)
            probes_text = ", ".join(f"{c} {accuracies[c]:.3f}" for c in (settings.columns if settings else []))
            echo(
                f"  MI(X;Y) {mi_x_y:.3f} | MI(C(X);Y) {mi_local_y:.3f} | NDM {ndm_y:.4f}"
                + (f" | {probes_text}" if probes_text else "")
            )
    finally:
        bar.close()

    out.mkdir(parents=True, exist_ok=True)
    columns = [c for c in COLUMNS if not c.endswith("_acc") or (settings is not None and c in settings.columns)]
    title = f"Diagnostics on the held-out split ({estimator} bound; image flattened for MI(X; Y))"
    files = write_report(rows, out, stem="diagnose", columns=columns, title=title)
    measured = [c for c in columns if c in MEASURES or c.endswith("_acc")]
    files["plot"] = plot_diagnostics(rows, measured, out / "diagnose.png", title)
    resolved = {
        "checkpoints": [str(p) for p in paths],
        "labels": names,
        "positions": positions,
        "estimator": estimator,
        "x": "the normalised image, flattened",
        "local": "the feature map's vector at one location drawn at random per image",
        "probes": list(settings.probes) if settings else [],
        "limit_train": limit_train,
        "limit_test": limit_test,
        "knn_k": knn_k,
        "mi_options": mi,
        "ndm_options": ndm,
        "seed": seed,
    }
    (out / "config.yaml").write_text(dump_config(resolved))
    files["config"] = out / "config.yaml"
    return {
        "rows": rows,
        "table": format_markdown_table(rows, columns),
        "files": {k: str(v) for k, v in files.items()},
        "out": str(out),
        "seconds": time.monotonic() - began,
    }
