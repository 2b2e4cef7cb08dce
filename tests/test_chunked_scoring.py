"""Memory-bounded scoring: chunked and unchunked give the same bound and gradients; the folded
critic gives the same scores; location sampling gives the right shapes and finite values.

Estimators, critic shapes and negatives modes come from the registries, so a newly registered
entry is tested here too.
"""

import math

import pytest
import torch
from torch import nn

from dim_ssl import DIMHead
from dim_ssl.critics import CRITICS, DotCritic, GlobalDotCritic, LocalDotCritic
from dim_ssl.estimators import ESTIMATORS, mi_lower_bound_offset
from dim_ssl.scoring import all_pairs_bound

# Critic shapes that score all pairs from factors (the only ones chunking and folding concern),
# with the negatives modes they take; and every (critic, negatives) combination.
DOT_SHAPES = [
    (critic, negatives)
    for critic, shape in CRITICS.items()
    if issubclass(shape.local_critic, DotCritic) and issubclass(shape.global_critic, DotCritic)
    for negatives in shape.negatives
]
ALL_PAIRS_CRITICS = [critic for critic, shape in CRITICS.items() if "all" in shape.negatives]
CRITIC_NEGATIVES = [(critic, negatives) for critic, shape in CRITICS.items() for negatives in shape.negatives]


