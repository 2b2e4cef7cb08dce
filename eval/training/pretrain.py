"""Pretraining, top to bottom: configuration -> data -> model -> trainer -> fit -> evaluation -> summary.

:func:`pretrain` is what ``dim-ssl pretrain`` runs. Everything it writes goes into the run's
output folder::

    config.yaml             the resolved configuration (every key)
    checkpoints/last.ckpt   the latest state (every epoch end, every 10 minutes, on SIGINT/SIGTERM;
                            written atomically): --resume
    checkpoints/best.ckpt   the best epoch by the online probe (or kNN) accuracy
    metrics.csv             every logged metric (Lightning's CSVLogger), one row per step/epoch
    hparams.yaml            the module's hyperparameters (Lightning's)
    summary.json            final loss, online probe and kNN accuracy, images, images/s, training and wall-clock time

Budgets are Lightning's: ``trainer.max_epochs`` and ``trainer.max_time_s`` (``max_time``), the
latter counting training only (validation runs off the clock: :mod:`eval.training.budget`). Same
seed, same numbers; an interrupted run resumed with ``--resume`` ends where an uninterrupted
one ends (see :mod:`eval.training.resume` and :mod:`eval.training.datamodule` for how).
"""

from __future__ import annotations

import json
import math
import shutil
import signal
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint

from eval.data import DataInfo
from eval.errors import ConfigError, RunError
from eval.methods import MethodModule, build_method
from eval.training.budget import MonitorsOffTheClock
from eval.training.checkpoint import CheckpointMetadata, check_compatible, load_checkpoint
from eval.training.config import config_diff, dump_config
from eval.training.datamodule import PretrainDataModule
from eval.training.last_checkpoint import LastCheckpoint
from eval.training.nonfinite import SkipNonFiniteSteps
from eval.training.progress import ProgressBar, ThroughputMeter
from eval.training.quiet import quiet_lightning
from eval.training.resume import ExactResume, ResumableCSVLogger, TrainingInterrupted

__all__ = ["BEST_METRICS", "RunError", "TrainingInterrupted", "pretrain", "trainer_arguments"]

BEST_METRICS = {"online": "val_online_cls_top1", "knn": "val_knn_top1"}

# Lightning warnings that do not apply to these runs (each says why).
_QUIET = (
    ".*does not have many workers.*",  # data.num_workers is the user's choice, default 0 on CPU
    ".*is smaller than the logging interval.*",  # tiny runs log less often; harmless
    ".*exists and is not empty.*",  # a resumed run writes into its own folder on purpose
    ".*dataloader is not resumable.*",  # eval.training.datamodule.EpochSampler resumes it exactly
    ".*ended before the epoch ended.*",  # same
    ".*`training_step` returned `None`.*",  # on purpose: a non-finite batch (eval.training.nonfinite)
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",  # Lightning's own use of torch's pytree API
)


def trainer_arguments(trainer: Mapping[str, Any]) -> dict[str, Any]:
    """``pl.Trainer`` keyword arguments from a configuration's ``trainer`` section.

    ``precision: auto`` is ``bf16-mixed`` on a GPU with bf16, else ``32-true``;
    ``sync_batchnorm: auto`` is on for multi-device GPU runs (BatchNorm statistics over the
    global batch, as one device would compute them).

    Raises:
        eval.training.config.ConfigError: ``sync_batchnorm: true`` without a GPU (torch's SyncBatchNorm
            is GPU-only).
    """
    accelerator = trainer["accelerator"]
    gpu = str(accelerator) in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    precision = trainer["precision"]
    if precision == "auto":
        precision = "bf16-mixed" if gpu and torch.cuda.is_bf16_supported() else "32-true"
    devices = trainer["devices"]
    several = (
        trainer["num_nodes"] > 1
        or (isinstance(devices, int) and (devices > 1 or (devices == -1 and torch.cuda.device_count() > 1)))
        or (isinstance(devices, (list, tuple)) and len(devices) > 1)
        or (devices == "auto" and torch.cuda.device_count() > 1)
    )
    sync_batchnorm = trainer["sync_batchnorm"]
    if sync_batchnorm == "auto":
        sync_batchnorm = gpu and several
    elif sync_batchnorm is True and not gpu:
        raise ConfigError(
            "trainer.sync_batchnorm=true needs GPUs (torch's SyncBatchNorm does not run on the CPU); "
            "leave it at auto (on for multi-GPU runs) or set false"
        )
    elif sync_batchnorm not in (True, False):
        raise ConfigError(f"trainer.sync_batchnorm must be auto, true or false; got {sync_batchnorm!r}")
    max_time = trainer["max_time_s"]
    return {
        "max_epochs": trainer["max_epochs"],
        "max_time": timedelta(seconds=float(max_time)) if max_time else None,
        "accelerator": accelerator,
        "devices": devices,
        "num_nodes": trainer["num_nodes"],
        "strategy": trainer["strategy"],
        "precision": precision,
        "sync_batchnorm": bool(sync_batchnorm),
        "gradient_clip_val": trainer["gradient_clip_val"],
        "log_every_n_steps": trainer["log_every_n_steps"],
        "check_val_every_n_epoch": trainer["check_val_every_n_epoch"],
        "num_sanity_val_steps": trainer["num_sanity_val_steps"],
        "deterministic": trainer["deterministic"],
        "enable_progress_bar": trainer["enable_progress_bar"],
    }


