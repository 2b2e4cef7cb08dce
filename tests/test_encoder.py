"""TimmEncoder: CNNs and ViTs by name, one DIM step each, frozen probe features, clear refusals."""

import pytest
import torch

from dim_ssl import DIMHead, TimmEncoder

MODELS = [
    ("resnet18", {}, (128, 4)),
    ("mobilenetv3_small_100", {}, (24, 4)),
    ("convnext_atto", {}, (80, 4)),
    ("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 4}, (192, 8)),
]


@pytest.mark.parametrize("name,kwargs,expected", MODELS, ids=[m[0] for m in MODELS])
def test_one_dim_step_trains_the_backbone(name, kwargs, expected):
    torch.manual_seed(0)
    encoder = TimmEncoder(name, global_dim=16, in_chans=1, **kwargs)
    channels, width = expected
    assert encoder.feature_channels == channels
    head = DIMHead(encoder.feature_channels, encoder.global_dim, hidden_dim=32, embed_dim=32, alpha=0.5)
    optimizer = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=1e-4)
    feature_map, y = encoder(torch.randn(4, 1, 32, 32))
    assert feature_map.shape == (4, channels, width, width)
    assert y.shape == (4, 16)
    assert (feature_map >= 0).all()  # post-ReLU, as the paper prescribes
    out = head(feature_map, y)
    assert torch.isfinite(out.loss)
    optimizer.zero_grad()
    out.loss.backward()
    first_layer = next(p for p in encoder.backbone.parameters() if p.dim() > 1)
    assert first_layer.grad is not None and first_layer.grad.abs().sum() > 0
    before = first_layer.detach().clone()
    optimizer.step()
    assert not torch.equal(before, first_layer)


def test_vit_prefix_tokens_are_dropped_and_patches_form_a_grid():
    encoder = TimmEncoder("vit_tiny_patch16_224", global_dim=8, in_chans=3, img_size=32, patch_size=8)
    feature_map, _ = encoder(torch.randn(2, 3, 32, 32))
    assert feature_map.shape[-2:] == (4, 4)  # 32 / 8 patches on a side, no class token


def test_features_at_every_position_are_frozen_and_consistent():
    torch.manual_seed(0)
    encoder = TimmEncoder("resnet18", global_dim=16, in_chans=1).eval()
    x = torch.randn(3, 1, 32, 32)
    feature_map, y = encoder(x)
    conv = encoder.features(x, "conv")
    assert conv.shape == (3, 128 * 4 * 4) and not conv.requires_grad
    assert torch.allclose(conv, feature_map.flatten(1))
    assert torch.allclose(encoder.features(x, "y"), y)
    assert encoder.features(x, "fc").shape == (3, 1024)
    assert encoder.features(x, "pool").shape == (3, 512)
    with pytest.raises(ValueError, match="unknown feature position 'logits'"):
        encoder.features(x, "logits")


def test_feature_stage_is_settable():
    encoder = TimmEncoder("resnet18", global_dim=8, in_chans=1, feature_stage=1)
    assert encoder.feature_channels == 64
    assert encoder(torch.randn(2, 1, 32, 32))[0].shape == (2, 64, 8, 8)
    with pytest.raises(ValueError, match="feature_stage=9 does not exist"):
        TimmEncoder("resnet18", feature_stage=9)


def test_unknown_model_name_is_refused_with_suggestions():
    with pytest.raises(ValueError, match=r"unknown timm model 'resnet19'.*did you mean"):
        TimmEncoder("resnet19")


def test_model_without_a_big_enough_map_is_refused():
    with pytest.raises(ValueError, match="no stage of vit_tiny_patch16_224 gives a feature map of at least 4x4"):
        TimmEncoder("vit_tiny_patch16_224", img_size=32)  # patch 16 -> 2x2 grid


def test_model_without_intermediate_features_is_refused(monkeypatch):
    import timm

    real_create = timm.create_model

    def create_without_intermediates(*args, **kwargs):
        model = real_create(*args, **kwargs)
        model.feature_info = []  # what a model without feature metadata looks like
        return model

    monkeypatch.setattr(timm, "create_model", create_without_intermediates)
    with pytest.raises(ValueError, match="cannot give an intermediate feature map"):
        TimmEncoder("resnet18")


def test_wrong_input_channels_are_refused():
    encoder = TimmEncoder("resnet18", in_chans=1)
    with pytest.raises(ValueError, match=r"expected images of shape \(N, 1, H, W\); got \(2, 3, 32, 32\)"):
        encoder(torch.randn(2, 3, 32, 32))


def test_encode_with_adds_other_stages_maps_from_the_same_pass():
    torch.manual_seed(0)
    encoder = TimmEncoder("test_resnet", global_dim=8, in_chans=1, input_size=32).eval()
    x = torch.randn(2, 1, 32, 32)
    stage = encoder.feature_stage
    encoded, maps = encoder.encode_with(x, [stage, 0])  # the local stage itself, and the first
    plain = encoder.encode(x)
    assert all(torch.equal(a, b) for a, b in zip(encoded, plain))
    assert torch.equal(maps[0], plain.feature_map)
    assert maps[1].shape[1] == encoder.stage_channels(0) and maps[1].shape[-1] > plain.feature_map.shape[-1]
    assert (maps[1] >= 0).all()  # post-ReLU, as the local map
    with pytest.raises(ValueError, match="has stages 0.."):
        encoder.encode_with(x, [len(encoder.backbone.feature_info)])
