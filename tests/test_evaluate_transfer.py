"""``dim-ssl evaluate`` on a checkpoint and ``dim-ssl transfer`` between datasets, tiny runs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from pretrain_helpers import QUICKSTART, TINY

from eval.cli import main
from eval.data import DEBIAN_FASHION_MNIST_DIR

HAVE_FASHION_MNIST = Path(DEBIAN_FASHION_MNIST_DIR).is_dir()


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("evaluate") / "run"
    assert main(["pretrain", QUICKSTART, *TINY, f"output_dir={out}"]) == 0
    return out / "checkpoints" / "last.ckpt"


# ---- evaluate ------------------------------------------------------------------------------


def test_evaluate_probes_each_position_and_writes_the_table(tiny_checkpoint, capsys):
    args = [
        "evaluate",
        str(tiny_checkpoint),
        "--positions",
        "pool",
        "y",
        "--limit-train",
        "200",
        "--limit-test",
        "100",
        "--knn-k",
        "10",
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "| checkpoint | method | dataset | position | knn_acc | linear_acc |" in printed
    out = tiny_checkpoint.parent.parent / "evaluation" / "digits"
    rows = json.loads((out / "evaluation.json").read_text())
    assert [(r["position"], r["features"]) for r in rows] == [("pool", 96), ("y", 64)]
    assert all(r["train_images"] == 200 and r["test_images"] == 100 for r in rows)
    assert all(0.0 <= r["knn_acc"] <= 1 and 0.0 <= r["linear_acc"] <= 1 for r in rows)
    with open(out / "evaluation.csv", newline="") as file:
        assert [r["position"] for r in csv.DictReader(file)] == ["pool", "y"]
    assert (out / "embeddings.png").read_bytes()[:4] == b"\x89PNG"
    assert yaml.safe_load((out / "config.yaml").read_text())["pretraining"]["method"]["name"] == "dim"

    # Features are cached beside the run: a second evaluation reads them back, same numbers.
    cached = sorted((tiny_checkpoint.parent.parent / "features").glob("*.npz"))
    assert len(cached) == 4  # 2 positions x (train, test)
    assert main([*args, "--probes", "knn"]) == 0
    again = json.loads((out / "evaluation.json").read_text())
    assert [r["knn_acc"] for r in again] == [r["knn_acc"] for r in rows]
    assert sorted((tiny_checkpoint.parent.parent / "features").glob("*.npz")) == cached


def test_evaluate_refuses_a_damaged_checkpoint_or_unknown_position(tiny_checkpoint, tmp_path, capsys):
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(b"\x00" * 64)
    assert main(["evaluate", str(broken)]) == 2
    assert "is not a dim-ssl checkpoint" in capsys.readouterr().err
    assert main(["evaluate", str(tiny_checkpoint), "--positions", "proj"]) == 1
    assert "has no position proj" in capsys.readouterr().err


# ---- transfer ------------------------------------------------------------------------------


def _transfer_config(path: Path, targets: str, extra: str = "") -> str:
    path.write_text(f"""
