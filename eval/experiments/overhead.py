"""The harness's own cost: a method trained by ``dim-ssl pretrain`` against a plain PyTorch loop.

The plain loop is the least a user would write: the method's loss on batches from a
``DataLoader`` over the same dataset and views (same transform, same batch size, same workers),
``backward()``, the method's optimizer, nothing else. The harness adds Lightning's loop, the
seeded per-image augmentation, the online classifier, step logging, and validation with the
kNN monitor. Both train the same model from the same seed in the same process, one after the
other, and the plain loop runs twice, before and after the harness, so that a change in the
machine's load during the measurement shows as a difference between its two runs.

Reported: the harness's training images/s (the budget's clock: training batches with their
loading, validation off the clock), its images/s over the whole run (validation and checkpoints
included), the plain loop's, and the ratios; each also per second of this process's CPU time,
which other load on the machine hardly moves (one thread per process: CPU time is then the
time the loop would take on an idle core).

Example::

    dim-ssl bench --harness configs/family_fmnist.yaml --seconds 120 --threads 1
"""

from __future__ import annotations

import itertools
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from pytorch_lightning.callbacks import Callback
from torch.utils.data import DataLoader

from eval.methods import MethodModule, build_method
from eval.training.datamodule import PretrainDataModule
from eval.training.pretrain import pretrain

__all__ = ["harness_overhead", "plain_loop_throughput", "format_overhead"]

WARMUP_STEPS = 3


def _model_and_data(config: Mapping[str, Any]) -> tuple[MethodModule, PretrainDataModule]:
    torch.manual_seed(int(config["seed"]))
    datamodule = PretrainDataModule(config["data"], config["seed"])
    data = datamodule.info()
    model = build_method(config, data)
    views = model.train_transform(data.spec, data.image_size, data.channels)
    if views is not None:
        datamodule.use_train_transform(views)
    return model, datamodule


def plain_loop_throughput(config: Mapping[str, Any], seconds: float) -> dict[str, float]:
    """Training images/s of the plain loop on a resolved configuration's method and data.

    Times ``seconds`` of steps (data loading included) after :data:`WARMUP_STEPS` untimed ones.

    Raises:
        ValueError: The method's loss needs a Lightning Trainer (schedules that read its step).
    """
    model, datamodule = _model_and_data(config)
    return plain_loop(model, datamodule, seconds)


def plain_loop(model: MethodModule, datamodule: PretrainDataModule, seconds: float) -> dict[str, float]:
    """Trains ``model`` on ``datamodule``'s training split for ``seconds`` after a warm-up."""
    assert datamodule.train_set is not None
    config = {"data": datamodule.config}
    model.train()
    optimizer = model.build_optimizer()
    workers = int(config["data"]["num_workers"])
    loader = DataLoader(
        datamodule.train_set,
        batch_size=int(config["data"]["batch_size"]),
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,
    )
    images = steps = 0
    started: float | None = None
    cpu_started = 0.0
    for batch, _ in itertools.chain.from_iterable(itertools.repeat(loader)):
        views = list(batch) if isinstance(batch, (list, tuple)) else [batch]
        loss = model.training_loss(views).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        steps += 1
        if steps == WARMUP_STEPS:
            started, cpu_started = time.perf_counter(), time.process_time()
        elif started is not None:
            images += views[0].shape[0]
            if time.perf_counter() - started >= seconds:
                break
    elapsed = time.perf_counter() - started if started is not None else float("nan")
    cpu = time.process_time() - cpu_started if started is not None else float("nan")
    return {
        "images_per_s": images / elapsed,
        "images_per_cpu_s": images / cpu,
        "steps": steps - WARMUP_STEPS,
        "seconds": elapsed,
    }


class CpuClock(Callback):
    """This process's CPU seconds while fitting, and those of its training alone (validation off).

    CPU time, unlike wall-clock time, hardly moves when other processes load the machine, so
    ratios of images per CPU-second compare loops measured minutes apart.
    """

    def __init__(self) -> None:
        self.fit_cpu_s = self.validation_cpu_s = 0.0
        self._fit = self._validation = 0.0

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._fit = time.process_time()

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.fit_cpu_s = time.process_time() - self._fit

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        self._validation = time.process_time()

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.training or trainer.state.fn == "fit":
            self.validation_cpu_s += time.process_time() - self._validation

    @property
    def train_cpu_s(self) -> float:
        return self.fit_cpu_s - self.validation_cpu_s


