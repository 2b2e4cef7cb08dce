"""``last.ckpt`` survives any kill: every epoch end, every N steps, atomically; SIGKILL then --resume."""

from __future__ import annotations

import signal
import time
from types import SimpleNamespace

import pytest
import torch
from pretrain_helpers import QUICKSTART, fresh, read_metrics, read_summary, run_cli, start_cli
from pytorch_lightning.callbacks import Callback

from eval.errors import ConfigError
from eval.training.checkpoint import load_checkpoint
from eval.training.config import resolve_config
from eval.training.last_checkpoint import save_atomically
from eval.training.pretrain import pretrain

# 4 batches an epoch, 3 epochs.
RUN = [
    "encoder.name=test_resnet",
    "data.limit_train=64",
    "data.batch_size=16",
    "data.limit_val=48",
    "trainer.max_epochs=3",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1",
]


class LastCheckpointSpy(Callback):
    """Reads last.ckpt's global step before every training batch."""

    def __init__(self, path) -> None:
        self.path, self.seen = path, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        step = load_checkpoint(self.path)["global_step"] if self.path.is_file() else None
        self.seen.append((trainer.current_epoch, batch_idx, step))


def _run(folder, *extra):
    spy = LastCheckpointSpy(folder / "checkpoints" / "last.ckpt")
    config = resolve_config(QUICKSTART, [*RUN, *extra, f"output_dir={folder}"])
    pretrain(config, callbacks=[spy], echo=lambda m: None)
    return spy.seen


def test_last_checkpoint_is_written_at_every_epoch_end(tmp_path):
    seen = _run(tmp_path / "run", "trainer.checkpoint_every_minutes=null")
    # Before any step nothing; from then on, at each batch, the state of the last epoch end.
    assert seen[0] == (0, 0, None)
    assert all(step is None for epoch, _, step in seen if epoch == 0)
    assert {(epoch, step) for epoch, _, step in seen if epoch > 0} == {(1, 4), (2, 8)}


def test_last_checkpoint_every_n_steps_inside_an_epoch(tmp_path):
    seen = _run(tmp_path / "run", "trainer.checkpoint_every_n_steps=3", "trainer.checkpoint_every_minutes=null")
    steps = [step for _, _, step in seen]
    # Saved after steps 3, 4 (epoch end), 6, 8 (epoch end), 9; each read before the next batch.
    assert steps == [None, None, None, 3, 4, 4, 6, 6, 8, 9, 9, 9]


def test_bad_checkpoint_intervals_are_config_errors(tmp_path):
    config = resolve_config(QUICKSTART, [*RUN, "trainer.checkpoint_every_n_steps=0", f"output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="trainer.checkpoint_every_n_steps must be a positive number"):
        pretrain(config, echo=lambda m: None)


def test_a_write_killed_halfway_leaves_the_previous_checkpoint_whole(tmp_path):
    path = tmp_path / "last.ckpt"
    torch.save({"global_step": 4, "weights": torch.arange(1000)}, path)
    before = path.read_bytes()

    def dies_halfway(target, weights_only=False):  # what a kill in the middle of a write leaves
        data = before * 2
        with open(target, "wb") as file:
            file.write(data[: len(data) // 2])
        raise KeyboardInterrupt("killed while writing")

    trainer = SimpleNamespace(save_checkpoint=dies_halfway, is_global_zero=True, strategy=None)
    with pytest.raises(KeyboardInterrupt):
        save_atomically(trainer, path)
    assert path.read_bytes() == before
    assert torch.load(path, weights_only=True)["global_step"] == 4

    def writes(target, weights_only=False):
        torch.save({"global_step": 8}, target)

    trainer = SimpleNamespace(
        save_checkpoint=writes, is_global_zero=True, strategy=SimpleNamespace(barrier=lambda name: None)
    )
    save_atomically(trainer, path)
    assert torch.load(path, weights_only=True)["global_step"] == 8
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left behind


def test_a_run_killed_by_sigkill_resumes_from_its_last_mid_epoch_checkpoint(tmp_path):
    # 12 batches an epoch, 2 epochs, a checkpoint every 5 steps: killed without warning inside
    # epoch 1, resumed, it must end with the steps and every logged number of a run never killed.
    args = [
        "pretrain",
        QUICKSTART,
        "encoder.name=test_resnet",
        "data.limit_train=192",
        "data.batch_size=16",
        "data.limit_val=48",
        "trainer.max_epochs=2",
        "trainer.log_every_n_steps=1",
        "trainer.enable_progress_bar=false",
        "trainer.checkpoint_every_n_steps=5",
        "method.head.negatives=shuffle",  # negatives drawn from the RNG: its state must resume too
    ]
    reference_out, killed_out = fresh(tmp_path / "reference"), fresh(tmp_path / "killed")
    victim = start_cli([*args, f"output_dir={killed_out}"])
    last = killed_out / "checkpoints" / "last.ckpt"
    killed_at = None
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and victim.poll() is None:
            if last.is_file():
                step = load_checkpoint(last)["global_step"]
                if step > 12 and step % 12:  # a mid-epoch checkpoint of epoch 1
                    victim.send_signal(signal.SIGKILL)
                    killed_at = step
                    break
            time.sleep(0.05)
        assert killed_at is not None, victim.communicate(timeout=60)[0][-3000:].decode(errors="replace")
        assert victim.wait(timeout=60) == -signal.SIGKILL
    finally:
        victim.kill()
        victim.communicate(timeout=60)
    assert not (killed_out / "summary.json").exists()  # it did not finish

    reference = run_cli([*args, f"output_dir={reference_out}"])
    assert reference.returncode == 0, reference.stderr[-3000:]
    resumed = run_cli([*args, f"output_dir={killed_out}", "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout

    expected, got = read_summary(reference_out), read_summary(killed_out)
    assert got["steps"] == expected["steps"] == 24
    for key in ("final_loss", "online_acc", "knn_acc", "epochs"):
        assert got[key] == pytest.approx(expected[key], rel=1e-6, abs=1e-7), key
    assert read_metrics(killed_out) == read_metrics(reference_out)


def test_resume_from_a_truncated_checkpoint_is_one_line_and_exit_status_2(tmp_path, capsys):
    from eval.cli import main

    out = tmp_path / "run"
    args = ["pretrain", QUICKSTART, *RUN, "trainer.max_epochs=1", f"output_dir={out}"]
    assert main(args) == 0
    last = out / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # a write cut short
    capsys.readouterr()
    assert main([*args, "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dim-ssl pretrain: error:") and str(last) in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
