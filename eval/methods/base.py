"""``MethodModule``: what every pretraining method shares, as one LightningModule base.

A method (DIM, SimCLR, MoCo, BYOL, ...) is one file: a subclass that builds its own parts in
its constructor and implements :meth:`MethodModule.training_loss` for a batch of views. Its
hyperparameters are the keyword arguments of that constructor, declared once: the run
configuration's ``method`` section is read from the signature (:mod:`eval.methods.registry`).
Everything else comes from here:

- the encoder (any :class:`dim_ssl.DIMEncoder`) and its frozen probe features at every
  position (:meth:`features`, :meth:`multi_features`, :attr:`feature_positions`);
- lightly's ``OnlineLinearClassifier`` on detached features: it learns beside the encoder,
  never shapes it, and its held-out accuracy (``val_online_cls_top1``) is the number to watch;
- a leave-one-out kNN check on the held-out split every N epochs (``val_knn_top1``), gathered
  across DDP ranks with :func:`dim_ssl.gather_with_grad`;
- the optimizer and its parameter groups, from the ``optimizer`` section (the same keys for
  every method; each method declares its own recipe as the defaults, :attr:`recipe`), with
  lightly's warm-up + cosine schedule stepped every batch (the online classifier keeps its rate);
- step logging and epoch means that survive a resume mid-epoch.

Batches are ``(images, labels)`` for one-view methods and ``([view_0, view_1, ...], labels)``
for multi-view ones (:attr:`num_views`); labels feed only the online classifier and the kNN
check.

Example (a new method in one file)::

    @register_method("mymethod")
    class MyMethod(TwoViewMethod):
        \"\"\"My method (Someone et al., 2030).\"\"\"

        view_transform = SimCLRTransform

        def __init__(self, encoder, num_classes, image_shape, *, temperature: float = 0.5, **common):
            super().__init__(encoder, num_classes, image_shape, **common)
            self.projection_head = SimCLRProjectionHead(encoder.pooled_dim, 512, 128)
            self.criterion = NTXentLoss(temperature=temperature)

        def training_loss(self, views):
            pooled = self.encoder.pool(torch.cat(views))
            z0, z1 = self.projection_head(pooled).chunk(2)
            return StepOutput(self.criterion(z0, z1), features={"pool": pooled})
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import partial
from typing import Any, ClassVar, Mapping, Sequence

import pytorch_lightning as pl
import torch
from lightly.utils.benchmarking import OnlineLinearClassifier
from lightly.utils.scheduler import cosine_warmup_schedule
from torch import Tensor, nn
from torchmetrics import MeanMetric

from dim_ssl import FEATURE_POSITIONS, DIMEncoder, EncoderOutput, gather_with_grad
from dim_ssl.encoder_protocol import missing_encoder_members
from eval.plain import plain
from eval.probes.knn import leave_one_out_knn_accuracy

__all__ = [
    "MONITOR_DEFAULTS",
    "OPTIMIZER_DEFAULTS",
    "OPTIMIZERS",
    "SCHEDULES",
    "MethodModule",
    "StepOutput",
    "by_position",
]

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = (None, "cosine")

#: Every key of the ``optimizer`` section, with the value a method's :attr:`~MethodModule.recipe`
#: starts from (torch's Adam defaults). The comments document the keys.
OPTIMIZER_DEFAULTS: dict[str, Any] = {
    "name": "adam",  # adam | adamw | sgd
    "lr": 1.0e-3,  # learning rate at reference_batch_size (or as is when that is null)
    "reference_batch_size": None,  # int: lr scaled linearly by batch_size / reference_batch_size
    "betas": [0.9, 0.999],  # Adam/AdamW betas
    "momentum": 0.9,  # SGD momentum
    "weight_decay": 0.0,  # of everything the loss trains (never of the online classifier)
    "schedule": None,  # null (constant) | cosine (lightly's cosine_warmup_schedule, per step)
    "warmup_epochs": 0.0,  # linear warm-up before the cosine, in epochs
}

#: Every key of the online monitors (the ``monitor`` section, less ``best``, which the
#: training loop reads), with its default.
MONITOR_DEFAULTS: dict[str, Any] = {
    "feature": "pool",  # position of the features the online classifier and the kNN check use
    "online_lr": 1.0e-3,  # learning rate of the online linear classifier (its own group)
    "knn_every_n_epochs": 1,  # kNN check on the held-out split every N epochs (0: only at the end)
    "knn_k": 20,
    "knn_temperature": 0.1,
}

# Positions computed by the encoder's summary MLP (pooled -> hidden -> y). Methods that do not
# train that MLP (trains_summary = False) do not offer them: they would be random features.
SUMMARY_POSITIONS = ("fc", "y")


@dataclass
class StepOutput:
    """What a method's :meth:`~MethodModule.training_loss` returns for one batch.

    Attributes:
        loss: The scalar to minimise, with gradients.
        features: Features the step computed on the way, by position (``"pool"``, ``"conv"``,
            ...), rows for every view in order (``(views * N, F)``); the online classifier takes
            the one at the monitored position from here instead of running a second pass.
        terms: Extra scalars to log as ``train_<name>`` (detached); those named in
            :meth:`~MethodModule.track_terms` also get epoch means.
    """

    loss: Tensor
    features: Mapping[str, Tensor] = field(default_factory=dict)
    terms: Mapping[str, Tensor | float] = field(default_factory=dict)


class MethodModule(pl.LightningModule, ABC):
    """Base of every pretraining method: encoder, monitors, optimizer, logging, gathering.

    Args:
        encoder: A :class:`dim_ssl.DIMEncoder` (``TimmEncoder`` or ``PaperEncoder``).
        num_classes: Classes of the online linear classifier and the kNN check.
        image_shape: ``(C, H, W)`` of the inputs (sizes the online classifier).
        batch_size: Images per step and device (for ``optimizer.reference_batch_size``).
        optimizer: Keys of :data:`OPTIMIZER_DEFAULTS`; missing keys take the method's
            :attr:`recipe`.
        monitor: Keys of :data:`MONITOR_DEFAULTS`.

    Attributes:
        encoder, online_classifier: The networks every method has.
        recipe: Class attribute: the method's defaults of the shared sections
            (``{"optimizer": {...}, "monitor": {...}}``), over :data:`OPTIMIZER_DEFAULTS` and
            :data:`MONITOR_DEFAULTS`.
        num_views: Class attribute: views per image in a training batch.
        trains_summary: Class attribute: whether the loss trains the encoder's summary MLP
            (DIM does; contrastive methods train the backbone only and freeze it).
        extra_positions: Class attribute: probe positions the method adds (``"proj"``).

    Logged metrics: ``train_loss`` (progress bar) and the method's terms every step, lightly's
    ``train_online_cls_loss``/``_top1``/``_top5``; epoch means with the suffix ``_epoch``;
    ``val_online_cls_top1``/``_top5``/``_loss`` and ``val_knn_top1`` per validation.

    Raises:
        ValueError: An unknown optimizer key, optimizer, schedule or feature position;
            non-positive rates, k or temperature; ``num_classes < 2``; an encoder that does not
            follow :class:`dim_ssl.DIMEncoder`.
    """

    recipe: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    num_views: ClassVar[int] = 1
    trains_summary: ClassVar[bool] = True
    extra_positions: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        encoder: DIMEncoder,
        num_classes: int,
        image_shape: Sequence[int],
        *,
        batch_size: int = 128,
        optimizer: Mapping[str, Any] | None = None,
        monitor: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(encoder, DIMEncoder):
            raise ValueError(
                f"expected an encoder that follows dim_ssl.DIMEncoder (TimmEncoder, PaperEncoder); "
                f"{type(encoder).__name__} lacks {', '.join(missing_encoder_members(encoder))} "
                "(see dim_ssl/encoder_protocol.py for what each must do)"
            )
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2; got {num_classes}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive; got {batch_size}")
        self.optimizer_settings = _settings("optimizer", self.defaults("optimizer"), optimizer)
        self.monitor_settings = _settings("monitor", self.defaults("monitor"), monitor)
        _check_optimizer(self.optimizer_settings)
        _check_monitor(self.monitor_settings)
        # Plain data only: the hyperparameters go into every checkpoint, which is read back
        # with torch.load(weights_only=True).
        self.save_hyperparameters(ignore=["encoder"])
        for key, value in list(self.hparams.items()):
            self.hparams[key] = plain(value)

        self.encoder = encoder
        if not self.trains_summary:
            # Parameters that get no gradient would make DDP fail ("did not receive grad") and
            # only cost optimizer time.
            for parameter in encoder.summary_parameters():
                parameter.requires_grad = False
        self.num_classes = int(num_classes)
        self.batch_size = int(batch_size)
        self.image_shape = tuple(int(s) for s in image_shape)
        self.online_feature: str = self.monitor_settings["feature"]
        # The monitor is sized before a subclass builds its own parts, so it reads the
        # encoder's positions only (not extra_positions such as a projection head's).
        monitorable = [p for p in self.feature_positions if p not in self.extra_positions]
        if self.online_feature not in monitorable:
            raise ValueError(
                f"unknown feature position {self.online_feature!r} for monitor.feature; expected one of "
                f"{', '.join(monitorable)}"
            )
        self.online_classifier = OnlineLinearClassifier(
            feature_dim=self._feature_width(),
            num_classes=self.num_classes,
            topk=(1, 5) if num_classes >= 5 else (1,),  # top-5 of fewer classes would fail
        )
        # Epoch means as metrics with persistent state: saved in checkpoints, so a run resumed
        # mid-epoch logs the same means as one that never stopped.
        self.epoch_means = nn.ModuleDict()
        self.track_terms("loss", "online_cls_top1")
        self._knn_features: list[Tensor] = []
        self._knn_labels: list[Tensor] = []
        self._knn_now = False

    # ---- what a method provides ----------------------------------------------------------

    @abstractmethod
    def training_loss(self, views: Sequence[Tensor]) -> StepOutput:
        """The method's loss for one batch of views (``num_views`` tensors ``(N, C, H, W)``)."""

    def extra_features(self, encoded: EncoderOutput) -> dict[str, Tensor]:
        """Features at :attr:`extra_positions` from one encoder pass (no gradient)."""
        return {}

    @classmethod
    def defaults(cls, section: str) -> dict[str, Any]:
        """The defaults of a shared section (``"optimizer"`` or ``"monitor"``) for this method."""
        base = {"optimizer": OPTIMIZER_DEFAULTS, "monitor": MONITOR_DEFAULTS}[section]
        return {**base, **dict(cls.recipe.get(section, {}))}

    def train_transform(self, spec: Any, image_size: int, channels: int) -> Any:
        """The training views' transform, or ``None`` for the harness's one-view augmentation."""
        return None

    def track_terms(self, *names: str) -> None:
        """Gives the logged terms ``names`` epoch means (call in the constructor)."""
        for name in names:
            metric = MeanMetric()
            metric.persistent(True)
            self.epoch_means[name] = metric

    # ---- features ---------------------------------------------------------------------------

    @property
    def feature_positions(self) -> tuple[str, ...]:
        """The positions :meth:`features` accepts."""
        positions = self.encoder.feature_positions
        if not self.trains_summary:
            positions = tuple(p for p in positions if p not in SUMMARY_POSITIONS)
        return (*positions, *self.extra_positions)

    @torch.no_grad()
    def multi_features(self, x: Tensor, positions: Sequence[str]) -> dict[str, Tensor]:
        """Frozen features ``{position: (N, F)}`` at several positions from one encoder pass.

        Leaves the train/eval mode as it is: call ``.eval()`` first so that BatchNorm uses its
        running statistics (:func:`eval.probes.features.extract_features` does).
        """
        unknown = [p for p in positions if p not in self.feature_positions]
        if unknown:
            raise ValueError(
                f"unknown position(s) {', '.join(map(repr, unknown))}; expected one of "
                f"{', '.join(self.feature_positions)}"
            )
        encoded = self.encoder.encode(x)
        found = by_position(encoded)
        if any(p in self.extra_positions for p in positions):
            found.update(self.extra_features(encoded))
        return {p: found[p].flatten(1) for p in positions}

    @torch.no_grad()
    def features(self, x: Tensor, position: str = "pool") -> Tensor:
        """Frozen features ``(N, F)`` at one of :attr:`feature_positions`, no gradient."""
        return self.multi_features(x, [position])[position]

    def _feature_width(self) -> int:
        """Width of the monitored features, from one forward pass on zeros in eval mode."""
        was_training = self.encoder.training
        self.encoder.eval()
        try:
            return int(self.features(torch.zeros(2, *self.image_shape), self.online_feature).shape[1])
        finally:
            self.encoder.train(was_training)

    # ---- training -------------------------------------------------------------------------

    def training_step(self, batch: Sequence[Any], batch_idx: int) -> Tensor | None:
        views, labels = self._views(batch[0]), batch[1]
        if not self._finite_inputs(views):
            # No forward pass (BatchNorm statistics stay clean), no optimizer step; counted and
            # reported by eval.training.nonfinite.SkipNonFiniteSteps.
            return None
        step = self.training_loss(views)
        monitored = step.features.get(self.online_feature)
        if monitored is None:  # the loss did not compute them: one more pass, no gradient
            monitored = self.features(views[0], self.online_feature)
        # Online linear evaluation on detached features: it shows how linearly separable the
        # features are while training, without shaping the encoder.
        repeats = monitored.shape[0] // labels.shape[0]  # views whose features came back
        cls_loss, cls_log = self.online_classifier.training_step(
            (monitored.detach().flatten(1), labels.repeat(repeats)), batch_idx
        )
        self._log_step(step, cls_log, batch_size=labels.shape[0])
        return step.loss + cls_loss

    def _finite_inputs(self, views: Sequence[Tensor]) -> bool:
        """Whether every view is free of NaN and inf, on every rank (all skip a step together)."""
        finite = torch.tensor([all(bool(torch.isfinite(v).all()) for v in views)], device=self.device)
        if self._trainer is not None and self.trainer.world_size > 1:
            finite = self.trainer.strategy.reduce(finite.float(), reduce_op="min") > 0
        return bool(finite.item())

    def _views(self, images: Any) -> list[Tensor]:
        """The batch's views as a list of ``num_views`` tensors, or a ValueError that says why not."""
        name = type(self).__name__
        if self.num_views == 1:
            if isinstance(images, (list, tuple)):
                raise ValueError(
                    f"{name} trains on one view per image: batches (images, labels) with images a tensor "
                    f"(N, C, H, W); got a list of {len(images)} views (a multi-view transform?)"
                )
            return [images]
        if not isinstance(images, (list, tuple)) or len(images) != self.num_views:
            got = f"a list of {len(images)} views" if isinstance(images, (list, tuple)) else "one tensor"
            raise ValueError(
                f"{name} trains on {self.num_views} views per image: batches ([view_0, view_1], labels) "
                f"from its train_transform(); got {got}"
            )
        return list(images)

    def _log_step(self, step: StepOutput, cls_log: Mapping[str, Tensor], batch_size: int) -> None:
        values = {"loss": step.loss.detach(), **step.terms}
        for name, value in values.items():
            self.log(f"train_{name}", value, prog_bar=name == "loss", batch_size=batch_size)
            if name in self.epoch_means:
                self.epoch_means[name].update(value)
        self.log_dict(dict(cls_log), batch_size=batch_size)
        self.epoch_means["online_cls_top1"].update(cls_log["train_online_cls_top1"])

    def on_train_epoch_end(self) -> None:
        # MeanMetric.compute() averages over all ranks under DDP.
        for name, metric in self.epoch_means.items():
            if metric.update_count > 0 or bool(metric.weight > 0):
                # Already the global mean; sync_dist averages identical values (and keeps
                # Lightning from warning about epoch-level values under DDP).
                self.log(f"train_{name}_epoch", metric.compute(), sync_dist=True)
            metric.reset()

    # ---- validation: online classifier and kNN on the held-out split ----------------------

    def on_validation_epoch_start(self) -> None:
        self._knn_features, self._knn_labels = [], []
        self._knn_now = self._knn_due()

    def _knn_due(self) -> bool:
        trainer = self.trainer
        if trainer.sanity_checking:
            return False
        if not trainer.training and trainer.state.fn == "validate":
            return True  # a standalone evaluation (trainer.validate) always includes it
        every = self.monitor_settings["knn_every_n_epochs"]
        epoch = self.current_epoch + 1
        last = trainer.max_epochs is not None and trainer.max_epochs > 0 and epoch >= trainer.max_epochs
        return last or (every > 0 and epoch % every == 0)

    def validation_step(self, batch: Sequence[Any], batch_idx: int) -> Tensor:
        images, labels = batch[0], batch[1]
        features = self.features(images, self.online_feature)
        cls_loss, cls_log = self.online_classifier.validation_step((features, labels), batch_idx)
        for name, value in cls_log.items():
            self.log(name, value, prog_bar=name.endswith("top1"), sync_dist=True, batch_size=len(labels))
        if self._knn_now:
            self._knn_features.append(features.float())
            self._knn_labels.append(labels)
        return cls_loss

    def on_validation_epoch_end(self) -> None:
        if not self._knn_now or not self._knn_features:
            return
        # Every rank's rows in rank order (counts may differ by one): the same split everywhere.
        features, _ = gather_with_grad(torch.cat(self._knn_features))
        labels, _ = gather_with_grad(torch.cat(self._knn_labels))
        self._knn_features, self._knn_labels = [], []
        if features.shape[0] < 2:
            return
        monitor = self.monitor_settings
        accuracy = leave_one_out_knn_accuracy(
            features, labels, monitor["knn_k"], monitor["knn_temperature"], self.num_classes
        )
        # Every rank computed the same number from the gathered split; syncing keeps it so.
        self.log("val_knn_top1", accuracy, prog_bar=True, sync_dist=True)

    # ---- optimizer ------------------------------------------------------------------------

    @property
    def learning_rate(self) -> float:
        """``optimizer.lr``, scaled by ``batch_size / reference_batch_size`` when that is set."""
        settings = self.optimizer_settings
        reference = settings["reference_batch_size"]
        return float(settings["lr"]) * (self.batch_size / reference if reference else 1.0)

    def total_steps(self) -> int:
        """Optimizer steps of the whole run (the Trainer's estimate).

        Raises:
            ValueError: The Trainer cannot say (no ``max_epochs`` or ``max_steps``).
        """
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total) or total < 1:
            raise ValueError(
                f"{type(self).__name__} needs a run of known length for its schedule: set max_epochs (or max_steps)"
            )
        return int(total)

    def build_optimizer(self) -> torch.optim.Optimizer:
        """The ``optimizer`` section's optimizer over two groups: what the loss trains, and the
        online classifier at its own rate (no schedule: :meth:`configure_optimizers` adds it)."""
        settings = self.optimizer_settings
        online = set(self.online_classifier.parameters())
        trained = [p for p in self.parameters() if p.requires_grad and p not in online]
        groups = [
            {"name": "trained", "params": trained},
            # The online classifier is a measuring device: its own rate, no weight decay.
            {
                "name": "online_classifier",
                "params": list(online),
                "lr": self.monitor_settings["online_lr"],
                "weight_decay": 0.0,
            },
        ]
        lr, decay = self.learning_rate, float(settings["weight_decay"])
        if settings["name"] == "sgd":
            optimizer = torch.optim.SGD(groups, lr=lr, momentum=float(settings["momentum"]), weight_decay=decay)
        else:
            adam = torch.optim.AdamW if settings["name"] == "adamw" else torch.optim.Adam
            optimizer = adam(groups, lr=lr, betas=tuple(settings["betas"]), weight_decay=decay)
        return optimizer

    def configure_optimizers(self) -> Any:
        settings = self.optimizer_settings
        optimizer = self.build_optimizer()
        if settings["schedule"] is None:
            return optimizer
        total = self.total_steps()
        max_epochs = self.trainer.max_epochs if self.trainer.max_epochs and self.trainer.max_epochs > 0 else 1
        warmup = min(int(settings["warmup_epochs"] * total / max_epochs), total)
        # lightly's warm-up + cosine (to 1e-3 of the rate, as its CosineWarmupScheduler) for what
        # the loss trains; the online classifier keeps its rate: a monitor that stopped
        # learning late in the run would under-report the features it measures.
        cosine = partial(
            cosine_warmup_schedule,
            max_steps=total,
            start_value=1.0,
            end_value=1e-3,
            warmup_steps=warmup,
            warmup_start_value=0.0,
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, [cosine, _constant])
        # Stepped every batch: smooth, exact for runs resumed mid-epoch, and runs limited by
        # max_steps end at the bottom of the schedule too.
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def by_position(encoded: EncoderOutput) -> dict[str, Tensor]:
    """One encoder pass's features by position, ``{position: (N, F)}`` (``"conv"`` flattened)."""
    return {position: encoded.at(position) for position in FEATURE_POSITIONS}


