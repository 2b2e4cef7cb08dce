"""SimCLR, MoCo and BYOL from lightly's parts: views, training steps, momentum, features."""

from __future__ import annotations

import math
import re

import pytest
import torch
from lightly.transforms import MoCoV2Transform, SimCLRTransform
from pretrain_helpers import quiet_trainer
from torch.utils.data import DataLoader, TensorDataset

import dim_ssl
from eval.data import dataset_spec, load_dataset
from eval.errors import ConfigError
from eval.methods import BYOL, METHODS, MoCo, SimCLR, get_method
from eval.methods.two_view import TwoViewTransform

# timm's smallest ResNet: the same code path as resnet18 (TimmEncoder, forward_features,
# forward_head) at a fraction of the cost, so a few Lightning steps take seconds on 2 cores.
BACKBONE = "test_resnet"
BATCH = 32
SHAPE = (1, 32, 32)
TWO_VIEW = [SimCLR, MoCo, BYOL]


def make_encoder() -> dim_ssl.TimmEncoder:
    torch.manual_seed(0)
    return dim_ssl.TimmEncoder(BACKBONE, in_chans=1)


def views_of(method_class, dataset="digits", image_size=32, channels=1, **transform) -> TwoViewTransform:
    """The method's own training views for a dataset, with ``transform`` overrides."""
    model = method_class(make_encoder(), num_classes=10, image_shape=SHAPE, transform=transform)
    return model.train_transform(dataset_spec(dataset), image_size, channels)


def two_view_loader(model) -> DataLoader:
    transform = model.train_transform(dataset_spec("digits"), 32, 1)
    data = load_dataset("digits", "train", transform=transform, limit=4 * BATCH)
    return DataLoader(data, batch_size=BATCH, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(0))


def backbone_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


# ---- transforms ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method_class, lightly_class", [(SimCLR, SimCLRTransform), (MoCo, MoCoV2Transform), (BYOL, SimCLRTransform)]
)
def test_transform_gives_two_different_normalised_views(method_class, lightly_class):
    transform = views_of(method_class)
    assert isinstance(transform, TwoViewTransform)
    assert type(transform.views) is lightly_class  # lightly's own transform does the work
    torch.manual_seed(0)
    image, _ = load_dataset("digits", "train", transform=lambda x: x)[0]  # raw (1, 8, 8) float
    views = transform(image)
    assert len(views) == 2
    for view in views:
        assert view.shape == (1, 32, 32) and view.dtype == torch.float32
    assert not torch.equal(views[0], views[1])


def test_transform_normalises_with_the_dataset_statistics():
    # With every random step switched off, a view is the evaluation image, normalised alike.
    transform = views_of(SimCLR, min_scale=1.0, cj_prob=0.0, random_gray_scale=0.0)
    raw = load_dataset("digits", "train", transform=lambda x: x)
    evaluation = load_dataset("digits", "train")
    view = transform(raw[0][0])[0]
    # 8-bit quantisation on the way through PIL: within one grey level / std.
    assert torch.allclose(view, evaluation[0][0], atol=1.5 / 255 / 0.3760)


def test_transform_for_three_channels_and_other_sizes():
    views = views_of(SimCLR, image_size=48, channels=3)(torch.rand(1, 8, 8))
    assert views[0].shape == (3, 48, 48)


@pytest.mark.parametrize("method_class", TWO_VIEW)
def test_small_images_use_lightlys_cifar10_recipe_without_blur_or_flips_for_digits(method_class):
    steps = views_of(method_class).views.transforms[0].transform.transforms
    names = {type(t).__name__: t for t in steps}
    assert names["GaussianBlur"].prob == 0.0
    assert names["RandomHorizontalFlip"].p == 0.0  # a flipped digit is another digit
    flip = views_of(method_class, dataset="cifar10", channels=3).views.transforms[0].transform.transforms
    assert {type(t).__name__: t for t in flip}["RandomHorizontalFlip"].p == 0.5


def test_simclr_views_at_32_pixels_are_lightlys_cifar10_benchmark_views():
    steps = views_of(SimCLR).views.transforms[0].transform.transforms
    jitter = next(t for t in steps if type(t).__name__ == "RandomApply").transforms[0]
    assert jitter.brightness == (0.6, 1.4)  # cj_strength 0.5: 0.8 * 0.5 = 0.4 either side


