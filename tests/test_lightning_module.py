"""DIMLightningModule: the harness contract, monitors, optimizer, and a plain Lightning fit."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

import dim_ssl
from dim_ssl.lightning import DIMLightningModule, _WarmupCosine, leave_one_out_knn_accuracy


def make_module(encoder=None, alpha=0.0, beta=1.0, gamma=0.1, **kwargs):
    torch.manual_seed(0)
    encoder = encoder or dim_ssl.TimmEncoder("test_resnet", global_dim=16, in_chans=1, hidden_dim=32)
    head = dim_ssl.DIMHead(encoder.feature_channels, encoder.global_dim, alpha=alpha, beta=beta, gamma=gamma,
                           hidden_dim=32, embed_dim=32)
    return DIMLightningModule(encoder, head, num_classes=10, image_shape=(1, 32, 32), **kwargs)


def test_it_follows_the_harness_contract():
    module = make_module().eval()
    x = torch.randn(4, 1, 32, 32)
    assert module.feature_positions == ("conv", "fc", "y", "pool")
    for position in module.feature_positions:
        features = module.features(x, position)
        assert features.dim() == 2 and features.shape[0] == 4 and not features.requires_grad
        assert torch.equal(features, module.encoder.features(x, position).flatten(1))
    assert module.training is False  # features() leaves the mode alone
    assert module.online_classifier.feature_dim == module.encoder.pooled_dim


@pytest.mark.parametrize("position", ["pool", "fc", "y", "conv"])
def test_the_online_classifier_sees_the_features_of_the_training_pass(position):
    module = make_module(online_feature=position).eval()
    x = torch.randn(4, 1, 32, 32)
    _, _, monitored = module._encode(x)
    assert torch.allclose(monitored, module.features(x, position), atol=1e-6)
    assert module.online_classifier.feature_dim == monitored.shape[1]


def test_the_paper_encoder_works_too():
    module = make_module(dim_ssl.PaperEncoder(global_dim=16, in_chans=1, hidden_dim=32))
    assert module.online_classifier.feature_dim == 256 * 4 * 4
    loss = module.training_step((torch.randn(4, 1, 32, 32), torch.arange(4)), 0)
    assert torch.isfinite(loss)


def test_only_the_terms_the_head_computes_are_logged():
    assert make_module().terms == ["loss", "local_mi", "prior_loss"]
    assert make_module(alpha=1.0, beta=0.0, gamma=1.0).terms == ["loss", "global_mi", "prior_loss"]
    assert make_module(alpha=0.5, beta=1.0, gamma=0.0).terms == ["loss", "local_mi", "global_mi"]


def test_a_list_of_views_is_refused_with_a_clear_message():
    module = make_module()
    views = [torch.randn(4, 1, 32, 32)] * 2
    with pytest.raises(ValueError, match="one view per image"):
        module.training_step((views, torch.arange(4)), 0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"optimizer": "lamb"}, "unknown optimizer"),
        ({"schedule": "step"}, "unknown schedule"),
        ({"lr": 0.0}, "lr must be positive"),
        ({"online_feature": "logits"}, "unknown feature position"),
        ({"knn_k": 0}, "knn_k >= 1"),
    ],
)
def test_bad_arguments_are_refused_early(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_module(**kwargs)


def test_leave_one_out_knn_leaves_the_query_out():
    features = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    assert leave_one_out_knn_accuracy(features, torch.tensor([0, 0, 1, 1]), k=1) == 1.0
    # Each sample's only same-label partner sits in the other cluster: all wrong without itself.
    assert leave_one_out_knn_accuracy(features, torch.tensor([0, 1, 0, 1]), k=1) == 0.0
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(5, 8, generator=generator) * 5
    labels = torch.arange(5).repeat(40)
    points = centres[labels] + torch.randn(200, 8, generator=generator)
    assert leave_one_out_knn_accuracy(points, labels, k=20, chunk_size=16) > 0.95
    with pytest.raises(ValueError, match="at least two"):
        leave_one_out_knn_accuracy(features[:1], torch.tensor([0]))


def test_warmup_then_cosine_to_zero():
    schedule = _WarmupCosine(warmup=10, total=110)
    assert schedule(0) == pytest.approx(0.1) and schedule(9) == pytest.approx(1.0)
    assert schedule(60) == pytest.approx(0.5) and schedule(110) == pytest.approx(0.0, abs=1e-12)
    assert all(0 <= schedule(s) <= 1 for s in range(200))


def test_a_plain_lightning_fit_logs_loss_terms_and_monitors(tmp_path):
    module = make_module(schedule="cosine", knn_k=5)
    generator = torch.Generator().manual_seed(0)
    images, labels = torch.randn(32, 1, 32, 32, generator=generator), torch.arange(32) % 10
    train = DataLoader(TensorDataset(images, labels), batch_size=8, drop_last=True)
    val = DataLoader(TensorDataset(images, labels), batch_size=16)
    trainer = pl.Trainer(
        max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path,
    )
    trainer.fit(module, train, val)
    metrics = trainer.callback_metrics
    for name in ("train_loss", "train_local_mi", "train_prior_loss", "train_online_cls_top1",
                 "train_loss_epoch", "train_online_cls_top1_epoch", "val_online_cls_top1", "val_knn_top1"):
        assert name in metrics and math.isfinite(float(metrics[name])), name
    assert "train_global_mi" not in metrics  # NaN by design for DIM(L): not logged
    lrs = [group["lr"] for group in trainer.optimizers[0].param_groups]
    assert lrs[0] == pytest.approx(0.0, abs=1e-9) and lrs[1] == pytest.approx(1e-3)  # cosine ends at 0
