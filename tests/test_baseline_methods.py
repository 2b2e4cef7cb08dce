"""SimCLR and MoCo as registered methods: ``dim-ssl pretrain CONFIG method.name=simclr`` / ``moco``."""

from __future__ import annotations

import pytest

from eval.baselines import MoCoModule, SimCLRModule
from eval.checkpoint import model_from_checkpoint
from eval.cli import main
from eval.config import ConfigError, resolve_config
from pretrain_helpers import QUICKSTART, TINY, read_summary


@pytest.mark.parametrize("name, module", [("simclr", SimCLRModule), ("moco", MoCoModule)])
def test_pretrain_trains_a_registered_baseline_through_the_command_line(tmp_path, capsys, name, module):
    out = tmp_path / name
    # quickstart.yaml is a DIM configuration: switching method.name drops its DIM-only keys.
    assert main(["pretrain", QUICKSTART, f"method.name={name}", *TINY, f"output_dir={out}"]) == 0
    assert "summary: loss" in capsys.readouterr().out
    summary = read_summary(out)
    assert summary["method"] == name and summary["steps"] == 64 // 16
    assert summary["final_loss"] is not None and summary["final_loss"] > 0  # NT-Xent / InfoNCE
    assert summary["online_acc"] is not None and summary["images_per_s"] > 0
    model = model_from_checkpoint(out / "checkpoints" / "last.ckpt")  # weights-only, rebuilt from its config
    assert isinstance(model, module) and model.batch_size == 16


def test_baseline_method_keys_are_checked_and_overridable():
    config = resolve_config(QUICKSTART, ["method.name=moco", "method.memory_bank_size=256", "method.transform={min_scale: 0.5}"])
    assert config["method"]["memory_bank_size"] == 256 and config["method"]["transform"] == {"min_scale": 0.5}
    assert "head" not in config["method"]
    with pytest.raises(ConfigError, match="unknown config key 'method.temperatur'; did you mean 'method.temperature'"):
        resolve_config(QUICKSTART, ["method.name=simclr", "method.temperatur=0.1"])


def test_a_bad_view_option_or_knn_monitor_is_a_clean_config_error(tmp_path, capsys):
    assert main(["pretrain", QUICKSTART, "method.name=simclr", "method.transform={no_such_option: 1}", *TINY,
                 f"output_dir={tmp_path / 'a'}"]) == 2
    assert "method.transform of simclr" in capsys.readouterr().err
    assert main(["pretrain", QUICKSTART, "method.name=simclr", "monitor.best=knn", *TINY,
                 f"output_dir={tmp_path / 'b'}"]) == 2
    assert "monitor.best=knn needs DIM's kNN check" in capsys.readouterr().err