def test_a_view_option_the_transform_refuses_is_a_value_error_that_names_the_method():
    with pytest.raises(ValueError, match="transform of SimCLR.*no_such_option"):
        views_of(SimCLR, no_such_option=1)


def test_registry_names_every_baseline_with_its_views():
    assert METHODS["simclr"] is SimCLR and METHODS["moco"] is MoCo and METHODS["byol"] is BYOL
    assert get_method("moco") is MoCo and MoCo.view_transform is MoCoV2Transform
    assert SimCLR.view_transform is SimCLRTransform and BYOL.view_transform is SimCLRTransform
    known = ", ".join(sorted(METHODS))  # every registered method is named, in order
    assert {"byol", "dim", "moco", "simclr"} <= set(METHODS)
    with pytest.raises(ConfigError, match=re.escape(f"unknown method.name 'simclr2'; registered methods: {known}")):
        get_method("simclr2")


# ---- SimCLR ----------------------------------------------------------------------------


def test_simclr_steps_train_the_backbone_with_a_finite_loss():
    model = SimCLR(make_encoder(), num_classes=10, image_shape=SHAPE, batch_size=BATCH)
    before = backbone_state(model.encoder.backbone)
    head_before = backbone_state(model.projection_head)
    trainer = quiet_trainer(max_steps=3)
    trainer.fit(model, two_view_loader(model))

    loss = float(trainer.callback_metrics["train_loss"])
    assert math.isfinite(loss) and loss > 0
    # NT-Xent with 2N = 64 views is at most log(2N - 1) + 2/T above 0; untrained ~ log(63).
    assert loss < math.log(2 * BATCH - 1) + 2 / 0.5
    assert "train_online_cls_top1" in trainer.callback_metrics
    after = backbone_state(model.encoder.backbone)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert any(not torch.equal(head_before[k], v) for k, v in backbone_state(model.projection_head).items())


@pytest.mark.parametrize("method_class", TWO_VIEW)
def test_two_view_methods_leave_the_dim_only_mlp_frozen(method_class):
    model = method_class(make_encoder(), num_classes=10, image_shape=SHAPE)
    assert not any(p.requires_grad for p in model.encoder.fc.parameters())
    assert not any(p.requires_grad for p in model.encoder.to_summary.parameters())
    assert all(p.requires_grad for p in model.encoder.backbone.parameters())


def test_simclr_learning_rate_follows_lightlys_linear_scaling(tmp_path):
    model = SimCLR(make_encoder(), num_classes=10, image_shape=SHAPE, batch_size=256)
    assert model.learning_rate == pytest.approx(0.06 * 256 / 128)
    # The recipe's cosine schedule needs a run of known length: one step of a Trainer.
    images = torch.randn(8, *SHAPE)
    loader = DataLoader(
        TensorDataset(images, images.flip(-1), torch.arange(8)),
        batch_size=8,
        collate_fn=lambda rows: (
            [torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])],
            torch.stack([r[2] for r in rows]),
        ),
    )
    trainer = quiet_trainer(max_steps=1)
    trainer.fit(model, loader)
    optimizer = trainer.optimizers[0]
    assert isinstance(optimizer, torch.optim.SGD)
    trained, online = optimizer.param_groups
    assert trained["initial_lr"] == pytest.approx(0.12) and trained["momentum"] == 0.9
    assert trained["weight_decay"] == 5e-4
    assert online["initial_lr"] == pytest.approx(0.06) and online["weight_decay"] == 0.0  # online classifier
    (config,) = trainer.lr_scheduler_configs
    assert config.interval == "step"
    # lightly's warm-up + cosine for what the loss trains (one step of one: its end value), the
    # online classifier at its own constant rate.
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([0.12 * 1e-3, 0.06])


@pytest.mark.parametrize("method_class", TWO_VIEW)
def test_training_step_refuses_single_view_batches(method_class):
    model = method_class(make_encoder(), num_classes=10, image_shape=SHAPE)
    name = method_class.__name__
    with pytest.raises(ValueError, match=f"{name} trains on 2 views per image.*got one tensor"):
        model.training_step((torch.randn(4, *SHAPE), torch.zeros(4, dtype=torch.long)), 0)
    with pytest.raises(ValueError, match="got a list of 3 views"):
        model.training_step(([torch.randn(4, *SHAPE)] * 3, torch.zeros(4, dtype=torch.long)), 0)


