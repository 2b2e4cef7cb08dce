"""TimmEncoder(..., small_input=True): a 3x3 stride-1 stem without max-pool for timm's ResNets at 32x32."""

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from dim_ssl import DIMHead, TimmEncoder

# layer1..layer4 map widths at 32x32: the ImageNet stem divides the side by 4 before layer1.
SMALL_MAPS = [32, 16, 8, 4]
PLAIN_MAPS = [8, 4, 2, 1]
RESNETS = ["resnet18", "resnet34", "resnet18d", "resnet10t"]


def stage_widths(encoder, size=32):
    """The measured width of every feature_info stage (act1, layer1..layer4) for one size x size image."""
    x = torch.randn(1, encoder.in_chans, size, size)
    with torch.no_grad():
        maps = encoder.backbone.forward_intermediates(x, intermediates_only=True)
    return [m.shape[-1] for m in maps]


@pytest.mark.parametrize("name", RESNETS)
def test_stage_maps_reductions_and_default_stage_follow_the_small_stem(name):
    small = TimmEncoder(name, global_dim=8, in_chans=3, small_input=True).eval()
    plain = TimmEncoder(name, global_dim=8, in_chans=3).eval()

    assert stage_widths(small) == [32, *SMALL_MAPS]  # act1 is no longer halved
    assert stage_widths(plain) == [16, *PLAIN_MAPS]
    # feature_info tells the truth, so every number derived from it does too.
    assert [info["reduction"] for info in small.backbone.feature_info] == [1, 1, 2, 4, 8]
    assert [info["reduction"] for info in plain.backbone.feature_info] == [2, 4, 8, 16, 32]
    assert [32 // info["reduction"] for info in small.backbone.feature_info] == stage_widths(small)

    # Default stage: the deepest before the last with a map of at least 4x4.
    assert small.backbone.feature_info[small.feature_stage]["module"] == "layer3"
    assert (small.feature_reduction, small.feature_map_size(32)) == (4, 8)
    assert plain.backbone.feature_info[plain.feature_stage]["module"] == "layer2"
    assert (plain.feature_reduction, plain.feature_map_size(32)) == (8, 4)


@pytest.mark.parametrize("name", ["resnet18", "resnet18d"])
def test_encode_pool_and_features_at_every_position_at_32x32(name):
    torch.manual_seed(0)
    encoder = TimmEncoder(name, global_dim=16, in_chans=3, small_input=True).eval()
    x = torch.randn(3, 3, 32, 32)
    out = encoder.encode(x)
    assert out.feature_map.shape == (3, 256, 8, 8)  # layer3 of a BasicBlock ResNet
    assert encoder.feature_channels == 256
    assert encoder.feature_map_size(32) == out.feature_map.shape[-1]
    assert (out.feature_map >= 0).all()
    assert out.pooled.shape == (3, 512) and out.hidden.shape == (3, 1024) and out.y.shape == (3, 16)
    assert torch.allclose(encoder.pool(x), out.pooled, atol=1e-6)
    expected = {"conv": 256 * 8 * 8, "fc": 1024, "y": 16, "pool": 512}
    assert set(expected) == set(encoder.feature_positions)
    for position, width in expected.items():
        features = encoder.features(x, position)
        assert features.shape == (3, width) and not features.requires_grad
        assert torch.allclose(features, out.at(position), atol=1e-6)


def test_stem_is_a_3x3_stride_1_conv_without_pool():
    plain_stem = TimmEncoder("resnet18", in_chans=3, small_input=True).backbone
    conv = plain_stem.conv1
    assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3)
    assert conv.stride == (1, 1) and conv.padding == (1, 1) and conv.bias is None
    assert (conv.in_channels, conv.out_channels) == (3, 64)
    assert isinstance(plain_stem.maxpool, nn.Identity)
    deep_stem = TimmEncoder("resnet18d", in_chans=3, small_input=True).backbone
    assert [m.stride for m in deep_stem.conv1 if isinstance(m, nn.Conv2d)] == [(1, 1)] * 3
    assert isinstance(deep_stem.maxpool, nn.Identity)
    # A resnet*d's average-pool downsample in later stages is untouched.
    assert isinstance(deep_stem.layer2[0].downsample[0], nn.AvgPool2d)


