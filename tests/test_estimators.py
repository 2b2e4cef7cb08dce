"""MI lower bounds against values worked out by hand, and their numerical stability.

Properties every bound must have run over the registry, ``ESTIMATORS``: a newly registered
estimator is tested by them without a line here.
"""

import math

import pytest
import torch

from dim_ssl import DIMHead, mi_lower_bound
from dim_ssl.estimators import (
    ESTIMATORS,
    Estimator,
    mi_lower_bound_from_pairs,
    mi_lower_bound_offset,
    negatives_only,
)

LOG2 = math.log(2.0)


def softplus(v: float) -> float:
    return math.log1p(math.exp(v))


# scores[i, j] = T(x_i, y_j): positives 2 and 3 on the diagonal, negatives -1 and 0.
SCORES_2X2 = torch.tensor([[2.0, -1.0], [0.0, 3.0]])


def test_jsd_2x2_by_hand():
    # positives: log2 - sp(-2) = 0.566219, log2 - sp(-3) = 0.644560 -> mean 0.605390
    # negatives: sp(-1) - log2 = -0.379885, sp(0) - log2 = 0 -> mean -0.189943
    assert mi_lower_bound(SCORES_2X2, "jsd").item() == pytest.approx(0.605390 + 0.189943, abs=1e-5)


def test_dv_2x2_by_hand():
    # mean(2, 3) - log(mean(e^-1, e^0)) = 2.5 - log(0.683940) = 2.5 + 0.379885
    assert mi_lower_bound(SCORES_2X2, "dv").item() == pytest.approx(2.879885, abs=1e-5)


def test_infonce_2x2_by_hand():
    # column 0 (y_0): candidates x_0 -> 2, x_1 -> 0: 2 - log(e^2 + e^0) = -0.126928
    # column 1 (y_1): candidates x_0 -> -1, x_1 -> 3: 3 - log(e^-1 + e^3) = -0.018149
    # mean -0.072539, plus log K = log 2 = 0.693147 (two candidates per positive)
    assert mi_lower_bound(SCORES_2X2, "infonce").item() == pytest.approx(0.620608, abs=1e-5)


SCORES_3X3 = torch.tensor(
    [
        [1.0, 0.0, -1.0],
        [2.0, 0.5, 0.0],
        [0.0, 1.0, 3.0],
    ]
)


def test_jsd_3x3_by_hand():
    positives = [1.0, 0.5, 3.0]
    negatives = [0.0, -1.0, 2.0, 0.0, 0.0, 1.0]
    expected = sum(LOG2 - softplus(-s) for s in positives) / 3 - sum(softplus(s) - LOG2 for s in negatives) / 6
    # positives: (0.379885 + 0.219069 + 0.644560) / 3 = 0.414505
    # negatives: (0 - 0.379885 + 1.433781 + 0 + 0 + 0.620115) / 6 = 0.279002
    assert expected == pytest.approx(0.414505 - 0.279002, abs=1e-5)
    assert mi_lower_bound(SCORES_3X3, "jsd").item() == pytest.approx(expected, abs=1e-5)


def test_dv_3x3_by_hand():
    # mean(1, 0.5, 3) = 1.5; negatives e^0 + e^-1 + e^2 + e^0 + e^0 + e^1 = 13.475217, /6 = 2.245870
    assert mi_lower_bound(SCORES_3X3, "dv").item() == pytest.approx(1.5 - math.log(2.245870), abs=1e-5)


def test_infonce_3x3_by_hand():
    # column j: scores[j, j] - log sum_i exp(scores[i, j])
    col0 = 1.0 - math.log(math.e**1 + math.e**2 + math.e**0)
    col1 = 0.5 - math.log(math.e**0 + math.e**0.5 + math.e**1)
    col2 = 3.0 - math.log(math.e**-1 + math.e**0 + math.e**3)
    # -1.407606, -1.180270, -0.065884: mean -0.884587, plus log K = log 3 = 1.098612
    assert (col0 + col1 + col2) / 3 + math.log(3) == pytest.approx(0.214026, abs=1e-5)
    assert mi_lower_bound(SCORES_3X3, "infonce").item() == pytest.approx(0.214026, abs=1e-5)


