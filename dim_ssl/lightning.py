"""``DIMLightningModule``: Deep InfoMax pretraining as a PyTorch Lightning module.

One training step is the loop of ``DIMHead``'s docstring (encode, score, one loss, one
optimizer) plus two monitors that make progress visible while it trains:

- an online linear classifier (lightly's ``OnlineLinearClassifier``) on detached features: it
  learns next to the encoder, never shapes it, and its accuracy on the held-out split is the
  number to watch (``val_online_cls_top1``);
- a kNN check on the held-out split every N epochs (``val_knn_top1``): leave-one-out, cosine
  similarity, ``exp(sim / T)`` weighted votes (Wu et al. 2018), in torch, on the features of
  the validation batches. It needs no feature bank from the training set and no FAISS.

The module follows the harness's method contract (the SimCLR and MoCo modules follow it too):
``.encoder``, ``.features(x, position)``, ``.feature_positions``, batches ``(images, labels)``
(one view per image for DIM) and lightly's online-classifier metric names. It runs under any
Lightning accelerator, ``strategy="ddp"`` (build the head with ``gather_distributed=True`` for
negatives from every rank) and ``precision="bf16-mixed"``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from lightly.utils.benchmarking import OnlineLinearClassifier
from torch import Tensor, nn
from torchmetrics import MeanMetric

from dim_ssl.encoder import POSITIONS
from dim_ssl.head import DIMHead, DIMOutput

__all__ = ["DIMLightningModule", "leave_one_out_knn_accuracy"]

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = (None, "cosine")


def leave_one_out_knn_accuracy(
    features: Tensor,
    labels: Tensor,
    k: int = 20,
    temperature: float = 0.1,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> float:
    """Top-1 accuracy of a weighted kNN vote where each sample is classified by all the others.

    The classifier of Wu et al., "Unsupervised Feature Learning via Non-Parametric Instance
    Discrimination" (CVPR 2018), as in ``lightly.utils.benchmarking.knn_predict``: cosine
    similarity, the ``k`` most similar samples, each voting for its label with weight
    ``exp(sim / temperature)``. The sample itself is left out, so one labelled split is enough.

    Args:
        features: ``(N, D)``, any scale (normalised here).
        labels: ``(N,)`` integer labels.
        k: Neighbours per query (at most ``N - 1`` are used).
        temperature: Softness of the vote.
        num_classes: Number of classes; default ``labels.max() + 1``.
        chunk_size: Queries scored at once (memory ``chunk_size x N``).

    Raises:
        ValueError: Fewer than two samples, or features and labels of different lengths.
    """
    if features.dim() != 2 or labels.dim() != 1 or features.shape[0] != labels.shape[0]:
        raise ValueError(
            f"expected features (N, D) and labels (N,); got {tuple(features.shape)} and {tuple(labels.shape)}"
        )
    count = features.shape[0]
    if count < 2:
        raise ValueError(f"a leave-one-out kNN needs at least two samples; got {count}")
    features = F.normalize(features.float(), dim=1)
    labels = labels.long()
    classes = int(labels.max()) + 1 if num_classes is None else int(num_classes)
    neighbours = min(int(k), count - 1)
    correct = 0
    for start in range(0, count, chunk_size):
        rows = torch.arange(start, min(start + chunk_size, count), device=features.device)
        similarity = features[rows] @ features.T  # (c, N)
        similarity[torch.arange(len(rows)), rows] = -math.inf  # leave the query itself out
        weights, index = similarity.topk(neighbours, dim=1)
        votes = torch.zeros(len(rows), classes, device=features.device)
        votes.scatter_add_(1, labels[index], (weights / temperature).exp())
        correct += int((votes.argmax(dim=1) == labels[rows]).sum())
    return correct / count


class DIMLightningModule(pl.LightningModule):
    """Deep InfoMax pretraining (Hjelm et al., ICLR 2019) with online monitoring, for Lightning.

    Args:
        encoder: A ``dim_ssl.TimmEncoder``, ``dim_ssl.PaperEncoder`` or any module whose forward
            returns ``(feature_map, y)`` and that has ``features(x, position)``.
        head: The ``dim_ssl.DIMHead`` built for the encoder (``gather_distributed=True`` under DDP).
        num_classes: Classes of the online linear classifier and the kNN check.
        image_shape: ``(C, H, W)`` of the inputs, used once to size the online classifier;
            not needed when ``online_feature_dim`` is given.
        optimizer: ``"adam"`` (the paper's code), ``"adamw"`` or ``"sgd"``.
        lr: Learning rate of encoder and head (the paper's code: 1e-4).
        betas: Adam's betas (the paper's code: (0.5, 0.999)).
        momentum: SGD's momentum.
        weight_decay: Weight decay of encoder and head (never of the online classifier).
        schedule: ``None`` (constant) or ``"cosine"``: stepped every batch down to 0 at the end
            of the run, after ``warmup_epochs`` of linear warm-up.
        warmup_epochs: Linear warm-up of the cosine schedule, in epochs.
        online_lr: Learning rate of the online classifier, in its own parameter group.
        online_feature: Position of the features the online classifier and the kNN check use.
        online_feature_dim: Width of those features, if known.
        knn_every_n_epochs: Run the kNN check in every N-th epoch's validation (0: only in the
            last epoch and in ``trainer.validate``).
        knn_k, knn_temperature: The kNN vote's neighbours and temperature.

    Attributes:
        encoder, head, online_classifier: The networks; one optimizer trains all three.
        feature_positions: The positions :meth:`features` accepts.

    Logged metrics: ``train_loss`` (progress bar), ``train_local_mi``, ``train_global_mi``,
    ``train_prior_loss`` (the terms the head computes; NaN terms are skipped) and lightly's
    ``train_online_cls_loss``/``_top1``/``_top5`` every step; their epoch means with the suffix
    ``_epoch``; ``val_online_cls_top1``/``_top5``/``_loss`` and ``val_knn_top1`` per validation.

    Raises:
        ValueError: Unknown optimizer, schedule or feature position; non-positive rates, k or
            temperature; ``num_classes < 2``; a list of views as the batch (DIM takes one view).

    Example::

        encoder = dim_ssl.TimmEncoder("resnet18", global_dim=64, in_chans=1)
        head = dim_ssl.DIMHead(encoder.feature_channels, encoder.global_dim, gather_distributed=True)
        model = DIMLightningModule(encoder, head, num_classes=10, image_shape=(1, 32, 32))
        trainer = pl.Trainer(max_epochs=10, accelerator="auto", devices=2, strategy="ddp")
        trainer.fit(model, train_loader, val_loader)   # batches (images, labels), one view each
    """

    def __init__(
        self,
        encoder: nn.Module,
        head: DIMHead,
        num_classes: int,
        image_shape: Sequence[int] | None = None,
        *,
        optimizer: str = "adam",
        lr: float = 1e-4,
        betas: Sequence[float] = (0.5, 0.999),
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        schedule: str | None = None,
        warmup_epochs: float = 0.0,
        online_lr: float = 1e-3,
        online_feature: str = "pool",
        online_feature_dim: int | None = None,
        knn_every_n_epochs: int = 1,
        knn_k: int = 20,
        knn_temperature: float = 0.1,
    ) -> None:
        super().__init__()
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}; expected one of {', '.join(OPTIMIZERS)}")
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r}; expected None or 'cosine'")
        for name, value in (("lr", lr), ("online_lr", online_lr), ("knn_temperature", knn_temperature)):
            if not value > 0:
                raise ValueError(f"{name} must be positive; got {value}")
        if knn_k < 1 or knn_every_n_epochs < 0 or warmup_epochs < 0:
            raise ValueError(
                f"need knn_k >= 1, knn_every_n_epochs >= 0 and warmup_epochs >= 0; "
                f"got {knn_k}, {knn_every_n_epochs}, {warmup_epochs}"
            )
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2; got {num_classes}")
        self.feature_positions: tuple[str, ...] = tuple(getattr(encoder, "feature_positions", POSITIONS))
        if online_feature not in self.feature_positions:
            raise ValueError(
                f"unknown feature position {online_feature!r}; expected one of {', '.join(self.feature_positions)}"
            )
        if online_feature_dim is None and image_shape is None:
            raise ValueError("give image_shape=(C, H, W) (or online_feature_dim) to size the online classifier")
        # Plain numbers and strings only: the hyperparameters go into every checkpoint, which
        # is read back with torch.load(weights_only=True).
        self.save_hyperparameters(ignore=["encoder", "head"])

        self.encoder = encoder
        self.head = head
        self.num_classes = int(num_classes)
        self.online_feature = online_feature
        if online_feature_dim is None:
            online_feature_dim = self._feature_width(tuple(int(s) for s in image_shape))
        topk = (1, 5) if num_classes >= 5 else (1,)
        self.online_classifier = OnlineLinearClassifier(
            feature_dim=int(online_feature_dim), num_classes=self.num_classes, topk=topk
        )

        # The terms this head computes (the others are NaN by design and not logged).
        self.terms = ["loss"]
        if getattr(head, "local_critic", None) is not None:
            self.terms.append("local_mi")
        if getattr(head, "global_critic", None) is not None:
            self.terms.append("global_mi")
        if getattr(head, "prior_matching", None) is not None:
            self.terms.append("prior_loss")
        # Epoch means as metrics with persistent state: they are saved in checkpoints, so a run
        # resumed mid-epoch logs the same epoch means as one that never stopped.
        self.epoch_means = nn.ModuleDict()
        for name in [*self.terms, "online_cls_top1"]:
            metric = MeanMetric()
            metric.persistent(True)
            self.epoch_means[name] = metric
        self._knn_features: list[Tensor] = []
        self._knn_labels: list[Tensor] = []
        self._knn_now = False

    # ---- the contract the harness relies on ---------------------------------------------

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x -> (feature_map, y)``, the encoder's output."""
        return self.encoder(x)

    @torch.no_grad()
    def features(self, x: Tensor, position: str = "pool") -> Tensor:
        """Frozen features ``(N, F)`` at a position of :attr:`feature_positions`, no gradient.

        Delegates to the encoder and leaves the train/eval mode as it is: call ``.eval()`` first.
        """
        return self.encoder.features(x, position).flatten(1)

    # ---- training -----------------------------------------------------------------------

    def training_step(self, batch: Sequence[Any], batch_idx: int) -> Tensor:
        images, labels = batch[0], batch[1]
        if isinstance(images, (list, tuple)):
            raise ValueError(
                "DIM trains on one view per image: batches (images, labels) with images a tensor "
                f"(N, C, H, W); got a list of {len(images)} views (a two-view transform?)"
            )
        feature_map, y, monitored = self._encode(images)
        out = self.head(feature_map, y)
        # Online linear evaluation on detached features: it shows how linearly separable the
        # features are while training, without shaping the encoder.
        cls_loss, cls_log = self.online_classifier.training_step((monitored.detach(), labels), batch_idx)
        self._log_step(out, cls_log, batch_size=images.shape[0])
        return out.loss + cls_loss

    def _encode(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(feature_map, y, monitored features)`` from one forward pass where possible."""
        position = self.online_feature
        if position == "y" or position == "conv":
            feature_map, y = self.encoder(images)
            return feature_map, y, (y if position == "y" else feature_map.flatten(1))
        fc = getattr(self.encoder, "fc", None)
        if position in ("pool", "fc") and isinstance(fc, nn.Module):
            # TimmEncoder and PaperEncoder compute y = to_y(fc(pooled)): a hook on `fc` reads the
            # pooled features (its input) or the hidden layer (its output) of the training
            # forward, so the monitor costs no second pass (and BatchNorm sees each batch once).
            captured: list[Tensor] = []

            def capture(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
                captured.append(args[0] if position == "pool" else output)

            handle = fc.register_forward_hook(capture)
            try:
                feature_map, y = self.encoder(images)
            finally:
                handle.remove()
            return feature_map, y, captured[-1].flatten(1)
        feature_map, y = self.encoder(images)
        return feature_map, y, self.encoder.features(images, position).flatten(1)

    def _log_step(self, out: DIMOutput, cls_log: dict[str, Tensor], batch_size: int) -> None:
        values = {"loss": out.loss.detach(), "local_mi": out.local_mi, "global_mi": out.global_mi,
                  "prior_loss": out.prior_loss}
        for name in self.terms:
            self.log(f"train_{name}", values[name], prog_bar=name == "loss", batch_size=batch_size)
            self.epoch_means[name].update(values[name])
        self.log_dict(cls_log, batch_size=batch_size)
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
        every = self.hparams.knn_every_n_epochs
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
        features = self._gather_rows(torch.cat(self._knn_features))
        labels = self._gather_rows(torch.cat(self._knn_labels))
        self._knn_features, self._knn_labels = [], []
        if features.shape[0] < 2:
            return
        accuracy = leave_one_out_knn_accuracy(
            features, labels, self.hparams.knn_k, self.hparams.knn_temperature, self.num_classes
        )
        # Every rank computed the same number from the gathered split; syncing keeps it so.
        self.log("val_knn_top1", accuracy, prog_bar=True, sync_dist=True)

    def _gather_rows(self, rows: Tensor) -> Tensor:
        """Concatenates each rank's rows (counts may differ by one) in rank order, no gradient."""
        if self.trainer.world_size == 1 or not torch.distributed.is_initialized():
            return rows
        world = torch.distributed.get_world_size()
        count = torch.tensor([rows.shape[0]], device=rows.device)
        counts = [torch.zeros_like(count) for _ in range(world)]
        torch.distributed.all_gather(counts, count)
        sizes = [int(c.item()) for c in counts]
        padded = rows.new_zeros((max(sizes), *rows.shape[1:]))  # all_gather needs equal shapes
        padded[: rows.shape[0]] = rows
        parts = [torch.empty_like(padded) for _ in range(world)]
        torch.distributed.all_gather(parts, padded.contiguous())
        return torch.cat([part[:size] for part, size in zip(parts, sizes)])

    # ---- optimizer ------------------------------------------------------------------------

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        trained = [p for m in (self.encoder, self.head) for p in m.parameters() if p.requires_grad]
        groups = [
            {"name": "encoder_and_head", "params": trained},
            # The online classifier is a measuring device: its own rate, no weight decay.
            {"name": "online_classifier", "params": list(self.online_classifier.parameters()),
             "lr": hp.online_lr, "weight_decay": 0.0},
        ]
        if hp.optimizer == "sgd":
            optimizer = torch.optim.SGD(groups, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
        else:
            adam = torch.optim.AdamW if hp.optimizer == "adamw" else torch.optim.Adam
            optimizer = adam(groups, lr=hp.lr, betas=tuple(hp.betas), weight_decay=hp.weight_decay)
        if hp.schedule is None:
            return optimizer

        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total) or total < 1:
            raise ValueError("schedule='cosine' needs a run of known length: set max_epochs (or max_steps)")
        max_epochs = self.trainer.max_epochs if self.trainer.max_epochs and self.trainer.max_epochs > 0 else 1
        warmup = int(hp.warmup_epochs * total / max_epochs)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, [_WarmupCosine(warmup, int(total)), _constant]
        )
        # Stepped every batch: smooth, and exact for runs resumed mid-epoch.
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _feature_width(self, image_shape: tuple[int, ...]) -> int:
        """Width of the monitored features, from one forward pass on zeros in eval mode."""
        was_training = self.encoder.training
        self.encoder.eval()
        try:
            width = self.encoder.features(torch.zeros(2, *image_shape), self.online_feature).flatten(1).shape[1]
        finally:
            self.encoder.train(was_training)
        return int(width)


class _WarmupCosine:
    """Learning-rate factor: linear warm-up over ``warmup`` steps, then cosine from 1 to 0."""

    def __init__(self, warmup: int, total: int) -> None:
        self.warmup, self.total = warmup, max(total, 1)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = min((step - self.warmup) / max(self.total - self.warmup, 1), 1.0)
        return 0.5 * (1.0 + math.cos(math.pi * progress))


def _constant(step: int) -> float:
    return 1.0