def _constant(step: int) -> float:
    return 1.0


def _settings(section: str, defaults: Mapping[str, Any], given: Mapping[str, Any] | None) -> dict[str, Any]:
    unknown = sorted(set(given or {}) - set(defaults))
    if unknown:
        raise ValueError(f"unknown {section} key(s) {', '.join(unknown)}; expected some of {', '.join(defaults)}")
    return {**defaults, **dict(given or {})}


def _check_optimizer(settings: Mapping[str, Any]) -> None:
    if settings["name"] not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {settings['name']!r}; expected one of {', '.join(OPTIMIZERS)}")
    if settings["schedule"] not in SCHEDULES:
        raise ValueError(f"unknown schedule {settings['schedule']!r}; expected None or 'cosine'")
    if not settings["lr"] > 0:
        raise ValueError(f"lr must be positive; got {settings['lr']}")
    reference = settings["reference_batch_size"]
    if reference is not None and reference < 1:
        raise ValueError(f"reference_batch_size must be positive or None; got {reference}")
    if settings["warmup_epochs"] < 0 or settings["weight_decay"] < 0:
        raise ValueError(
            f"need warmup_epochs >= 0 and weight_decay >= 0; got {settings['warmup_epochs']}, "
            f"{settings['weight_decay']}"
        )


def _check_monitor(settings: Mapping[str, Any]) -> None:
    for name in ("online_lr", "knn_temperature"):
        if not settings[name] > 0:
            raise ValueError(f"{name} must be positive; got {settings[name]}")
    if settings["knn_k"] < 1 or settings["knn_every_n_epochs"] < 0:
        raise ValueError(
            f"need knn_k >= 1 and knn_every_n_epochs >= 0; got {settings['knn_k']}, {settings['knn_every_n_epochs']}"
        )
