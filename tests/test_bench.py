"""`dim-ssl bench` end to end on a tiny backbone and batch, through the real command line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
TINY = [
    "--backbone",
    "test_resnet",
    "--image-size",
    "16",
    "--batch-size",
    "4",
    "--channels",
    "1",
    "--rounds",
    "1",
    "--steps",
    "1",
    "--warmup",
    "0",
]
# The same run on the paper encoder, at the 32x32 it was designed for.
TINY_PAPER = ["--backbone", "paper", "--image-size", "32", *TINY[4:]]


def dim_ssl(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "eval.cli", "bench", *args, "--out", str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_bench_runs_every_method_and_writes_json_csv_and_table(tmp_path):
    from eval.experiments.bench import CASES, DEFAULT_CASES

    result = dim_ssl(*TINY, "--no-rss", "--methods", ",".join(CASES), tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "bench.json").read_text())
    assert set(report["methods"]) == set(CASES) and set(DEFAULT_CASES) <= set(CASES)
    for name, method in report["methods"].items():
        assert method["images_per_s"] > 0 and method["views"] == (
            2 if name.startswith(("simclr", "moco", "byol", "mvdim")) else 1
        )
        assert method["ratio_to_floor"] > 0 and method["ratio_to_simclr"] > 0
        assert method["peak_memory_mib"] is None or method["peak_memory_mib"] > 0
    assert report["methods"]["backbone"]["ratio_to_floor"] == pytest.approx(1.0)
    assert report["methods"]["simclr"]["ratio_to_simclr"] == pytest.approx(1.0)
    assert "profiler" in report["memory_measure"]
    assert report["config"]["backbone"] == "test_resnet" and report["environment"]["torch"]
    csv_lines = (tmp_path / "bench.csv").read_text().splitlines()
    assert csv_lines[0].startswith("method,") and len(csv_lines) == 1 + len(CASES)
    for name in CASES:  # the table on stdout names every method
        assert f"\n{name} " in result.stdout


def test_bench_memory_sweep_and_rss_probe(tmp_path):
    result = dim_ssl(
        *TINY,
        "--methods",
        "dim_l_jsd_dot",
        "--sweep-memory",
        "--sweep-batch-size",
        "4",
        "--sweep-map-sizes",
        "2,40",
        "--sweep-channels",
        "4",
        tmp_path=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "bench.json").read_text())
    assert all(m["peak_rss_mib"] is not None for m in report["methods"].values())
    modes = {(row["map"], row["mode"]) for row in report["sweep"]}
    # "sampled" only where the map has more locations than num_locations (1024).
    assert modes == {(2, "all"), (2, "chunked"), (40, "all"), (40, "chunked"), (40, "sampled")}
    for row in report["sweep"]:
        assert row["seconds"] > 0 and row["N_M2"] == 4 * row["map"] ** 2
        assert row["local_mi"] == row["local_mi"]  # not NaN
    assert (tmp_path / "memory_sweep.csv").exists()
    assert "N*M^2" in result.stdout


def test_unknown_method_is_a_clear_error(tmp_path, capsys):
    from eval.cli import main

    assert main(["bench", *TINY, "--methods", "nonesuch", "--out", str(tmp_path)]) == 2
    assert "dim-ssl bench: error: unknown method(s) nonesuch" in capsys.readouterr().err


def test_bench_runs_on_the_paper_encoder_and_a_small_input_stem(tmp_path):
    paper = dim_ssl(*TINY_PAPER, "--no-rss", "--no-memory", "--methods", "backbone,dim_l_jsd_dot", tmp_path=tmp_path)
    assert paper.returncode == 0, paper.stderr[-3000:]
    assert json.loads((tmp_path / "bench.json").read_text())["config"]["backbone"] == "paper"
    small = dim_ssl(*TINY, "--small-input", "--no-rss", "--no-memory", "--methods", "backbone,mvdim", tmp_path=tmp_path)
    assert small.returncode == 0, small.stderr[-3000:]
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["config"]["small_input"] is True and report["methods"]["mvdim"]["views"] == 2


# ---- --harness: the harness against a plain loop


def test_the_plain_loop_trains_the_configurations_method():
    from eval.experiments.overhead import _model_and_data, plain_loop
    from eval.training.config import resolve_config
    from tests.pretrain_helpers import QUICKSTART, TINY

    config = resolve_config(QUICKSTART, TINY)
    model, datamodule = _model_and_data(config)
    before = {name: p.detach().clone() for name, p in model.encoder.named_parameters()}
    result = plain_loop(model, datamodule, seconds=0.0)  # the warm-up steps and one timed step
    assert result["steps"] == 1 and result["images_per_s"] > 0
    moved = [n for n, p in model.encoder.named_parameters() if not torch.equal(before[n], p)]
    assert len(moved) == len(before)  # the method's loss and optimizer trained every weight
    again, _ = _model_and_data(config)  # the same seed: each loop starts from the same weights
    assert all(torch.equal(before[n], p) for n, p in again.encoder.named_parameters())


def test_harness_overhead_writes_both_loops_and_refuses_stray_overrides(tmp_path, capsys):
    from eval.cli import main
    from tests.pretrain_helpers import QUICKSTART, TINY

    code = main(["bench", "--harness", QUICKSTART, *TINY, "--seconds", "1", "--out", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    result = json.loads((tmp_path / "overhead.json").read_text())
    assert len(result["plain_images_per_s"]) == 2 and min(result["plain_images_per_s"]) > 0
    assert result["harness"]["steps"] > 0 and result["harness_vs_plain"] > 0 and result["harness_vs_plain_cpu"] > 0
    assert "| harness, training clock |" in (tmp_path / "overhead.md").read_text()
    assert main(["bench", "method.name=dim", "--out", str(tmp_path)]) == 2
    assert "need --harness CONFIG" in capsys.readouterr().err
