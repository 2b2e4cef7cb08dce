"""Adversarial prior matching (Hjelm et al. 2019, section 3.3, eq. 7).

A discriminator D learns to tell samples v of a prior V from the encoder's summaries; the
encoder learns to fool it:

    min_E max_D  E_V[log D(v)] + E_x[log(1 - D(E(x)))]

Both players move in the *same* ``loss.backward()`` with one optimizer, so the head drops into
any training loop: the returned loss is the discriminator's cross-entropy (which only D's
parameters see: the summaries are detached there) plus the encoder's non-saturating loss
``-log D(E(x))`` computed through a copy of D whose parameters are detached (so only the
encoder sees it). Three public re-implementations let D minimise the encoder's loss, which is
no adversary at all; ``test_prior_pulls_y_towards_uniform`` fails for that mistake.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

PRIORS = ("uniform", "gaussian")


class PriorDiscriminator(nn.Module):
    """The paper's prior discriminator: an MLP ``D -> 1000 -> 200 -> 1`` on summaries, outputting logits."""

    def __init__(self, global_dim: int, hidden_dims: tuple[int, ...] = (1000, 200)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = global_dim
        for hidden in hidden_dims:
            layers += [nn.Linear(width, hidden), nn.ReLU(inplace=True)]
            width = hidden
        layers.append(nn.Linear(width, 1))  # a logit: no activation
        self.net = nn.Sequential(*layers)

    def forward(self, v: Tensor) -> Tensor:
        return self.net(v).squeeze(-1)


@dataclass
class PriorLosses:
    """What one step of the prior game produced.

    Attributes:
        discriminator: D's binary cross-entropy on prior samples vs. encoder outputs; its
            gradient reaches D only. ``log 4 ~ 1.386`` when D cannot tell them apart.
        encoder: the encoder's non-saturating loss ``-log D(E(x))``; its gradient reaches the
            encoder only.
        gradient_penalty: the optional penalty on D's input gradients (0 when disabled).
    """

    discriminator: Tensor
    encoder: Tensor
    gradient_penalty: Tensor

    @property
    def total(self) -> Tensor:
        return self.discriminator + self.encoder + self.gradient_penalty


class PriorMatching(nn.Module):
    """Plays the prior game between a ``PriorDiscriminator`` and the encoder's summaries y.

    Args:
        global_dim: size of y.
        prior: ``"uniform"`` compares ``sigmoid(y)`` with U[0, 1]^D (the paper's choice);
            ``"gaussian"`` compares y with N(0, I).
        gradient_penalty: weight of the original code's penalty ``E ||grad_v D(v)||^2`` on prior
            samples and encoder outputs, which keeps D smooth; 0 disables it.

    Examples:
        >>> prior = PriorMatching(global_dim=64)
        >>> losses = prior(y)          # y: (N, 64) summaries from the encoder
        >>> (losses.total).backward()  # D learns to tell, the encoder learns to fool
    """

    def __init__(self, global_dim: int, prior: str = "uniform", gradient_penalty: float = 0.0) -> None:
        super().__init__()
        if prior not in PRIORS:
            raise ValueError(
                f"unknown prior {prior!r}; expected one of {', '.join(PRIORS)} (or None for no prior term)"
            )
        if gradient_penalty < 0:
            raise ValueError(f"gradient_penalty must be >= 0; got {gradient_penalty}")
        self.prior = prior
        self.gradient_penalty = gradient_penalty
        self.discriminator = PriorDiscriminator(global_dim)

    def to_prior_space(self, y: Tensor) -> Tensor:
        """The encoder's summaries where the prior lives: ``sigmoid(y)`` for the uniform prior.

        In at least float32, as the prior samples are drawn: a bfloat16 sigmoid has 256 levels
        in [0.5, 1), a grid the discriminator could learn to tell from U[0, 1].
        """
        y = y.to(torch.promote_types(y.dtype, torch.float32))
        return torch.sigmoid(y) if self.prior == "uniform" else y

    def sample_prior(self, like: Tensor) -> Tensor:
        if self.prior == "uniform":
            return torch.rand_like(like)
        return torch.randn_like(like)

    def forward(self, y: Tensor) -> PriorLosses:
        """The three losses of one step of the game, each a float32 (or float64) scalar.

        Only D's matrix products follow the parameters' dtype and autocast; its logits, the
        softplus cross-entropies and their means run in at least float32.
        """
        fake = self.to_prior_space(y)
        real = self.sample_prior(fake)
        # D sees its own parameters' dtype (autocast, if on, then picks the products' precision).
        dtype = self.discriminator.net[0].weight.dtype
        fake, real = fake.to(dtype), real.to(dtype)

        # D's move: tell prior samples (label 1) from encoder outputs (label 0). Detached
        # summaries, so this term cannot move the encoder.
        fake_for_discriminator = fake.detach()
        real_logits = _wide(self.discriminator(real))
        fake_logits = _wide(self.discriminator(fake_for_discriminator))
        discriminator_loss = F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()

        # The encoder's move: make D call its outputs prior samples. D's parameters are
        # detached, so this term cannot move D (otherwise D would help the encoder).
        frozen = {name: p.detach() for name, p in self.discriminator.named_parameters()}
        encoder_loss = F.softplus(-_wide(functional_call(self.discriminator, frozen, (fake,)))).mean()

        penalty = discriminator_loss.new_zeros(())
        if self.gradient_penalty > 0:
            penalty = self.gradient_penalty * self._input_gradient_penalty(torch.cat([real, fake_for_discriminator]))
        return PriorLosses(discriminator_loss, encoder_loss, penalty)

    def _input_gradient_penalty(self, v: Tensor) -> Tensor:
        v = v.detach().requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(_wide(self.discriminator(v)).sum(), v, create_graph=True)
        return _wide(grad).pow(2).sum(dim=1).mean()


def _wide(tensor: Tensor) -> Tensor:
    """``tensor`` in at least float32 (logits of a half-precision or autocast discriminator)."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))