def scoring_problem(num_candidates=7, num_summaries=3, locations=4, width=5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    transform = nn.Linear(width, 6)
    with torch.no_grad():
        for p in transform.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
    inputs = torch.randn(num_candidates, locations, width, generator=generator, requires_grad=True)
    summaries = torch.randn(num_summaries, 6, generator=generator, requires_grad=True)
    offsets = torch.randn(num_summaries, generator=generator, requires_grad=True)
    return transform, inputs, summaries, offsets


def value_and_grads(bound, tensors):
    grads = torch.autograd.grad(bound, tensors)
    return bound.detach(), [g.detach() for g in grads]


@pytest.mark.parametrize("estimator", list(ESTIMATORS))
@pytest.mark.parametrize("across", [True, False])
@pytest.mark.parametrize("positive_offset", [0, 2, 4])
def test_chunked_scoring_equals_the_whole_score_tensor(estimator, across, positive_offset):
    # A rectangular problem as one data-parallel rank sees it: 7 candidates (all ranks), 3
    # summaries (this rank) whose positives start at row positive_offset.
    transform, inputs, summaries, offsets = scoring_problem()
    tensors = [inputs, summaries, offsets, *transform.parameters()]

    # Reference: the explicit (N_all, n, L) score tensor through the public estimator code.
    scores = torch.einsum("ilk,jk->ijl", transform(inputs), summaries) + offsets[None, :, None]
    expected, expected_grads = value_and_grads(
        mi_lower_bound_offset(scores, estimator, positive_offset, negatives_across_locations=across), tensors
    )
    for rows in (None, 1, 2, 3, 7, 100):
        bound = all_pairs_bound(
            inputs,
            summaries,
            offsets,
            estimator,
            positive_offset,
            negatives_across_locations=across,
            input_transform=transform,
            rows_per_chunk=rows,
        )
        value, grads = value_and_grads(bound, tensors)
        assert value.item() == pytest.approx(expected.item(), abs=1e-5), rows
        for got, want in zip(grads, expected_grads):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("estimator", list(ESTIMATORS))
def test_chunked_scoring_stays_finite_for_extreme_scores(estimator):
    transform, inputs, summaries, offsets = scoring_problem()
    with torch.no_grad():
        summaries.mul_(1e3)  # scores of order 1e4
    bound = all_pairs_bound(inputs, summaries, offsets, estimator, 2, True, input_transform=transform, rows_per_chunk=2)
    bound.backward()
    assert torch.isfinite(bound)
    assert all(torch.isfinite(t.grad).all() for t in (inputs, summaries, offsets))


@pytest.mark.parametrize("critic_class", [LocalDotCritic, GlobalDotCritic])
def test_folded_critic_gives_the_same_scores(critic_class):
    # <W h + b + S x, psi> computed as <[h, x], psi [W | S]> + <b, psi>.
    torch.manual_seed(0)
    critic = critic_class(6, 4, hidden_dim=16, embed_dim=8)
    feature_map, y = torch.rand(5, 6, 3, 3), torch.randn(5, 4)
    plain = critic.embed_inputs(feature_map) @ critic.embed_summaries(y).T  # (N, L, n)
    vectors = critic.input_vectors(feature_map)
    for fold in (False, True):
        summaries, offsets = critic.summary_factors(y, fold)
        scores = critic.input_factors(vectors, fold) @ summaries.T
        if offsets is not None:
            scores = scores + offsets
        torch.testing.assert_close(scores, plain, atol=1e-5, rtol=1e-5)


def test_folding_pays_for_many_location_vectors_per_summary():
    # The paper's widths on a resnet18's 128-channel 4x4 map at batch 256.
    critic = LocalDotCritic(128, 64)
    assert critic.fold_pays(num_rows=256 * 16, num_summaries=256, num_pairs=256 * 16 * 256)
    assert not critic.fold_pays(num_rows=256, num_summaries=256, num_pairs=256 * 256)  # one vector each
    # A narrow embedding (8) behind a wide hidden layer (16 + 6 inputs): the products would widen.
    assert not LocalDotCritic(6, 4, hidden_dim=16, embed_dim=8).fold_pays(64 * 9, 64, 64 * 9 * 64)


def head_value_and_grads(head, feature_map, y):
    torch.manual_seed(1)  # the prior samples
    out = head(feature_map, y)
    tensors = [feature_map, y, *head.parameters()]
    grads = torch.autograd.grad(out.loss, tensors, allow_unused=True)
    return out, [None if g is None else g.detach() for g in grads]


@pytest.mark.parametrize("estimator", list(ESTIMATORS))
@pytest.mark.parametrize("critic", ALL_PAIRS_CRITICS)
@pytest.mark.parametrize("fold", [False, True])
def test_head_with_a_score_limit_gives_the_same_loss_and_gradients(estimator, critic, fold, monkeypatch):
    feature_map = torch.rand(6, 5, 3, 3, requires_grad=True)
    y = torch.randn(6, 4, requires_grad=True)
    results = []
    for limit in (None, 20, 1):  # one block; blocks of 1 image (local: 54 scores each); 1 score
        torch.manual_seed(0)
        head = DIMHead(
            5,
            4,
            estimator=estimator,
            critic=critic,
            negatives="all",
            alpha=0.5,
            beta=1.0,
            hidden_dim=16,
            embed_dim=8,
            max_scores_in_memory=limit,
        )
        monkeypatch.setattr(type(head.local_critic), "fold_pays", lambda self, *sizes: fold)
        monkeypatch.setattr(type(head.global_critic), "fold_pays", lambda self, *sizes: fold)
        results.append(head_value_and_grads(head, feature_map, y))
    (reference, reference_grads), *others = results
    for out, grads in others:
        for name in ("loss", "local_mi", "global_mi", "prior_loss"):
            assert getattr(out, name).item() == pytest.approx(getattr(reference, name).item(), abs=1e-5)
        for got, want in zip(grads, reference_grads):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("estimator", list(ESTIMATORS))
@pytest.mark.parametrize("critic,negatives", DOT_SHAPES)
def test_folding_the_critic_changes_neither_loss_nor_gradients(estimator, critic, negatives, monkeypatch):
    feature_map = torch.rand(6, 5, 3, 3, requires_grad=True)
    y = torch.randn(6, 4, requires_grad=True)
    results = []
    for fold in (False, True):
        torch.manual_seed(0)
        head = DIMHead(
            5, 4, estimator=estimator, critic=critic, negatives=negatives, alpha=0.5, hidden_dim=16, embed_dim=8
        )
        monkeypatch.setattr(type(head.local_critic), "fold_pays", lambda self, *sizes, fold=fold: fold)
        monkeypatch.setattr(type(head.global_critic), "fold_pays", lambda self, *sizes, fold=fold: fold)
        torch.manual_seed(2)  # the same shuffles
        results.append(head_value_and_grads(head, feature_map, y))
    (unfolded, unfolded_grads), (folded, folded_grads) = results
    assert folded.loss.item() == pytest.approx(unfolded.loss.item(), abs=1e-5)
    for got, want in zip(folded_grads, unfolded_grads):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_chunked_scoring_bounds_peak_memory():
    from eval.experiments.bench import peak_tensor_bytes

    torch.manual_seed(0)
    feature_map = torch.rand(32, 8, 16, 16, requires_grad=True)
    y = torch.randn(32, 4, requires_grad=True)
    peaks = {}
    for limit in (None, 2**12):
        head = DIMHead(
            8, 4, estimator="infonce", prior=None, gamma=0.0, hidden_dim=64, embed_dim=64, max_scores_in_memory=limit
        )
        peaks[limit] = peak_tensor_bytes(lambda h=head: h(feature_map, y).loss.backward(), torch.device("cpu"))
    if peaks[None] is None:
        pytest.skip("this torch's profiler does not expose allocation events")
    # All at once: 32 * 32 * 256 scores and the critic on 8192 location vectors; chunked: one
    # image's 256 location vectors at a time.
    assert peaks[2**12] < peaks[None] / 4, peaks


def test_location_sampling_gives_the_right_shapes_and_finite_values():
    torch.manual_seed(0)
    feature_map = torch.rand(6, 5, 4, 4, requires_grad=True)
    y = torch.randn(6, 4, requires_grad=True)
    head = DIMHead(5, 4, estimator="infonce", hidden_dim=16, embed_dim=8, num_locations=3)
    sampled = head._sample_map_locations(feature_map)
    assert sampled.shape == (6, 5, 3, 1)
    assert head.local_critic.input_vectors(sampled).shape == (6, 3, 5)
    # Every sampled location is one of the map's locations, the same ones for all images.
    flat = feature_map.flatten(2)
    chosen = [next(i for i in range(16) if torch.equal(flat[0, :, i], sampled[0, :, k, 0])) for k in range(3)]
    assert torch.equal(sampled[..., 0], flat[:, :, chosen])
    out = head(feature_map, y)
    out.loss.backward()
    assert torch.isfinite(out.local_mi) and torch.isfinite(feature_map.grad).all()
    # Only the sampled locations receive gradient from the local term (no global term here).
    assert (feature_map.grad.flatten(2).abs().sum((0, 1)) > 0).sum() <= 3

    for critic, negatives in CRITIC_NEGATIVES:
        other = DIMHead(
            5,
            4,
            critic=critic,
            negatives=negatives,
            hidden_dim=16,
            embed_dim=8,
            num_locations=3,
            max_scores_in_memory=10,
        )
        assert torch.isfinite(other(feature_map, y).local_mi)
    # As many locations as the map has, or more: nothing is sampled.
    assert DIMHead(5, 4, num_locations=16)._sample_map_locations(feature_map) is feature_map


def test_sampled_infonce_has_n_minus_one_times_num_locations_negatives():
    # A critic that scores every pair 0 is uninformative: InfoNCE = log K + log(1 / K) = 0. A
    # critic that tells every positive apart (one-hot images, scores 100 / sqrt(8) on the
    # positives, 0 elsewhere) reaches log K, K = 1 + (N - 1) * num_locations candidates.
    head = DIMHead(6, 6, estimator="infonce", prior=None, gamma=0.0, hidden_dim=16, embed_dim=8, num_locations=3)
    for p in head.parameters():
        nn.init.zeros_(p)
    feature_map, y = torch.eye(6)[:, :, None, None].expand(6, 6, 4, 4), torch.eye(6)
    assert head(feature_map, y).local_mi.item() == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        head.local_critic.input_net.shortcut.weight[:6, :, 0, 0] = 100 * torch.eye(6)
        head.local_critic.summary_net.shortcut.weight[:6] = torch.eye(6)
    assert head(feature_map, y).local_mi.item() == pytest.approx(math.log(1 + (6 - 1) * 3), abs=1e-5)
    head.num_locations = None  # every location: K = 1 + (N - 1) * M^2
    assert head(feature_map, y).local_mi.item() == pytest.approx(math.log(1 + (6 - 1) * 16), abs=1e-5)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"max_scores_in_memory": 0}, "max_scores_in_memory must be None or an integer >= 1; got 0"),
        ({"num_locations": 2.5}, "num_locations must be None or an integer >= 1; got 2.5"),
    ],
)
def test_bad_limits_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DIMHead(5, 4, **kwargs)
