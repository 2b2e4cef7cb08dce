"""Checkpoints: weights-only loading, clear errors for damaged or foreign files, backbone export."""

from __future__ import annotations

import json
import os

import pytest
import timm
import torch
from pretrain_helpers import QUICKSTART, TINY

import dim_ssl
from eval.cli import main
from eval.errors import CheckpointError, ConfigError
from eval.methods.registry import build_method
from eval.training.checkpoint import check_compatible, export_backbone, load_checkpoint, model_from_checkpoint
from eval.training.config import resolve_config
from eval.training.datamodule import PretrainDataModule
from eval.training.pretrain import pretrain


def _train(folder, *overrides):
    config = resolve_config(QUICKSTART, [*TINY, *overrides, f"output_dir={folder}"])
    pretrain(config, echo=lambda message: None)
    return folder / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def timm_checkpoint(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("timm_run"))


@pytest.fixture(scope="module")
def paper_checkpoint(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("paper_run"), "encoder.name=paper", "encoder.hidden_dim=64")


def test_checkpoints_load_weights_only_and_carry_the_run_config(timm_checkpoint):
    raw = torch.load(timm_checkpoint, map_location="cpu", weights_only=True)  # nothing but plain data
    checkpoint = load_checkpoint(timm_checkpoint)
    assert raw.keys() == checkpoint.keys()
    meta = checkpoint["dim_ssl"]
    assert meta["config"]["encoder"]["name"] == "test_resnet"
    assert meta["encoder"] == {
        "kind": "timm",
        "model_name": "test_resnet",
        "in_chans": 1,
        "timm_kwargs": {"pretrained": False},
        "small_input": False,
    }
    resume_state = checkpoint["callbacks"]["ExactResume"]
    assert isinstance(resume_state["rng"]["torch"], torch.Tensor)  # RNG states as tensors
    assert (resume_state["epoch"], resume_state["batch"]) == (1, 0)  # saved at the end of epoch 0


def test_export_gives_a_plain_timm_state_dict_with_the_same_outputs(timm_checkpoint, tmp_path):
    out = tmp_path / "backbone.pth"
    description = export_backbone(timm_checkpoint, out)
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved == description and saved["model_name"] == "test_resnet"
    assert saved["create_model_kwargs"] == {"num_classes": 0, "in_chans": 1, "pretrained": False}

    backbone = timm.create_model(saved["model_name"], **saved["create_model_kwargs"])
    backbone.load_state_dict(torch.load(out, weights_only=True), strict=True)
    backbone.eval()
    encoder = model_from_checkpoint(timm_checkpoint).encoder
    x = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(backbone(x), encoder.backbone(x))
        assert torch.allclose(backbone(x), encoder.features(x, "pool"))


def test_the_paper_encoder_exports_its_own_state_dict_and_says_so(paper_checkpoint, tmp_path, capsys):
    out = tmp_path / "paper.pth"
    assert main(["export", str(paper_checkpoint), str(out)]) == 0
    assert "not a timm model" in capsys.readouterr().out
    description = json.loads(out.with_suffix(".json").read_text())
    assert description["format"] == "dim_ssl.PaperEncoder"
    encoder = dim_ssl.PaperEncoder(**description["kwargs"])
    encoder.load_state_dict(torch.load(out, weights_only=True), strict=True)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(encoder.eval()(x)[1], model_from_checkpoint(paper_checkpoint).encoder(x)[1])


class NotPlainData:
    """Pickled by reference to its class: weights-only loading refuses it."""


