"""Two-process DDP on CPU (gloo) through Lightning and the real command line."""

from __future__ import annotations

import math

import pytest
from pretrain_helpers import QUICKSTART, read_metrics, read_summary, run_cli

from eval.training.checkpoint import load_checkpoint

# A one-epoch run on two gloo processes: 64 images, 16 per rank and step, so 2 steps.
TWO_RANKS = [
    "encoder.name=test_resnet",
    "data.limit_train=64",
    "data.batch_size=16",
    "data.limit_val=50",
    "trainer.max_epochs=1",
    "trainer.accelerator=cpu",
    "trainer.devices=2",
    "trainer.strategy=ddp",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1",
]


def test_two_process_ddp_on_cpu_trains_and_writes_one_checkpoint(tmp_path):
    out = tmp_path / "ddp"
    result = run_cli(
        [
            "pretrain",
            QUICKSTART,
            *TWO_RANKS,
            f"output_dir={out}",
        ],
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "Starting with 2 processes" in result.stdout + result.stderr  # Lightning's gloo set-up

    # One run, written once: rank 1 wrote no second checkpoint, summary or config.
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert result.stdout.count("summary: loss") == 1
    summary = read_summary(out)
    # 64 images over 2 ranks of 16: 2 steps, 64 images a step-pair; negatives from both ranks.
    assert (summary["world_size"], summary["steps"], summary["epochs"]) == (2, 2, 1)
    assert math.isfinite(summary["final_loss"]) and summary["knn_acc"] is not None

    checkpoint = load_checkpoint(out / "checkpoints" / "last.ckpt")
    assert checkpoint["global_step"] == 2
    assert checkpoint["dim_ssl"]["config"]["trainer"]["devices"] == 2
    assert checkpoint["dim_ssl"]["config"]["method"]["head"]["gather_distributed"] is True
    assert any(row.get("train_loss_epoch") for row in read_metrics(out))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["simclr", "moco", "byol"])
def test_two_process_ddp_trains_a_two_view_method_with_its_frozen_summary_mlp(tmp_path, name):
    # DDP fails on parameters that get no gradient unless they are frozen: the summary MLP of a
    # two-view method and its momentum copies; MoCo also shuffles keys across the two ranks.
    out = tmp_path / name
    result = run_cli(
        [
            "pretrain",
            QUICKSTART,
            f"method.name={name}",
            *TWO_RANKS,
            f"output_dir={out}",
        ],
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "Starting with 2 processes" in result.stdout + result.stderr
    summary = read_summary(out)
    assert (summary["method"], summary["world_size"], summary["steps"]) == (name, 2, 2)
    assert math.isfinite(summary["final_loss"]) and summary["knn_acc"] is not None
    checkpoint = load_checkpoint(out / "checkpoints" / "last.ckpt")
    assert checkpoint["global_step"] == 2 and checkpoint["dim_ssl"]["config"]["method"]["name"] == name


def test_two_process_ddp_resumed_ends_like_an_uninterrupted_two_process_run(tmp_path):
    # Two ranks, 2 steps an epoch. One run of 2 epochs; another stopped after epoch 1 and resumed
    # to 2 with --resume: every logged number must match (sampler shards, RNG states, epoch
    # means and the gathered negatives of both ranks restored).
    args = ["pretrain", QUICKSTART, *TWO_RANKS, "method.head.negatives=shuffle"]
    whole, halves = tmp_path / "whole", tmp_path / "halves"
    reference = run_cli([*args, "trainer.max_epochs=2", f"output_dir={whole}"], timeout=300)
    assert reference.returncode == 0, reference.stderr[-3000:]
    first = run_cli([*args, "trainer.max_epochs=1", f"output_dir={halves}"], timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = run_cli([*args, "trainer.max_epochs=2", f"output_dir={halves}", "--resume"], timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout

    expected, got = read_summary(whole), read_summary(halves)
    assert (got["world_size"], got["steps"], got["epochs"]) == (2, 4, 2)
    for key in ("final_loss", "online_acc", "knn_acc"):
        assert got[key] == pytest.approx(expected[key], rel=1e-6, abs=1e-7), key
    assert read_metrics(halves) == read_metrics(whole)
