"""Comparison report (Markdown, CSV, JSON) and plots (PNG)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from eval.experiments.plots import plot_accuracy_vs_time, plot_embeddings
from eval.experiments.report import COLUMNS, format_markdown_table, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

ROWS = [
    {
        "method": "dim",
        "probe": "linear",
        "position": "pool",
        "accuracy": 0.8712,
        "images_per_s": 5120.5,
        "wall_clock_s": 610.25,
        "peak_memory_mb": 1830.0,
    },
    {
        "method": "simclr",
        "probe": "knn",
        "position": "proj",
        "accuracy": 0.8841,
        "images_per_s": 2400.0,
        "wall_clock_s": 1190.0,
        "peak_memory_mb": float("nan"),
        "epochs": 100,
    },
    {
        "method": "raw pixels",
        "probe": "linear",
        "position": "pixels",
        "accuracy": 0.81,
        "images_per_s": None,
        "wall_clock_s": None,
        "peak_memory_mb": None,
    },
]


def test_report_files_parse_back(tmp_path):
    paths = write_report(ROWS, tmp_path / "out", stem="table")
    assert {p.name for p in paths.values()} == {"table.md", "table.csv", "table.json"}

    with paths["csv"].open(newline="") as f:
        parsed = list(csv.DictReader(f))
    assert len(parsed) == len(ROWS)
    assert list(parsed[0])[: len(COLUMNS)] == list(COLUMNS) and list(parsed[0])[-1] == "epochs"
    assert parsed[0]["method"] == "dim" and float(parsed[0]["accuracy"]) == 0.8712
    assert parsed[1]["peak_memory_mb"] == "" and parsed[1]["epochs"] == "100"
    assert parsed[2]["images_per_s"] == "" and parsed[0]["epochs"] == ""

    loaded = json.loads(paths["json"].read_text())
    assert [r["method"] for r in loaded] == ["dim", "simclr", "raw pixels"]
    assert loaded[0]["wall_clock_s"] == 610.25  # full precision in the data files
    assert loaded[1]["peak_memory_mb"] is None  # NaN is not JSON: written as null
    assert loaded[1]["epochs"] == 100


def test_markdown_has_a_header_and_one_line_per_row(tmp_path):
    text = write_report(ROWS, tmp_path)["markdown"].read_text()
    lines = text.strip().splitlines()
    assert len(lines) == 2 + len(ROWS)
    assert [c.strip() for c in lines[0].strip("|").split("|")] == list(COLUMNS) + ["epochs"]
    assert set(lines[1]) <= set("|-: ")
    assert "| dim | linear | pool | 0.8712 |" in lines[2]
    assert "–" in lines[3]  # NaN shows as missing
    assert text == format_markdown_table(ROWS)


def test_markdown_escapes_pipes_and_respects_given_columns():
    table = format_markdown_table([{"method": "a|b", "accuracy": np.float32(0.5)}], columns=["method", "accuracy"])
    lines = table.splitlines()
    assert lines[0] == "| method | accuracy |"
    assert lines[2] == "| a\\|b | 0.5000 |"  # numpy scalars format like floats


def test_title_goes_above_the_table(tmp_path):
    text = write_report(ROWS, tmp_path, title="Fashion-MNIST")["markdown"].read_text()
    assert text.startswith("# Fashion-MNIST\n\n| method |")


def test_accuracy_against_time_plot_is_a_png(tmp_path):
    curves = {"dim": [(10.0, 0.6), (30.0, 0.75), (20.0, 0.7)], "simclr": [(15.0, 0.5), (45.0, 0.8)], "moco": []}
    path = plot_accuracy_vs_time(curves, tmp_path / "plots" / "accuracy_vs_time")
    assert path.suffix == ".png" and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError):
        plot_accuracy_vs_time({}, tmp_path / "empty.png")


@pytest.mark.parametrize("method", ["pca", "tsne"])
def test_embedding_plot_has_one_panel_per_method(tmp_path, method):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 30)
    embeddings = {
        "dim": (rng.normal(size=(90, 8)) + labels[:, None], labels),
        "simclr": (rng.normal(size=(90, 8)), labels),
    }
    path = plot_embeddings(
        embeddings, tmp_path / f"emb_{method}.png", method=method, class_names=["zero", "one", "two"]
    )
    assert path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_MAGIC


def test_embedding_plot_subsamples_and_refuses_big_tsne(tmp_path):
    labels = np.arange(300) % 10
    path = plot_embeddings(
        {"m": (np.random.default_rng(1).normal(size=(300, 1)), labels)}, tmp_path / "small.png", max_points=50
    )
    assert path.is_file()
    with pytest.raises(ValueError, match="t-SNE"):
        plot_embeddings({"m": (np.zeros((10, 2)), np.zeros(10))}, tmp_path / "x.png", method="tsne", max_points=10_000)
    with pytest.raises(ValueError, match="labels"):
        plot_embeddings({"m": (np.zeros((10, 2)), np.zeros(9))}, tmp_path / "x.png")
