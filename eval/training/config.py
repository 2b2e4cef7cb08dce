"""Run configurations: a YAML file, dotted ``key=value`` overrides, one validated nested dict.

A configuration has a fixed schema: :data:`BASE_DEFAULTS` (data, encoder, optimizer, monitor,
trainer, ...) plus the ``method`` section of the method named by ``method.name``, whose keys
are the arguments of that method's constructor (:func:`eval.methods.registry.method_schema`);
the method's recipe gives the defaults of ``optimizer`` and ``monitor``. Every key the
user gives must exist in that schema; a misspelt one is an error that names the nearest valid
key. Values are YAML: numbers, booleans, ``null``, strings, lists ``[0.5, 0.999]`` and
mappings ``{drop_path_rate: 0.1}``. Floats in exponent form without a dot (``1e-4``), which
YAML 1.1 would read as strings, are read as numbers.

Example::

    config = resolve_config("configs/quickstart.yaml", ["optimizer.lr=3e-4", "trainer.max_epochs=2"])
    config["optimizer"]["lr"]      # 0.0003
    print(dump_config(config))     # the resolved configuration, every key present
"""

from __future__ import annotations

import copy
import difflib
import os
import re
import sys
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import yaml

from dim_ssl.suggest import did_you_mean
from eval.data import dataset_missing, dataset_spec
from eval.errors import ConfigError
from eval.methods import get_method
from eval.methods.base import MONITOR_DEFAULTS, OPTIMIZER_DEFAULTS, OPTIMIZERS, SCHEDULES
from eval.methods.registry import free_form_keys, method_schema
from eval.plain import plain

__all__ = [
    "BASE_DEFAULTS",
    "COMMAND_SECTIONS",
    "FREE_FORM_KEYS",
    "apply_overrides",
    "config_diff",
    "dump_config",
    "flatten",
    "load_yaml",
    "parse_override",
    "parse_value",
    "resolve_config",
    "validate_config",
]


# Every key a configuration may hold, with its default. ``None`` means "optional, any type";
# the comments are the documentation of the schema (docs/pretraining.md repeats them).
BASE_DEFAULTS: dict[str, Any] = {
    "name": "run",  # the run's name; the default output folder is runs/<name>
    "output_dir": None,  # where everything is written; null: runs/<name>
    "seed": 0,  # seeds weights, sampling order, augmentation and the model's random draws
    "data": {
        "dataset": "digits",  # digits | fashion-mnist | mnist | cifar10 | ... | imagefolder:PATH
        "root": None,  # data root; null: $DIM_SSL_DATA or ~/.cache/dim-ssl/data
        "download": False,  # let torchvision download a missing dataset (needs a network)
        "fallback": None,  # a dataset to use instead when `dataset` is not on this machine (one line says so)
        "image_size": None,  # side of the model's inputs; null: the dataset's default (32)
        "channels": None,  # 1 or 3; null: the dataset's own
        "batch_size": 128,  # per device
        "num_workers": 0,  # DataLoader worker processes
        "limit_train": None,  # train on the first N images only (tiny runs)
        "limit_val": None,  # evaluate on the first N held-out images only
        "val_split": "test",  # the held-out split for the online probe and the kNN check
        "holdout": None,  # carve N training images as the held-out split (recipe search); test unread
        "crop": True,  # random crop with zero padding of image_size/8 pixels
        "flip": None,  # random horizontal flip; null: where it keeps the class (not digits)
    },
    "encoder": {
        "name": "resnet18",  # any timm model with forward_intermediates, or "paper" (DIM's 32x32 encoder)
        "global_dim": 64,  # size of the summary y
        "hidden_dim": 1024,  # hidden width of the MLP to y
        "feature_stage": None,  # timm stage giving the local map; null: TimmEncoder's choice
        "small_input": False,  # timm ResNets: CIFAR-style stem (3x3 stride-1 conv, no max-pool); ~15x FLOPs
        "kwargs": {},  # passed to timm.create_model (e.g. {drop_path_rate: 0.1}); free-form
    },
    "method": {
        "name": "dim",  # a registered method: dim | simclr | moco | byol (each declares its own keys)
    },
    # The shared sections' keys (eval.methods.base documents them); each method's recipe
    # gives their defaults, so these are the values a method without a recipe starts from.
    "optimizer": dict(OPTIMIZER_DEFAULTS),
    "monitor": {
        **MONITOR_DEFAULTS,
        "best": "online",  # what best.ckpt is best at: online (probe accuracy) | knn
    },
    "trainer": {
        "max_epochs": 10,
        "max_time_s": None,  # training wall-clock budget, s (Lightning's max_time; validation off the clock)
        "accelerator": "auto",  # auto | cpu | gpu | ...: Lightning's
        "devices": 1,  # Lightning's: 1, 4, "auto", [0, 1]
        "num_nodes": 1,
        "strategy": "auto",  # auto | ddp | ...: Lightning's
        "precision": "auto",  # auto: bf16-mixed on a GPU that has bf16, else 32-true
        "sync_batchnorm": "auto",  # auto: on for multi-device GPU runs; true | false
        "gradient_clip_val": None,
        "log_every_n_steps": 10,
        "check_val_every_n_epoch": 1,
        "num_sanity_val_steps": 0,
        "deterministic": False,  # torch.use_deterministic_algorithms (slower on GPU)
        "enable_progress_bar": True,
        # checkpoints/last.ckpt: every epoch end, and inside an epoch every N steps (null: not by
        # steps) or every M minutes of training (null: not by time), whichever comes first
        "checkpoint_every_n_steps": None,
        "checkpoint_every_minutes": 10.0,
        # a step with a NaN/inf loss or gradient is skipped; this many in a row stop the run
        "max_nonfinite_steps": 10,
    },
}

