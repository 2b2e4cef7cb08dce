"""SimCLR, MoCo and BYOL as registered methods: ``dim-ssl pretrain CONFIG method.name=simclr`` / ``moco`` / ``byol``."""

from __future__ import annotations

import pytest
from pretrain_helpers import QUICKSTART, TINY, read_summary

from eval.cli import main
from eval.errors import ConfigError
from eval.methods import BYOL, MoCo, SimCLR
from eval.training.checkpoint import model_from_checkpoint
from eval.training.config import resolve_config


@pytest.mark.parametrize("name, module", [("simclr", SimCLR), ("moco", MoCo), ("byol", BYOL)])
def test_pretrain_trains_a_registered_baseline_through_the_command_line(tmp_path, capsys, name, module):
    out = tmp_path / name
    # quickstart.yaml is a DIM configuration: switching method.name drops its DIM-only keys.
    assert main(["pretrain", QUICKSTART, f"method.name={name}", *TINY, f"output_dir={out}"]) == 0
    assert "summary: loss" in capsys.readouterr().out
    summary = read_summary(out)
    assert summary["method"] == name and summary["steps"] == 64 // 16
    assert summary["final_loss"] is not None
    if name != "byol":
        assert summary["final_loss"] > 0  # NT-Xent / InfoNCE (BYOL's negative cosine is below 0)
    # Every method has the online probe and the kNN check now (the base class runs both).
    assert summary["online_acc"] is not None and summary["knn_acc"] is not None
    assert summary["images_per_s"] > 0
    model = model_from_checkpoint(out / "checkpoints" / "last.ckpt")  # weights-only, rebuilt from its config
    assert isinstance(model, module) and model.batch_size == 16


def test_baseline_method_keys_are_checked_and_overridable():
    config = resolve_config(
        QUICKSTART, ["method.name=moco", "method.memory_bank_size=256", "method.transform={min_scale: 0.5}"]
    )
    assert config["method"]["memory_bank_size"] == 256 and config["method"]["transform"] == {"min_scale": 0.5}
    assert "head" not in config["method"]
    with pytest.raises(ConfigError, match="unknown config key 'method.temperatur'; did you mean 'method.temperature'"):
        resolve_config(QUICKSTART, ["method.name=simclr", "method.temperatur=0.1"])
    # BYOL has no temperature: the key is the other methods', not BYOL's.
    with pytest.raises(ConfigError, match="unknown config key 'method.temperature'"):
        resolve_config(QUICKSTART, ["method.name=byol", "method.temperature=0.1"])


def test_a_bad_view_option_is_a_clean_config_error(tmp_path, capsys):
    assert (
        main(
            [
                "pretrain",
                QUICKSTART,
                "method.name=simclr",
                "method.transform={no_such_option: 1}",
                *TINY,
                f"output_dir={tmp_path / 'a'}",
            ]
        )
        == 2
    )
    assert "method.transform of SimCLR" in capsys.readouterr().err


def test_monitor_best_knn_is_accepted_for_every_baseline_and_needs_the_check_every_epoch():
    # The kNN check is in the base class, so best.ckpt may be chosen by it for any method.
    for name in ("simclr", "moco", "byol"):
        config = resolve_config(QUICKSTART, [f"method.name={name}", "monitor.best=knn"])
        assert config["monitor"]["best"] == "knn"
    with pytest.raises(ConfigError, match="monitor.best=knn needs the kNN check every epoch"):
        resolve_config(QUICKSTART, ["method.name=simclr", "monitor.best=knn", "monitor.knn_every_n_epochs=2"])
