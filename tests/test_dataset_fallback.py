"""data.fallback: a run on a dataset this machine lacks uses the fallback, and says so in one line."""

import pytest

import eval.data.datasets as datasets_module
import eval.training.config as config_module
from eval.errors import ConfigError
from eval.training.config import resolve_config


@pytest.fixture
def no_fashion_mnist(tmp_path, monkeypatch):
    """Fashion-MNIST nowhere: an empty data root, no Debian package, a fresh lookup cache."""
    monkeypatch.setattr(datasets_module, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-debian-package")
    monkeypatch.setattr(config_module, "_FALLBACKS", {})
    return tmp_path / "empty-root"


def test_a_missing_dataset_falls_back_with_one_line_that_says_how_to_get_it(no_fashion_mnist, capsys):
    overrides = ["data.dataset=fashion-mnist", "data.fallback=digits", f"data.root={no_fashion_mnist}"]
    assert resolve_config(None, overrides)["data"]["dataset"] == "digits"
    assert resolve_config(None, overrides)["data"]["dataset"] == "digits"
    note = capsys.readouterr().err.splitlines()
    assert len(note) == 1  # told once, though resolved twice
    assert note[0].startswith("note: fashion-mnist is not on this machine, so this run uses digits.")
    assert "apt-get install dataset-fashion-mnist" in note[0]


def test_without_a_fallback_the_missing_dataset_is_kept_for_the_loader_to_explain(no_fashion_mnist):
    config = resolve_config(None, ["data.dataset=fashion-mnist", f"data.root={no_fashion_mnist}"])
    assert config["data"]["dataset"] == "fashion-mnist"


def test_a_dataset_on_the_machine_is_used_and_nothing_is_said(monkeypatch, capsys):
    monkeypatch.setattr(config_module, "_FALLBACKS", {})
    config = resolve_config(None, ["data.dataset=digits", "data.fallback=fashion-mnist"])
    assert config["data"]["dataset"] == "digits" and capsys.readouterr().err == ""


def test_an_unknown_fallback_is_named():
    with pytest.raises(ConfigError, match="data.fallback"):
        resolve_config(None, ["data.dataset=fashion-mnist", "data.fallback=digitz"])


def test_an_unknown_dataset_is_named_before_any_fallback():
    with pytest.raises(ConfigError, match="data.dataset.*fashion-mnist"):
        resolve_config(None, ["data.dataset=fashion-mnst", "data.fallback=digits"])
