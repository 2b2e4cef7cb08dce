"""Comparison plots, written as PNG files.

- :func:`plot_accuracy_vs_time`: probe accuracy against wall-clock training time, one line
  per method: the equal-compute view of DIM against SimCLR and MoCo (DIM needs one view per
  image where they need two, so a fixed number of epochs would not be a fair axis).
- :func:`plot_embeddings`: a 2-D map of test features coloured by class, one panel per
  method (PCA by default; t-SNE on request for up to 5,000 points).

Figures are drawn on matplotlib's Agg canvas directly (``matplotlib.figure.Figure``), never
through ``pyplot``: no display is needed, no global backend is switched under the caller, and
figures are freed as soon as they are saved.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE

__all__ = ["TSNE_MAX_POINTS", "plot_accuracy_vs_time", "plot_embeddings"]

# t-SNE is quadratic-ish in time and memory: above this many points it is refused and PCA,
# or a subsample (``max_points``), is the way.
TSNE_MAX_POINTS = 5000


def _new_figure(width: float, height: float):

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)  # attaches itself to the figure
    return figure


def _save(figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        path = path.with_suffix(".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", bbox_inches="tight")
    return path


def plot_accuracy_vs_time(
    curves: Mapping[str, Sequence[tuple[float, float]]],
    path: str | os.PathLike,
    title: str | None = "Probe accuracy against training time",
    xlabel: str = "wall-clock training time (s)",
    ylabel: str = "probe accuracy",
    log_x: bool = False,
) -> Path:
    """Lines with markers, one per method, of (seconds, accuracy) points; saved as PNG.

    Args:
        curves: ``{method: [(seconds, accuracy), ...]}``; points are sorted by time. A method
            with no points is listed in the legend but draws nothing.
        path: Output file (``.png`` is added when missing); folders are created.
        title, xlabel, ylabel: Text of the figure; ``title=None`` for none.
        log_x: Logarithmic time axis (for runs of very different lengths).

    Returns:
        The path written.

    Raises:
        ValueError: ``curves`` is empty, or a point is not a (seconds, accuracy) pair.
    """
    if not curves:
        raise ValueError("curves is empty: give {method: [(seconds, accuracy), ...]}")
    figure = _new_figure(6.4, 4.2)
    axes = figure.add_subplot(1, 1, 1)
    for method, points in curves.items():
        pairs = [tuple(p) for p in points]
        if any(len(p) != 2 for p in pairs):
            raise ValueError(f"{method}: every point must be a (seconds, accuracy) pair; got {points!r}")
        pairs.sort(key=lambda p: p[0])
        xs = [float(p[0]) for p in pairs]
        ys = [float(p[1]) for p in pairs]
        axes.plot(xs, ys, marker="o", markersize=4, linewidth=1.5, label=str(method))
    if log_x:
        axes.set_xscale("log")
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    if title:
        axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend(loc="lower right")
    return _save(figure, path)


def _project(features: np.ndarray, method: str, seed: int) -> np.ndarray:
    features = np.asarray(features, dtype=np.float32).reshape(len(features), -1)
    if features.shape[1] < 2:  # a 1-D feature has one axis; draw it against zero
        features = np.concatenate([features, np.zeros((len(features), 2 - features.shape[1]), np.float32)], 1)
    if method == "pca":
        return PCA(n_components=2, random_state=seed).fit_transform(features)

    # PCA to 50 dimensions first: the usual t-SNE preprocessing, faster and less noisy.
    if features.shape[1] > 50 and len(features) > 50:
        features = PCA(n_components=50, random_state=seed).fit_transform(features)
    perplexity = float(min(30.0, max(2.0, (len(features) - 1) / 3)))
    return TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed).fit_transform(features)


def plot_embeddings(
    embeddings: Mapping[str, tuple[np.ndarray, np.ndarray]],
    path: str | os.PathLike,
    method: str = "pca",
    max_points: int = TSNE_MAX_POINTS,
    seed: int = 0,
    class_names: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """2-D maps of features coloured by class, one panel per method; saved as PNG.

    Args:
        embeddings: ``{method: (features (N, F), labels (N,))}``, e.g. each method's test
            features from :func:`eval.probes.features.extract_features`.
        path: Output file (``.png`` is added when missing).
        method: ``"pca"`` (default: fast, deterministic, linear like the probe) or ``"tsne"``.
        max_points: Points drawn per panel; larger sets are subsampled (seeded, the same
            indices for equally long sets, so panels show the same images).
        seed: Seed of the subsample and of PCA / t-SNE.
        class_names: Legend names of the labels 0..K-1; default the label values.
        title: Figure title.

    Returns:
        The path written.

    Raises:
        ValueError: Empty ``embeddings``, unknown ``method``, features and labels of
            different lengths, or t-SNE asked for more than :data:`TSNE_MAX_POINTS` points.
    """
    if not embeddings:
        raise ValueError("embeddings is empty: give {method: (features, labels)}")
    if method not in ("pca", "tsne"):
        raise ValueError(f"method must be 'pca' or 'tsne'; got {method!r}")
    if max_points < 2:
        raise ValueError(f"max_points must be at least 2; got {max_points}")
    if method == "tsne" and max_points > TSNE_MAX_POINTS:
        raise ValueError(
            f"t-SNE is limited to {TSNE_MAX_POINTS} points (max_points={max_points}); "
            "lower max_points or use method='pca'"
        )

    panels = len(embeddings)
    # One row for up to three methods, else a near-square grid of at most three columns.
    columns = panels if panels <= 3 else min(3, math.ceil(math.sqrt(panels)))
    rows = math.ceil(panels / columns)
    figure = _new_figure(4.2 * columns, 4.0 * rows)
    all_labels = np.unique(np.concatenate([np.asarray(labels).ravel() for _, labels in embeddings.values()]))
    cmap = colormaps["tab10" if len(all_labels) <= 10 else "tab20"]
    colour = {label: cmap(i % cmap.N) for i, label in enumerate(all_labels)}

    for index, (name, (features, labels)) in enumerate(embeddings.items()):
        features = np.asarray(features)
        labels = np.asarray(labels).ravel()
        if len(features) != len(labels):
            raise ValueError(f"{name}: {len(features)} feature rows but {len(labels)} labels")
        if len(features) > max_points:
            keep = np.sort(np.random.default_rng(seed).choice(len(features), max_points, replace=False))
            features, labels = features[keep], labels[keep]
        axes = figure.add_subplot(rows, columns, index + 1)
        if len(features) >= 2:
            points = _project(features, method, seed)
            for label in np.unique(labels):
                mask = labels == label
                legend = class_names[int(label)] if class_names is not None else str(label)
                axes.scatter(
                    points[mask, 0], points[mask, 1], s=4, alpha=0.7, color=colour[label], label=legend, rasterized=True
                )
        axes.set_title(f"{name} ({method.upper() if method == 'pca' else 't-SNE'})")
        axes.set_xticks([])
        axes.set_yticks([])
    handles, legend_labels = [], []
    for axes in figure.axes:  # one shared legend: the classes are the same in every panel
        for handle, text in zip(*axes.get_legend_handles_labels()):
            if text not in legend_labels:
                handles.append(handle)
                legend_labels.append(text)
    if handles:
        figure.legend(
            handles, legend_labels, loc="center left", bbox_to_anchor=(1.0, 0.5), markerscale=3, frameon=False
        )
    if title:
        figure.suptitle(title)
    return _save(figure, path)
