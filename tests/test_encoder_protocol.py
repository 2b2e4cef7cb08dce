"""Both encoders satisfy dim_ssl.DIMEncoder: one pass gives every position, pool skips f, and
summary_parameters are exactly f's parameters."""

import pytest
import torch

import dim_ssl
from dim_ssl.encoder_protocol import FEATURE_POSITIONS

# The fields of EncoderOutput behind each feature position.
FIELDS = {"conv": "feature_map", "fc": "hidden", "y": "y", "pool": "pooled"}


def timm_resnet18() -> dim_ssl.TimmEncoder:
    return dim_ssl.TimmEncoder("resnet18", global_dim=16, in_chans=1, hidden_dim=64)


def paper_encoder() -> dim_ssl.PaperEncoder:
    return dim_ssl.PaperEncoder(global_dim=16, in_chans=1, hidden_dim=64)


ENCODERS = {"timm_resnet18": timm_resnet18, "paper": paper_encoder}


@pytest.fixture(params=list(ENCODERS), scope="module")
def encoder(request):
    torch.manual_seed(0)
    return ENCODERS[request.param]()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(1))


def test_every_position_has_a_field_of_the_output():
    assert set(FIELDS) == set(FEATURE_POSITIONS) == set(dim_ssl.FEATURE_POSITIONS)
    assert set(FIELDS.values()) == set(dim_ssl.EncoderOutput._fields)


def test_both_encoders_are_dim_encoders(encoder):
    assert isinstance(encoder, dim_ssl.DIMEncoder)
    assert encoder.feature_positions == FEATURE_POSITIONS
    assert encoder.in_chans == 1 and encoder.global_dim == 16


def test_something_without_pool_is_not_a_dim_encoder():
    # The protocol checks members: a module with forward and features alone is not one.
    class Partial(torch.nn.Module):
        in_chans, feature_channels, global_dim, pooled_dim = 1, 8, 4, 8
        feature_positions = FEATURE_POSITIONS

        def encode(self, x):
            raise AssertionError

        def features(self, x, position="pool"):
            raise AssertionError

    assert not isinstance(Partial(), dim_ssl.DIMEncoder)


def test_encode_agrees_with_forward_and_features_at_every_position(encoder, images):
    encoder.eval()
    out = encoder.encode(images)
    assert isinstance(out, dim_ssl.EncoderOutput)
    assert all(t.requires_grad for t in out)
    feature_map, y = encoder(images)
    torch.testing.assert_close(out.feature_map, feature_map)
    torch.testing.assert_close(out.y, y)
    assert out.feature_map.shape == (3, encoder.feature_channels, *out.feature_map.shape[2:])
    assert out.y.shape == (3, encoder.global_dim)
    for position in encoder.feature_positions:
        frozen = encoder.features(images, position)
        assert not frozen.requires_grad
        expected = getattr(out, FIELDS[position]).flatten(1)
        torch.testing.assert_close(frozen, expected, msg=position)
        torch.testing.assert_close(out.at(position), expected, msg=position)


def test_pool_equals_the_pooled_output_with_gradients(encoder, images):
    encoder.eval()
    pooled = encoder.pool(images)
    assert pooled.grad_fn is not None
    torch.testing.assert_close(pooled, encoder.encode(images).pooled)


def test_pooled_dim_is_the_width_produced(encoder, images):
    encoder.eval()
    assert encoder.pool(images).shape == (3, encoder.pooled_dim)
    assert encoder.encode(images).pooled.shape == (3, encoder.pooled_dim)
    assert encoder.features(images, "pool").shape == (3, encoder.pooled_dim)


def test_the_paper_encoders_pooled_dim_follows_the_image_size():
    assert dim_ssl.PaperEncoder().pooled_dim == 256 * 4 * 4
    assert dim_ssl.PaperEncoder(image_size=64).pooled_dim == 256 * 8 * 8


def test_summary_parameters_are_those_only_y_reaches(encoder, images):
    # f's parameters: reached by the gradient of y, not by that of the pooled features.
    encoder.train()
    parameters = dict(encoder.named_parameters())

    def reached(value: torch.Tensor) -> set[str]:
        grads = torch.autograd.grad(value, list(parameters.values()), allow_unused=True)
        return {name for name, grad in zip(parameters, grads) if grad is not None}

    from_y = reached(encoder.encode(images).y.sum())
    from_pool = reached(encoder.pool(images).sum())
    summary = {name for name, p in parameters.items() if any(p is q for q in encoder.summary_parameters())}
    assert from_pool, "pool reaches no parameter"
    assert summary == from_y - from_pool
    assert len(list(encoder.summary_parameters())) == len(summary)  # no duplicates


def test_pool_refuses_images_of_the_wrong_shape(encoder):
    with pytest.raises(ValueError, match=r"expected (images|input) of shape \(N, 1, "):
        encoder.pool(torch.randn(2, 3, 32, 32))


def test_unknown_position_lists_the_positions(encoder, images):
    with pytest.raises(ValueError, match="unknown feature position 'logits'; expected one of conv, fc, y, pool"):
        encoder.features(images, "logits")


def test_a_method_names_what_a_users_encoder_lacks():
    from torch import nn

    from eval.methods import DIM

    class TVEncoder(nn.Module):  # a user's own encoder: a forward and two sizes, nothing more
        feature_channels, global_dim = 8, 4

        def forward(self, x):
            return x, x

    with pytest.raises(ValueError) as caught:
        DIM(TVEncoder(), num_classes=10, image_shape=(1, 32, 32))
    message = str(caught.value)
    missing = "in_chans, pooled_dim, feature_positions, encode, pool, features, summary_parameters"
    assert f"TVEncoder lacks {missing}" in message
    assert "feature_channels" not in message.split("lacks")[1]  # what it has is not listed
