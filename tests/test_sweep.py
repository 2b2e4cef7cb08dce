"""``dim-ssl sweep``: the grid, and a tiny sweep interrupted twice and continued cell by cell."""

from __future__ import annotations

import csv
import json
import os
import signal

import pytest
from pytorch_lightning.callbacks import Callback

from eval.cli import main
from eval.errors import ConfigError, OutputInUse
from eval.experiments.sweep import resolve_sweep, run_sweep
from eval.training.config import resolve_config
from eval.training.pretrain import TrainingInterrupted

# DIM on digits with timm's tiny test_resnet: 64 training images in batches of 32, one epoch
# (2 steps) per cell, one probe position; seconds per cell.
TINY = """
name: tiny
seed: 0
data: {dataset: digits, limit_train: 64, limit_val: 48, batch_size: 32}
encoder: {name: test_resnet}
method: {name: dim, head: {alpha: 0.0, beta: 1.0, gamma: 0.1}}
monitor: {knn_every_n_epochs: 0}
trainer: {enable_progress_bar: false, log_every_n_steps: 1}
sweep:
  grid: {method.head.alpha: [0, 0.5, 1], method.head.beta: [1]}
  budget: {epochs: 1}
  knn_k: 10
"""
LABELS = ["alpha=0, beta=1", "alpha=0.5, beta=1", "alpha=1, beta=1"]


def write_config(path, text: str = TINY) -> str:
    path.write_text(text)
    return str(path)


# ---- configuration ---------------------------------------------------------------------


def test_cells_are_the_grids_product_in_key_order_each_with_its_values(tmp_path):
    config = write_config(
        tmp_path / "c.yaml",
        TINY.replace(
            "grid: {method.head.alpha: [0, 0.5, 1], method.head.beta: [1]}",
            "grid: {method.head.alpha: [0, 1], method: {head: {beta: [0.5, 1, 2]}}, data.batch_size: [16]}",
        ),
    )
    sweep = resolve_sweep(config, [f"output_dir={tmp_path / 'out'}"])
    values = [(c.config["method"]["head"]["alpha"], c.config["method"]["head"]["beta"]) for c in sweep.cells]
    assert values == [(0.0, 0.5), (0.0, 1.0), (0.0, 2.0), (1.0, 0.5), (1.0, 1.0), (1.0, 2.0)]  # last key fastest
    assert sweep.cells[1].label == "alpha=0, beta=1, batch_size=16"
    assert {c.config["data"]["batch_size"] for c in sweep.cells} == {16}
    # Everything outside the grid is shared; the budget is every cell's.
    assert {c.config["method"]["head"]["gamma"] for c in sweep.cells} == {0.1}
    assert {(c.config["trainer"]["max_epochs"], c.config["trainer"]["max_time_s"]) for c in sweep.cells} == {(1, None)}
    folders = [c.config["output_dir"] for c in sweep.cells]
    assert len(set(folders)) == 6 and all(f.startswith(str(tmp_path / "out" / "cells")) for f in folders)


def test_the_shipped_sweep_is_a_3x3_alpha_beta_grid_with_gamma_fixed():
    sweep = resolve_sweep("configs/sweep_alpha_beta.yaml")
    heads = [c.config["method"]["head"] for c in sweep.cells]
    assert sorted({(h["alpha"], h["beta"]) for h in heads}) == [(a, b) for a in (0, 0.5, 1) for b in (0, 0.5, 1)]
    assert {h["gamma"] for h in heads} == {0.1}
    assert {c.config["encoder"]["name"] for c in sweep.cells} == {"paper"}
    assert {c.config["data"]["dataset"] for c in sweep.cells} == {"fashion-mnist"}
    # `dim-ssl pretrain` reads the same file and sets the sweep section aside.
    assert "sweep" not in resolve_config("configs/sweep_alpha_beta.yaml")


@pytest.mark.parametrize(
    "grid, message",
    [
        ("{}", "sweep.grid is empty"),
        ("{method.head.alpha: 0.5}", "sweep.grid.method.head.alpha must be a non-empty list"),
        ("{method.head.alpha: [0, 0.0]}", "repeats a value"),
        ("{method.head.alpah: [0, 1]}", "sweep cell alpah=0: unknown config key 'method.head.alpah'"),
        ("{method.head.alpha: [-1]}", "alpha must be"),
    ],
)
def test_grid_mistakes_are_named(tmp_path, grid, message):
    text = TINY.replace("{method.head.alpha: [0, 0.5, 1], method.head.beta: [1]}", grid)
    with pytest.raises(ConfigError) as caught:
        sweep = resolve_sweep(write_config(tmp_path / "c.yaml", text))
        # A weight the head refuses is found when the cell's model is built.
        run_sweep(sweep, echo=lambda line: None)
    assert message in str(caught.value)


