"""Every registered pretraining method, through the one API of ``eval.methods.MethodModule``.

Parametrised over the registry (as timm's tests run over ``list_models()``): a method added with
``@register_method`` is picked up here with no edit. Each test builds the method on a tiny
encoder and 1 x 32 x 32 images, so the whole file runs in well under a minute on 2 cores.
"""

from __future__ import annotations

import inspect
import io
import math

import pytest
import pytorch_lightning as pl
import torch
from lightly.loss import NegativeCosineSimilarity
from pretrain_helpers import quiet_trainer
from torch.utils.data import DataLoader, Dataset

import dim_ssl
import eval.methods
from eval.data import DataInfo, dataset_spec, load_dataset
from eval.errors import ConfigError
from eval.methods import BYOL, DIM, METHODS, MoCo, SimCLR, StepOutput, TwoViewMethod, method_schema, register_method
from eval.methods.base import MONITOR_DEFAULTS, OPTIMIZER_DEFAULTS
from eval.methods.registry import build_method, free_form_keys
from eval.training.config import resolve_config

NAMES = sorted(METHODS)
TWO_VIEW_NAMES = [name for name in NAMES if issubclass(METHODS[name], TwoViewMethod)]
# Methods whose loss never reads y: their summary MLP is frozen.
BACKBONE_ONLY_NAMES = [name for name in NAMES if not METHODS[name].trains_summary]
SUMMARY_TRAINING_NAMES = [name for name in NAMES if METHODS[name].trains_summary]
SHAPE = (1, 32, 32)
HARNESS_ARGUMENTS = {"num_classes", "image_shape", "batch_size", "optimizer", "monitor"}

# Small heads for speed; a method not listed here is built with its own defaults.
SMALL = {
    "dim": {"head": {"hidden_dim": 32, "embed_dim": 32}},
    "simclr": {"hidden_dim": 64, "output_dim": 32},
    "moco": {"hidden_dim": 64, "output_dim": 32, "memory_bank_size": 64},
    "byol": {"hidden_dim": 64, "output_dim": 32},
    "mvdim": {"head": {"hidden_dim": 32, "embed_dim": 32}},
    "simclr+dim": {"hidden_dim": 64, "output_dim": 32, "head": {"hidden_dim": 32, "embed_dim": 32}},
    "moco+dim": {
        "hidden_dim": 64,
        "output_dim": 32,
        "memory_bank_size": 64,
        "head": {"hidden_dim": 32, "embed_dim": 32},
    },
}

# Each known method's ``method`` section, written out from its documented constructor.
DIMHEAD_DEFAULTS = {
    name: p.default
    for name, p in inspect.signature(dim_ssl.DIMHead.__init__).parameters.items()
    if name not in ("self", "local_channels", "global_dim")
}
EXPECTED_SCHEMAS = {
    # DIM gathers negatives across DDP ranks by default (DIMHead's own default is False).
    "dim": {"head": {**DIMHEAD_DEFAULTS, "gather_distributed": True}},
    "simclr": {"transform": {}, "temperature": 0.5, "hidden_dim": 512, "output_dim": 128},
    "moco": {
        "transform": {},
        "temperature": 0.1,
        "memory_bank_size": 4096,
        "momentum": 0.99,
        "momentum_end": None,
        "symmetric": True,
        "hidden_dim": 512,
        "output_dim": 128,
    },
    "byol": {"transform": {}, "hidden_dim": 1024, "output_dim": 256, "momentum": 0.996, "momentum_end": 1.0},
}
# lightly's CIFAR-10 benchmark recipe for the two-view methods; the paper's Adam for DIM.
LIGHTLY_SGD = {
    "name": "sgd",
    "lr": 0.06,
    "reference_batch_size": 128,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "schedule": "cosine",
}
EXPECTED_OPTIMIZERS = {
    "dim": {"name": "adam", "lr": 1e-4, "betas": [0.5, 0.999], "schedule": None, "weight_decay": 0.0},
    "simclr": LIGHTLY_SGD,
    "moco": LIGHTLY_SGD,
    "byol": LIGHTLY_SGD,
}
EXPECTED_ONLINE_LR = {"dim": 1e-3, "simclr": 0.06, "moco": 0.06, "byol": 0.06}


