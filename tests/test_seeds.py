"""Several seeds: gains paired with the untrained encoder of the same seed, mean ± std over seeds."""

import statistics

import pytest

from eval.experiments.report import format_markdown_table
from eval.experiments.seeds import add_gains, summarise_seeds


def _rows():
    return [
        {"method": "DIM", "position": "pool", "seed": 0, "linear_acc": 0.90, "steps": 10, "features": 64},
        {"method": "DIM", "position": "pool", "seed": 1, "linear_acc": 0.86, "steps": 13, "features": 64},
        {"method": "untrained", "position": "pool", "seed": 0, "linear_acc": 0.85, "steps": 0, "features": 64},
        {"method": "untrained", "position": "pool", "seed": 1, "linear_acc": 0.80, "steps": 0, "features": 64},
        {"method": "DIM", "position": "conv", "seed": 0, "linear_acc": 0.91, "steps": 10, "features": 128},
        {"method": "pixels", "position": "pixels", "linear_acc": 0.84},
    ]


def test_the_gain_is_paired_by_seed_and_position():
    rows = {
        (r["method"], r["position"], r.get("seed")): r
        for r in add_gains(_rows(), ["linear_acc"], "untrained", ["pixels"])
    }
    assert rows[("DIM", "pool", 0)]["linear_gain"] == pytest.approx(0.05)  # 0.90 - 0.85, not 0.90 - 0.80
    assert rows[("DIM", "pool", 1)]["linear_gain"] == pytest.approx(0.06)
    assert rows[("DIM", "conv", 0)]["linear_gain"] is None  # no untrained row at conv
    assert "linear_gain" not in rows[("untrained", "pool", 0)] and "linear_gain" not in rows[("pixels", "pixels", None)]


def test_seeds_average_into_one_row_with_the_sample_spread():
    rows = add_gains(_rows(), ["linear_acc"], "untrained", ["pixels"])
    summary = {(r["method"], r["position"]): r for r in summarise_seeds(rows, ["linear_acc", "linear_gain"])}
    dim = summary[("DIM", "pool")]
    assert dim["linear_acc"] == pytest.approx(0.88)
    assert dim["linear_acc_std"] == pytest.approx(statistics.stdev([0.90, 0.86]))  # ~0.0283, n-1 in the denominator
    assert dim["linear_gain"] == pytest.approx(0.055) and dim["linear_gain_std"] == pytest.approx(0.01 / 2**0.5)
    assert dim["steps"] == pytest.approx(11.5) and dim["features"] == 64 and isinstance(dim["features"], int)
    assert dim["seeds"] == 2 and "seed" not in dim
    assert summary[("DIM", "conv")]["linear_acc_std"] is None and summary[("DIM", "conv")]["seeds"] == 1
    assert list(summary) == [("DIM", "pool"), ("untrained", "pool"), ("DIM", "conv"), ("pixels", "pixels")]


def test_the_markdown_table_shows_mean_plus_minus_std_in_one_column():
    rows = summarise_seeds(add_gains(_rows(), ["linear_acc"], "untrained", ["pixels"]), ["linear_acc"])
    table = format_markdown_table(rows, ["method", "position", "linear_acc", "linear_acc_std", "seeds"])
    assert table.splitlines()[0] == "| method | position | linear_acc | seeds |"
    assert "| DIM | pool | 0.8800 ± 0.0283 | 2 |" in table
    assert "| DIM | conv | 0.9100 | 1 |" in table  # one seed: no spread to show