def test_an_unknown_sweep_key_exits_2_with_one_line(tmp_path, capsys):
    config = write_config(tmp_path / "c.yaml", TINY.replace("knn_k: 10", "knn_kk: 10"))
    assert main(["sweep", config]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["dim-ssl sweep: error: unknown config key 'sweep.knn_kk'; did you mean 'sweep.knn_k'?"]


# ---- a tiny sweep, interrupted twice -----------------------------------------------------


class Interrupt(Callback):
    """In one cell (by folder name): a real SIGINT at a batch, or an exception after an epoch;
    records the step each cell's training starts from."""

    def __init__(self, cell: str, how: str) -> None:
        self.cell, self.how = cell, how
        self.started: dict[str, int] = {}

    def _here(self, trainer) -> bool:
        return os.path.basename(str(trainer.default_root_dir)) == self.cell

    def on_train_start(self, trainer, pl_module):
        self.started[os.path.basename(str(trainer.default_root_dir))] = int(trainer.global_step)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self._here(trainer) and self.how == "sigint" and (trainer.current_epoch, batch_idx) == (0, 0):
            os.kill(os.getpid(), signal.SIGINT)  # the harness saves after this batch, then stops
        if self._here(trainer) and self.how == "raise" and batch_idx == 1:
            raise RuntimeError("cell failed")


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """Run 1: SIGINT in cell 2. Run 2: cell 2 resumes, cell 3 raises. Run 3: cell 3 again."""
    folder = tmp_path_factory.mktemp("sweep")
    config = write_config(folder / "tiny.yaml")
    out = folder / "out"
    sweep = resolve_sweep(config, [f"output_dir={out}"])
    quiet = {"echo": lambda line: None}
    slugs = [cell.slug for cell in sweep.cells]
    runs = []

    first = Interrupt(slugs[1], "sigint")
    with pytest.raises(TrainingInterrupted):
        run_sweep(sweep, callbacks=[first], **quiet)
    done_once = {s: (out / "cells" / s / "cell.json").stat().st_mtime_ns for s in slugs[:1]}
    runs.append(first)

    second = Interrupt(slugs[2], "raise")
    with pytest.raises(RuntimeError, match="cell failed"):
        run_sweep(sweep, callbacks=[second], **quiet)
    runs.append(second)
    partial = json.loads((out / "sweep.json").read_text())  # written after every cell

    third = Interrupt("none", "none")
    result = run_sweep(sweep, callbacks=[third], **quiet)
    runs.append(third)
    return sweep, out, runs, done_once, partial, result


def test_finished_cells_are_kept_and_unfinished_ones_resume_from_their_checkpoint(interrupted):
    sweep, out, (first, second, third), done_once, partial, result = interrupted
    one, two, three = (cell.slug for cell in sweep.cells)
    # Run 1 trained cell 1 from scratch and stopped in cell 2 after its first batch.
    assert first.started == {one: 0, two: 0}
    # Run 2 did not train cell 1 again; cell 2 continued after that batch; cell 3 failed.
    assert second.started == {two: 1, three: 0}
    # Run 3 only trained cell 3: from the start, as a failed run leaves no checkpoint to
    # continue from (the harness writes one on SIGINT/SIGTERM and at the end of training).
    assert third.started == {three: 0}
    assert result["states"] == dict(zip(LABELS, ["done", "done", "fresh"]))
    assert (out / "cells" / one / "cell.json").stat().st_mtime_ns == done_once[one]
    assert [row["cell"] for row in partial] == LABELS[:2]
    # Every cell ends with its whole budget.
    for cell in sweep.cells:
        summary = json.loads((cell.out / "summary.json").read_text())
        assert (summary["epochs"], summary["steps"]) == (1, 2), cell.label


def test_the_finished_sweep_has_every_cell_in_its_table_and_a_heatmap_per_probe(interrupted):
    sweep, out, *_, result = interrupted
    rows = json.loads((out / "sweep.json").read_text())
    assert [(row["cell"], row["alpha"], row["beta"], row["position"]) for row in rows] == [
        (label, alpha, 1, "pool") for label, alpha in zip(LABELS, (0, 0.5, 1))
    ]
    assert [row["resumed"] for row in rows] == [False, True, False]
    for row in rows:
        assert 0 <= row["knn_acc"] <= 1 and 0 <= row["linear_acc"] <= 1
    with open(out / "sweep.csv", newline="") as file:
        table = list(csv.DictReader(file))
    assert [float(r["linear_acc"]) for r in table] == pytest.approx([r["linear_acc"] for r in rows])
    for probe in ("knn", "linear"):
        assert (out / f"heatmap_{probe}_pool.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Cells differ in their weights, so in their features: not one number copied to every cell.
    assert len({(r["final_loss"], r["knn_acc"], r["linear_acc"]) for r in rows}) == 3


def test_the_command_line_continues_a_finished_sweep_and_refuses_a_changed_one(interrupted, capsys):
    sweep, out, *_ = interrupted
    config = str(out.parent / "tiny.yaml")
    stamps = [(c.out / "checkpoints" / "last.ckpt").stat().st_mtime_ns for c in sweep.cells]
    assert main(["sweep", config, f"output_dir={out}"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("finished earlier, kept") == 3 and "| alpha=1, beta=1 | 1 | 1 | pool |" in printed
    assert [(c.out / "checkpoints" / "last.ckpt").stat().st_mtime_ns for c in sweep.cells] == stamps

    changed = resolve_sweep(config, [f"output_dir={out}", "sweep.budget.epochs=3"])
    with pytest.raises(OutputInUse, match="trainer.max_epochs: 1 -> 3.*--overwrite"):
        run_sweep(changed, echo=lambda line: None)