def test_deep_stem_keeps_its_weights_and_state_dict_keys():
    torch.manual_seed(0)
    small = TimmEncoder("resnet18d", in_chans=3, small_input=True)
    torch.manual_seed(0)
    plain = TimmEncoder("resnet18d", in_chans=3)
    small_state, plain_state = small.state_dict(), plain.state_dict()
    assert small_state.keys() == plain_state.keys()
    assert torch.equal(small_state["backbone.conv1.0.weight"], plain_state["backbone.conv1.0.weight"])


@pytest.mark.parametrize("name", ["resnet18", "resnet10t"])
def test_in_chans_1_works(name):
    encoder = TimmEncoder(name, global_dim=8, in_chans=1, small_input=True)
    stem = encoder.backbone.conv1
    first = stem[0] if isinstance(stem, nn.Sequential) else stem
    assert first.in_channels == 1 and first.stride == (1, 1)
    feature_map, y = encoder(torch.randn(2, 1, 32, 32))
    assert feature_map.shape[-2:] == (8, 8) and y.shape == (2, 8)
    with pytest.raises(ValueError, match=r"expected images of shape \(N, 1, H, W\)"):
        encoder(torch.randn(2, 3, 32, 32))


def test_state_dict_loads_strictly_into_a_rebuilt_small_input_encoder():
    torch.manual_seed(0)
    encoder = TimmEncoder("resnet18", global_dim=8, in_chans=1, small_input=True, drop_path_rate=0.0)
    assert encoder.small_input is True
    assert "small_input" not in encoder.timm_kwargs and encoder.timm_kwargs["drop_path_rate"] == 0.0
    # What a checkpoint records is enough to rebuild the same module.
    rebuilt = TimmEncoder(
        encoder.model_name,
        global_dim=8,
        in_chans=encoder.in_chans,
        small_input=encoder.small_input,
        **encoder.timm_kwargs,
    )
    rebuilt.load_state_dict(encoder.state_dict(), strict=True)
    x = torch.randn(2, 1, 32, 32)
    encoder.eval(), rebuilt.eval()
    assert torch.equal(encoder.features(x, "conv"), rebuilt.features(x, "conv"))
    # ...and it takes the flag: the 3x3 stem does not fit the 7x7 one.
    with pytest.raises(RuntimeError, match="conv1.weight"):
        TimmEncoder("resnet18", global_dim=8, in_chans=1).load_state_dict(encoder.state_dict(), strict=True)


def test_dim_trains_a_small_input_resnet18():
    torch.manual_seed(0)
    encoder = TimmEncoder("resnet18", global_dim=16, in_chans=1, small_input=True)
    head = DIMHead(encoder.feature_channels, encoder.global_dim)
    optimizer = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=1e-3)
    x = torch.randn(8, 1, 32, 32)
    stem_before = encoder.backbone.conv1.weight.detach().clone()
    losses = []
    for _ in range(5):
        feature_map, y = encoder(x)
        assert feature_map.shape == (8, 256, 8, 8)
        loss = head(feature_map, y).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] != losses[0]
    assert not torch.equal(stem_before, encoder.backbone.conv1.weight)


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("convnext_atto", {}),
        ("efficientnet_b0", {}),
        ("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 4}),
    ],
    ids=["convnext", "efficientnet", "vit"],
)
def test_families_it_cannot_adapt_are_refused_naming_the_ones_it_can(name, kwargs):
    with pytest.raises(ValueError, match=rf"small_input=True cannot adapt the stem of {name}") as error:
        TimmEncoder(name, small_input=True, **kwargs)
    message = str(error.value)
    assert "ResNet family" in message and "resnet*d" in message and "resnet10t" in message


@pytest.mark.parametrize("name", ["resnetblur18", "resnet26d"])
def test_other_stem_pools_and_bottlenecks_are_adapted(name):
    encoder = TimmEncoder(name, global_dim=8, in_chans=3, small_input=True).eval()
    assert isinstance(encoder.backbone.maxpool, nn.Identity)
    assert stage_widths(encoder) == [32, *SMALL_MAPS]
    assert encoder(torch.randn(1, 3, 32, 32))[0].shape[-2:] == (8, 8)


def test_small_stem_costs_about_16x_the_flops_at_the_same_input_size():
    flops = {}
    for small in (False, True):
        backbone = TimmEncoder("resnet18", in_chans=3, small_input=small).backbone.eval()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            backbone.forward_features(torch.randn(1, 3, 32, 32))
        flops[small] = counter.get_total_flops()
    assert flops[False] == pytest.approx(74.0e6, rel=0.01)  # the numbers the docstring gives
    assert flops[True] == pytest.approx(1.111e9, rel=0.01)
    assert 14.9 < flops[True] / flops[False] < 15.1
