"""AMDIM's score stabilisers (Bachman, Hjelm & Buchwalter 2019): ``DIMHead(score_clip=c)`` takes
the bounds on ``c * tanh(s / c)``, ``DIMHead(score_penalty=lam)`` adds ``lam * mean(s^2)`` of the
raw scores of each term to the loss.

Expected values are worked out by hand: every score a term computes is recomputed here from the
critic modules (all pairs from the embeddings, shuffled pairs from the partners the head draws
with the same seed), then clipped, bounded and squared here. Estimators, critic shapes and
negatives modes come from the registries, so a newly registered entry is tested too. The
two-process DDP case is in tests/test_distributed.py (``*_stabilised*``).
"""

import math
import re

import pytest
import torch

from dim_ssl import DIMHead, mi_lower_bound
from dim_ssl.critics import CRITICS, DotCritic
from dim_ssl.estimators import ESTIMATORS, mi_lower_bound_from_pairs, mi_lower_bound_offset
from dim_ssl.negatives import shuffled_partners
from dim_ssl.scoring import all_pairs_bound, all_pairs_bound_and_mean_square

CHANNELS, GLOBAL_DIM, MAP, BATCH = 5, 4, 3, 6
LOCATIONS = MAP * MAP

COMBINATIONS = [
    (estimator, critic, negatives)
    for estimator in ESTIMATORS
    for critic, shape in CRITICS.items()
    for negatives in shape.negatives
]
CRITIC_NEGATIVES = [(critic, negatives) for critic, shape in CRITICS.items() for negatives in shape.negatives]
ALL_PAIRS_CRITICS = [critic for critic, shape in CRITICS.items() if "all" in shape.negatives]


def make_head(estimator="jsd", critic="dot", negatives="all", **kwargs) -> DIMHead:
    torch.manual_seed(0)  # the same critic weights for every head of a test
    return DIMHead(
        CHANNELS,
        GLOBAL_DIM,
        estimator=estimator,
        critic=critic,
        negatives=negatives,
        alpha=0.5,
        beta=1.0,
        prior=None,
        gamma=0.0,
        hidden_dim=16,
        embed_dim=8,
        **kwargs,
    )