def pretrain(
    config: Mapping[str, Any],
    resume: bool = False,
    overwrite: bool = False,
    callbacks: Sequence[Callback] = (),
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Runs (or resumes) the pretraining a resolved configuration describes.

    Args:
        config: A configuration from :func:`eval.training.config.resolve_config`.
        resume: Continue from ``checkpoints/last.ckpt`` in the output folder.
        overwrite: Start afresh in an output folder that holds an earlier run (deleting its
            checkpoints, metrics and summary).
        callbacks: Extra Lightning callbacks (tests use them to send signals at given steps).
        echo: Where the run's own messages go (rank 0 only).

    Returns:
        The summary (also in ``summary.json``).

    Raises:
        RunError: Nothing to resume, or an earlier run in the folder without resume/overwrite.
        eval.training.checkpoint.CheckpointError: A damaged checkpoint, or one of another model.
        eval.training.config.ConfigError: An encoder or head the configuration cannot build.
        eval.data.DatasetNotFoundError: The dataset is not on this machine.
        TrainingInterrupted: SIGINT/SIGTERM; a checkpoint to resume from was written.
    """
    config = dict(config)
    out = Path(config["output_dir"])
    last = out / "checkpoints" / "last.ckpt"
    quiet_lightning()

    # ---- the checkpoint to resume from ------------------------------------------------------
    checkpoint = None
    if resume:
        if not last.is_file():
            raise RunError(f"nothing to resume in {out}: no {last}. Start the run without --resume")
        checkpoint = load_checkpoint(last)

    # ---- seed, data, model -------------------------------------------------------------------
    pl.seed_everything(int(config["seed"]), workers=True, verbose=False)
    datamodule = PretrainDataModule(config["data"], config["seed"])
    data = datamodule.info()
    model = build_method(config, data)
    views = _train_views(model, data)
    if views is not None:  # multi-view methods bring their own views
        datamodule.use_train_transform(views)
    if checkpoint is not None:
        check_compatible(checkpoint, model, last)

    # ---- trainer -----------------------------------------------------------------------------
    meter = ThroughputMeter()
    best = ModelCheckpoint(
        dirpath=out / "checkpoints",
        filename="best",
        monitor=BEST_METRICS[config["monitor"]["best"]],
        mode="max",
        save_top_k=1,
        save_on_train_epoch_end=True,
        enable_version_counter=False,
        auto_insert_metric_name=False,
    )
    try:
        latest = LastCheckpoint(
            out / "checkpoints",
            every_n_steps=config["trainer"]["checkpoint_every_n_steps"],
            every_minutes=config["trainer"]["checkpoint_every_minutes"],
        )
        skip_nonfinite = SkipNonFiniteSteps(config["trainer"]["max_nonfinite_steps"])
    except ValueError as err:
        raise ConfigError(f"trainer.{err}") from None
    logger = ResumableCSVLogger(out, keep_below_step=int(checkpoint["global_step"]) if checkpoint else None)
    trainer_kwargs = trainer_arguments(config["trainer"])
    run_callbacks: list[Callback] = [
        meter,
        MonitorsOffTheClock(),  # max_time_s counts training, not validation
        skip_nonfinite,
        ExactResume(datamodule, last),
        CheckpointMetadata(config),
        *callbacks,
    ]
    if trainer_kwargs["enable_progress_bar"]:
        run_callbacks.append(ProgressBar(meter))
    trainer = pl.Trainer(
        **trainer_kwargs,
        callbacks=[*run_callbacks, best, latest],
        logger=logger,
        default_root_dir=out,
        # EpochSampler shards the data itself (and resumes exactly); Lightning's
        # DistributedSampler would replace it.
        use_distributed_sampler=False,
        enable_model_summary=False,
    )
    say = echo if trainer.is_global_zero else (lambda message: None)

    # ---- output folder (rank 0 only: other ranks and nodes would race) ----------------------
    if trainer.is_global_zero:
        _prepare_output(out, config, checkpoint, resume, overwrite, say)
    say(
        f"{'resuming' if resume else 'pretraining'} {config['method']['name']} on {data.spec.name} "
        f"({data.train_size} images, {data.channels}x{data.image_size}x{data.image_size}), "
        f"encoder {config['encoder']['name']}, output {out}"
    )

    # ---- fit, then one final evaluation of the final weights ---------------------------------
    # Lightning's trainer leaves its own SIGTERM handler installed after fit ("Received SIGTERM"
    # and carry on): a command that runs several trainings (compare, sweep, transfer) would then
    # ignore SIGTERM between them. The handlers are put back as they were when fit began.
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        with warnings.catch_warnings():
            for pattern in _QUIET:
                warnings.filterwarnings("ignore", message=pattern)
            trainer.fit(model, datamodule=datamodule, ckpt_path=last if resume else None, weights_only=True)
            train_metrics = {k: _number(v) for k, v in trainer.callback_metrics.items()}
            results = trainer.validate(model, datamodule=datamodule, verbose=False)
    finally:
        for signum, handler in handlers.items():
            if handler is not None and signal.getsignal(signum) is not handler:
                try:
                    signal.signal(signum, handler)
                except ValueError:  # not the main thread: signals are not ours to set
                    pass
    final = {k: _number(v) for k, v in (results[0] if results else {}).items()}

    # ---- summary ----------------------------------------------------------------------------
    summary = {
        "name": config["name"],
        "method": config["method"]["name"],
        "dataset": data.spec.name,
        "encoder": config["encoder"]["name"],
        "epochs": int(trainer.current_epoch),
        "steps": int(trainer.global_step),
        "final_loss": train_metrics.get("train_loss_epoch"),
        "online_acc": final.get(BEST_METRICS["online"]),
        "knn_acc": final.get(BEST_METRICS["knn"]),
        "images": int(meter.images),
        "images_per_s": _number(meter.images_per_s),
        "train_time_s": _number(meter.train_time_s),
        "wall_clock_s": _number(meter.wall_clock_s),
        "world_size": int(trainer.world_size),
        "stopped_by": "max_epochs" if 0 < (trainer.max_epochs or 0) <= trainer.current_epoch else "max_time",
        "last_checkpoint": str(last.resolve()),
        "best_checkpoint": best.best_model_path or None,
    }
    if trainer.is_global_zero:
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        say(format_summary(summary))
    return summary


def _train_views(model: MethodModule, data: DataInfo) -> Any:
    try:
        return model.train_transform(data.spec, data.image_size, data.channels)
    except ValueError as err:
        raise ConfigError(f"method.{err}") from None


def format_summary(summary: Mapping[str, Any]) -> str:
    """The one-line summary printed at the end of a run."""

    def show(value: Any, fmt: str) -> str:
        return "n/a" if value is None else format(value, fmt)

    return (
        f"summary: loss {show(summary['final_loss'], '.4f')} | online acc {show(summary['online_acc'], '.3f')} | "
        f"kNN acc {show(summary['knn_acc'], '.3f')} | {show(summary['images_per_s'], '.0f')} img/s | "
        f"{show(summary['wall_clock_s'], '.1f')} s | {summary['epochs']} epochs, {summary['steps']} steps | "
        f"{Path(summary['last_checkpoint']).parent.parent}"
    )


def _prepare_output(
    out: Path,
    config: Mapping[str, Any],
    checkpoint: Mapping[str, Any] | None,
    resume: bool,
    overwrite: bool,
    say: Callable[[str], None],
) -> None:
    earlier = [p for p in (out / "checkpoints", out / "metrics.csv", out / "summary.json") if p.exists()]
    if resume and checkpoint is not None:
        changes = config_diff(checkpoint["dim_ssl"]["config"], config)
        if changes:
            say("resuming with a changed configuration:\n  " + "\n  ".join(changes))
    elif earlier and not overwrite:
        raise RunError(
            f"{out} already holds a run ({', '.join(p.name for p in earlier)}): continue it with --resume, "
            "start it afresh with --overwrite, or choose another output_dir=..."
        )
    elif earlier:
        for path in earlier:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(dump_config(config))


def _number(value: Any) -> float | None:
    if isinstance(value, torch.Tensor):
        value = value.item()
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None