def tiny_encoder(kind: str = "test_resnet") -> dim_ssl.DIMEncoder:
    if kind == "paper":
        return dim_ssl.PaperEncoder(global_dim=16, in_chans=1, hidden_dim=32)
    return dim_ssl.TimmEncoder(kind, global_dim=16, in_chans=1, hidden_dim=32, input_size=32)


def build(name: str, seed: int = 0, encoder: str = "test_resnet", **kwargs) -> eval.methods.MethodModule:
    torch.manual_seed(seed)
    return METHODS[name](tiny_encoder(encoder), num_classes=10, image_shape=SHAPE, **{**SMALL.get(name, {}), **kwargs})


def images(n: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(seed))


def hand_views(model, x: torch.Tensor) -> list[torch.Tensor]:
    """The batch's views built by hand: the images, then (two-view methods) their mirror images."""
    return [x, x.flip(-1)][: model.num_views]


class HandViews(Dataset):
    """``(views, label)`` rows from random images, views as :func:`hand_views` builds them."""

    def __init__(self, num_views: int, n: int = 8) -> None:
        self.x, self.num_views = images(n), num_views

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        views = [self.x[i], self.x[i].flip(-1)]
        return (views if self.num_views == 2 else views[0]), i % 10


# ---- the registry ----------------------------------------------------------------------


def test_importing_eval_methods_registers_the_built_in_methods_one_file_each():
    for name, cls in {"byol": BYOL, "dim": DIM, "moco": MoCo, "simclr": SimCLR}.items():
        assert METHODS[name] is cls and eval.methods.get_method(name) is cls
        assert cls.__module__ == f"eval.methods.{name}"
    assert all(issubclass(cls, eval.methods.MethodModule) for cls in METHODS.values())


def test_a_new_method_is_one_class_whose_keyword_arguments_become_its_config_section():
    @register_method("toy_for_tests")
    class Toy(TwoViewMethod):
        """A toy two-view method."""

        view_transform = SimCLR.view_transform

        def __init__(self, encoder, num_classes, image_shape, *, scale: float = 2.0, **common):
            super().__init__(encoder, num_classes, image_shape, **common)
            self.scale = scale
            self.projection_head = torch.nn.Linear(encoder.pooled_dim, 4)

        def training_loss(self, views):
            pooled = self.encoder.pool(torch.cat(list(views)))
            return StepOutput(self.scale * self.projection_head(pooled).pow(2).mean(), features={"pool": pooled})

    try:
        assert METHODS["toy_for_tests"] is Toy
        assert method_schema(Toy) == {"transform": {}, "scale": 2.0}
        config = resolve_config(None, ["method.name=toy_for_tests", "method.scale=3"], base={})
        assert config["method"] == {"name": "toy_for_tests", "transform": {}, "scale": 3.0}
        assert config["optimizer"]["name"] == "sgd"  # TwoViewMethod's recipe, inherited
        with pytest.raises(ConfigError, match="did you mean 'method.scale'"):
            resolve_config(None, ["method.name=toy_for_tests", "method.scal=3"], base={})
        with pytest.raises(ValueError, match="already registered"):
            register_method("toy_for_tests")(type("Other", (Toy,), {}))
    finally:
        METHODS.pop("toy_for_tests", None)
    with pytest.raises(ValueError, match="takes a MethodModule subclass"):
        register_method("not_a_method")(torch.nn.Linear)
    assert "toy_for_tests" not in METHODS and "not_a_method" not in METHODS


# ---- every method: a step, training, configuration, checkpoints -------------------------