def inputs(scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    feature_map = torch.rand(BATCH, CHANNELS, MAP, MAP, generator=generator) * scale
    y = torch.randn(BATCH, GLOBAL_DIM, generator=generator) * scale
    return feature_map.requires_grad_(True), y.requires_grad_(True)


def run(head: DIMHead, feature_map, y, seed: int = 5):
    torch.manual_seed(seed)  # the shuffles
    return head(feature_map, y)


def hand_scores(head: DIMHead, feature_map, y, seed: int = 5) -> dict[str, tuple[torch.Tensor, ...]]:
    """Every raw score each term computes, from the critic modules, for a head called under ``seed``.

    ``"all"``: the whole ``(N, N, L)`` tensor ``T(x_i[l], y_j)``, one element tuple. ``"shuffle"``:
    ``(positive, negative)``, each ``(N, L)``: ``T(x_j[l], y_j)`` and ``T(x_p[l], y_j)`` with p the
    partner the head draws at l (it draws the local term's partners first, then the global's).
    """
    torch.manual_seed(seed)
    partners = {
        "local": shuffled_partners(BATCH, 0, BATCH, LOCATIONS, feature_map.device),
        "global": shuffled_partners(BATCH, 0, BATCH, 1, feature_map.device),
    }
    scores = {}
    for term, critic in (("local", head.local_critic), ("global", head.global_critic)):
        if critic is None:
            continue
        if isinstance(critic, DotCritic):
            full = torch.einsum("ile,je->ijl", critic.embed_inputs(feature_map), critic.embed_summaries(y))
            if head.negatives == "all":
                scores[term] = (full,)
                continue
            index = partners[term]  # (N, L): the partner of image j at location l
            columns, locations = torch.arange(BATCH)[:, None], torch.arange(index.shape[1])[None, :]
            scores[term] = (full[columns, columns, locations], full[index, columns, locations])
        elif term == "local":
            # Pair-scoring critic: the negative map holds, at every location, the partner's vector.
            flat = feature_map.flatten(2)  # (N, C, L)
            negative_map = torch.stack([flat[partners[term][:, loc], :, loc] for loc in range(LOCATIONS)], dim=-1)
            positive = critic(feature_map, y)
            scores[term] = (positive, critic(negative_map.view_as(feature_map), y))
        else:
            scores[term] = (critic(feature_map, y), critic(feature_map[partners[term][:, 0]], y))
    return scores


def clip(scores: torch.Tensor, c: float | None) -> torch.Tensor:
    return scores if c is None else c * torch.tanh(scores / c)


def hand_bound(head: DIMHead, term: str, scores: tuple[torch.Tensor, ...], c: float | None) -> torch.Tensor:
    if len(scores) == 1:
        return mi_lower_bound(clip(scores[0], c), head.estimator, negatives_across_locations=term == "local")
    positive, negative = scores
    return mi_lower_bound_from_pairs(clip(positive, c), clip(negative, c), head.estimator)


def hand_mean_square(scores: tuple[torch.Tensor, ...]) -> torch.Tensor:
    return torch.cat([s.flatten() for s in scores]).square().mean()


def grads(value: torch.Tensor, tensors) -> list[torch.Tensor]:
    return [g.detach() for g in torch.autograd.grad(value, tensors)]


# --- score_clip --------------------------------------------------------------------------------


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_clipped_dv_of_extreme_scores_is_two_c_by_hand(sign):
    # Positives +1e4, negatives -1e4 (or the reverse): clipped to +-c, DV = mean_P[c] - log mean_Q[e^-c]
    # = c + c = 2c exactly (tanh(500) is 1 in float32); unclipped it is 2e4.
    c = 20.0
    scores = torch.full((3, 3, 2), -1e4 * sign)
    scores[torch.arange(3), torch.arange(3)] = 1e4 * sign
    scores.requires_grad_(True)
    clipped = mi_lower_bound(c * torch.tanh(scores / c), "dv")
    assert clipped.item() == pytest.approx(2 * c * sign, abs=1e-4)
    assert mi_lower_bound(scores, "dv").item() == pytest.approx(2e4 * sign, rel=1e-6)
    clipped.backward()
    assert torch.isfinite(scores.grad).all()
    # The same through blockwise scoring: identity factors make the scores the inputs themselves.
    factors = scores.detach().permute(0, 2, 1).reshape(3, 2, 3)  # inputs[i, l, j] = scores[i, j, l]
    for rows in (None, 1):
        bound = all_pairs_bound(factors, torch.eye(3), None, "dv", score_clip=c, rows_per_chunk=rows)
        assert bound.item() == pytest.approx(2 * c * sign, abs=1e-4)


@pytest.mark.parametrize("estimator,critic,negatives", COMBINATIONS)
@pytest.mark.parametrize("limit", [None, 20])
def test_clip_keeps_extreme_scores_finite_and_dv_within_two_c(estimator, critic, negatives, limit):
    if limit is not None and negatives != "all":
        pytest.skip("max_scores_in_memory applies to all-pairs negatives only")
    c = 20.0
    scale = 1.0
    while True:  # inputs scaled until the raw scores reach 1e4 in magnitude
        feature_map, y = inputs(scale)
        raw = hand_scores(make_head(estimator, critic, negatives), feature_map, y)
        largest = max(s.abs().max().item() for term in raw.values() for s in term)
        if largest >= 1e4:
            break
        scale *= 10
    assert largest < 1e7 and any((s < -1e3).any() for term in raw.values() for s in term)  # both signs, large
    kwargs = {"max_scores_in_memory": limit}
    head = make_head(estimator, critic, negatives, score_clip=c, **kwargs)
    out = run(head, feature_map, y)
    gradients = grads(out.loss, [feature_map, y, *head.parameters()])
    assert all(torch.isfinite(v) for v in (out.loss, out.local_mi, out.global_mi))
    assert all(torch.isfinite(g).all() for g in gradients)
    if estimator == "dv":
        assert -2 * c - 1e-4 <= out.local_mi.item() <= 2 * c + 1e-4
        assert -2 * c - 1e-4 <= out.global_mi.item() <= 2 * c + 1e-4
        # Without the clip the same scores leave that range: the clip is what bounds them.
        unclipped = run(make_head(estimator, critic, negatives, **kwargs), feature_map, y)
        assert max(abs(unclipped.local_mi.item()), abs(unclipped.global_mi.item())) > 2 * c


@pytest.mark.parametrize("estimator,critic,negatives", COMBINATIONS)
def test_a_very_large_clip_equals_no_clip(estimator, critic, negatives):
    feature_map, y = inputs()
    results = []
    for c in (None, 1e6):
        head = make_head(estimator, critic, negatives, score_clip=c)
        out = run(head, feature_map, y)
        results.append((out, grads(out.loss, [feature_map, y, *head.parameters()])))
    (plain, plain_grads), (clipped, clipped_grads) = results
    for name in ("loss", "local_mi", "global_mi"):
        assert getattr(clipped, name).item() == pytest.approx(getattr(plain, name).item(), abs=1e-5)
    for got, want in zip(clipped_grads, plain_grads):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("estimator,critic,negatives", COMBINATIONS)
def test_reported_bounds_are_those_of_the_clipped_scores_by_hand(estimator, critic, negatives):
    feature_map, y = inputs(4.0)
    with torch.no_grad():  # a clip at the median score magnitude: it bends half the scores a lot
        raw = hand_scores(make_head(estimator, critic, negatives), feature_map, y)
        c = torch.cat([s.flatten() for term in raw.values() for s in term]).abs().median().item()
    head = make_head(estimator, critic, negatives, score_clip=c)
    out = run(head, feature_map, y)
    with torch.no_grad():
        raw = hand_scores(head, feature_map, y)
        for term, value in (("local", out.local_mi), ("global", out.global_mi)):
            expected = hand_bound(head, term, raw[term], c).item()
            assert value.item() == pytest.approx(expected, abs=1e-5), term
            # The clip bites: without it the bound lies well outside the tolerance above.
            assert abs(expected - hand_bound(head, term, raw[term], None).item()) > 1e-4, term
    # The loss is the weighted bounds and nothing else (no penalty asked for).
    assert out.loss.item() == pytest.approx(-(0.5 * out.global_mi + out.local_mi).item(), abs=1e-6)


# --- score_penalty -----------------------------------------------------------------------------


@pytest.mark.parametrize("estimator,critic,negatives", COMBINATIONS)
@pytest.mark.parametrize("c", [None, 0.05])
def test_penalty_adds_lam_times_the_mean_square_of_the_raw_scores_by_hand(estimator, critic, negatives, c):
    feature_map, y = inputs()
    tensors = [feature_map, y]
    base_head = make_head(estimator, critic, negatives, score_clip=c)
    base = run(base_head, feature_map, y)
    base_grads = grads(base.loss, tensors)

    # By hand: the mean of the squared raw scores of each term (all its positives and negatives),
    # summed over the two terms, neither weighted by alpha or beta.
    raw = hand_scores(base_head, feature_map, y)
    penalty = hand_mean_square(raw["local"]) + hand_mean_square(raw["global"])
    penalty_grads = grads(penalty, tensors)
    if c is not None:  # the penalty reads the raw scores, not the clipped ones
        clipped = sum(hand_mean_square(tuple(clip(s, c) for s in raw[t])) for t in raw)
        assert abs(penalty.item() - clipped.item()) > 1e-3 * penalty.item()

    for lam in (0.01, 0.1, 1.0):
        out = run(make_head(estimator, critic, negatives, score_clip=c, score_penalty=lam), feature_map, y)
        assert out.loss.item() - base.loss.item() == pytest.approx(lam * penalty.item(), rel=1e-4, abs=1e-6)
        # The reported bounds leave the penalty out.
        assert out.local_mi.item() == pytest.approx(base.local_mi.item(), abs=1e-6)
        assert out.global_mi.item() == pytest.approx(base.global_mi.item(), abs=1e-6)
        for got, want, extra in zip(grads(out.loss, tensors), base_grads, penalty_grads):
            torch.testing.assert_close(got - want, lam * extra, atol=1e-5, rtol=1e-4)


def test_penalty_counts_only_the_terms_computed():
    # DIM(L): no global term, so only the local scores are penalised.
    feature_map, y = inputs()
    torch.manual_seed(0)
    head = DIMHead(CHANNELS, GLOBAL_DIM, prior=None, gamma=0.0, hidden_dim=16, embed_dim=8, score_penalty=0.5)
    out = head(feature_map, y)
    (scores,) = hand_scores(head, feature_map, y)["local"]
    assert out.loss.item() == pytest.approx((-out.local_mi + 0.5 * scores.square().mean()).item(), abs=1e-5)


# --- blockwise scoring -------------------------------------------------------------------------


@pytest.mark.parametrize("estimator", list(ESTIMATORS))
@pytest.mark.parametrize("positive_offset", [0, 3])
def test_blockwise_bound_and_mean_square_equal_the_whole_score_tensor(estimator, positive_offset):
    # A rectangular problem as a data-parallel rank sees it: 7 candidates, 3 summaries.
    generator = torch.Generator().manual_seed(0)
    factors = torch.randn(7, 4, 5, generator=generator, requires_grad=True)
    summaries = torch.randn(3, 5, generator=generator, requires_grad=True)
    offsets = torch.randn(3, generator=generator, requires_grad=True)
    tensors = [factors, summaries, offsets]
    c = 1.0
    scores = torch.einsum("ilk,jk->ijl", factors, summaries) + offsets[None, :, None]  # (7, 3, 4)
    expected = mi_lower_bound_offset(clip(scores, c), estimator, positive_offset, negatives_across_locations=True)
    expected_square = scores.square().mean()
    expected_grads = grads(expected + expected_square, tensors)
    assert (scores.abs() > 2 * c).any()  # the clip bites
    for rows in (None, 1, 2, 3, 7):
        bound, square = all_pairs_bound_and_mean_square(
            factors, summaries, offsets, estimator, positive_offset, True, rows_per_chunk=rows, score_clip=c
        )
        assert bound.item() == pytest.approx(expected.item(), abs=1e-5), rows
        assert square.item() == pytest.approx(expected_square.item(), rel=1e-6), rows
        for got, want in zip(grads(bound + square, tensors), expected_grads):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    _, nothing = all_pairs_bound_and_mean_square(factors, summaries, offsets, estimator, mean_square=False)
    assert nothing is None


@pytest.mark.parametrize("estimator", list(ESTIMATORS))
@pytest.mark.parametrize("critic", ALL_PAIRS_CRITICS)
@pytest.mark.parametrize("fold", [False, True])
def test_head_blockwise_equals_unchunked_with_both_stabilisers(estimator, critic, fold, monkeypatch):
    feature_map, y = inputs()
    tensors = [feature_map, y]
    results = []
    for limit in (None, 20, 1):  # one block; blocks of 1 image (local: 54 scores each); 1 score
        head = make_head(estimator, critic, "all", max_scores_in_memory=limit, score_clip=0.05, score_penalty=0.3)
        monkeypatch.setattr(type(head.local_critic), "fold_pays", lambda self, *sizes: fold)
        monkeypatch.setattr(type(head.global_critic), "fold_pays", lambda self, *sizes: fold)
        out = run(head, feature_map, y)
        results.append((out, grads(out.loss, [*tensors, *head.parameters()])))
    (reference, reference_grads), *others = results
    # The stabilisers are at work: the unstabilised loss differs.
    plain = run(make_head(estimator, critic, "all"), feature_map, y)
    assert abs(plain.loss.item() - reference.loss.item()) > 1e-3
    for out, gradients in others:
        for name in ("loss", "local_mi", "global_mi"):
            assert getattr(out, name).item() == pytest.approx(getattr(reference, name).item(), abs=1e-5)
        for got, want in zip(gradients, reference_grads):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


# --- arguments ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"score_clip": 0}, "score_clip must be None or a finite number > 0 (AMDIM: 20); got 0"),
        ({"score_clip": -20.0}, "score_clip must be None or a finite number > 0 (AMDIM: 20); got -20.0"),
        ({"score_clip": float("inf")}, "score_clip must be None or a finite number > 0 (AMDIM: 20); got inf"),
        ({"score_clip": float("nan")}, "score_clip must be None or a finite number > 0 (AMDIM: 20); got nan"),
        ({"score_clip": "20"}, "score_clip must be None or a finite number > 0 (AMDIM: 20); got '20'"),
        ({"score_clip": True}, "score_clip must be None or a finite number > 0 (AMDIM: 20); got True"),
        ({"score_penalty": -0.04}, "score_penalty must be a finite weight >= 0 (AMDIM: 4e-2); got -0.04"),
        ({"score_penalty": float("nan")}, "score_penalty must be a finite weight >= 0 (AMDIM: 4e-2); got nan"),
        ({"score_penalty": float("inf")}, "score_penalty must be a finite weight >= 0 (AMDIM: 4e-2); got inf"),
        ({"score_penalty": None}, "score_penalty must be a finite weight >= 0 (AMDIM: 4e-2); got None"),
        ({"score_penalty": "4e-2"}, "score_penalty must be a finite weight >= 0 (AMDIM: 4e-2); got '4e-2'"),
    ],
)
def test_bad_stabiliser_arguments_say_what_was_given(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        DIMHead(CHANNELS, GLOBAL_DIM, **kwargs)


def test_good_stabiliser_arguments_are_kept_as_floats():
    head = DIMHead(CHANNELS, GLOBAL_DIM, hidden_dim=16, embed_dim=8, score_clip=20, score_penalty=0)
    assert (head.score_clip, head.score_penalty) == (20.0, 0.0)
    assert isinstance(head.score_clip, float) and isinstance(head.score_penalty, float)
    head = DIMHead.from_preset("dim_l", CHANNELS, GLOBAL_DIM, hidden_dim=16, score_clip=20.0, score_penalty=4e-2)
    assert (head.score_clip, head.score_penalty) == (20.0, 4e-2)
    assert DIMHead(CHANNELS, GLOBAL_DIM, hidden_dim=16).score_clip is None
    assert math.isfinite(head(*inputs()).loss.item())
