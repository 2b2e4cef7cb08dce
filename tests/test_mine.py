"""MINE-style MI estimates against the closed form of correlated Gaussians.

For x ~ N(0, I_d) and y = rho * x + sqrt(1 - rho^2) * noise, I(X; Y) = -d/2 * log(1 - rho^2).
"""

import math

import numpy as np
import pytest
import torch

from dim_ssl import mi_lower_bound
from eval import estimate_mutual_information
from eval.analysis import mutual_information
from eval.analysis.fitting import MovingAverageDV, fit_critic
from eval.analysis.mine import SeparableCritic


def correlated_gaussians(n: int, d: int, rho: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=generator)
    return x, rho * x + math.sqrt(1 - rho**2) * torch.randn(n, d, generator=generator)


def gaussian_mi(d: int, rho: float) -> float:
    return -d / 2 * math.log(1 - rho**2)


def test_dv_estimate_is_within_the_bounds_of_the_closed_form():
    # d = 4, rho = 0.8: I = 2.043 nats. A budget of 10 epochs keeps the test fast; the estimate
    # is already there (the slow test below runs the defaults to convergence).
    x, y = correlated_gaussians(6000, 4, 0.8, seed=1)
    truth = gaussian_mi(4, 0.8)
    estimate = estimate_mutual_information(x, y, "dv", max_epochs=10)
    assert 0.6 * truth <= estimate <= 1.15 * truth, (estimate, truth)


@pytest.mark.parametrize("estimator", ["dv", "infonce", "jsd"])
def test_estimate_is_near_zero_for_independent_variables(estimator):
    x, _ = correlated_gaussians(4000, 4, 0.0, seed=2)
    _, y = correlated_gaussians(4000, 4, 0.0, seed=3)
    estimate = estimate_mutual_information(x, y, estimator)
    assert abs(estimate) < 0.05, estimate


def test_held_out_estimate_is_not_inflated_by_overfitting():
    # 200 independent pairs in 8-D. A wide critic trained on 100 of them for long enough (keeping
    # the weights that score its own pairs best) memorises them: its bound on those pairs is
    # well above 0, on unseen pairs below. The estimate reports unseen pairs only.
    x, _ = correlated_gaussians(200, 8, 0.0, seed=4)
    _, y = correlated_gaussians(200, 8, 0.0, seed=5)
    torch.manual_seed(0)
    critic = SeparableCritic(8, 8, hidden_dim=128, embed_dim=64)
    train_x, train_y = x[:100], y[:100]

    def memorised() -> float:
        return mi_lower_bound(critic(train_x, train_y), "dv").item()

    def loss(batch: torch.Tensor) -> torch.Tensor:
        return -mi_lower_bound(critic(train_x[batch], train_y[batch]), "infonce")

    generator = torch.Generator().manual_seed(0)
    fit_critic(critic, loss, memorised, 100, generator, batch_size=100, max_epochs=300, patience=300)
    with torch.no_grad():
        unseen = mi_lower_bound(critic(x[100:], y[100:]), "dv").item()
        assert memorised() > 0.4 and unseen < 0.0, (memorised(), unseen)

    estimate = estimate_mutual_information(x, y, "dv", hidden_dim=128, embed_dim=64, held_out=0.5)
    assert estimate < 0.1, estimate


def test_infonce_saturates_at_the_log_of_the_test_half():
    # d = 8, rho = 0.99: I = 15.6 nats, far above log K; InfoNCE cannot report more than log K,
    # K the candidates of one positive on the test half (all its pairs).
    x, y = correlated_gaussians(2000, 8, 0.99, seed=6)
    result = mutual_information(x, y, "infonce", max_epochs=20)
    ceiling = math.log(result.sizes[2])
    assert result.value <= ceiling + 1e-5
    assert result.value > ceiling - 1.0, (result.value, ceiling)


def test_the_same_seed_gives_the_same_estimate():
    x, y = correlated_gaussians(800, 2, 0.6, seed=7)
    first = mutual_information(x, y, "dv", max_epochs=3, seed=11)
    again = mutual_information(x, y, "dv", max_epochs=3, seed=11)
    other = mutual_information(x, y, "dv", max_epochs=3, seed=12)
    assert first.value == again.value and first.history == again.history
    assert other.value != first.value


def test_arrays_and_one_dimensional_inputs_are_taken():
    x, y = correlated_gaussians(800, 1, 0.6, seed=8)
    from_tensors = estimate_mutual_information(x, y, "infonce", max_epochs=2)
    from_arrays = estimate_mutual_information(x.numpy()[:, 0], y.numpy().astype(np.float64), "infonce", max_epochs=2)
    assert from_arrays == pytest.approx(from_tensors, abs=1e-6)


