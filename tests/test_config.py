"""Run configurations: YAML files, dotted overrides, the schema and its error messages."""

from __future__ import annotations

import pytest
import yaml

from eval.errors import ConfigError
from eval.methods.registry import METHODS, get_method, register_method
from eval.training.config import (
    BASE_DEFAULTS,
    apply_overrides,
    config_diff,
    dump_config,
    parse_override,
    parse_value,
    resolve_config,
)

QUICKSTART = "configs/quickstart.yaml"


@pytest.mark.parametrize(
    "text, value",
    [
        ("3e-4", 3e-4),  # YAML 1.1 would keep this a string
        ("1.0e-4", 1e-4),
        ("2", 2),
        ("-1", -1),
        ("true", True),
        ("false", False),
        ("null", None),
        ("", None),
        ("[0.5,0.999]", [0.5, 0.999]),
        ("[1e-3, 2]", [1e-3, 2]),
        ("ddp", "ddp"),
        ("bf16-mixed", "bf16-mixed"),
        ("{drop_path_rate: 0.1}", {"drop_path_rate": 0.1}),
    ],
)
def test_values_are_read_as_yaml_scalars_and_flow_collections(text, value):
    assert parse_value(text) == value
    assert type(parse_value(text)) is type(value)


def test_override_keys_are_dotted_paths():
    assert parse_override("optimizer.lr=3e-4") == (["optimizer", "lr"], 3e-4)
    assert parse_override("method.head.estimator=infonce") == (["method", "head", "estimator"], "infonce")
    assert parse_override("name=a=b") == (["name"], "a=b")  # only the first '=' splits
    for bad in ("optimizer.lr", "=3", "optimizer..lr=1"):
        with pytest.raises(ConfigError):
            parse_override(bad)


def test_overrides_set_nested_keys_and_create_sections():
    config = apply_overrides({"trainer": {"max_epochs": 5}}, ["trainer.max_epochs=2", "data.limit_train=256"])
    assert config == {"trainer": {"max_epochs": 2}, "data": {"limit_train": 256}}
    with pytest.raises(ConfigError, match="trainer.max_epochs is a value"):
        apply_overrides({"trainer": {"max_epochs": 5}}, ["trainer.max_epochs.x=1"])


def test_quickstart_with_overrides_resolves_every_key():
    config = resolve_config(
        QUICKSTART,
        [
            "optimizer.lr=3e-4",
            "trainer.max_epochs=2",
            "data.limit_train=256",
            "method.head.estimator=infonce",
            "optimizer.betas=[0.9,0.99]",
            "trainer.max_time_s=null",
            "data.crop=false",
            "encoder.kwargs={drop_path_rate: 0.1}",
        ],
    )
    assert config["optimizer"]["lr"] == pytest.approx(3e-4)
    assert config["trainer"]["max_epochs"] == 2
    assert config["data"]["limit_train"] == 256
    assert config["method"] == {"name": "dim", "head": {**config["method"]["head"], "estimator": "infonce"}}
    assert config["optimizer"]["betas"] == [0.9, 0.99]
    assert config["trainer"]["max_time_s"] is None
    assert config["data"]["crop"] is False
    assert config["encoder"]["kwargs"] == {"drop_path_rate": 0.1}
    assert config["output_dir"] == "runs/quickstart"  # runs/<name> by default
    # Every schema key is present, with its default where the file is silent.
    assert set(config["trainer"]) == set(BASE_DEFAULTS["trainer"])
    assert config["monitor"]["knn_k"] == BASE_DEFAULTS["monitor"]["knn_k"]


def test_integers_become_floats_where_a_float_is_due_and_lightning_spellings_pass():
    config = resolve_config(
        QUICKSTART, ["optimizer.lr=1", "trainer.devices=auto", "trainer.precision=32", "trainer.sync_batchnorm=true"]
    )
    assert config["optimizer"]["lr"] == 1.0 and isinstance(config["optimizer"]["lr"], float)
    assert config["trainer"]["devices"] == "auto"
    assert config["trainer"]["precision"] == "32"
    assert config["trainer"]["sync_batchnorm"] is True
    assert resolve_config(QUICKSTART, ["trainer.devices=[0,1]"])["trainer"]["devices"] == [0, 1]