def test_infonce_depends_on_summary_side_softmax_not_input_side():
    # Transposing swaps the roles of x and y; for an asymmetric matrix the bound changes.
    assert mi_lower_bound(SCORES_3X3, "infonce") != pytest.approx(mi_lower_bound(SCORES_3X3.T, "infonce"))


def test_locations_are_averaged():
    # Two locations with different score matrices: the bound on (N, N, 2) averages positives
    # and negatives over locations, which for JSD equals the mean of the per-location bounds.
    stacked = torch.stack([SCORES_2X2, SCORES_3X3[:2, :2]], dim=-1)
    per_location = [mi_lower_bound(SCORES_2X2, "jsd"), mi_lower_bound(SCORES_3X3[:2, :2], "jsd")]
    assert mi_lower_bound(stacked, "jsd").item() == pytest.approx(sum(per_location).item() / 2, abs=1e-6)
    per_location = [mi_lower_bound(SCORES_2X2, "infonce"), mi_lower_bound(SCORES_3X3[:2, :2], "infonce")]
    assert mi_lower_bound(stacked, "infonce").item() == pytest.approx(sum(per_location).item() / 2, abs=1e-6)


def test_dv_with_locations_matches_a_loop_reference():
    # The public DV bug: a diagonal mask that broadcasts over the wrong axis when N != M^2.
    torch.manual_seed(0)
    scores = torch.randn(3, 3, 5)
    positives, negatives = [], []
    for i in range(3):
        for j in range(3):
            for loc in range(5):
                (positives if i == j else negatives).append(scores[i, j, loc].item())
    expected = sum(positives) / len(positives) - math.log(sum(math.exp(s) for s in negatives) / len(negatives))
    assert mi_lower_bound(scores, "dv").item() == pytest.approx(expected, abs=1e-5)


def test_infonce_across_locations_by_hand():
    # scores[i, j, l] for N = 2 images, 2 locations. For summary j at location l the candidates
    # are the positive scores[j, j, l] and every location of the other image.
    scores = torch.tensor([[[1.0, 2.0], [0.0, -1.0]], [[0.5, 0.0], [3.0, 1.0]]])
    expected = 0.0
    for j, other in ((0, 1), (1, 0)):
        for loc in range(2):
            positive = scores[j, j, loc].item()
            negatives = [scores[other, j, m].item() for m in range(2)]
            expected += positive - math.log(math.exp(positive) + sum(math.exp(s) for s in negatives))
    expected = expected / 4 + math.log(3)  # K = 1 + (N - 1) * 2 locations = 3 candidates
    got = mi_lower_bound(scores, "infonce", negatives_across_locations=True)
    assert got.item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("estimator", list(ESTIMATORS))
@pytest.mark.parametrize("magnitude", [1e4, -1e4])
def test_extreme_scores_give_finite_values_and_gradients(estimator, magnitude):
    scores = torch.full((3, 3, 4), magnitude)
    scores[0, 1] = -magnitude
    scores.requires_grad_(True)
    for across in (False, True):
        value = mi_lower_bound(scores, estimator, negatives_across_locations=across)
        (grad,) = torch.autograd.grad(value, scores)
        assert torch.isfinite(value)
        assert torch.isfinite(grad).all()
    pairs = mi_lower_bound_from_pairs(scores[:, 0], scores[:, 1], estimator)
    (grad,) = torch.autograd.grad(pairs, scores)
    assert torch.isfinite(pairs) and torch.isfinite(grad).all()


@pytest.mark.parametrize("estimator", list(ESTIMATORS))
def test_perfect_critic_beats_uninformative_critic(estimator):
    informative = torch.eye(4) * 10 - 5
    uninformative = torch.zeros(4, 4)
    assert mi_lower_bound(informative, estimator) > mi_lower_bound(uninformative, estimator) + 0.5


