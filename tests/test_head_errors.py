"""Every bad input to DIMHead gets an error that says what was expected and what was given."""

import re

import pytest
import torch

from dim_ssl import DIMHead
from dim_ssl.critics import CRITICS, CriticShape, GlobalDotCritic, LocalConcatCritic, LocalDotCritic
from dim_ssl.estimators import ESTIMATORS
from dim_ssl.negatives import NEGATIVE_MODES


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
        ({"estimator": "mine"}, f"unknown estimator 'mine'; expected one of {', '.join(ESTIMATORS)}"),
        ({"critic": "bilinear"}, f"unknown critic 'bilinear'; expected one of {', '.join(CRITICS)}"),
        (
            {"negatives": "memory_bank"},
            f"unknown negatives mode 'memory_bank'; expected one of {', '.join(NEGATIVE_MODES)}",
        ),
        ({"prior": "beta"}, "unknown prior 'beta'"),
        ({"alpha": -1.0}, "alpha must be a finite weight >= 0; got -1.0"),
        ({"alpha": 0.0, "beta": 0.0, "gamma": 0.0}, "the head has no objective"),
    ],
)
def test_bad_constructor_arguments(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        DIMHead(8, 4, **kwargs)


# Every negatives mode a registered critic shape cannot score.
UNSUPPORTED = [
    (critic, mode) for critic, shape in CRITICS.items() for mode in NEGATIVE_MODES if mode not in shape.negatives
]


@pytest.mark.parametrize("critic,negatives", UNSUPPORTED)
def test_a_negatives_mode_the_critic_cannot_score_names_the_ones_it_can(critic, negatives):
    shape = CRITICS[critic]
    with pytest.raises(ValueError, match=re.escape(f'critic="{critic}"')) as error:
        DIMHead(8, 4, critic=critic, negatives=negatives)
    assert all(f'negatives="{mode}"' in str(error.value) for mode in shape.negatives)


def test_concat_with_all_pairs_says_why_and_what_to_use():
    with pytest.raises(ValueError) as error:
        DIMHead(8, 4, critic="concat", negatives="all")
    assert str(error.value) == (
        'critic="concat" scores one pair per forward, so all pairs would cost N forwards: '
        'use negatives="shuffle" with it, or critic="dot" for all-pairs negatives'
    )


def test_critic_shapes_refuse_modes_they_cannot_score():
    with pytest.raises(ValueError, match='negatives="all" needs DotCritic subclasses'):
        CriticShape(LocalConcatCritic, GlobalDotCritic, negatives=("all", "shuffle"))
    with pytest.raises(ValueError, match="negatives modes from all, shuffle; got \\('memory_bank',\\)"):
        CriticShape(LocalDotCritic, GlobalDotCritic, negatives=("memory_bank",))
    with pytest.raises(ValueError, match="negatives modes from all, shuffle; got \\(\\)"):
        CriticShape(LocalDotCritic, GlobalDotCritic, negatives=())


def test_finite_inputs_whose_sum_overflows_are_accepted(head):
    # The finiteness check sums each input first; an overflowing sum of finite values must not
    # be mistaken for a NaN or inf.
    feature_map = torch.full((4, 8, 3, 3), 3e38)
    head._check(feature_map, torch.randn(4, 4))
