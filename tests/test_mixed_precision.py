"""Mixed precision: under autocast the critics' products run in bfloat16 or float16, while the
MI bounds, the prior losses and the loss are computed in float32 (issue 12, item 4).

CPU autocast takes both bfloat16 and float16 in this torch; the same code paths run on GPUs.
"""

import pytest
import torch

from dim_ssl import DIMHead, mi_lower_bound
from dim_ssl.critics import CRITICS
from dim_ssl.estimators import ESTIMATORS, mi_lower_bound_from_pairs, mi_lower_bound_offset
from dim_ssl.prior import PriorMatching
from dim_ssl.scoring import all_pairs_bound

HALF = [torch.bfloat16, torch.float16]
COMBINATIONS = [
    (estimator, critic, negatives)
    for estimator in ESTIMATORS
    for critic, shape in CRITICS.items()
    for negatives in shape.negatives
]
CHANNELS, GLOBAL_DIM = 8, 4


def shared_signal_batch(n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """A 4x4 feature map and summaries that share a signal: bounds well above zero once trained."""
    generator = torch.Generator().manual_seed(0)
    signal = torch.randn(n, GLOBAL_DIM, generator=generator)
    mixing = torch.randn(CHANNELS, GLOBAL_DIM, generator=generator)
    local = torch.einsum("cd,nd->nc", mixing, signal)[:, :, None, None]
    feature_map = torch.relu(local + 0.3 * torch.randn(n, CHANNELS, 4, 4, generator=generator))
    return feature_map, signal + 0.1 * torch.randn(n, GLOBAL_DIM, generator=generator)


@pytest.mark.parametrize("estimator", list(ESTIMATORS))
@pytest.mark.parametrize("dtype", HALF)
def test_bounds_of_half_precision_scores_are_the_float32_bounds_of_those_scores(estimator, dtype):
    # Only the scores are low precision: every log-sum-exp, softplus and mean after them runs in
    # float32, so the bound equals the float32 bound of the same (rounded) values, to float32 ulps.
    torch.manual_seed(0)
    scores = (3 * torch.randn(16, 16, 9)).to(dtype)
    for across in (False, True):
        value = mi_lower_bound(scores, estimator, negatives_across_locations=across)
        reference = mi_lower_bound(scores.float(), estimator, negatives_across_locations=across)
        assert value.dtype == torch.float32
        assert value.item() == pytest.approx(reference.item(), abs=1e-6)
    pairs = mi_lower_bound_from_pairs(scores[:, 0], scores[:, 1], estimator)
    assert pairs.dtype == torch.float32
    reference = mi_lower_bound_from_pairs(scores[:, 0].float(), scores[:, 1].float(), estimator)
    assert pairs.item() == pytest.approx(reference.item(), abs=1e-6)


@pytest.mark.parametrize("estimator", list(ESTIMATORS))
def test_blockwise_scoring_of_bfloat16_factors_stays_exact(estimator):
    # The products in bfloat16, block by block; the bound, whole or chunked, in float32 and equal
    # to the float32 bound of the bfloat16 products. The gradient reaches the factors in bfloat16.
    torch.manual_seed(1)
    inputs = torch.randn(6, 5, 8).bfloat16().requires_grad_(True)
    summaries = torch.randn(6, 8).bfloat16().requires_grad_(True)
    products = (inputs.flatten(0, 1) @ summaries.T).view(6, 5, 6).transpose(1, 2)  # (rows, n, L) in bfloat16
    reference = mi_lower_bound_offset(products.float(), estimator, 0, True)
    for rows in (None, 2, 4):
        value = all_pairs_bound(inputs, summaries, None, estimator, 0, True, rows_per_chunk=rows)
        assert value.dtype == torch.float32
        assert value.item() == pytest.approx(reference.item(), abs=1e-5), rows
    value.backward()
    assert inputs.grad.dtype == torch.bfloat16 and torch.isfinite(inputs.grad.float()).all()


@pytest.mark.parametrize("estimator,critic,negatives", COMBINATIONS)
@pytest.mark.parametrize("dtype", HALF)
def test_every_combination_gives_a_float32_loss_under_autocast(estimator, critic, negatives, dtype):
    torch.manual_seed(0)
    head = DIMHead(
        CHANNELS, GLOBAL_DIM, estimator=estimator, critic=critic, negatives=negatives,
        alpha=0.5, beta=1.0, gamma=0.1, hidden_dim=16, embed_dim=8, score_penalty=0.1,
    )  # fmt: skip
    feature_map, y = shared_signal_batch(8)
    feature_map.requires_grad_(True)
    with torch.autocast("cpu", dtype=dtype):
        out = head(feature_map, y)
    for name in ("loss", "local_mi", "global_mi", "prior_loss", "prior_encoder_loss"):
        assert getattr(out, name).dtype == torch.float32, name
        assert torch.isfinite(getattr(out, name)), name
    out.loss.backward()
    assert torch.isfinite(feature_map.grad).all() and feature_map.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in head.parameters())