@pytest.mark.parametrize("estimator", list(ESTIMATORS))
@pytest.mark.parametrize("across", [False, True])
def test_uninformative_critic_gives_zero(estimator, across):
    # All scores 0: no bound claims any information. (InfoNCE: log K plus the log-softmax over
    # K equal candidates, log(1/K); DV and InfoNCE give 0 for any constant, JSD only for 0.)
    uninformative = torch.full((4, 4, 3), 0.0 if estimator == "jsd" else 0.7)
    value = mi_lower_bound(uninformative, estimator, negatives_across_locations=across)
    assert value.item() == pytest.approx(0.0, abs=1e-6)
    pairs = mi_lower_bound_from_pairs(uninformative[:, 0], uninformative[:, 1], estimator)
    assert pairs.item() == pytest.approx(0.0, abs=1e-6)


def test_infonce_is_at_most_log_k_and_reaches_it_for_a_perfect_critic():
    # K = N candidates, or 1 + (N - 1) * L across locations; a critic that scores its positive
    # far above every negative puts all the softmax mass there.
    perfect = (torch.eye(4) * 50).unsqueeze(-1).expand(4, 4, 3)
    assert mi_lower_bound(perfect, "infonce").item() == pytest.approx(math.log(4), abs=1e-6)
    across = mi_lower_bound(perfect, "infonce", negatives_across_locations=True)
    assert across.item() == pytest.approx(math.log(1 + 3 * 3), abs=1e-6)
    pairs = mi_lower_bound_from_pairs(torch.full((4,), 50.0), torch.zeros(4), "infonce")
    assert pairs.item() == pytest.approx(math.log(2), abs=1e-6)
    torch.manual_seed(3)
    for _ in range(20):
        scores = torch.randn(5, 5, 2) * 5
        assert mi_lower_bound(scores, "infonce").item() <= math.log(5) + 1e-6


def test_infonce_log_k_changes_the_value_not_the_gradient():
    torch.manual_seed(4)
    scores = torch.randn(4, 4, 3, requires_grad=True)
    value = mi_lower_bound(scores, "infonce", negatives_across_locations=True)
    (grad,) = torch.autograd.grad(value, scores)
    log_softmax = torch.log_softmax(
        torch.cat([scores.diagonal(dim1=0, dim2=1).T.unsqueeze(-1), _negatives_of_each(scores)], dim=-1), dim=-1
    )[..., 0].mean()
    (reference,) = torch.autograd.grad(log_softmax, scores)
    assert value.item() == pytest.approx(log_softmax.item() + math.log(1 + 3 * 3), abs=1e-5)
    assert torch.allclose(grad, reference, atol=1e-6)


def _negatives_of_each(scores: torch.Tensor) -> torch.Tensor:
    """``(N, L, (N - 1) * L)``: for summary j at location l, every location of every other image."""
    n = scores.shape[0]
    rows = [torch.cat([scores[i, j] for i in range(n) if i != j]) for j in range(n)]  # (N - 1) * L each
    return torch.stack(rows).unsqueeze(1).expand(n, scores.shape[2], -1)


@pytest.mark.parametrize("estimator", list(ESTIMATORS))
@pytest.mark.parametrize("across", [False, True])
def test_rectangular_scores_with_offset_equal_the_rows_of_the_square(estimator, across):
    # What each of two data-parallel ranks computes: all candidates against its own summaries,
    # with the global log-sum-exp of the negatives from reduce_negatives (what
    # dim_ssl.distributed.all_reduce_log_sum_exp gives; only bounds whose negative term is not
    # a mean over summaries, as DV's, use it). The mean over ranks is the whole batch's bound.
    torch.manual_seed(1)
    scores = torch.randn(4, 4, 3)
    global_negatives = (torch.logsumexp(negatives_only(scores, 0).flatten(), dim=0), float(4 * 3 * 3))

    def all_ranks(log_sum_exp, count):
        return global_negatives

    halves = [
        mi_lower_bound_offset(scores[:, 2 * r : 2 * r + 2], estimator, 2 * r, across, reduce_negatives=all_ranks)
        for r in range(2)
    ]
    whole = mi_lower_bound(scores, estimator, negatives_across_locations=across)
    assert ((halves[0] + halves[1]) / 2).item() == pytest.approx(whole.item(), abs=1e-6)


