"""Probe one checkpoint: its frozen features on a dataset, kNN, linear and MLP probes at each position.

:func:`evaluate_checkpoint` is what ``dim-ssl evaluate`` runs: it loads a checkpoint
weights-only (:func:`eval.training.checkpoint.model_from_checkpoint`, which rebuilds the method from the
configuration stored inside), extracts the frozen features of the dataset's training and test
splits in the model's input format (cached beside the run, so a second evaluation with other
probes does not extract again), runs the probes of :mod:`eval.probes.suite` and writes::

    config.yaml              what was evaluated and how (and the checkpoint's own configuration)
    evaluation.md/.csv/.json the table: one row per position
    embeddings.png           2-D PCA of the test features at each position, coloured by class

Example::

    result = evaluate_checkpoint("runs/quickstart/checkpoints/last.ckpt", positions=("pool", "conv"))
    print(result["table"])
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from eval.experiments.plots import plot_embeddings
from eval.experiments.report import format_markdown_table, write_report
from eval.probes.suite import (
    PROBES,
    ProbeSettings,
    feature_dim,
    format_accuracies,
    input_format,
    model_features,
    probe_data,
    run_folder,
    run_probes,
)
from eval.training.checkpoint import load_checkpoint, model_from_checkpoint
from eval.training.config import dump_config

__all__ = ["PROBE_NAMES", "evaluate_checkpoint"]

#: The probes ``probes=`` (and ``dim-ssl evaluate --probes``) can name.
PROBE_NAMES: tuple[str, ...] = tuple(PROBES)

COLUMNS = (
    "checkpoint",
    "method",
    "dataset",
    "position",
    "knn_acc",
    "linear_acc",
    "mlp_acc",
    "features",
    "train_images",
    "test_images",
)


def evaluate_checkpoint(
    checkpoint: str | os.PathLike,
    dataset: str | None = None,
    positions: Sequence[str] | None = None,
    probes: Sequence[str] = ("knn", "linear"),
    knn_k: int = 200,
    knn_temperature: float = 0.1,
    limit_train: int | None = None,
    limit_test: int | None = None,
    data_root: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = "auto",
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Probes a checkpoint's frozen features and writes the results (see the module docstring).

    Args:
        checkpoint: A dim-ssl checkpoint (``RUN/checkpoints/last.ckpt``).
        dataset: The dataset probed; default the one it was trained on. It is read at the
            checkpoint's image size and channels (grayscale repeated to three channels, colour
            taken to luminance for one).
        positions: Feature positions; default every position the method has.
        probes: Any of ``"knn"``, ``"linear"`` and ``"mlp"`` (the DIM paper's one-hidden-layer probe).
        knn_k, knn_temperature: The kNN vote's settings.
        limit_train, limit_test: Use the first N images of each split.
        data_root: Data root; default the checkpoint's ``data.root``.
        out: Output folder; default ``RUN/evaluation/<dataset>``.
        cache_dir: Feature cache; ``"auto"``: ``RUN/features``; ``None``: no cache.
        echo: Where progress lines go.

    Returns:
        ``{"rows", "table", "files", "seconds"}``.

    Raises:
        eval.training.checkpoint.CheckpointError: Not a usable checkpoint.
        ValueError: An unknown position, probe or dataset.
        eval.data.DatasetNotFoundError: The dataset is not on this machine.
    """

    began = time.monotonic()
    checkpoint = Path(checkpoint)
    saved = load_checkpoint(checkpoint)["dim_ssl"]["config"]
    settings = ProbeSettings(tuple(probes), knn_k, knn_temperature, int(saved.get("seed", 0)))
    model = model_from_checkpoint(checkpoint)
    available = tuple(getattr(model, "feature_positions", ("pool",)))
    positions = tuple(positions) if positions else available
    unknown = [p for p in positions if p not in available]
    if unknown:
        raise ValueError(
            f"the {saved['method']['name']} model has no position {', '.join(unknown)}; it has {', '.join(available)}"
        )

    data_config = saved["data"]
    name = dataset or data_config["dataset"]
    image_size, channels = input_format(data_config)  # the model's, whatever the dataset's
    data = probe_data(
        name,
        image_size,
        channels,
        root=data_root if data_root is not None else data_config["root"],
        limit_train=limit_train,
        limit_test=limit_test,
    )
    run = run_folder(checkpoint)
    out = Path(out) if out is not None else run / "evaluation" / _folder_name(name)
    cache = run / "features" if cache_dir == "auto" else cache_dir
    echo(
        f"evaluating {checkpoint} ({saved['method']['name']}, {saved['encoder']['name']}) on {data.describe()}, "
        f"positions {', '.join(positions)}"
    )

    features = model_features(model, data, positions, cache_dir=cache, checkpoint=checkpoint)
    rows = []
    for position in positions:
        result = run_probes(*features[position], settings)
        echo(f"  {position}: {format_accuracies(result)}")
        rows.append(
            {
                "checkpoint": str(checkpoint),
                "method": saved["method"]["name"],
                "dataset": name,
                "position": position,
                **{c: result.get(c) for c in settings.columns},
                "features": feature_dim(features[position]),
                "train_images": len(data.train),
                "test_images": len(data.test),
                "linear_l2": result.get("linear_l2"),
                "mlp_epoch": result.get("mlp_epoch"),
            }
        )

    out.mkdir(parents=True, exist_ok=True)
    resolved = {
        "checkpoint": str(checkpoint),
        "dataset": name,
        "positions": list(positions),
        "probes": list(settings.probes),
        "knn_k": settings.knn_k,
        "knn_temperature": settings.knn_temperature,
        "limit_train": limit_train,
        "limit_test": limit_test,
        "image_size": data.image_size,
        "channels": data.channels,
        "cache_dir": None if cache is None else str(cache),
        "pretraining": saved,
    }
    (out / "config.yaml").write_text(dump_config(resolved))
    columns = settings.table_columns(COLUMNS)
    details = [key for probe, key in (("linear", "linear_l2"), ("mlp", "mlp_epoch")) if probe in settings.probes]
    files = write_report(
        rows,
        out,
        stem="evaluation",
        columns=[*columns, *details],
        title=f"{checkpoint} on {name}",
    )
    files["embeddings"] = plot_embeddings(
        {position: features[position][1] for position in positions},
        out / "embeddings.png",
        seed=int(saved.get("seed", 0)),
        class_names=data.class_names,
        title=f"{saved['method']['name']} on {name} ({data.test_split})",
    )
    return {
        "rows": rows,
        "table": format_markdown_table(rows, columns),
        "files": {k: str(v) for k, v in files.items()},
        "out": str(out),
        "seconds": time.monotonic() - began,
    }


def _folder_name(dataset: str) -> str:

    return re.sub(r"[^A-Za-z0-9_.-]+", "-", dataset).strip("-") or "dataset"
