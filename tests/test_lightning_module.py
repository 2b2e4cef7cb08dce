"""eval.methods.DIM: the harness contract, monitors, optimizer, and a plain Lightning fit."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from pretrain_helpers import quiet_trainer
from torch.utils.data import DataLoader, TensorDataset

import dim_ssl
from eval.methods import DIM
from eval.probes.knn import leave_one_out_knn_accuracy


def make_module(encoder=None, alpha=0.0, beta=1.0, gamma=0.1, **kwargs):
    torch.manual_seed(0)
    encoder = encoder or dim_ssl.TimmEncoder("test_resnet", global_dim=16, in_chans=1, hidden_dim=32)
    head = {"alpha": alpha, "beta": beta, "gamma": gamma, "hidden_dim": 32, "embed_dim": 32}
    return DIM(encoder, num_classes=10, image_shape=(1, 32, 32), head=head, **kwargs)


def tiny_loaders(train_batch=8):
    generator = torch.Generator().manual_seed(0)
    images, labels = torch.randn(32, 1, 32, 32, generator=generator), torch.arange(32) % 10
    train = DataLoader(TensorDataset(images, labels), batch_size=train_batch, drop_last=True)
    val = DataLoader(TensorDataset(images, labels), batch_size=16)
    return train, val


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
    module = make_module(monitor={"feature": position}).eval()
    x = torch.randn(4, 1, 32, 32)
    monitored = module.training_loss([x]).features[position].flatten(1)
    assert torch.allclose(monitored, module.features(x, position), atol=1e-6)
    assert module.online_classifier.feature_dim == monitored.shape[1]


def test_the_paper_encoder_works_too():
    module = make_module(dim_ssl.PaperEncoder(global_dim=16, in_chans=1, hidden_dim=32))
    assert module.online_classifier.feature_dim == 256 * 4 * 4
    loss = module.training_step((torch.randn(4, 1, 32, 32), torch.arange(4)), 0)
    assert torch.isfinite(loss)


def test_only_the_terms_the_head_computes_are_logged():
    assert make_module().terms == ("local_mi", "prior_loss")
    assert make_module(alpha=1.0, beta=0.0, gamma=1.0).terms == ("global_mi", "prior_loss")
    assert make_module(alpha=0.5, beta=1.0, gamma=0.0).terms == ("local_mi", "global_mi")
    module = make_module()
    # The step hands back exactly those terms, and each gets an epoch mean besides the loss's.
    step = module.training_loss([torch.randn(4, 1, 32, 32)])
    assert set(step.terms) == {"local_mi", "prior_loss"}
    assert all(math.isfinite(float(value)) for value in step.terms.values())
    assert set(module.epoch_means) == {"loss", "online_cls_top1", "local_mi", "prior_loss"}


def test_a_list_of_views_is_refused_with_a_clear_message():
    module = make_module()
    views = [torch.randn(4, 1, 32, 32)] * 2
    with pytest.raises(ValueError, match="DIM trains on one view per image.*a list of 2 views"):
        module.training_step((views, torch.arange(4)), 0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"optimizer": {"name": "lamb"}}, "unknown optimizer 'lamb'"),
        ({"optimizer": {"schedule": "step"}}, "unknown schedule"),
        ({"optimizer": {"lr": 0.0}}, "lr must be positive"),
        ({"optimizer": {"learning_rate": 1e-3}}, "unknown optimizer key.*learning_rate"),
        ({"monitor": {"feature": "logits"}}, "unknown feature position"),
        ({"monitor": {"knn_k": 0}}, "knn_k >= 1"),
        ({"monitor": {"online_lr": 0.0}}, "online_lr must be positive"),
        ({"monitor": {"knn": 5}}, "unknown monitor key"),
        ({"batch_size": 0}, "batch_size must be positive"),
    ],
)
def test_bad_arguments_are_refused_early(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_module(**kwargs)


def test_a_misspelt_head_argument_names_the_ones_dimhead_takes():
    encoder = dim_ssl.TimmEncoder("test_resnet", global_dim=16, in_chans=1, hidden_dim=32)
    with pytest.raises(ValueError, match="unknown head argument.*alpah.*DIMHead takes.*alpha"):
        DIM(encoder, num_classes=10, image_shape=(1, 32, 32), head={"alpah": 1.0})
    with pytest.raises(ValueError, match="num_classes must be at least 2"):
        DIM(encoder, num_classes=1, image_shape=(1, 32, 32))
    with pytest.raises(ValueError, match="dim_ssl.DIMEncoder"):
        DIM(torch.nn.Linear(3, 3), num_classes=10, image_shape=(1, 32, 32))


def test_the_optimizer_is_the_papers_adam_by_default_with_the_online_classifier_apart():
    module = make_module()
    optimizer = module.configure_optimizers()  # no schedule: a bare optimizer, no Trainer needed
    assert isinstance(optimizer, torch.optim.Adam)
    trained, online = optimizer.param_groups
    assert (trained["name"], online["name"]) == ("trained", "online_classifier")
    assert trained["lr"] == pytest.approx(1e-4) and trained["betas"] == (0.5, 0.999)
    assert online["lr"] == pytest.approx(1e-3) and online["weight_decay"] == 0.0
    # Everything DIM trains (encoder with its summary MLP, critics, prior adversary) is in the
    # first group, the online classifier only in the second.
    online_ids = {id(p) for p in module.online_classifier.parameters()}
    assert {id(p) for p in online["params"]} == online_ids
    assert {id(p) for p in trained["params"]} == {id(p) for p in module.parameters()} - online_ids
    assert all(p.requires_grad for p in module.encoder.summary_parameters())
    # optimizer.reference_batch_size scales the rate linearly.
    scaled = make_module(batch_size=64, optimizer={"lr": 1e-3, "reference_batch_size": 256})
    assert scaled.learning_rate == pytest.approx(1e-3 * 64 / 256)


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


class _RecordLearningRates(pl.Callback):
    def __init__(self):
        self.rates = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.rates.append([group["lr"] for group in trainer.optimizers[0].param_groups])


def test_cosine_schedule_warms_up_linearly_then_decays_to_lightlys_end_value_every_step(tmp_path):
    # lightly's CosineWarmupScheduler, stepped every batch: 2 epochs of 4 steps, 1 epoch of
    # warm-up (4 steps, reaching the full rate at the 4th), then a half cosine over the other 4
    # steps down to end_value 1e-3 of the rate.
    lr = 2e-3
    module = make_module(optimizer={"lr": lr, "schedule": "cosine", "warmup_epochs": 1.0})
    train, _ = tiny_loaders(train_batch=8)
    record = _RecordLearningRates()
    trainer = quiet_trainer(tmp_path, max_epochs=2, limit_val_batches=0, callbacks=[record])
    trainer.fit(module, train)
    trained = [rates[0] for rates in record.rates]
    end = 1e-3
    cosine = [end + (1 - end) * (math.cos(math.pi * s / 3) + 1) / 2 for s in range(3)] + [end]
    expected = [lr * f for f in (0.25, 0.5, 0.75, 1.0)] + [lr * f for f in cosine]
    assert trained == pytest.approx(expected, rel=1e-6)
    final = trainer.optimizers[0].param_groups
    assert final[0]["lr"] == pytest.approx(lr * end, rel=1e-6)  # after the last step: the end value
    # The online classifier's group keeps monitor.online_lr (not optimizer.lr) all along.
    assert [rates[1] for rates in record.rates] == pytest.approx([1e-3] * len(record.rates))
    assert final[1]["lr"] == pytest.approx(1e-3)


def test_a_plain_lightning_fit_logs_loss_terms_and_monitors(tmp_path):
    module = make_module(optimizer={"schedule": "cosine"}, monitor={"knn_k": 5})
    train, val = tiny_loaders()
    trainer = quiet_trainer(tmp_path, max_epochs=2)
    trainer.fit(module, train, val)
    metrics = trainer.callback_metrics
    for name in (
        "train_loss",
        "train_local_mi",
        "train_prior_loss",
        "train_online_cls_top1",
        "train_loss_epoch",
        "train_online_cls_top1_epoch",
        "val_online_cls_top1",
        "val_knn_top1",
    ):
        assert name in metrics and math.isfinite(float(metrics[name])), name
    assert "train_global_mi" not in metrics  # NaN by design for DIM(L): not logged
    assert trainer.global_step == 8
    lrs = [group["lr"] for group in trainer.optimizers[0].param_groups]
    assert lrs[0] == pytest.approx(1e-4 * 1e-3, rel=1e-6)  # DIM's 1e-4, cosine down to lightly's end value