@pytest.mark.parametrize("encoder", ["resnet18", "paper"])
@pytest.mark.parametrize("name", NAMES)
def test_one_lightning_training_step_on_the_methods_own_views_gives_a_finite_loss(tmp_path, name, encoder):
    model = build(name, encoder=encoder, batch_size=16, monitor={"knn_k": 5})
    views = model.train_transform(dataset_spec("digits"), 32, 1)
    if views is None:  # one-view methods: the harness's augmentation
        train = load_dataset("digits", "train", train_transform=True, limit=16)
    else:
        train = load_dataset("digits", "train", transform=views, limit=16)
    val = load_dataset("digits", "test", limit=32)
    before = {k: v.detach().clone() for k, v in model.encoder.named_parameters() if v.requires_grad}
    trainer = quiet_trainer(tmp_path, max_steps=1)
    trainer.fit(model, DataLoader(train, batch_size=16, drop_last=True), DataLoader(val, batch_size=32))

    assert trainer.global_step == 1
    metrics = trainer.callback_metrics
    for key in ("train_loss", "train_online_cls_top1", "val_online_cls_top1", "val_knn_top1"):
        assert key in metrics and math.isfinite(float(metrics[key])), key
    after = dict(model.encoder.named_parameters())
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the step moved the encoder


@pytest.mark.parametrize("name", NAMES)
def test_the_loss_falls_on_a_fixed_batch_with_the_methods_own_optimizer(name):
    # The recipe's optimizer without its cosine schedule (which needs a Trainer for the run's length).
    model = build(name, batch_size=8, optimizer={"schedule": None}).train()
    optimizer = model.configure_optimizers()
    assert isinstance(optimizer, torch.optim.Optimizer)
    views = hand_views(model, images(8))
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss = model.training_loss(views).loss
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert all(math.isfinite(v) for v in losses)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    # Measured: 22-50 % lower after 30 steps; an untrained method stays within 0.1 % (or rises:
    # MoCo's queue fills with this batch's own keys).
    assert last < first - 0.1 * abs(first), losses


@pytest.mark.parametrize("name", NAMES)
def test_method_schema_is_the_constructors_keyword_defaults(name):
    cls = METHODS[name]
    schema = method_schema(cls)
    if name in EXPECTED_SCHEMAS:
        assert schema == EXPECTED_SCHEMAS[name]
    # What a module built with defaults records as its arguments is the schema, key for key.
    model = cls(tiny_encoder(), num_classes=10, image_shape=SHAPE)
    assert set(model.hparams) - HARNESS_ARGUMENTS == set(schema)
    assert {key: model.hparams[key] for key in schema} == schema
    # ... and the schema, given back explicitly, is accepted by the constructor.
    cls(tiny_encoder(), num_classes=10, image_shape=SHAPE, **schema)
    # Mutable defaults are copies: editing one schema does not change the next.
    for value in schema.values():
        if isinstance(value, dict):
            value["edited"] = True
    assert all("edited" not in v for v in method_schema(cls).values() if isinstance(v, dict))


def test_dims_head_section_has_every_dimhead_keyword_argument():
    head = method_schema(DIM)["head"]
    assert set(head) == set(DIMHEAD_DEFAULTS)
    assert {k: v for k, v in head.items() if k != "gather_distributed"} == {
        k: v for k, v in DIMHEAD_DEFAULTS.items() if k != "gather_distributed"
    }
    assert free_form_keys(method_schema(DIM)) == ()  # head is checked key by key
    assert free_form_keys(method_schema(SimCLR)) == ("transform",)  # lightly's arguments: passed through


@pytest.mark.parametrize("name", NAMES)
def test_a_config_naming_the_method_resolves_with_its_recipe_as_the_optimizer_defaults(name):
    cls = METHODS[name]
    config = resolve_config(None, [f"method.name={name}"], base={})
    assert config["method"] == {"name": name, **method_schema(cls)}
    assert config["optimizer"] == {**OPTIMIZER_DEFAULTS, **cls.recipe.get("optimizer", {})} == cls.defaults("optimizer")
    assert {k: v for k, v in config["monitor"].items() if k != "best"} == cls.defaults("monitor")
    if name in EXPECTED_OPTIMIZERS:
        assert {k: config["optimizer"][k] for k in EXPECTED_OPTIMIZERS[name]} == EXPECTED_OPTIMIZERS[name]
        assert config["monitor"]["online_lr"] == EXPECTED_ONLINE_LR[name]
    assert set(config["monitor"]) - {"best"} == set(MONITOR_DEFAULTS)
    # An optimizer key given in the configuration wins over the recipe, the others stay.
    tuned = resolve_config(None, [f"method.name={name}", "optimizer.lr=0.5"], base={})
    assert tuned["optimizer"] == {**config["optimizer"], "lr": 0.5}
    # The resolved configuration builds the method with exactly those settings.
    small = resolve_config(
        None,
        [
            f"method.name={name}",
            "encoder.name=test_resnet",
            "encoder.global_dim=16",
            "encoder.hidden_dim=32",
            "data.batch_size=32",
        ],
        base={},
    )
    model = build_method(small, DataInfo(dataset_spec("digits"), 32, 1, 10, 100))
    assert type(model) is cls and model.batch_size == 32
    assert model.optimizer_settings == small["optimizer"]
    assert model.monitor_settings == {k: small["monitor"][k] for k in MONITOR_DEFAULTS}