@pytest.mark.parametrize("estimator", list(ESTIMATORS))
def test_autocast_values_match_float32_for_a_trained_head(estimator):
    # A head trained (in float32) on a shared signal, so that the bounds are well above zero,
    # then evaluated in float32 and under bfloat16 and float16 autocast: the same numbers to
    # about 1% (bfloat16 keeps 8 bits of each score; the reductions no longer lose more).
    torch.manual_seed(0)
    head = DIMHead(CHANNELS, GLOBAL_DIM, estimator=estimator, alpha=0.5, hidden_dim=32, embed_dim=16)
    feature_map, y = shared_signal_batch()
    optimizer = torch.optim.Adam(head.parameters(), lr=3e-3)
    for _ in range(20):
        out = head(feature_map, y)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    torch.manual_seed(2)
    reference = head(feature_map, y)
    assert reference.local_mi > 0.3 and reference.global_mi > 0.3, (reference.local_mi, reference.global_mi)
    for dtype in HALF:
        torch.manual_seed(2)  # the same prior samples
        with torch.autocast("cpu", dtype=dtype):
            out = head(feature_map, y)
        for name in ("loss", "local_mi", "global_mi", "prior_loss"):
            expected = getattr(reference, name).item()
            assert getattr(out, name).item() == pytest.approx(expected, rel=1e-2, abs=1e-2), (dtype, name)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("prior", ["uniform", "gaussian"])
def test_prior_losses_are_float32_under_autocast(dtype, prior):
    torch.manual_seed(0)
    matching = PriorMatching(GLOBAL_DIM, prior, gradient_penalty=0.1)
    y = torch.randn(64, GLOBAL_DIM)
    torch.manual_seed(1)
    reference = matching(y)
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=dtype):
        losses = matching(y)
    for name in ("discriminator", "encoder", "gradient_penalty"):
        value = getattr(losses, name)
        assert value.dtype == torch.float32, name
        assert value.item() == pytest.approx(getattr(reference, name).item(), rel=2e-2, abs=2e-3), name


def test_the_quickstart_trains_with_bf16_mixed_precision_on_cpu(tmp_path):
    """trainer.precision=bf16-mixed through the real command line (a tiny timm model: CPUs without
    bfloat16 hardware run it slowly), with finite losses and MI values logged."""
    import math

    from pretrain_helpers import QUICKSTART, read_metrics, read_summary, run_cli

    out = tmp_path / "bf16"
    args = ["pretrain", QUICKSTART, "encoder.name=test_resnet", "data.limit_train=64", "data.limit_val=64"]
    args += ["data.batch_size=32", "trainer.max_epochs=1", "trainer.precision=bf16-mixed", f"output_dir={out}"]
    result = run_cli(args, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "bfloat16 Automatic Mixed Precision" in result.stdout + result.stderr
    summary = read_summary(out)
    assert summary["steps"] == 2 and math.isfinite(summary["final_loss"])
    logged = [
        float(row[key])
        for row in read_metrics(out)
        for key in ("train_local_mi_epoch", "train_loss_epoch")
        if row.get(key)
    ]
    assert logged and all(math.isfinite(v) for v in logged)