def test_unknown_encoder_kind_is_refused():
    with pytest.raises(ValueError, match="TimmEncoder"):
        SimCLR(torch.nn.Linear(3, 3), num_classes=10, image_shape=SHAPE)


# ---- MoCo ------------------------------------------------------------------------------


def test_moco_key_encoder_moves_by_momentum_not_by_gradient():
    m = 0.9
    model = MoCo(make_encoder(), num_classes=10, image_shape=SHAPE, batch_size=BATCH, momentum=m, memory_bank_size=256)
    assert not any(p.requires_grad for p in model.encoder_momentum.parameters())
    assert not any(p.requires_grad for p in model.projection_head_momentum.parameters())
    # Make the key encoder differ from the query encoder, so the average is visible.
    with torch.no_grad():
        for p in model.encoder_momentum.backbone.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    query_before = backbone_state(model.encoder.backbone)
    key_before = backbone_state(model.encoder_momentum.backbone)

    trainer = quiet_trainer(max_steps=1)
    trainer.fit(model, two_view_loader(model))

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
    model = MoCo(
        make_encoder(),
        num_classes=10,
        image_shape=SHAPE,
        batch_size=BATCH,
        memory_bank_size=256,
        momentum=0.99,
        momentum_end=1.0,
        symmetric=False,
    )
    trainer = quiet_trainer(max_steps=3)
    trainer.fit(model, two_view_loader(model))
    assert math.isfinite(float(trainer.callback_metrics["train_loss"]))
    assert float(trainer.callback_metrics["train_momentum"]) == pytest.approx(1.0)  # last step: the end value
    assert int(model.criterion.memory_bank.bank_ptr) == 3 * BATCH  # one view's keys per step


@pytest.mark.parametrize("method_class", [MoCo, BYOL])
@pytest.mark.parametrize("key", ["momentum", "momentum_end"])
def test_a_momentum_outside_0_1_is_refused(method_class, key):
    with pytest.raises(ValueError, match=f"{key} must be in \\[0, 1\\]"):
        method_class(make_encoder(), num_classes=10, image_shape=SHAPE, **{key: 1.5})


# ---- the feature contract --------------------------------------------------------------


@pytest.mark.parametrize("method_class, proj_width", [(SimCLR, 128), (MoCo, 128), (BYOL, 256)])
def test_features_are_frozen_at_every_declared_position(method_class, proj_width):
    encoder = make_encoder()
    model = method_class(encoder, num_classes=10, image_shape=SHAPE).eval()
    x = torch.randn(5, *SHAPE)
    widths = {
        "pool": encoder.pooled_dim,
        "proj": proj_width,
        "conv": encoder.feature_channels * encoder.feature_map_size(32) ** 2,
    }
    assert model.feature_positions == ("conv", "pool", "proj")
    for position in model.feature_positions:
        features = model.features(x, position)
        assert features.shape == (5, widths[position])
        assert not features.requires_grad
    both = model.multi_features(x, ("proj", "pool"))
    assert list(both) == ["proj", "pool"]
    assert torch.allclose(both["pool"], encoder.eval().features(x, "pool"), atol=1e-5)
    assert torch.allclose(both["proj"], model.projection_head(both["pool"]), atol=1e-5)
    with pytest.raises(ValueError, match="unknown position"):
        model.features(x, "y")  # DIM's summary: untrained by these methods, not offered


def test_the_papers_encoder_works_as_a_backbone_too():
    torch.manual_seed(0)
    encoder = dim_ssl.PaperEncoder(in_chans=1)
    model = SimCLR(encoder, num_classes=10, image_shape=SHAPE).eval()
    x = torch.randn(3, *SHAPE)
    assert torch.allclose(model.features(x, "pool"), encoder.features(x, "pool"), atol=1e-5)
    assert model.features(x, "proj").shape == (3, 128)
    assert not any(p.requires_grad for p in encoder.fc.parameters())  # DIM's MLP is not trained


@pytest.mark.parametrize("method_class", [MoCo, BYOL])
def test_a_momentum_schedule_starts_at_its_first_value_in_a_step_taken_by_hand(method_class):
    # Outside a Trainer the run's length is unknown: the schedule's first value, not an error.
    model = method_class(make_encoder(), num_classes=10, image_shape=SHAPE, momentum=0.9, momentum_end=1.0)
    x = torch.randn(4, *SHAPE)
    step = model.training_loss([x, x.flip(-1)])
    assert torch.isfinite(step.loss) and step.terms["momentum"] == pytest.approx(0.9)
