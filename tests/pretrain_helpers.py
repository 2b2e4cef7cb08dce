"""Helpers shared by the pretraining tests: tiny run settings and the command line in a subprocess."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

import pytorch_lightning as pl
import yaml

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")

# A small, fast timm model (0.4M parameters) and tiny splits: seconds per run on a busy CPU.
TINY = [
    "encoder.name=test_resnet",
    "data.limit_train=64",
    "data.batch_size=16",
    "data.limit_val=48",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1",
]


def cli_command() -> list[str]:
    """The installed ``dim-ssl`` entry point, else ``python -m eval.cli``."""
    script = Path(sys.executable).with_name("dim-ssl")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "eval.cli"]


def cli_env(**extra: str) -> dict[str, str]:
    # One thread per process: on a busy 2-core machine a second intra-op thread makes small ops
    # wait on each other (see tests/conftest.py), and the kill-and-resume test runs two at once.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}
    env.pop("DIM_SSL_DATA", None)
    return env


def run_cli(args: Sequence[str], timeout: float = 240, **env: str) -> subprocess.CompletedProcess:
    """``dim-ssl ARGS`` in a subprocess, output captured as text."""
    return subprocess.run(
        [*cli_command(), *args], cwd=ROOT, env=cli_env(**env), capture_output=True, text=True, timeout=timeout
    )


def start_cli(args: Sequence[str], **env: str) -> subprocess.Popen:
    """``dim-ssl ARGS`` started in the background, stdout and stderr in one binary pipe."""
    return subprocess.Popen(
        [*cli_command(), *args],
        cwd=ROOT,
        env=cli_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def read_metrics(out: Path) -> list[dict[str, str]]:
    with open(out / "metrics.csv", newline="") as file:
        return list(csv.DictReader(file))


def read_summary(out: Path) -> dict[str, Any]:
    return json.loads((out / "summary.json").read_text())


def epoch_values(rows: list[dict[str, str]], key: str) -> list[float]:
    return [float(row[key]) for row in rows if row.get(key)]


def fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    return path


def quiet_trainer(tmp_path: Path | None = None, **kwargs: Any) -> pl.Trainer:
    """A CPU Trainer that writes and prints nothing of its own (no logger, checkpoints, bars)."""
    return pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
        **kwargs,
    )


def copy_finished_run(run: Path, to: Path) -> None:
    """A finished run of a several-seed comparison (or transfer), copied to where a one-seed run of
    the same method writes, renamed as that run names it: ``--reuse`` there keeps it."""
    shutil.copytree(run, to)
    saved = yaml.safe_load((to / "config.yaml").read_text())
    saved.update(name=saved["name"].removesuffix(f"-seed{saved['seed']}"), output_dir=str(to))
    (to / "config.yaml").write_text(yaml.safe_dump(saved))