def harness_throughput(config: Mapping[str, Any], seconds: float) -> dict[str, float]:
    """``pretrain`` of the configuration under a budget of ``seconds``, in a temporary folder."""
    with tempfile.TemporaryDirectory(prefix="dim-ssl-overhead-") as folder:
        run = {
            **config,
            "output_dir": str(Path(folder) / "run"),
            "trainer": {**config["trainer"], "max_time_s": float(seconds), "max_epochs": 1000},
        }
        clock = CpuClock()
        summary = pretrain(run, callbacks=[clock], echo=lambda message: None)
    return {
        "images_per_cpu_s": summary["images"] / clock.train_cpu_s,
        "whole_run_images_per_cpu_s": summary["images"] / clock.fit_cpu_s,
        "images_per_s": float(summary["images_per_s"]),
        "steps": int(summary["steps"]),
        "train_time_s": float(summary["train_time_s"]),
        "wall_clock_s": float(summary["wall_clock_s"]),
        # fit's wall-clock: training, validation with its monitors, checkpoints
        "whole_run_images_per_s": summary["images"] / float(summary["wall_clock_s"]),
    }


def harness_overhead(config: Mapping[str, Any], seconds: float, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Plain loop, harness, plain loop again, each for ``seconds`` of training; the ratios."""
    log(f"plain loop, {seconds:.0f} s ...")
    first = plain_loop_throughput(config, seconds)
    log(f"  {first['images_per_s']:.0f} img/s; the harness (dim-ssl pretrain), {seconds:.0f} s of training ...")
    harness = harness_throughput(config, seconds)
    log(f"  {harness['images_per_s']:.0f} img/s; plain loop again ...")
    second = plain_loop_throughput(config, seconds)
    plain = (first["images_per_s"] + second["images_per_s"]) / 2
    plain_cpu = (first["images_per_cpu_s"] + second["images_per_cpu_s"]) / 2
    return {
        "method": config["method"]["name"],
        "encoder": config["encoder"]["name"],
        "batch_size": int(config["data"]["batch_size"]),
        "seconds": float(seconds),
        "plain_images_per_s": [first["images_per_s"], second["images_per_s"]],
        "harness": harness,
        "harness_vs_plain": harness["images_per_s"] / plain,
        "harness_whole_run_vs_plain": harness["whole_run_images_per_s"] / plain,
        "plain_images_per_cpu_s": [first["images_per_cpu_s"], second["images_per_cpu_s"]],
        "harness_vs_plain_cpu": harness["images_per_cpu_s"] / plain_cpu,
        "harness_whole_run_vs_plain_cpu": harness["whole_run_images_per_cpu_s"] / plain_cpu,
    }


def format_overhead(result: Mapping[str, Any]) -> str:
    """A short table of :func:`harness_overhead`'s result: images per wall-clock and per CPU second."""
    plain, plain_cpu = result["plain_images_per_s"], result["plain_images_per_cpu_s"]
    harness = result["harness"]
    return "\n".join(
        [
            f"{result['method']} on {result['encoder']}, batch {result['batch_size']}, {result['seconds']:.0f} s each",
            "| loop | images/s | vs plain | images/CPU-s | vs plain (CPU) |",
            "|---|---|---|---|---|",
            f"| plain PyTorch loop (before, after) | {plain[0]:.0f}, {plain[1]:.0f} | 1.00 "
            f"| {plain_cpu[0]:.0f}, {plain_cpu[1]:.0f} | 1.00 |",
            f"| harness, training clock | {harness['images_per_s']:.0f} | {result['harness_vs_plain']:.2f} "
            f"| {harness['images_per_cpu_s']:.0f} | {result['harness_vs_plain_cpu']:.2f} |",
            f"| harness, whole run (validation, checkpoints) | {harness['whole_run_images_per_s']:.0f} "
            f"| {result['harness_whole_run_vs_plain']:.2f} | {harness['whole_run_images_per_cpu_s']:.0f} "
            f"| {result['harness_whole_run_vs_plain_cpu']:.2f} |",
        ]
    )