@pytest.mark.parametrize(
    "override, nearest",
    [
        ("optimizer.lrr=1e-3", "optimizer.lr"),
        ("trainer.max_epoch=2", "trainer.max_epochs"),
        ("optimiser.lr=1e-3", "optimizer"),
        ("method.head.estimater=infonce", "method.head.estimator"),
        ("data.limit_trian=10", "data.limit_train"),
        ("trainer.lr=1e-3", "optimizer.lr"),  # a key of another section
    ],
)
def test_a_misspelt_key_is_an_error_naming_the_nearest_valid_key(override, nearest):
    with pytest.raises(ConfigError, match="did you mean") as info:
        resolve_config(QUICKSTART, [override])
    assert repr(nearest) in str(info.value)
    assert "unknown config key 'optimiser'" in str(info.value) or override.split("=")[0] in str(info.value)


def test_a_misspelt_key_in_the_file_is_caught_too(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\ntrainer:\n  max_epochs: 3\n  acelerator: cpu\n")
    with pytest.raises(ConfigError, match="'trainer.acelerator'; did you mean 'trainer.accelerator'"):
        resolve_config(path)


@pytest.mark.parametrize(
    "override, message",
    [
        ("trainer.max_epochs=many", "trainer.max_epochs must be a whole number"),
        ("optimizer.lr=fast", "optimizer.lr must be a number"),
        ("data.crop=3", "data.crop must be true or false"),
        ("trainer=5", "trainer is a section"),
        ("optimizer.name=lamb", "optimizer.name must be one of adam, adamw, sgd"),
        ("optimizer.lr=-1", "optimizer.lr must be positive"),
        ("optimizer.betas=[0.5]", "optimizer.betas must be two numbers"),
        ("method.name=nosuchmethod", "unknown method.name 'nosuchmethod'; registered methods: .*dim"),
    ],
)
def test_values_of_the_wrong_kind_are_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        resolve_config(QUICKSTART, [override])


def test_unreadable_files_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        resolve_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        resolve_config(broken)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        resolve_config(listing)


def test_the_resolved_config_round_trips_through_yaml():
    config = resolve_config(QUICKSTART, ["optimizer.betas=[0.9,0.99]"])
    text = dump_config(config)
    assert "betas: [0.9, 0.99]" in text  # lists stay on one line
    assert resolve_config(None, base=yaml.safe_load(text)) == config
    assert config_diff(config, resolve_config(QUICKSTART, ["trainer.max_epochs=9"])) == [
        "optimizer.betas: [0.9, 0.99] -> [0.5, 0.999]",
        f"trainer.max_epochs: {config['trainer']['max_epochs']} -> 9",
    ]


def test_every_shipped_config_resolves():
    for name in ("quickstart", "dim_l_fmnist", "dim_g_fmnist", "paper_cifar10"):
        config = resolve_config(f"configs/{name}.yaml")
        assert config["name"] == name and config["method"]["name"] == "dim"
    assert resolve_config("configs/paper_cifar10.yaml")["encoder"]["name"] == "paper"
    heads = {n: resolve_config(f"configs/{n}.yaml")["method"]["head"] for n in ("dim_l_fmnist", "dim_g_fmnist")}
    assert [heads["dim_l_fmnist"][k] for k in ("alpha", "beta", "gamma")] == [0.0, 1.0, 0.1]
    assert [heads["dim_g_fmnist"][k] for k in ("alpha", "beta", "gamma")] == [1.0, 0.0, 1.0]


def test_a_registered_method_brings_its_own_checked_keys_read_from_its_constructor():
    from eval.methods import MethodModule

    @register_method("toy_method")
    class Toy(MethodModule):
        """A toy method (never trained here)."""

        recipe = {"optimizer": {"name": "sgd", "lr": 0.5}}

        def __init__(
            self, encoder, num_classes, image_shape, *, temperature: float = 0.5, head: dict = {"width": 128}, **common
        ):
            super().__init__(encoder, num_classes, image_shape, **common)

        def training_loss(self, views):  # pragma: no cover - never trained here
            raise AssertionError

    try:
        config = resolve_config(None, ["method.head.width=64"], base={"method": {"name": "toy_method"}})
        assert config["method"] == {"name": "toy_method", "temperature": 0.5, "head": {"width": 64}}
        assert get_method("toy_method") is Toy
        # The method's recipe is the default of the shared optimizer section.
        assert config["optimizer"]["name"] == "sgd" and config["optimizer"]["lr"] == 0.5
        with pytest.raises(ConfigError, match="did you mean 'method.temperature'"):
            resolve_config(None, ["method.name=toy_method", "method.temprature=0.1"])
        with pytest.raises(ConfigError, match="method.temperature must be a number"):
            resolve_config(None, ["method.name=toy_method", "method.temperature=warm"])
        # DIM's keys do not leak into another method's section.
        with pytest.raises(
            ConfigError, match="unknown config key 'method.head.estimator'; valid keys in method.head: width"
        ):
            resolve_config(None, base={"method": {"name": "toy_method", "head": {"estimator": "jsd"}}})
        # Switching methods by override sets the file's (DIM) method keys aside.
        switched = resolve_config(QUICKSTART, ["method.name=toy_method"])
        assert switched["method"] == {"name": "toy_method", "temperature": 0.5, "head": {"width": 128}}
    finally:
        METHODS.pop("toy_method", None)


def test_trainer_arguments_resolve_auto_settings_for_this_machine():
    import torch

    from eval.training.pretrain import trainer_arguments

    config = resolve_config(QUICKSTART, ["trainer.max_time_s=90", "trainer.accelerator=cpu"])
    arguments = trainer_arguments(config["trainer"])
    assert arguments["precision"] == "32-true" and arguments["sync_batchnorm"] is False
    assert arguments["max_time"].total_seconds() == 90
    if not torch.cuda.is_available():
        cpu_sync = resolve_config(QUICKSTART, ["trainer.sync_batchnorm=true", "trainer.devices=2"])
        with pytest.raises(ConfigError, match="SyncBatchNorm does not run on the CPU"):
            trainer_arguments(cpu_sync["trainer"])


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "data.dataset=fashion-mnst",
            "data.dataset: unknown dataset 'fashion-mnst'; known: .*did you mean 'fashion-mnist'",
        ),
        ("data.val_split=tset", "data.val_split: digits has splits train, test; got 'tset'; did you mean 'test'"),
        ("method.name=simclrr", "unknown method.name 'simclrr'.*did you mean 'simclr'"),
        ("optimizer.name=adamm", "optimizer.name must be one of adam, adamw, sgd; got 'adamm'; did you mean 'adam'"),
    ],
)
def test_config_value_mistakes_are_named_with_the_closest_value(override, message):
    with pytest.raises(ConfigError, match=message):
        resolve_config("configs/quickstart.yaml", [override])


def test_did_you_mean_offers_only_close_names():
    from dim_ssl.suggest import did_you_mean

    assert did_you_mean("infonc", ["jsd", "infonce", "dv"]) == "; did you mean 'infonce'?"
    assert did_you_mean("xyz", ["jsd", "infonce", "dv"]) == ""
    with pytest.raises(ValueError, match="unknown estimator 'infonc'.*did you mean 'infonce'"):
        import dim_ssl

        dim_ssl.DIMHead(8, 4, estimator="infonc")


def test_a_shipped_configuration_is_found_by_name_and_a_missing_one_lists_them():
    from eval.training.config import find_config

    assert find_config("quickstart").name == "quickstart.yaml" and find_config("quickstart").is_file()
    assert resolve_config("family_fmnist")["encoder"]["name"] == "paper"
    with pytest.raises(
        ConfigError, match="config file nonesuch not found .shipped configurations, by name: .*quickstart"
    ):
        resolve_config("nonesuch")