def test_the_moving_average_gives_mines_corrected_gradient():
    # MINE (Belghazi et al. eq. 12): the gradient of the DV bound with the denominator of
    # grad(log mean_neg e^T) replaced by a moving average of mean_neg e^T.
    torch.manual_seed(0)
    correction = MovingAverageDV(rate=0.25)
    averages = []
    for step in range(3):
        scores = torch.randn(5, 5, requires_grad=True)
        bound = mi_lower_bound(scores, "dv")
        loss = correction.loss(scores.diagonal().mean(), bound)
        (grad,) = torch.autograd.grad(loss, scores)

        negative = ~torch.eye(5, dtype=torch.bool)
        mean_exp = scores.detach()[negative].exp().mean().item()
        averages.append(mean_exp if step == 0 else 0.75 * averages[-1] + 0.25 * mean_exp)
        expected = -torch.eye(5) / 5 + torch.where(negative, scores.detach().exp() / 20, 0.0) / averages[-1]
        assert torch.allclose(grad, expected, atol=1e-6), step
        assert correction.log_average.item() == pytest.approx(math.log(averages[-1]), abs=1e-6)
    # rate 1: the plain minibatch gradient of -DV.
    scores = torch.randn(5, 5, requires_grad=True)
    bound = mi_lower_bound(scores, "dv")
    plain = torch.autograd.grad(-bound, scores, retain_graph=True)[0]
    corrected = torch.autograd.grad(MovingAverageDV(rate=1.0).loss(scores.diagonal().mean(), bound), scores)[0]
    assert torch.allclose(plain, corrected)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"estimator": "nwj"}, "unknown estimator 'nwj'; expected one of dv, jsd, infonce"),
        ({"ema_rate": 0.0}, r"ema_rate must be a number in \(0, 1\]"),
        ({"held_out": 1.5}, r"held_out must be a fraction in \(0, 1\)"),
        ({"batch_size": 1}, "batch_size must be an integer >= 2"),
        ({"lr": -1.0}, "lr must be a positive number"),
    ],
)
def test_bad_options_are_refused(kwargs, message):
    x, y = correlated_gaussians(200, 2, 0.5)
    with pytest.raises(ValueError, match=message):
        mutual_information(x, y, **kwargs)


def test_bad_samples_are_refused():
    x, y = correlated_gaussians(200, 2, 0.5)
    with pytest.raises(ValueError, match="same number of paired samples; got 200 and 199"):
        estimate_mutual_information(x, y[:199])
    bad = x.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="x contains NaN or inf"):
        estimate_mutual_information(bad, y)
    with pytest.raises(ValueError, match=r"y must have shape \(N,\) or \(N, D\)"):
        estimate_mutual_information(x, y[:, :, None])
    with pytest.raises(ValueError, match="20 samples are too few"):
        estimate_mutual_information(x[:20], y[:20])


@pytest.mark.slow
@pytest.mark.parametrize("d,rho", [(4, 0.8), (2, 0.5), (8, 0.6)])
def test_dv_with_defaults_converges_near_the_closed_form(d, rho):
    x, y = correlated_gaussians(6000, d, rho, seed=9)
    truth = gaussian_mi(d, rho)
    estimate = estimate_mutual_information(x, y, "dv")
    assert 0.85 * truth <= estimate <= 1.1 * truth, (estimate, truth)


@pytest.mark.slow
def test_jsd_is_not_an_mi_value_but_rises_with_it():
    samples = [correlated_gaussians(4000, 2, rho, seed=10) for rho in (0.3, 0.6, 0.9)]
    values = [estimate_mutual_information(x, y, "jsd") for x, y in samples]
    assert values[0] < values[1] < values[2] <= 2 * math.log(2), values


def test_the_validation_script_writes_its_table_and_plot(tmp_path, capsys):
    from eval.analysis.validate import gaussian_mi, main

    assert gaussian_mi(4, 0.8) == pytest.approx(-2 * math.log(0.36))
    argv = ["--out", str(tmp_path), "--dims", "2", "--rhos", "0", "0.5", "--samples", "400", "--max-epochs", "3"]
    assert main([*argv, "--estimators", "infonce", "dv"]) == 0
    for name in ("mi_validation.csv", "mi_validation.json", "mi_validation.md", "mi_validation.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    table = (tmp_path / "mi_validation.md").read_text().splitlines()
    assert table[0] == "| d | rho | true MI | infonce | dv | DV / truth | log K |"
    assert table[2].startswith("| 2 | 0 | 0.000 |") and table[3].startswith("| 2 | 0.5 | 0.288 |")
    assert "[4/4] d=2 rho=0.5 dv:" in capsys.readouterr().out
