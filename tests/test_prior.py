"""The prior game must be adversarial: it pulls sigmoid(y) towards U[0, 1], and a collusive one does not."""

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from dim_ssl import DIMHead
from dim_ssl.prior import PriorLosses, PriorMatching

GLOBAL_DIM = 4


def ks_distance_to_uniform(values: torch.Tensor) -> float:
    """Largest Kolmogorov-Smirnov distance between each column's empirical CDF and U[0, 1]."""
    n = values.shape[0]
    ordered, _ = values.sort(dim=0)
    ranks = torch.arange(1, n + 1, dtype=values.dtype)[:, None]
    above = (ranks / n - ordered).abs()
    below = (ordered - (ranks - 1) / n).abs()
    return torch.maximum(above, below).max().item()


class SqueezedEncoder(nn.Module):
    """A small encoder whose sigmoid(y) starts squeezed around 0.5 (tiny output weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, GLOBAL_DIM))
        with torch.no_grad():
            self.net[2].weight.mul_(0.01)
            self.net[2].bias.zero_()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.net(x)
        feature_map = torch.zeros(x.shape[0], 2, 2, 2)  # unused: alpha = beta = 0
        return feature_map, y


class CollusivePrior(PriorMatching):
    """The public mistake: discriminator and encoder minimise the same (encoder's) loss."""

    def forward(self, y: torch.Tensor) -> PriorLosses:
        fake = self.to_prior_space(y)
        real = self.sample_prior(fake)
        both = F.softplus(-self.discriminator(fake)).mean() + F.softplus(-self.discriminator(real)).mean()
        zero = fake.new_zeros(())
        return PriorLosses(discriminator=zero, encoder=both, gradient_penalty=zero)


def train_prior(head: DIMHead, steps: int = 400) -> tuple[float, float]:
    torch.manual_seed(0)
    encoder = SqueezedEncoder()
    optimizer = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=2e-3, betas=(0.5, 0.999))
    test_x = torch.randn(2000, 8, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        before = ks_distance_to_uniform(torch.sigmoid(encoder(test_x)[1]))
    for _ in range(steps):
        out = head(*encoder(torch.randn(128, 8)))
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = ks_distance_to_uniform(torch.sigmoid(encoder(test_x)[1]))
    return before, after


def test_prior_pulls_y_towards_uniform():
    torch.manual_seed(0)
    head = DIMHead(2, GLOBAL_DIM, alpha=0.0, beta=0.0, gamma=1.0, prior="uniform")
    before, after = train_prior(head)
    print(f"KS distance to U[0,1]: before {before:.3f}, after {after:.3f}")
    assert before > 0.4  # squeezed around 0.5: far from uniform
    assert after < 0.15
    assert after < before / 3


def test_collusive_prior_does_not_pull_towards_uniform():
    # The same test with the non-adversarial game used in public code: it must not pass.
    torch.manual_seed(0)
    head = DIMHead(2, GLOBAL_DIM, alpha=0.0, beta=0.0, gamma=1.0, prior="uniform")
    head.prior_matching = CollusivePrior(GLOBAL_DIM)
    _, after = train_prior(head)
    assert after > 0.3


def test_gaussian_prior_pulls_y_towards_standard_normal():
    torch.manual_seed(0)
    head = DIMHead(2, GLOBAL_DIM, alpha=0.0, beta=0.0, gamma=1.0, prior="gaussian")
    encoder = SqueezedEncoder()
    optimizer = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=2e-3, betas=(0.5, 0.999))
    for _ in range(400):
        out = head(*encoder(torch.randn(128, 8)))
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    with torch.no_grad():
        y = encoder(torch.randn(2000, 8))[1]
    assert y.std(dim=0).min() > 0.5  # started at ~0.01
    assert y.std(dim=0).max() < 1.6
    assert y.mean(dim=0).abs().max() < 0.3


def test_discriminator_and_encoder_see_only_their_own_losses():
    torch.manual_seed(0)
    prior = PriorMatching(GLOBAL_DIM)
    y = torch.randn(16, GLOBAL_DIM, requires_grad=True)
    losses = prior(y)
    # D's loss does not reach the encoder ...
    (grad_y,) = torch.autograd.grad(losses.discriminator, y, allow_unused=True)
    assert grad_y is None
    # ... and the encoder's loss does not reach D.
    grads = torch.autograd.grad(losses.encoder, list(prior.parameters()), allow_unused=True)
    assert all(g is None for g in grads)
    # The encoder's loss is -log D(sigmoid(y)) through D's current weights.
    params = dict(prior.discriminator.named_parameters())
    expected = F.softplus(-functional_call(prior.discriminator, params, (torch.sigmoid(y),))).mean()
    assert torch.allclose(losses.encoder, expected)


def test_gradient_penalty_is_positive_and_trains_the_discriminator_only():
    torch.manual_seed(0)
    prior = PriorMatching(GLOBAL_DIM, gradient_penalty=10.0)
    y = torch.randn(16, GLOBAL_DIM, requires_grad=True)
    losses = prior(y)
    assert losses.gradient_penalty > 0
    (grad_y,) = torch.autograd.grad(losses.gradient_penalty, y, allow_unused=True)
    assert grad_y is None
    grads = torch.autograd.grad(losses.gradient_penalty, list(prior.parameters()), allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
