"""The probe-result cache of run_probes: a hit returns the stored result without probing, and
anything that changes the result (the features, the labels, the settings) misses."""

from __future__ import annotations

import numpy as np
import pytest

from eval.probes.suite import ProbeSettings, run_probes


@pytest.fixture
def splits():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 8)).astype(np.float32) * 3
    train_y = np.repeat(np.arange(3), 20)
    test_y = np.repeat(np.arange(3), 10)
    train_x = centres[train_y] + rng.normal(size=(60, 8)).astype(np.float32)
    test_x = centres[test_y] + rng.normal(size=(30, 8)).astype(np.float32)
    return (train_x, train_y), (test_x, test_y)


def test_a_cached_result_is_read_back_without_probing(splits, probe_calls, tmp_path):
    settings = ProbeSettings(("knn", "linear"), knn_k=5)
    first = run_probes(*splits, settings, cache_dir=tmp_path)
    assert len(probe_calls) == 1 and len(list(tmp_path.glob("probes-*.json"))) == 1
    assert run_probes(*splits, settings, cache_dir=tmp_path) == first
    assert len(probe_calls) == 1
    # Without a cache folder the probes always run, and agree with the cached result.
    assert run_probes(*splits, settings) == first
    assert len(probe_calls) == 2


def test_changed_features_labels_or_settings_are_probed_again(splits, probe_calls, tmp_path):
    (train_x, train_y), test = splits
    settings = ProbeSettings(("knn",), knn_k=5)
    run_probes((train_x, train_y), test, settings, cache_dir=tmp_path)
    nudged = train_x.copy()
    nudged[0, 0] += 1e-3
    run_probes((nudged, train_y), test, settings, cache_dir=tmp_path)
    run_probes((train_x, np.roll(train_y, 1)), test, settings, cache_dir=tmp_path)
    run_probes((train_x, train_y), test, ProbeSettings(("knn",), knn_k=6), cache_dir=tmp_path)
    run_probes((train_x.astype(np.float64), train_y), test, settings, cache_dir=tmp_path)
    assert len(probe_calls) == 5
    assert len(list(tmp_path.glob("probes-*.json"))) == 5


def test_a_damaged_entry_is_probed_again_and_replaced(splits, probe_calls, tmp_path):
    settings = ProbeSettings(("knn",), knn_k=5)
    first = run_probes(*splits, settings, cache_dir=tmp_path)
    (entry,) = tmp_path.glob("probes-*.json")
    entry.write_text('{"knn_acc": 0.')  # cut short, as by an interrupted write
    assert run_probes(*splits, settings, cache_dir=tmp_path) == first
    assert len(probe_calls) == 2
    assert run_probes(*splits, settings, cache_dir=tmp_path) == first
    assert len(probe_calls) == 2


def test_a_linear_l2_grid_is_the_probes_choice_and_keys_its_own_entry(splits, probe_calls, tmp_path):
    from eval.probes.linear import linear_probe

    default = run_probes(*splits, ProbeSettings(("linear",)), cache_dir=tmp_path)
    strong = run_probes(*splits, ProbeSettings(("linear",), linear_l2_grid=[1e-1]), cache_dir=tmp_path)
    weak = run_probes(*splits, ProbeSettings(("linear",), linear_l2_grid=[1e-3]), cache_dir=tmp_path)
    assert len(probe_calls) == 3 and len(list(tmp_path.glob("probes-*.json"))) == 3
    # A one-value grid is used as it is (nothing held out), as linear_probe itself does.
    assert strong["linear_l2"] == 1e-1 and weak["linear_l2"] == 1e-3
    assert weak["linear_acc"] == linear_probe(*splits[0], *splits[1], l2_grid=[1e-3]).accuracy
    assert default["linear_l2"] in (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
    assert run_probes(*splits, ProbeSettings(("linear",), linear_l2_grid=(0.001,)), cache_dir=tmp_path) == weak
    assert len(probe_calls) == 3


@pytest.mark.parametrize("grid", [[], [0.0], [1e-2, -1.0], ["strong"]])
def test_a_bad_linear_l2_grid_is_refused_in_a_config(grid):
    from eval.errors import ConfigError
    from eval.experiments.compare import probe_settings

    section = {"probes": ["linear"], "knn_k": 200, "knn_temperature": 0.1, "linear_l2_grid": grid}
    with pytest.raises(ConfigError, match="compare: linear_l2_grid must be a list of one or more weight decays"):
        probe_settings(section, 0, "compare")