@pytest.mark.parametrize(
    "damage", ["truncated", "random_bytes", "empty", "foreign_state_dict", "pickled_object", "missing"]
)
def test_damaged_or_foreign_files_are_a_clear_error(damage, timm_checkpoint, tmp_path):
    path = tmp_path / "file.ckpt"
    if damage == "truncated":
        data = timm_checkpoint.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif damage == "random_bytes":
        path.write_bytes(os.urandom(4096))
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "foreign_state_dict":
        torch.save({"weight": torch.zeros(3)}, path)  # a torch file, but not one of ours
    elif damage == "pickled_object":
        torch.save({"state_dict": {}, "dim_ssl": NotPlainData()}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message
    assert ("not found" if damage == "missing" else "is not a dim-ssl checkpoint") in message
    if damage == "pickled_object":
        assert "NotPlainData" in message and "not loaded" in message  # refused, never executed
    elif damage != "missing" and damage != "foreign_state_dict":
        assert "cannot be read as a torch file" in message or "empty or cut short" in message


def test_export_of_a_damaged_file_is_a_clean_command_line_error(tmp_path, capsys):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(os.urandom(1000))
    assert main(["export", str(bad), str(tmp_path / "out.pth")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dim-ssl export: error: file") and "is not a dim-ssl checkpoint" in err
    assert "Traceback" not in err and not (tmp_path / "out.pth").exists()


def test_the_pretrained_module_comes_back_from_a_checkpoint_alone(timm_checkpoint):
    model = model_from_checkpoint(timm_checkpoint)
    assert not model.training and model.feature_positions == ("conv", "fc", "y", "pool")
    weights = load_checkpoint(timm_checkpoint)["state_dict"]
    assert torch.equal(model.encoder.backbone.conv1[0].weight, weights["encoder.backbone.conv1.0.weight"])
    assert model.features(torch.randn(2, 1, 32, 32), "pool").shape == (2, model.encoder.pooled_dim)


def test_a_checkpoint_of_another_model_is_refused_before_training(timm_checkpoint):
    config = resolve_config(QUICKSTART, [*TINY, "encoder.name=paper"])
    other = build_method(config, PretrainDataModule(config["data"], 0).info())
    with pytest.raises(CheckpointError, match="different model"):
        check_compatible(load_checkpoint(timm_checkpoint), other, timm_checkpoint)


def test_a_small_input_run_comes_back_and_exports_a_backbone_that_loads_with_its_stem(tmp_path, capsys):
    checkpoint = _train(tmp_path / "small", "encoder.small_input=true")
    model = model_from_checkpoint(checkpoint)
    assert model.encoder.small_input and load_checkpoint(checkpoint)["dim_ssl"]["encoder"]["small_input"] is True
    # The small stem keeps the side: the default local map of a 32x32 input is 8x8, not 4x4.
    plain = model_from_checkpoint(_train(tmp_path / "plain"))
    assert (model.encoder.feature_map_size(32), plain.encoder.feature_map_size(32)) == (8, 4)

    out = tmp_path / "small.pth"
    assert main(["export", str(checkpoint), str(out)]) == 0
    assert "small-image stem" in capsys.readouterr().out
    description = json.loads(out.with_suffix(".json").read_text())
    assert description["small_input"] is True
    backbone = dim_ssl.TimmEncoder("test_resnet", in_chans=1, small_input=True, pretrained=False).backbone
    backbone.load_state_dict(torch.load(out, weights_only=True), strict=True)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(backbone.eval()(x), model.encoder.backbone(x))
    # timm's own model keeps its ImageNet stem: test_resnet's deep stem takes the weights, but
    # computes something else with them. Hence the description's own way to load.
    stock = timm.create_model("test_resnet", **description["create_model_kwargs"])
    stock.load_state_dict(torch.load(out, weights_only=True), strict=True)
    with torch.no_grad():
        assert not torch.allclose(
            stock.eval().forward_features(x).mean((2, 3)), backbone.forward_features(x).mean((2, 3))
        )


def test_the_paper_encoder_refuses_a_small_input_stem():
    with pytest.raises(ConfigError, match="small_input"):
        config = resolve_config(QUICKSTART, [*TINY, "encoder.name=paper", "encoder.small_input=true"])
        build_method(config, PretrainDataModule(config["data"], 0).info())