@pytest.mark.parametrize("estimator", list(ESTIMATORS))
def test_pairs_form_equals_the_square_form_for_two_images(estimator):
    # With two images the square form's negatives are one per positive, the off-diagonal
    # entry of its column: exactly the pairs form with those as the "shuffled" partners.
    torch.manual_seed(2)
    scores = torch.randn(2, 2, 5)
    positive = torch.stack([scores[0, 0], scores[1, 1]])
    negative = torch.stack([scores[1, 0], scores[0, 1]])
    pairs = mi_lower_bound_from_pairs(positive, negative, estimator)
    assert pairs.item() == pytest.approx(mi_lower_bound(scores, estimator).item(), abs=1e-6)


def test_pairs_form_matches_hand_values():
    positive = torch.tensor([2.0, 3.0])
    negative = torch.tensor([-1.0, 0.0])
    jsd = ((LOG2 - softplus(-2)) + (LOG2 - softplus(-3))) / 2 - ((softplus(-1) - LOG2) + (softplus(0) - LOG2)) / 2
    assert mi_lower_bound_from_pairs(positive, negative, "jsd").item() == pytest.approx(jsd, abs=1e-6)
    dv = 2.5 - math.log((math.exp(-1) + 1) / 2)
    assert mi_lower_bound_from_pairs(positive, negative, "dv").item() == pytest.approx(dv, abs=1e-6)
    nce = ((2 - math.log(math.exp(2) + math.exp(-1))) + (3 - math.log(math.exp(3) + 1))) / 2 + LOG2  # K = 2
    assert mi_lower_bound_from_pairs(positive, negative, "infonce").item() == pytest.approx(nce, abs=1e-6)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="unknown estimator 'mine'"):
        mi_lower_bound(SCORES_2X2, "mine")
    with pytest.raises(ValueError, match=r"shape \(N, N, \*rest\)"):
        mi_lower_bound(torch.zeros(2, 3), "jsd")
    with pytest.raises(ValueError, match="at least two samples"):
        mi_lower_bound(torch.zeros(1, 1), "jsd")
    with pytest.raises(ValueError, match="same shape"):
        mi_lower_bound_from_pairs(torch.zeros(2), torch.zeros(3), "jsd")
    with pytest.raises(ValueError, match="unknown estimator 'mine'; expected one of " + ", ".join(ESTIMATORS)):
        mi_lower_bound_offset(SCORES_2X2, "mine")


class NWJ(Estimator):
    """Nguyen-Wainwright-Jordan: ``mean_pos[s] - e^-1 mean_neg[exp(s)]``, as a user would add it."""

    def negative_statistic(self, scores, positive, positive_offset, negatives_across_locations):
        return torch.logsumexp(negatives_only(scores, positive_offset), dim=tuple(range(scores.dim())))

    def pair_statistic(self, negative):
        return torch.logsumexp(negative.flatten(), dim=0)

    def combine(self, statistics):
        return torch.logsumexp(statistics, dim=0)

    def bound(self, positive, statistic, num_negatives, reduce_negatives=None):
        return positive.mean() - torch.exp(statistic - math.log(num_negatives) - 1)


def test_a_registered_estimator_is_one_class_and_one_entry(monkeypatch):
    monkeypatch.setitem(ESTIMATORS, "nwj", NWJ())
    # 2x2 by hand: mean(2, 3) - e^-1 * mean(e^-1, e^0) = 2.5 - 0.251607
    assert mi_lower_bound(SCORES_2X2, "nwj").item() == pytest.approx(2.5 - math.exp(-1) * 0.683940, abs=1e-5)
    # The head takes it, all-pairs (whole or in blocks) and shuffled.
    torch.manual_seed(0)
    feature_map, y = torch.rand(6, 5, 3, 3), torch.randn(6, 4)
    losses = []
    for kwargs in ({}, {"max_scores_in_memory": 20}, {"negatives": "shuffle"}):
        torch.manual_seed(0)
        head = DIMHead(5, 4, estimator="nwj", prior=None, gamma=0.0, hidden_dim=16, embed_dim=8, **kwargs)
        losses.append(head(feature_map, y).loss)
    assert losses[0].item() == pytest.approx(losses[1].item(), abs=1e-6)
    assert torch.isfinite(losses[2])
