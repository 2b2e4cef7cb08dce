"""make demo's configuration: Fashion-MNIST with the paper's encoder, digits when it is missing, quiet."""

import json

import eval.data.datasets as datasets_module
import eval.training.config as config_module
from eval.cli import main
from eval.experiments.compare import resolve_comparison

# The demo shrunk to seconds: 96 training images, one epoch per method, a small kNN.
TINY_DEMO = [
    "data.limit_train=96",
    "data.limit_val=64",
    "data.batch_size=32",
    "data.download=false",
    "trainer.enable_progress_bar=false",
    "compare.budget.seconds=null",
    "compare.budget.epochs=1",
    "compare.knn_k=10",
    "compare.probe_limit_train=96",
    "compare.probe_limit_test=64",
    "compare.curve.limit_train=64",
    "compare.curve.limit_test=64",
    "compare.curve.knn_k=5",
]


def test_the_demo_is_dim_against_simclr_on_fashion_mnist_with_the_papers_encoder():
    comparison = resolve_comparison("demo")  # found by name: the shipped configs/demo.yaml
    assert [m.label for m in comparison.methods] == ["DIM(L)", "SimCLR"]
    assert comparison.base["encoder"]["name"] == "paper" and comparison.base["data"]["fallback"] == "digits"
    dim, simclr = comparison.configs
    assert dim["method"]["head"]["estimator"] == "infonce" and dim["optimizer"]["lr"] == 1e-3
    assert simclr["method"]["name"] == "simclr"
    assert dim["trainer"]["max_time_s"] == simclr["trainer"]["max_time_s"] == 60  # the same budget


def test_without_fashion_mnist_the_demo_runs_on_digits_says_so_once_and_stays_quiet(tmp_path, monkeypatch, capfd):
    monkeypatch.setattr(datasets_module, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-debian-package")
    monkeypatch.setattr(config_module, "_FALLBACKS", {})
    out = tmp_path / "demo"
    status = main(["compare", "demo", *TINY_DEMO, f"data.root={tmp_path / 'empty'}", f"output_dir={out}"])
    printed = capfd.readouterr()
    assert status == 0, printed.err[-2000:]
    notes = [line for line in printed.err.splitlines() if line.startswith("note:")]
    assert notes == [notes[0]] and "fashion-mnist is not on this machine, so this run uses digits" in notes[0]
    assert json.loads((out / "results.json").read_text())["dataset"] == "digits"
    rows = {(r["method"], r["position"]) for r in json.loads((out / "comparison.json").read_text())}
    expected = {("DIM(L)", "pool"), ("DIM(L)", "y"), ("SimCLR", "pool"), ("random init", "pool"), ("random init", "y")}
    assert rows == expected | {("raw pixels", "pixels")}
    # Quiet: the table, the plots' paths and progress, without Lightning's or anyone's noise.
    assert "| DIM(L) | pool |" in printed.out and f"plots: {out / 'accuracy_vs_time.png'}" in printed.out
    noise = ("GPU available", "TPU available", "litlogger", "Loading `train_dataloader`", "Warning", "warn(")
    assert not [n for n in noise if n in printed.out + printed.err], printed.err[-2000:]
