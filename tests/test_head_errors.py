"""Every bad input to DIMHead gets an error that says what was expected and what was given."""

import pytest
import torch

from dim_ssl import DIMHead


@pytest.fixture(scope="module")
def head() -> DIMHead:
    return DIMHead(local_channels=8, global_dim=4, hidden_dim=16, embed_dim=8)


def test_mismatched_channels(head):
    with pytest.raises(ValueError, match="feature map has 7 channels; the head was built for 8"):
        head(torch.rand(4, 7, 3, 3), torch.randn(4, 4))


def test_mismatched_global_size(head):
    with pytest.raises(ValueError, match="y has size 5; the head was built for global_dim=4"):
        head(torch.rand(4, 8, 3, 3), torch.randn(4, 5))


def test_mismatched_batch_sizes(head):
    with pytest.raises(ValueError, match="feature_map holds 4 images but y holds 3"):
        head(torch.rand(4, 8, 3, 3), torch.randn(3, 4))


def test_batch_of_one(head):
    with pytest.raises(ValueError, match="a batch of one image has no in-batch negatives"):
        head(torch.rand(1, 8, 3, 3), torch.randn(1, 4))


def test_feature_map_not_4d(head):
    with pytest.raises(ValueError, match=r"feature_map must be 4-D \(N, C, M, M\); got shape \(4, 8, 9\)"):
        head(torch.rand(4, 8, 9), torch.randn(4, 4))


def test_y_not_2d(head):
    with pytest.raises(ValueError, match=r"y must be 2-D \(N, D\)"):
        head(torch.rand(4, 8, 3, 3), torch.randn(4, 4, 1))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_in_inputs(head, bad):
    feature_map = torch.rand(4, 8, 3, 3)
    feature_map[1, 2, 0, 0] = bad
    with pytest.raises(ValueError, match="feature_map contains NaN or inf"):
        head(feature_map, torch.randn(4, 4))
    y = torch.randn(4, 4)
    y[0, 0] = bad
    with pytest.raises(ValueError, match="y contains NaN or inf"):
        head(torch.rand(4, 8, 3, 3), y)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"estimator": "mine"}, "unknown estimator 'mine'; expected one of jsd, infonce, dv"),
        ({"critic": "bilinear"}, "unknown critic 'bilinear'; expected one of dot, concat"),
        ({"negatives": "memory_bank"}, "unknown negatives mode 'memory_bank'"),
        ({"prior": "beta"}, "unknown prior 'beta'"),
        ({"critic": "concat", "negatives": "all"}, 'use negatives="shuffle" with it'),
        ({"alpha": -1.0}, "alpha must be a finite weight >= 0; got -1.0"),
        ({"alpha": 0.0, "beta": 0.0, "gamma": 0.0}, "the head has no objective"),
    ],
)
def test_bad_constructor_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        DIMHead(8, 4, **kwargs)


def test_finite_inputs_whose_sum_overflows_are_accepted(head):
    # The finiteness check sums each input first; an overflowing sum of finite values must not
    # be mistaken for a NaN or inf.
    feature_map = torch.full((4, 8, 3, 3), 3e38)
    head._check(feature_map, torch.randn(4, 4))
