"""DIMHead: critics, negative modes, the MI terms on a toy with known dependence, presets.

The combinations of estimator, critic shape and negatives mode come from the registries
(``ESTIMATORS``, ``CRITICS``): a newly registered entry is tested by every test here.
"""

import math

import pytest
import torch
from torch import nn

from dim_ssl import DIMHead
from dim_ssl.critics import CRITICS, LocalConcatCritic, LocalDotCritic
from dim_ssl.estimators import ESTIMATORS
from dim_ssl.negatives import shuffled_partners

CHANNELS, GLOBAL_DIM, MAP = 6, 4, 3

# Every estimator with every critic shape and every negatives mode that shape can score.
COMBINATIONS = [
    (estimator, critic, negatives)
    for estimator in ESTIMATORS
    for critic, shape in CRITICS.items()
    for negatives in shape.negatives
]


def toy_batch(n: int, shared: bool, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A feature map and summaries that share a signal at every location, or are independent."""
    signal = torch.randn(n, GLOBAL_DIM, generator=generator)
    summary_source = signal if shared else torch.randn(n, GLOBAL_DIM, generator=generator)
    mixing = torch.linspace(-1, 1, CHANNELS * GLOBAL_DIM).view(CHANNELS, GLOBAL_DIM)
    local = torch.einsum("cd,nd->nc", mixing, signal)[:, :, None, None].expand(-1, -1, MAP, MAP)
    noise = 0.3 * torch.randn(n, CHANNELS, MAP, MAP, generator=generator)
    feature_map = torch.relu(local + noise)
    y = summary_source + 0.1 * torch.randn(n, GLOBAL_DIM, generator=generator)
    return feature_map, y


def train_critic_only(head: DIMHead, shared: bool, steps: int = 150) -> tuple[float, float]:
    """Trains the head on fresh toy batches; returns the local bound before and after, on held-out data."""
    generator = torch.Generator().manual_seed(0)
    held_out = toy_batch(128, shared, torch.Generator().manual_seed(99))
    optimizer = torch.optim.Adam(head.parameters(), lr=2e-3)
    with torch.no_grad():
        before = head(*held_out).local_mi.item()
    for _ in range(steps):
        out = head(*toy_batch(64, shared, generator))
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = head(*held_out).local_mi.item()
    return before, after


def uninformative_value(head: DIMHead) -> float:
    """The local bound of a critic that scores every pair 0 (all its parameters zero): the floor
    an estimator sits at without dependence: 0 for each (InfoNCE's log K cancels log(1 / K))."""
    with torch.no_grad():
        for p in head.parameters():
            p.zero_()
        return head(*toy_batch(128, True, torch.Generator().manual_seed(99))).local_mi.item()


@pytest.mark.parametrize("estimator,critic,negatives", COMBINATIONS)
def test_local_bound_rises_with_shared_signal_and_stays_near_zero_without(estimator, critic, negatives):
    torch.manual_seed(0)
    kwargs = dict(
        estimator=estimator, critic=critic, negatives=negatives, prior=None, gamma=0.0, hidden_dim=64, embed_dim=32
    )
    head = DIMHead(CHANNELS, GLOBAL_DIM, **kwargs)
    before, after = train_critic_only(head, shared=True)
    floor = uninformative_value(DIMHead(CHANNELS, GLOBAL_DIM, **kwargs))
    assert after > before + 0.2, (before, after)
    assert after - floor > 0.2

    torch.manual_seed(0)
    independent_head = DIMHead(CHANNELS, GLOBAL_DIM, **kwargs)
    _, independent = train_critic_only(independent_head, shared=False)
    assert abs(independent - floor) < 0.1, independent
    assert after > independent + 0.2


def test_global_term_rises_with_shared_signal():
    torch.manual_seed(0)
    head = DIMHead(CHANNELS, GLOBAL_DIM, alpha=1.0, beta=0.0, gamma=0.0, prior=None, hidden_dim=64, embed_dim=32)
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam(head.parameters(), lr=2e-3)
    first = None
    for _ in range(150):
        out = head(*toy_batch(64, True, generator))
        first = out.global_mi.item() if first is None else first
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    assert out.global_mi.item() > first + 0.2
    assert math.isnan(out.local_mi.item())  # beta = 0: not computed


def test_all_pairs_scores_match_a_loop_over_pairs():
    torch.manual_seed(0)
    critic = LocalDotCritic(CHANNELS, GLOBAL_DIM, hidden_dim=16, embed_dim=8)
    feature_map, y = toy_batch(5, True, torch.Generator().manual_seed(1))
    inputs, summaries = critic.embed_inputs(feature_map), critic.embed_summaries(y)
    scores = (inputs @ summaries.T).permute(0, 2, 1)
    assert scores.shape == (5, 5, MAP * MAP)
    location_vectors = feature_map.flatten(2)  # (N, C, M*M)
    for i in range(5):
        for j in range(5):
            for loc in (0, 4, 8):
                single = critic.input_net(location_vectors[i, :, loc].view(1, CHANNELS, 1, 1)).flatten()
                expected = (single * critic.embed_summaries(y[j : j + 1]).flatten()).sum()
                assert scores[i, j, loc].item() == pytest.approx(expected.item(), abs=1e-5)


def test_concat_critic_layers_use_their_input():
    # The public TF snippet fed the input map to every layer; here zeroing the first layer's
    # output must change the scores.
    torch.manual_seed(0)
    critic = LocalConcatCritic(CHANNELS, GLOBAL_DIM, hidden_dim=16)
    feature_map, y = toy_batch(4, True, torch.Generator().manual_seed(2))
    scores = critic(feature_map, y)
    assert scores.shape == (4, MAP * MAP)
    critic.net[0].bias.data.fill_(-1e3)  # first layer dead after ReLU -> constant scores
    dead = critic(feature_map, y)
    assert not torch.allclose(scores, dead)
    assert torch.allclose(dead, dead[0, 0].expand_as(dead))


def test_scores_can_be_negative():
    # No ReLU on the final scores.
    torch.manual_seed(0)
    critic = LocalConcatCritic(CHANNELS, GLOBAL_DIM, hidden_dim=16)
    feature_map, y = toy_batch(32, True, torch.Generator().manual_seed(3))
    scores = critic(feature_map, y)
    assert (scores < 0).any() and (scores > 0).any()


def test_shuffled_partners_never_pick_the_positive_and_differ_per_location():
    torch.manual_seed(0)
    partners = shuffled_partners(num_candidates=8, offset=0, count=8, num_locations=50, device=torch.device("cpu"))
    assert partners.shape == (8, 50)
    assert (partners != torch.arange(8)[:, None]).all()
    # A permutation at every location, and not the same one everywhere.
    assert all(sorted(partners[:, loc].tolist()) == list(range(8)) for loc in range(50))
    assert len({tuple(partners[:, loc].tolist()) for loc in range(50)}) > 10
    # With an offset (one data-parallel rank) the partners still avoid the rank's own images.
    sliced = shuffled_partners(num_candidates=8, offset=4, count=4, num_locations=20, device=torch.device("cpu"))
    assert (sliced != (4 + torch.arange(4))[:, None]).all()


def test_presets_set_the_papers_weights():
    dim_l = DIMHead.from_preset("DIM(L)", CHANNELS, GLOBAL_DIM)
    assert (dim_l.alpha, dim_l.beta, dim_l.gamma) == (0.0, 1.0, 0.1)
    assert dim_l.global_critic is None and dim_l.local_critic is not None
    dim_g = DIMHead.from_preset("dim_g", CHANNELS, GLOBAL_DIM, estimator="infonce")
    assert (dim_g.alpha, dim_g.beta, dim_g.gamma, dim_g.estimator) == (1.0, 0.0, 1.0, "infonce")
    with pytest.raises(ValueError, match="unknown preset"):
        DIMHead.from_preset("dim_x", CHANNELS, GLOBAL_DIM)


def test_one_backward_reaches_encoder_critics_and_discriminator():
    torch.manual_seed(0)
    encoder = nn.Conv2d(3, CHANNELS, 3, padding=1)
    to_y = nn.Linear(CHANNELS, GLOBAL_DIM)
    head = DIMHead(CHANNELS, GLOBAL_DIM, alpha=0.5, beta=1.0, gamma=0.1, hidden_dim=16, embed_dim=8)
    feature_map = torch.relu(encoder(torch.randn(4, 3, MAP, MAP)))
    out = head(feature_map, to_y(feature_map.mean((2, 3))))
    out.loss.backward()
    for module in (encoder, to_y, head.local_critic, head.global_critic, head.prior_matching):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters()), module
    for value in (out.global_mi, out.local_mi, out.prior_loss):
        assert not value.requires_grad and torch.isfinite(value)
    assert len(list(head.discriminator_parameters())) == 6
    assert not set(map(id, head.discriminator_parameters())) & set(map(id, head.critic_parameters()))


def test_the_uninformative_floor_by_hand():
    # A critic that scores every pair 0 claims no information: 0 for every estimator (InfoNCE:
    # log K plus the log-softmax over K equal candidates), all negatives or shuffled.
    for estimator in ESTIMATORS:
        for negatives in ("all", "shuffle"):
            head = DIMHead(
                CHANNELS,
                GLOBAL_DIM,
                estimator=estimator,
                negatives=negatives,
                prior=None,
                gamma=0.0,
                hidden_dim=16,
                embed_dim=8,
            )
            assert uninformative_value(head) == pytest.approx(0.0, abs=1e-5), (estimator, negatives)


@pytest.mark.parametrize("negatives,candidates", [("all", 1 + (8 - 1) * MAP * MAP), ("shuffle", 2)])
def test_infonce_of_a_perfect_critic_is_log_k(negatives, candidates):
    # One-hot images and summaries, a dot critic scoring 100 / sqrt(8) on the positives and 0
    # elsewhere: all the softmax mass on the positive, so the bound reaches its ceiling log K,
    # K = 1 + (N - 1) * M^2 candidates with negatives across locations, 2 for shuffled pairs.
    head = DIMHead(8, 8, estimator="infonce", negatives=negatives, prior=None, gamma=0.0, hidden_dim=16, embed_dim=8)
    with torch.no_grad():
        for p in head.parameters():
            p.zero_()
        head.local_critic.input_net.shortcut.weight[:, :, 0, 0] = 100 * torch.eye(8)
        head.local_critic.summary_net.shortcut.weight.copy_(torch.eye(8))
    feature_map, y = torch.eye(8)[:, :, None, None].expand(8, 8, MAP, MAP), torch.eye(8)
    out = head(feature_map, y)
    assert out.local_mi.item() == pytest.approx(math.log(candidates), abs=1e-5)
    assert out.loss.item() == pytest.approx(-math.log(candidates), abs=1e-5)


@pytest.mark.parametrize("estimator,critic,negatives", COMBINATIONS)
def test_every_registered_combination_trains_both_terms_in_one_backward(estimator, critic, negatives):
    torch.manual_seed(0)
    head = DIMHead(
        CHANNELS,
        GLOBAL_DIM,
        estimator=estimator,
        critic=critic,
        negatives=negatives,
        alpha=0.5,
        beta=1.0,
        gamma=0.1,
        hidden_dim=16,
        embed_dim=8,
    )
    assert isinstance(head.local_critic, CRITICS[critic].local_critic)
    assert isinstance(head.global_critic, CRITICS[critic].global_critic)
    feature_map, y = toy_batch(6, True, torch.Generator().manual_seed(4))
    feature_map.requires_grad_(True)
    y.requires_grad_(True)
    out = head(feature_map, y)
    out.loss.backward()
    assert all(torch.isfinite(v) for v in (out.loss, out.local_mi, out.global_mi, out.prior_loss))
    assert feature_map.grad.abs().sum() > 0 and y.grad.abs().sum() > 0
    for critic_module in (head.local_critic, head.global_critic):
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in critic_module.parameters())


def test_a_non_square_map_is_scored_over_all_its_locations():
    # A 6x4 map (a 48x32 input) is H*W = 24 locations: the same as the 24x1 map of those locations.
    torch.manual_seed(0)
    head = DIMHead(8, 4, estimator="infonce", gamma=0.0, hidden_dim=16, embed_dim=16)
    feature_map, y = torch.randn(5, 8, 6, 4), torch.randn(5, 4)
    wide = head(feature_map, y)
    column = head(feature_map.flatten(2).unsqueeze(-1), y)
    assert torch.allclose(wide.local_mi, column.local_mi, atol=1e-5)
    assert wide.local_mi.item() <= math.log(1 + 4 * 24) + 1e-5  # InfoNCE's log K with K = 1 + (N-1)HW