@pytest.mark.parametrize("name", NAMES)
def test_a_state_dict_round_trip_gives_identical_features(name):
    model = build(name, seed=0, optimizer={"schedule": None})
    optimizer = model.configure_optimizers()
    model.training_loss(hand_views(model, images(8, seed=1))).loss.backward()  # weights and statistics move
    optimizer.step()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)  # plain tensors: loads without running code

    fresh = build(name, seed=1).eval()
    model.eval()
    x = images(4, seed=2)
    assert not torch.allclose(fresh.features(x, "pool"), model.features(x, "pool"))  # a different start
    fresh.load_state_dict(state, strict=True)
    for position in model.feature_positions:
        assert torch.equal(fresh.features(x, position), model.features(x, position)), position


@pytest.mark.parametrize("name", NAMES)
def test_feature_positions_are_the_encoders_less_an_untrained_summary_plus_the_methods_own(name):
    model = build(name).eval()
    encoder_positions = model.encoder.feature_positions
    if model.trains_summary:
        assert model.feature_positions == encoder_positions + model.extra_positions
    else:
        assert model.feature_positions == (*(p for p in encoder_positions if p not in ("fc", "y")), "proj")
    x = images(3)
    found = model.multi_features(x, model.feature_positions)
    for position, features in found.items():
        assert features.shape[0] == 3 and features.dim() == 2 and not features.requires_grad
        assert torch.equal(features, model.features(x, position))
    assert not model.training  # features leave the mode alone
    with pytest.raises(ValueError, match="unknown position.*'logits'"):
        model.features(x, "logits")


# ---- two-view methods: what is frozen, what a batch must be -----------------------------


@pytest.mark.parametrize("name", BACKBONE_ONLY_NAMES)
def test_backbone_only_methods_freeze_the_summary_mlp_and_the_momentum_copies(name):
    model = build(name, optimizer={"schedule": None})
    summary = list(model.encoder.summary_parameters())
    assert summary and not any(p.requires_grad for p in summary)
    copies = [getattr(model, attr) for attr in ("encoder_momentum", "projection_head_momentum") if hasattr(model, attr)]
    if name in ("moco", "byol"):
        assert len(copies) == 2
    frozen = [p for copy in copies for p in copy.parameters()]
    assert not any(p.requires_grad for p in frozen)
    # The optimizer holds none of them, and a backward pass gives them no gradient.
    held = {id(p) for group in model.configure_optimizers().param_groups for p in group["params"]}
    assert held.isdisjoint(id(p) for p in summary + frozen)
    model.training_loss(hand_views(model, images(8))).loss.backward()
    assert all(p.grad is None for p in summary + frozen)
    assert any(p.grad is not None for p in model.encoder.backbone.parameters())


@pytest.mark.parametrize("name", SUMMARY_TRAINING_NAMES)
def test_methods_that_read_y_train_the_summary_mlp(name):
    model = build(name)
    assert all(p.requires_grad for p in model.encoder.summary_parameters())
    model.training_loss(hand_views(model, images(8))).loss.backward()
    assert all(p.grad is not None for p in model.encoder.summary_parameters())