name: tiny-transfer
data: {{dataset: digits, image_size: 32, channels: 1, batch_size: 16, limit_train: 64, limit_val: 48}}
encoder: {{name: test_resnet}}
trainer: {{enable_progress_bar: false, log_every_n_steps: 1}}
transfer:
  sources: [digits]
  targets: {targets}
  budget: {{epochs: 1}}
  knn_k: 10
{extra}""")
    return str(path)


@pytest.mark.skipif(not HAVE_FASHION_MNIST, reason=f"no Fashion-MNIST in {DEBIAN_FASHION_MNIST_DIR}")
def test_transfer_pretrains_on_digits_and_probes_fashion_mnist(tmp_path, capsys):
    targets = "[digits, {dataset: fashion-mnist, limit_train: 300, limit_test: 100}]"
    out = tmp_path / "transfer"
    assert main(["transfer", _transfer_config(tmp_path / "t.yaml", targets), f"output_dir={out}"]) == 0
    assert "| method | source | target | position |" in capsys.readouterr().out
    rows = json.loads((out / "transfer.json").read_text())
    got = {(r["method"], r["source"], r["target"]) for r in rows}
    for target in ("digits", "fashion-mnist"):
        assert {("dim", "digits", target), ("random init", None, target), ("raw pixels", None, target)} <= got
    # Fashion-MNIST is read in the digits model's format: 1 x 32 x 32.
    pixels = next(r for r in rows if r["method"] == "raw pixels" and r["target"] == "fashion-mnist")
    assert pixels["features"] == 1024
    for name in ("transfer.md", "transfer.csv", "results.json", "config.yaml", "digits-dim/summary.json"):
        assert (out / name).is_file(), name
    for name in ("embeddings-digits.png", "embeddings-fashion-mnist.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG", name


def test_transfer_probes_given_checkpoints_without_pretraining(tiny_checkpoint, tmp_path):
    config = _transfer_config(
        tmp_path / "t.yaml",
        "[digits]",
        f"  checkpoints: {{tiny: {tiny_checkpoint}}}\n  raw_pixels: false\n  probes: [knn]",
    )
    out = tmp_path / "given"
    assert main(["transfer", config, f"output_dir={out}"]) == 0
    rows = json.loads((out / "transfer.json").read_text())
    assert [(r["method"], r["source"]) for r in rows] == [("tiny", "digits"), ("random init", None)]
    assert not any(p.is_dir() and (p / "checkpoints").exists() for p in out.iterdir())  # nothing trained


def test_transfer_configuration_mistakes_are_clean_errors(tmp_path, capsys):
    config = _transfer_config(tmp_path / "t.yaml", "[no-such-set]")
    assert main(["transfer", config, f"output_dir={tmp_path / 'x'}"]) == 2
    assert "unknown dataset 'no-such-set'" in capsys.readouterr().err


def test_transfer_takes_one_checkpoint_per_seed_and_pairs_each_with_its_seeds_untrained_encoder(
    tiny_checkpoint, tmp_path, capsys
):
    second = tmp_path / "seed1"
    assert main(["pretrain", QUICKSTART, *TINY, "seed=1", f"output_dir={second}"]) == 0
    paths = [str(tiny_checkpoint), str(second / "checkpoints" / "last.ckpt")]
    extra = f"  checkpoints: {{tiny: [{paths[0]}, {paths[1]}]}}\n  raw_pixels: false\n  probes: [knn, linear]"
    config = _transfer_config(tmp_path / "t.yaml", "[digits]", extra)
    out = tmp_path / "seeds"
    assert main(["transfer", config, f"output_dir={out}"]) == 0
    assert "seeds 0, 1 (mean ± standard deviation)" in capsys.readouterr().out

    per_seed = {(r["method"], r["seed"]): r for r in json.loads((out / "transfer_seeds.json").read_text())}
    assert set(per_seed) == {("tiny", 0), ("tiny", 1), ("random init", 0), ("random init", 1)}
    for seed in (0, 1):
        trained, untrained = per_seed[("tiny", seed)], per_seed[("random init", seed)]
        for probe in ("knn", "linear"):
            assert trained[f"{probe}_gain"] == pytest.approx(trained[f"{probe}_acc"] - untrained[f"{probe}_acc"])

    summary = {r["method"]: r for r in json.loads((out / "transfer.json").read_text())}
    accuracies = [per_seed[("tiny", s)]["linear_acc"] for s in (0, 1)]
    assert summary["tiny"]["seeds"] == 2 and summary["tiny"]["source"] == "digits"
    assert summary["tiny"]["linear_acc"] == pytest.approx(sum(accuracies) / 2)
    assert summary["tiny"]["linear_acc_std"] == pytest.approx(abs(accuracies[0] - accuracies[1]) / 2**0.5)

    # The same seed twice is a mistake, named.
    twice = f"  checkpoints: {{tiny: [{paths[0]}, {paths[0]}]}}\n  raw_pixels: false\n  probes: [knn]"
    config = _transfer_config(tmp_path / "twice.yaml", "[digits]", twice)
    assert main(["transfer", config, f"output_dir={tmp_path / 'twice'}"]) == 2
    assert "two checkpoints trained with seed 0" in capsys.readouterr().err


def test_transfer_seeds_pretrain_once_per_seed_and_parts_merge_into_the_whole(tmp_path, capsys):
    import shutil

    from pretrain_helpers import copy_finished_run

    config = _transfer_config(tmp_path / "t.yaml", "[digits]", "  probes: [knn]")
    whole = tmp_path / "whole"
    assert main(["transfer", config, "transfer.seeds=[0,1]", f"output_dir={whole}"]) == 0
    for seed in (0, 1):  # each seed its own run, trained with that seed
        assert yaml.safe_load((whole / "digits-dim" / f"seed-{seed}" / "config.yaml").read_text())["seed"] == seed
    per_seed = {(r["method"], r["seed"]) for r in json.loads((whole / "transfer_seeds.json").read_text())}
    assert {("dim", 0), ("dim", 1), ("random init", 0), ("random init", 1)} <= per_seed

    # The same transfer as one part per seed (reusing the whole's runs), merged.
    parts = [tmp_path / "seed0", tmp_path / "seed1"]
    for seed, part in enumerate(parts):
        copy_finished_run(whole / "digits-dim" / f"seed-{seed}", part / "digits-dim")
        pixels = [] if seed == 0 else ["transfer.raw_pixels=false"]
        args = ["transfer", config, f"transfer.seeds=[{seed}]", *pixels, f"output_dir={part}", "--reuse"]
        assert main(args) == 0
        assert "reusing the finished run" in capsys.readouterr().out
    merged = tmp_path / "merged"
    assert main(["merge", str(merged), *map(str, parts)]) == 0

    def table(folder):
        return {
            (r["method"], r["target"], r["position"]): r for r in json.loads((folder / "transfer.json").read_text())
        }

    expected = table(whole)
    assert list(table(merged)) == list(expected)
    for key, row in table(merged).items():
        for column in ("knn_acc", "knn_acc_std", "knn_gain", "knn_gain_std", "seeds"):
            assert row.get(column) == pytest.approx(expected[key].get(column)), (key, column)

    # A part that is another transfer (here: another kNN k) is refused, with the setting named.
    other = tmp_path / "other-k"
    shutil.copytree(parts[1], other)
    saved = yaml.safe_load((other / "config.yaml").read_text())
    (other / "config.yaml").write_text(yaml.safe_dump({**saved, "transfer": {**saved["transfer"], "knn_k": 7}}))
    capsys.readouterr()
    assert main(["merge", str(tmp_path / "bad"), str(parts[0]), str(other)]) == 2
    err = capsys.readouterr().err
    assert "is not the transfer of" in err and "transfer.knn_k: 10 -> 7" in err
