"""The DIM paper's 32x32 encoder: shapes, feature positions, gradients, input checks."""

from __future__ import annotations

import pytest
import torch

from dim_ssl.paper_encoder import PaperEncoder


@pytest.fixture
def encoder():
    torch.manual_seed(0)
    return PaperEncoder(global_dim=64, in_chans=3)


def test_forward_gives_the_8x8x128_local_map_and_y(encoder):
    feature_map, y = encoder(torch.randn(4, 3, 32, 32))
    assert feature_map.shape == (4, 128, 8, 8)
    assert y.shape == (4, 64)
    assert (feature_map >= 0).all()  # taken after the ReLU
    assert encoder.feature_channels == 128 and encoder.global_dim == 64


def test_layers_follow_the_paper():
    encoder = PaperEncoder()
    convs = [m for m in encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256]
    assert all(c.kernel_size == (4, 4) and c.stride == (2, 2) and c.padding == (1, 1) for c in convs)
    assert encoder.fc[1].in_features == 256 * 4 * 4 and encoder.fc[1].out_features == 1024
    assert encoder.to_y.out_features == 64


@pytest.mark.parametrize("position,width", [("conv", 128 * 8 * 8), ("pool", 256 * 4 * 4), ("fc", 1024), ("y", 64)])
def test_feature_positions_have_their_widths_and_no_gradient(encoder, position, width):
    encoder.eval()
    features = encoder.features(torch.randn(3, 3, 32, 32), position=position)
    assert features.shape == (3, width)
    assert not features.requires_grad


def test_features_y_matches_forward_in_eval_mode(encoder):
    encoder.eval()
    x = torch.randn(2, 3, 32, 32)
    feature_map, y = encoder(x)
    assert torch.allclose(encoder.features(x, "y"), y)
    assert torch.allclose(encoder.features(x, "conv"), feature_map.flatten(1))


def test_unknown_feature_position_lists_the_valid_ones(encoder):
    with pytest.raises(ValueError, match="'avgpool'; expected one of conv, fc, y, pool"):
        encoder.features(torch.randn(2, 3, 32, 32), position="avgpool")


@pytest.mark.parametrize("side", ["feature_map", "y"])
def test_gradient_reaches_the_first_conv(encoder, side):
    feature_map, y = encoder(torch.randn(4, 3, 32, 32))
    loss = (feature_map if side == "feature_map" else y).pow(2).mean()
    loss.backward()
    first_conv = encoder.local[0][0]
    assert first_conv.weight.grad is not None
    assert first_conv.weight.grad.abs().sum() > 0


def test_wrong_input_shape_says_expected_and_given(encoder):
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 3, 32, 32\); got \(2, 1, 32, 32\)"):
        encoder(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match="got \\(3, 32, 32\\)"):
        encoder.features(torch.randn(3, 32, 32))


def test_other_sizes_and_channels():
    encoder = PaperEncoder(global_dim=16, in_chans=1, image_size=64, hidden_dim=32)
    feature_map, y = encoder(torch.randn(2, 1, 64, 64))
    assert feature_map.shape == (2, 128, 16, 16) and y.shape == (2, 16)
    assert encoder.features(torch.randn(2, 1, 64, 64), "pool").shape == (2, 256 * 8 * 8)
    with pytest.raises(ValueError, match="multiple of 8"):
        PaperEncoder(image_size=28)
    with pytest.raises(ValueError, match="global_dim must be positive"):
        PaperEncoder(global_dim=0)
