"""SimCLR and MoCo baselines from lightly's parts: views, training steps, momentum, features."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from lightly.transforms import MoCoV2Transform, SimCLRTransform
from torch.utils.data import DataLoader

import dim_ssl
from eval.baselines import BASELINES, MoCoModule, SimCLRModule, moco_transform, simclr_transform
from eval.data import load_dataset

# timm's smallest ResNet: the same code path as resnet18 (TimmEncoder, forward_features,
# forward_head) at a fraction of the cost, so a few Lightning steps take seconds on 2 cores.
BACKBONE = "test_resnet"
BATCH = 32


def make_encoder() -> dim_ssl.TimmEncoder:
    torch.manual_seed(0)
    return dim_ssl.TimmEncoder(BACKBONE, in_chans=1)


def make_trainer(steps: int) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )


def two_view_loader(transform) -> DataLoader:
    data = load_dataset("digits", "train", transform=transform, limit=4 * BATCH)
    return DataLoader(data, batch_size=BATCH, shuffle=True, drop_last=True,
                      generator=torch.Generator().manual_seed(0))


def backbone_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


# ---- transforms ------------------------------------------------------------------------


@pytest.mark.parametrize("build, lightly_class", [(simclr_transform, SimCLRTransform),
                                                   (moco_transform, MoCoV2Transform)])
def test_transform_gives_two_different_normalised_views(build, lightly_class):
    torch.manual_seed(0)
    transform = build("digits")
    assert isinstance(transform.views, lightly_class)  # lightly's own transform does the work
    image, _ = load_dataset("digits", "train", transform=lambda x: x)[0]   # raw (1, 8, 8) float
    views = transform(image)
    assert len(views) == 2
    for view in views:
        assert view.shape == (1, 32, 32) and view.dtype == torch.float32
    assert not torch.equal(views[0], views[1])


def test_transform_normalises_with_the_dataset_statistics():
    # With every random step switched off, a view is the evaluation image, normalised alike.
    transform = simclr_transform("digits", min_scale=1.0, cj_prob=0.0, random_gray_scale=0.0)
    raw = load_dataset("digits", "train", transform=lambda x: x)
    evaluation = load_dataset("digits", "train")
    view = transform(raw[0][0])[0]
    # 8-bit quantisation on the way through PIL: within one grey level / std.
    assert torch.allclose(view, evaluation[0][0], atol=1.5 / 255 / 0.3760)


def test_transform_for_three_channels_and_other_sizes():
    views = simclr_transform("digits", image_size=48, channels=3)(torch.rand(1, 8, 8))
    assert views[0].shape == (3, 48, 48)


def test_small_images_use_lightlys_cifar10_recipe_without_blur_or_flips_for_digits():
    simclr = simclr_transform("digits").views.transforms[0].transform.transforms
    names = {type(t).__name__: t for t in simclr}
    assert names["GaussianBlur"].prob == 0.0
    assert names["RandomHorizontalFlip"].p == 0.0  # a flipped digit is another digit
    flip = simclr_transform("cifar10").views.transforms[0].transform.transforms
    assert {type(t).__name__: t for t in flip}["RandomHorizontalFlip"].p == 0.5


def test_registry_names_both_baselines():
    assert BASELINES["simclr"].module is SimCLRModule and BASELINES["moco"].transform is moco_transform


# ---- SimCLR ----------------------------------------------------------------------------


def test_simclr_steps_train_the_backbone_with_a_finite_loss():
    model = SimCLRModule(make_encoder(), num_classes=10, batch_size=BATCH)
    before = backbone_state(model.encoder.backbone)
    head_before = backbone_state(model.projection_head)
    trainer = make_trainer(steps=3)
    trainer.fit(model, two_view_loader(simclr_transform("digits")))

    loss = float(trainer.callback_metrics["train_loss"])
    assert math.isfinite(loss) and loss > 0
    # NT-Xent with 2N = 64 views is at most log(2N - 1) + 2/T above 0; untrained ~ log(63).
    assert loss < math.log(2 * BATCH - 1) + 2 / 0.5
    assert "train_online_cls_top1" in trainer.callback_metrics
    after = backbone_state(model.encoder.backbone)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert any(not torch.equal(head_before[k], v) for k, v in backbone_state(model.projection_head).items())


def test_simclr_leaves_the_dim_only_mlp_frozen():
    model = SimCLRModule(make_encoder(), num_classes=10)
    assert not any(p.requires_grad for p in model.encoder.fc.parameters())
    assert not any(p.requires_grad for p in model.encoder.to_summary.parameters())
    assert all(p.requires_grad for p in model.encoder.backbone.parameters())


def test_simclr_learning_rate_follows_lightlys_linear_scaling():
    model = SimCLRModule(make_encoder(), num_classes=10, batch_size=256)
    assert model.scaled_lr == pytest.approx(0.06 * 256 / 128)
    optimizers, _ = model.configure_optimizers()
    assert optimizers[0].param_groups[0]["weight_decay"] == 5e-4
    assert optimizers[0].param_groups[1]["weight_decay"] == 0.0  # online classifier


def test_training_step_refuses_single_view_batches():
    model = SimCLRModule(make_encoder(), num_classes=10)
    with pytest.raises(ValueError, match="two augmented views"):
        model.training_step((torch.randn(4, 1, 32, 32), torch.zeros(4, dtype=torch.long)), 0)


def test_unknown_encoder_kind_is_refused():
    with pytest.raises(ValueError, match="TimmEncoder"):
        SimCLRModule(torch.nn.Linear(3, 3), num_classes=10)


# ---- MoCo ------------------------------------------------------------------------------


def test_moco_key_encoder_moves_by_momentum_not_by_gradient():
    m = 0.9
    model = MoCoModule(make_encoder(), num_classes=10, batch_size=BATCH, momentum=m, memory_bank_size=256)
    assert not any(p.requires_grad for p in model.encoder_momentum.parameters())
    assert not any(p.requires_grad for p in model.projection_head_momentum.parameters())
    # Make the key encoder differ from the query encoder, so the average is visible.
    with torch.no_grad():
        for p in model.encoder_momentum.backbone.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    query_before = backbone_state(model.encoder.backbone)
    key_before = backbone_state(model.encoder_momentum.backbone)

    trainer = make_trainer(steps=1)
    trainer.fit(model, two_view_loader(moco_transform("digits")))

    query_after = backbone_state(model.encoder.backbone)
    key_after = backbone_state(model.encoder_momentum.backbone)
    assert any(not torch.equal(query_before[k], query_after[k]) for k in query_before)  # gradient step
    for name in key_before:
        # One update at the start of the step, from the query weights before the SGD step.
        expected = m * key_before[name] + (1 - m) * query_before[name]
        assert torch.allclose(key_after[name], expected, atol=1e-6), name
    assert all(p.grad is None for p in model.encoder_momentum.parameters())
    assert math.isfinite(float(trainer.callback_metrics["train_loss"]))
    # Symmetric loss: both views' keys (2N) were queued in lightly's memory bank.
    assert int(model.criterion.memory_bank.bank_ptr) == 2 * BATCH


def test_moco_runs_several_steps_with_a_cosine_momentum_schedule():
    model = MoCoModule(make_encoder(), num_classes=10, batch_size=BATCH, memory_bank_size=256,
                       momentum=0.99, momentum_end=1.0, symmetric=False)
    trainer = make_trainer(steps=3)
    trainer.fit(model, two_view_loader(moco_transform("digits")))
    assert math.isfinite(float(trainer.callback_metrics["train_loss"]))
    assert float(trainer.callback_metrics["momentum"]) == pytest.approx(1.0)  # last step: the end value
    assert int(model.criterion.memory_bank.bank_ptr) == 3 * BATCH  # one view's keys per step


def test_moco_refuses_a_momentum_outside_0_1():
    with pytest.raises(ValueError, match="momentum"):
        MoCoModule(make_encoder(), num_classes=10, momentum=1.5)


# ---- the feature contract --------------------------------------------------------------


@pytest.mark.parametrize("module_class", [SimCLRModule, MoCoModule])
def test_features_are_frozen_at_every_declared_position(module_class):
    encoder = make_encoder()
    model = module_class(encoder, num_classes=10).eval()
    x = torch.randn(5, 1, 32, 32)
    widths = {"pool": encoder.pooled_dim, "proj": 128,
              "conv": encoder.feature_channels * encoder.feature_map_size(32) ** 2}
    assert set(model.feature_positions) == set(widths)
    for position in model.feature_positions:
        features = model.features(x, position)
        assert features.shape == (5, widths[position])
        assert not features.requires_grad
    both = model.multi_features(x, ("proj", "pool"))
    assert list(both) == ["proj", "pool"]
    assert torch.allclose(both["pool"], encoder.eval().features(x, "pool"), atol=1e-5)
    with pytest.raises(ValueError, match="unknown position"):
        model.features(x, "y")


def test_the_papers_encoder_works_as_a_backbone_too():
    torch.manual_seed(0)
    encoder = dim_ssl.PaperEncoder(in_chans=1)
    model = SimCLRModule(encoder, num_classes=10).eval()
    x = torch.randn(3, 1, 32, 32)
    assert torch.allclose(model.features(x, "pool"), encoder.features(x, "pool"), atol=1e-5)
    assert model.features(x, "proj").shape == (3, 128)
    assert not any(p.requires_grad for p in encoder.fc.parameters())  # DIM's MLP is not trained
