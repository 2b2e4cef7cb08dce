"""``dim-ssl pretrain`` through the real command line: a run, its output folder, kill and resume, errors."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import yaml
from pretrain_helpers import (
    QUICKSTART,
    TINY,
    epoch_values,
    fresh,
    read_metrics,
    read_summary,
    run_cli,
    start_cli,
)

from eval.cli import main


def test_quickstart_writes_a_complete_output_folder_and_learns(tmp_path):
    out = tmp_path / "quickstart"
    # The quickstart recipe with a small timm model and two epochs instead of resnet18 x 5.
    result = run_cli(
        [
            "pretrain",
            QUICKSTART,
            "encoder.name=test_resnet",
            "data.batch_size=32",
            "trainer.max_epochs=2",
            f"output_dir={out}",
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]

    for name in ("config.yaml", "metrics.csv", "summary.json", "checkpoints/last.ckpt", "checkpoints/best.ckpt"):
        assert (out / name).is_file(), name
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["encoder"]["name"] == "test_resnet" and config["trainer"]["max_epochs"] == 2
    assert config["optimizer"]["betas"] == [0.5, 0.999]  # resolved: every key written out

    losses = epoch_values(read_metrics(out), "train_loss_epoch")
    assert len(losses) == 2 and losses[1] < losses[0]
    summary = read_summary(out)
    assert summary["final_loss"] == pytest.approx(losses[-1])
    assert summary["online_acc"] > 0.3 and summary["knn_acc"] > 0.3  # 10 classes: chance is 0.1
    assert summary["images_per_s"] > 0 and summary["wall_clock_s"] > 0
    assert (summary["epochs"], summary["steps"]) == (2, 2 * (1437 // 32))
    assert "summary: loss" in result.stdout and "online acc" in result.stdout
    assert "img/s" in result.stdout and "train_loss" in result.stdout  # the progress bar (tqdm on stdout)
    # Quiet: no accelerator lines, advertisements or third-party deprecation warnings.
    noise = ("GPU available", "TPU available", "litlogger", "LeafSpec")
    assert not [n for n in noise if n in result.stdout + result.stderr]


def _watch(stream, seen: list[bytes], marker: bytes, found: threading.Event) -> None:
    # os.read returns what is there: tqdm redraws with '\r', without newlines.
    while chunk := os.read(stream.fileno(), 4096):
        seen.append(chunk)
        if marker in b"".join(seen[-4:]):
            found.set()


def test_a_run_killed_by_sigterm_and_resumed_ends_like_an_uninterrupted_one(tmp_path):
    args = [
        "pretrain",
        QUICKSTART,
        "encoder.name=test_resnet",
        "data.limit_train=256",
        "data.batch_size=16",
        "data.limit_val=64",
        "trainer.max_epochs=3",
        "trainer.log_every_n_steps=1",
        "method.head.negatives=shuffle",  # negatives drawn from the RNG: its state must resume too
    ]
    reference_out, killed_out = fresh(tmp_path / "reference"), fresh(tmp_path / "killed")
    reference = start_cli([*args, "trainer.enable_progress_bar=false", f"output_dir={reference_out}"])
    victim = start_cli([*args, f"output_dir={killed_out}"])  # its progress bar tells us the epoch

    seen: list[bytes] = []
    second_epoch = threading.Event()
    watcher = threading.Thread(target=_watch, args=(victim.stdout, seen, b"Epoch 1:", second_epoch), daemon=True)
    watcher.start()
    try:
        assert second_epoch.wait(timeout=300), b"".join(seen)[-3000:].decode(errors="replace")
        time.sleep(0.5)  # somewhere inside epoch 1 (of 0, 1, 2)
        victim.send_signal(signal.SIGTERM)
        assert victim.wait(timeout=120) == 128 + signal.SIGTERM
    finally:
        victim.kill()
        watcher.join(timeout=10)
    output = b"".join(seen).decode(errors="replace")
    assert "SIGTERM received: saving a checkpoint" in output
    assert "continue with: dim-ssl pretrain" in output and "--resume" in output
    assert (killed_out / "checkpoints" / "last.ckpt").is_file()
    assert not (killed_out / "summary.json").exists()  # it did not finish

    reference_output, _ = reference.communicate(timeout=300)
    assert reference.returncode == 0, reference_output[-3000:].decode(errors="replace")
    resumed = run_cli([*args, f"output_dir={killed_out}", "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    expected, got = read_summary(reference_out), read_summary(killed_out)
    for key in ("final_loss", "online_acc", "knn_acc", "epochs", "steps"):
        assert got[key] == pytest.approx(expected[key], rel=1e-6, abs=1e-7), key
    # Every logged number, step by step: the resumed run reads like one run.
    assert read_metrics(killed_out) == read_metrics(reference_out)


def test_a_missing_dataset_is_a_clean_error(tmp_path, capsys, monkeypatch):
    # In-process through the command line's entry function (main): an exception escaping it
    # would fail this test; the subprocess tests above show the same path from the shell.
    monkeypatch.delenv("DIM_SSL_DATA", raising=False)
    status = main(
        ["pretrain", QUICKSTART, "data.dataset=cifar10", f"data.root={tmp_path}", f"output_dir={tmp_path / 'run'}"]
    )
    captured = capsys.readouterr()
    assert status == 1
    assert "dim-ssl pretrain: error: dataset 'cifar10' not found" in captured.err
    assert "Ways to get it" in captured.err
    assert "Traceback" not in captured.err + captured.out
    assert not (tmp_path / "run").exists()  # nothing written for a run that could not start


def test_config_and_folder_mistakes_are_clean_errors(tmp_path, capsys):
    assert main(["pretrain", QUICKSTART, "optimizer.lrr=1e-3"]) == 2
    assert "did you mean 'optimizer.lr'" in capsys.readouterr().err

    out = tmp_path / "run"
    assert main(["pretrain", QUICKSTART, *TINY, f"output_dir={out}", "--resume"]) == 1
    assert "nothing to resume" in capsys.readouterr().err

    assert main(["pretrain", QUICKSTART, *TINY, f"output_dir={out}"]) == 0
    capsys.readouterr()
    assert main(["pretrain", QUICKSTART, *TINY, f"output_dir={out}"]) == 1
    assert "already holds a run" in capsys.readouterr().err
    assert main(["pretrain", QUICKSTART, *TINY, f"output_dir={out}", "--overwrite"]) == 0

    (out / "checkpoints" / "last.ckpt").write_bytes(b"\x00" * 100)
    assert main(["pretrain", QUICKSTART, *TINY, f"output_dir={out}", "--resume"]) == 2  # a damaged checkpoint: status 2
    err = capsys.readouterr().err
    assert "is not a dim-ssl checkpoint" in err and "last.ckpt" in err
