"""Every bad input to DIMHead gets an error that says what was expected and what was given."""

import re
import warnings

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


@pytest.mark.parametrize("name", ["feature_map", "y"])
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.uint8])
def test_non_floating_inputs_are_refused_by_name(head, name, dtype):
    # y.long() used to reach the critic and fail with "value cannot be converted to type int64_t".
    inputs = {"feature_map": torch.rand(4, 8, 3, 3), "y": torch.randn(4, 4)}
    inputs[name] = inputs[name].to(dtype)
    with pytest.raises(ValueError, match=f"{name} must be a floating-point tensor .*; got {dtype}"):
        head(**inputs)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_are_cast_up_to_a_float32_head(dtype):
    # head(fm.half(), y.half()) used to fail with "mat1 and mat2 must have the same dtype". Every
    # half-precision value is a float32 value, so the head casts them up: the same numbers as
    # float32 inputs holding those values, and the gradient reaches the inputs in their dtype.
    torch.manual_seed(0)
    head = DIMHead(8, 4, estimator="infonce", alpha=0.5, hidden_dim=16, embed_dim=8)
    feature_map = torch.rand(6, 8, 3, 3).to(dtype).requires_grad_(True)
    y = torch.randn(6, 4).to(dtype).requires_grad_(True)
    torch.manual_seed(1)
    out = head(feature_map, y)
    torch.manual_seed(1)
    reference = head(feature_map.detach().float(), y.detach().float())
    for name in ("loss", "local_mi", "global_mi", "prior_loss"):
        assert getattr(out, name).dtype == torch.float32
        assert getattr(out, name).item() == pytest.approx(getattr(reference, name).item(), abs=1e-6), name
    out.loss.backward()
    assert feature_map.grad.dtype == dtype and y.grad.dtype == dtype
    assert torch.isfinite(feature_map.grad.float()).all() and y.grad.float().abs().sum() > 0


def test_float64_inputs_to_a_float32_head_say_how_to_run(head):
    # Cutting float64 down to float32 would lose precision silently: refused, with the ways out.
    with pytest.raises(ValueError) as error:
        head(torch.rand(4, 8, 3, 3, dtype=torch.float64), torch.randn(4, 4, dtype=torch.float64))
    message = str(error.value)
    assert message.startswith("feature_map is torch.float64 but the head's parameters are torch.float32")
    assert "head.to(torch.float64)" in message and "torch.autocast" in message
    with pytest.raises(ValueError, match="y is torch.float64 but the head's parameters are torch.float32"):
        head(torch.rand(4, 8, 3, 3), torch.randn(4, 4, dtype=torch.float64))


def test_float32_inputs_to_a_half_precision_head_are_refused():
    head = DIMHead(8, 4, hidden_dim=16, embed_dim=8).to(torch.bfloat16)
    with pytest.raises(ValueError, match=r"feature_map is torch.float32 but the head's parameters are torch.bfloat16"):
        head(torch.rand(4, 8, 3, 3), torch.randn(4, 4))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_a_head_converted_with_to_takes_inputs_of_its_dtype(dtype):
    torch.manual_seed(0)
    head = DIMHead(8, 4, alpha=0.5, gamma=0.1, hidden_dim=16, embed_dim=8).to(dtype)
    out = head(torch.rand(6, 8, 3, 3, dtype=dtype), torch.randn(6, 4, dtype=dtype))
    # The bounds and the prior losses are never computed below float32.
    assert out.loss.dtype == torch.promote_types(dtype, torch.float32)
    assert all(torch.isfinite(v) for v in (out.loss, out.local_mi, out.global_mi, out.prior_loss))
    out.loss.backward()
    assert all(p.grad is None or p.grad.dtype == dtype for p in head.parameters())


def test_float64_under_autocast_is_refused(head):
    # Autocast leaves float64 tensors alone, so they would still meet float32 parameters.
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(ValueError, match="feature_map is torch.float64"):
        head(torch.rand(4, 8, 3, 3, dtype=torch.float64), torch.randn(4, 4))


def test_gamma_without_a_prior_warns():
    # DIMHead(128, 64, prior=None) keeps the default gamma=0.1 and used to report prior_loss NaN
    # without a word.
    with pytest.warns(UserWarning, match=r"gamma=0.1 has no effect with prior=None .* Pass gamma=0"):
        head = DIMHead(8, 4, prior=None, hidden_dim=16, embed_dim=8)
    assert head.prior_matching is None
    assert torch.isnan(head(torch.rand(4, 8, 3, 3), torch.randn(4, 4)).prior_loss)


def test_no_prior_and_no_gamma_is_silent():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        DIMHead(8, 4, prior=None, gamma=0.0, hidden_dim=16, embed_dim=8)
        DIMHead(8, 4, prior="uniform", gamma=0.1, hidden_dim=16, embed_dim=8)