# Top-level sections that belong to other commands (``dim-ssl compare``, ``transfer``, ``sweep``;
# each checks its own section's keys): a pretraining configuration may carry them;
# resolve_config sets them aside.
COMMAND_SECTIONS: frozenset[str] = frozenset({"compare", "transfer", "sweep"})

# Dotted paths whose value is a free-form mapping (passed through, not checked key by key).
FREE_FORM_KEYS: frozenset[str] = frozenset({"encoder.kwargs"})

# YAML 1.1 (PyYAML) reads 1e-4 as a string: it wants a dot in the mantissa. YAML 1.2 and
# every user read it as a number, so we do too.
_EXPONENT_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


# --------------------------------------------------------------------------------------------
# Values and overrides


def parse_value(text: str) -> Any:
    """A command-line value as a YAML scalar or flow collection: ``3e-4`` -> 0.0003,
    ``true`` -> True, ``null`` -> None, ``[0.5,0.999]`` -> [0.5, 0.999], ``ddp`` -> "ddp"."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text  # not YAML (e.g. "a: b: c"): take it literally
    return _numbers_in(value)


def _numbers_in(value: Any) -> Any:
    if isinstance(value, str) and _EXPONENT_FLOAT.match(value.strip()):
        return float(value)
    if isinstance(value, list):
        return [_numbers_in(v) for v in value]
    if isinstance(value, dict):
        return {k: _numbers_in(v) for k, v in value.items()}
    return value


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optimizer.lr=3e-4"`` -> ``(["optimizer", "lr"], 0.0003)``.

    Raises:
        ConfigError: No ``=``, or an empty key or key part.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {text!r} is not of the form key=value (e.g. optimizer.lr=3e-4)")
    parts = key.split(".")
    if any(not part for part in parts):
        raise ConfigError(f"override {text!r}: the key {key!r} has an empty part")
    return parts, parse_value(raw)


def apply_overrides(config: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """A copy of ``config`` with each ``key=value`` set (nested sections created as needed)."""
    result = copy.deepcopy(config)
    for text in overrides:
        parts, value = parse_override(text)
        node = result
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise ConfigError(f"override {text!r}: {where} is a value ({child!r}), not a section")
            node = child
        node[parts[-1]] = value
    return result


# --------------------------------------------------------------------------------------------
# Files


def packaged_configs() -> dict[str, Path]:
    """The run configurations shipped with the package (``eval/configs``), by name."""
    folder = Path(str(resources.files("eval") / "configs"))
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))} if folder.is_dir() else {}


def find_config(path: str | os.PathLike) -> Path:
    """A configuration file: a path, or the name of a shipped one (``quickstart``, ``family_fmnist``).

    Raises:
        ConfigError: Neither a file nor a shipped configuration's name (the message lists them).
    """
    given = Path(path)
    if given.is_file():
        return given
    shipped = packaged_configs()
    name = given.name[: -len(".yaml")] if given.name.endswith(".yaml") else given.name
    if given.parent == Path(".") and name in shipped:
        return shipped[name]
    known = ", ".join(shipped) or "none"
    raise ConfigError(f"config file {given} not found (shipped configurations, by name: {known})")


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """The mapping in a YAML file (a path, or a shipped configuration's name), exponent floats as numbers.

    Raises:
        ConfigError: Missing or unreadable file, invalid YAML (with the line), not a mapping.
    """
    path = find_config(path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read config file {path}: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping (key: value lines); got {type(data).__name__}")
    return _numbers_in(data)


class _Dumper(yaml.SafeDumper):
    """Block style for sections, flow style for lists (``betas: [0.5, 0.999]``)."""


_Dumper.add_representer(
    list, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)
)


def dump_config(config: Mapping[str, Any]) -> str:
    """The configuration as YAML, keys in schema order."""
    return yaml.dump(plain(config), Dumper=_Dumper, sort_keys=False, default_flow_style=False)


# --------------------------------------------------------------------------------------------
# Schema


def flatten(config: Mapping[str, Any], prefix: str = "", free_form: frozenset[str] = FREE_FORM_KEYS) -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; free-form sections stay whole."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and path not in free_form and value:
            flat.update(flatten(value, f"{path}.", free_form))
        else:
            flat[path] = value
    return flat


def validate_config(
    user: Mapping[str, Any],
    schema: Mapping[str, Any],
    free_form: frozenset[str] = FREE_FORM_KEYS,
) -> dict[str, Any]:
    """The schema's defaults updated with the user's values, after checking every key and type.

    Raises:
        ConfigError: An unknown key (naming the nearest valid one), a section given a value or
            a value given a section, or a value of the wrong type.
    """
    all_paths = sorted(flatten(schema, free_form=free_form)) + sorted(_section_paths(schema, free_form))
    return _merge_checked(schema, user, "", all_paths, free_form)


def _section_paths(schema: Mapping[str, Any], free_form: frozenset[str], prefix: str = "") -> list[str]:
    paths = []
    for key, value in schema.items():
        if isinstance(value, Mapping) and f"{prefix}{key}" not in free_form:
            paths.append(f"{prefix}{key}")
            paths += _section_paths(value, free_form, f"{prefix}{key}.")
    return paths


def _merge_checked(
    schema: Mapping[str, Any], user: Mapping[str, Any], prefix: str, all_paths: Sequence[str], free_form: frozenset[str]
) -> dict[str, Any]:
    result = copy.deepcopy(dict(schema))
    for key, value in user.items():
        path = f"{prefix}{key}"
        if not isinstance(key, str) or key not in schema:
            raise ConfigError(_unknown_key_message(path, [f"{prefix}{k}" for k in schema], all_paths))
        default = schema[key]
        if path in free_form:
            if value is None:
                value = {}
            if not isinstance(value, Mapping):
                raise ConfigError(f"{path} must be a mapping of keyword arguments; got {value!r}")
            result[key] = copy.deepcopy(dict(value))
        elif isinstance(default, Mapping):
            if not isinstance(value, Mapping):
                keys = ", ".join(default)
                raise ConfigError(f"{path} is a section (keys: {keys}); got the value {value!r}")
            result[key] = _merge_checked(default, value, f"{path}.", all_paths, free_form)
        else:
            result[key] = _check_type(path, default, value)
    return result


def _unknown_key_message(path: str, siblings: Sequence[str], all_paths: Sequence[str]) -> str:
    parent, _, key = path.rpartition(".")
    leaves = [s.rsplit(".", 1)[-1] for s in siblings]
    prefix = f"{parent}." if parent else ""
    # 1. a typo of a key of the same section; 2. a key of another section (trainer.lr ->
    # optimizer.lr); 3. anything close as a whole path.
    close = [prefix + m for m in difflib.get_close_matches(key, leaves, n=1, cutoff=0.6)]
    close = close or [p for p in all_paths if p.rsplit(".", 1)[-1] == key][:1]
    close = close or difflib.get_close_matches(path, all_paths, n=1, cutoff=0.8)
    if close:
        return f"unknown config key {path!r}; did you mean {close[0]!r}?"
    where = f"in {parent}" if parent else "at the top level"
    return f"unknown config key {path!r}; valid keys {where}: {', '.join(leaves)}"


# Keys that take more than their default's type (Lightning's own spellings), and how to convert.
_ALSO_ACCEPTED: dict[str, tuple[tuple[type, ...], Any]] = {
    "trainer.devices": ((str, list), lambda v: v),  # "auto", [0, 1]
    "trainer.sync_batchnorm": ((bool,), lambda v: v),  # true / false besides "auto"
    "trainer.precision": ((int,), str),  # 32 -> "32"
}


def _check_type(path: str, default: Any, value: Any) -> Any:
    """Checks ``value`` against the type of its default; ints become floats where a float is due."""
    if default is None or value is None:
        return value  # optional keys take any type; every key may be set to null
    if path in _ALSO_ACCEPTED:
        types, convert = _ALSO_ACCEPTED[path]
        if isinstance(value, types) and not (isinstance(value, bool) and bool not in types):
            return convert(value)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{path} must be true or false; got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path} must be a number; got {value!r}")
        return float(value)
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ConfigError(f"{path} must be a whole number; got {value!r}")
        return int(value)
    if isinstance(default, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path} must be a list like {default}; got {value!r}")
        return list(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{path} must be a string; got {value!r}")
        return value
    return value


def resolve_config(
    path: str | os.PathLike | None,
    overrides: Sequence[str] = (),
    base: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The full, checked configuration from a YAML file (or ``base``) and dotted overrides.

    The schema is :data:`BASE_DEFAULTS` with the ``method`` section of the method named by
    ``method.name`` (after overrides), read from its constructor (:mod:`eval.methods.registry`),
    and that method's recipe as the defaults of ``optimizer`` and ``monitor``. An override that
    switches ``method.name`` drops the file's keys of the other method. Sections of other
    commands (:data:`COMMAND_SECTIONS`) are set aside. ``output_dir`` defaults to ``runs/<name>``.

    Raises:
        ConfigError: Unreadable file, malformed override, unknown key or method, wrong type.
    """
    given = load_yaml(path) if path is not None else copy.deepcopy(dict(base or {}))
    for section in COMMAND_SECTIONS:  # read by other commands (dim-ssl compare, transfer, sweep)
        given.pop(section, None)
    user = apply_overrides(given, overrides)
    user = {k: v for k, v in user.items() if k not in COMMAND_SECTIONS}
    if _method_name(user) != _method_name(given):
        # An override switched methods (method.name=simclr on a DIM config): the file's
        # method keys belong to the other method; keep only the overrides' own method keys.
        user = apply_overrides({**given, "method": {}}, overrides)
        user = {k: v for k, v in user.items() if k not in COMMAND_SECTIONS}
    method = user.get("method", {})
    if not isinstance(method, Mapping):
        raise ConfigError(f"method is a section (keys: name, ...); got the value {method!r}")
    method_name = method.get("name", BASE_DEFAULTS["method"]["name"])
    method_class = get_method(method_name)
    method_defaults = method_schema(method_class)

    schema = copy.deepcopy(BASE_DEFAULTS)
    schema["method"] = {"name": method_name, **method_defaults}
    schema["optimizer"] = method_class.defaults("optimizer")
    schema["monitor"] = {**method_class.defaults("monitor"), "best": schema["monitor"]["best"]}
    free_form = FREE_FORM_KEYS | {f"method.{key}" for key in free_form_keys(method_defaults)}
    config = validate_config(user, schema, free_form)
    _fall_back_if_missing(config["data"])
    _check_choices(config)
    if config["output_dir"] is None:
        config["output_dir"] = str(Path("runs") / str(config["name"]))
    return config


def _method_name(user: Mapping[str, Any]) -> Any:
    method = user.get("method")
    return method.get("name", BASE_DEFAULTS["method"]["name"]) if isinstance(method, Mapping) else None


# (dataset, root, download, fallback) -> the dataset used; each is looked up and told once per process.
_FALLBACKS: dict[tuple[Any, ...], str] = {}


def _fall_back_if_missing(data: dict[str, Any]) -> None:
    """``data.fallback``: the dataset to train on when ``data.dataset`` is not on this machine
    (nor downloadable with ``data.download``); one line on stderr says which and how to get it."""
    fallback = data.get("fallback")
    if fallback is None or fallback == data["dataset"]:
        return
    try:
        dataset_spec(data["dataset"])
    except ValueError:
        return  # an unknown data.dataset is _check_choices' to report, with a did-you-mean
    try:
        dataset_spec(fallback)
    except ValueError as err:
        raise ConfigError(f"data.fallback: {err}") from None
    key = (data["dataset"], data["root"], data["download"], fallback)
    if key not in _FALLBACKS:
        missing = dataset_missing(data["dataset"], data["root"], data["download"])
        _FALLBACKS[key] = data["dataset"] if missing is None else fallback
        if missing is not None:
            lines = missing.splitlines()
            ways = lines[lines.index("Ways to get it:") + 1 : -1] if "Ways to get it:" in lines else lines[:1]
            how = "; ".join(line.strip(" -") for line in ways)
            print(
                f"note: {data['dataset']} is not on this machine, so this run uses {fallback}. To get it: {how}",
                file=sys.stderr,
            )
    data["dataset"] = _FALLBACKS[key]


def _check_choices(config: Mapping[str, Any]) -> None:
    choices = {
        "optimizer.name": OPTIMIZERS,
        "optimizer.schedule": SCHEDULES,
        "monitor.best": ("online", "knn"),
    }
    flat = flatten(config)
    for path, allowed in choices.items():
        if flat[path] not in allowed:
            shown = ", ".join("null" if a is None else a for a in allowed)
            raise ConfigError(f"{path} must be one of {shown}; got {flat[path]!r}{did_you_mean(flat[path], allowed)}")
    data = config["data"]
    try:  # the dataset and its held-out split, named here rather than when the data is loaded
        spec = dataset_spec(data["dataset"])
    except ValueError as err:
        raise ConfigError(f"data.dataset: {err}") from None
    if not data.get("holdout") and data["val_split"] not in spec.splits:
        raise ConfigError(
            f"data.val_split: {spec.name} has splits {', '.join(spec.splits)}; got {data['val_split']!r}"
            f"{did_you_mean(data['val_split'], spec.splits)}"
        )
    positive = ("data.batch_size", "optimizer.lr", "monitor.online_lr", "monitor.knn_k")
    for path in positive:
        if flat[path] is None or flat[path] <= 0:
            raise ConfigError(f"{path} must be positive; got {flat[path]!r}")
    betas = flat["optimizer.betas"]
    if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas):
        raise ConfigError(f"optimizer.betas must be two numbers in [0, 1); got {betas!r}")
    if flat["monitor.best"] == "knn" and flat["monitor.knn_every_n_epochs"] != 1:
        raise ConfigError(
            "monitor.best=knn needs the kNN check every epoch (monitor.knn_every_n_epochs=1); "
            f"got knn_every_n_epochs={flat['monitor.knn_every_n_epochs']}"
        )


def config_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Human-readable differences ``key: old -> new`` between two configurations."""
    a, b = flatten(old), flatten(new)
    lines = []
    for key in sorted(set(a) | set(b)):
        if a.get(key, "<absent>") != b.get(key, "<absent>"):
            lines.append(f"{key}: {a.get(key, '<absent>')!r} -> {b.get(key, '<absent>')!r}")
    return lines