@pytest.mark.parametrize("name", NAMES)
def test_a_batch_with_the_wrong_number_of_views_is_a_clear_value_error(name):
    model = build(name)
    x, labels = images(4), torch.arange(4)
    cls_name = type(model).__name__
    if model.num_views == 1:
        with pytest.raises(ValueError, match=f"{cls_name} trains on one view per image.*a list of 2 views"):
            model.training_step(([x, x.flip(-1)], labels), 0)
    else:
        with pytest.raises(ValueError, match=f"{cls_name} trains on 2 views per image.*got one tensor"):
            model.training_step((x, labels), 0)
        with pytest.raises(ValueError, match="got a list of 1 views"):
            model.training_step(([x], labels), 0)


# ---- BYOL ------------------------------------------------------------------------------


def test_byol_loss_is_the_symmetric_negative_cosine_of_predictions_and_the_other_views_targets():
    # Both networks fixed: eval mode (BatchNorm on running statistics) and momentum 1, so the
    # step's momentum update leaves the target network as it is.
    model = build("byol", momentum=1.0, momentum_end=1.0).eval()
    with torch.no_grad():  # a target network unlike the online one, so the pairing matters
        for p in [*model.encoder_momentum.parameters(), *model.projection_head_momentum.parameters()]:
            p.add_(torch.randn_like(p) * 0.1)
    # Views far apart (bright and dark), so the other view's target differs from one's own.
    x0 = images(8, seed=3) + 3
    x1 = images(8, seed=4) - 3
    target_before = {k: v.clone() for k, v in model.encoder_momentum.state_dict().items()}

    step = model.training_loss([x0, x1])

    with torch.no_grad():
        p0 = model.prediction_head(model.projection_head(model.encoder.pool(x0)))
        p1 = model.prediction_head(model.projection_head(model.encoder.pool(x1)))
        z0 = model.projection_head_momentum(model.encoder_momentum.pool(x0))
        z1 = model.projection_head_momentum(model.encoder_momentum.pool(x1))
    criterion = NegativeCosineSimilarity()
    expected = 0.5 * (criterion(p0, z1) + criterion(p1, z0))
    same_view = 0.5 * (criterion(p0, z0) + criterion(p1, z1))
    assert torch.allclose(step.loss, expected, atol=1e-6)
    # The test tells the pairings apart: p with its own view's target, or one direction only.
    for wrong in (same_view, criterion(p0, z1), criterion(p1, z0)):
        assert abs(float(expected - wrong)) > 1e-3
    assert float(step.terms["momentum"]) == 1.0
    assert all(torch.equal(v, target_before[k]) for k, v in model.encoder_momentum.state_dict().items())
    # Gradients reach the online network only.
    step.loss.backward()
    assert all(p.grad is not None for p in model.prediction_head.parameters())
    assert all(p.grad is None for p in model.projection_head_momentum.parameters())


def test_byol_target_network_moves_by_momentum_not_by_gradient():
    m = 0.5
    model = build("byol", momentum=m, momentum_end=m, optimizer={"schedule": None})
    with torch.no_grad():
        for p in model.encoder_momentum.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    online = {k: v.detach().clone() for k, v in model.encoder.named_parameters()}
    target = {k: v.detach().clone() for k, v in model.encoder_momentum.named_parameters()}
    model.training_loss(hand_views(model, images(8))).loss.backward()
    for key, value in model.encoder_momentum.named_parameters():
        assert torch.allclose(value, m * target[key] + (1 - m) * online[key], atol=1e-6), key
        assert value.grad is None


def test_byol_momentum_follows_lightlys_cosine_schedule_over_the_run(tmp_path):
    model = build("byol", batch_size=4, momentum=0.99, momentum_end=1.0)

    class Record(pl.Callback):
        def __init__(self):
            self.seen = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.seen.append(float(trainer.callback_metrics["train_momentum"]))

    record = Record()
    trainer = quiet_trainer(tmp_path, max_steps=3, limit_val_batches=0, callbacks=[record])
    trainer.fit(model, DataLoader(HandViews(num_views=2, n=12), batch_size=4))
    # lightly's cosine_schedule(step, 3, 0.99, 1.0): start, half-way, end.
    assert record.seen == pytest.approx([0.99, 0.995, 1.0])
