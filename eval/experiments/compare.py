"""Side by side: several methods on one backbone and one dataset, one budget each, the same probes.

:func:`run_comparison` is what ``dim-ssl compare`` runs, top to bottom:

1. configuration: a pretraining configuration (data, encoder, trainer, ...) shared by every
   method, plus its ``compare`` section (:data:`COMPARE_DEFAULTS`): the methods, each a label
   and overrides of the shared configuration (:data:`DEFAULT_METHODS` when none are given),
   the budget per method (epochs or wall-clock seconds), the probes and the positions;
2. each method: pretrained by :func:`eval.training.pretrain` into its own subfolder under the
   budget, with :class:`eval.experiments.curve.ProbeCurve` (kNN accuracy against training time) and
   :class:`eval.experiments.memory.PeakMemory`; then its final checkpoint is loaded weights-only, the
   frozen features of the probe splits are extracted (cached) and probed
   (:mod:`eval.probes.suite`: kNN and linear probe, and the MLP probe when listed, trained on the
   training split, accuracy on the held-out split);
3. random init: the configuration's encoder as the seed builds it before any training (the
   very weights every method starts from), probed alike;
4. raw pixels: the normalised input images, flattened, probed alike;
5. seeds (``compare.seeds``): steps 2 and 3 once per seed; every trained row gets its gain over
   the untrained encoder of the same seed at the same position (``knn_gain``, ...), and with
   several seeds the table is their mean ± standard deviation (:mod:`eval.experiments.seeds`;
   every seed's rows in ``comparison_seeds.md/.csv/.json``);
6. outputs: ``comparison.md/.csv/.json`` (the table), ``curves.csv`` and
   ``accuracy_vs_time.png``, ``embeddings.png`` (2-D PCA of the test features, coloured by
   class), ``results.json`` (everything), ``config.yaml`` (the resolved configuration).

Example::

    comparison = resolve_comparison("configs/quickstart.yaml", ["compare.budget.seconds=20"])
    result = run_comparison(comparison)
    print(format_markdown_table(result["rows"], TABLE_COLUMNS))
"""

from __future__ import annotations

import copy
import csv
import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import pytorch_lightning as pl
import torch
import yaml
from torch.utils.data import Subset

from eval.errors import ConfigError, OutputInUse
from eval.experiments.curve import ProbeCurve
from eval.experiments.memory import PeakMemory
from eval.experiments.plots import plot_accuracy_vs_time, plot_embeddings
from eval.experiments.report import format_markdown_table, write_report
from eval.experiments.seeds import add_gains, gain_column, std_column, summarise_seeds
from eval.methods.encoders import build_encoder
from eval.plain import plain
from eval.probes.suite import (
    ProbeData,
    ProbeSettings,
    feature_dim,
    format_accuracies,
    model_features,
    pixel_features,
    probe_data,
    run_probes,
)
from eval.training.checkpoint import model_from_checkpoint
from eval.training.config import (
    COMMAND_SECTIONS,
    apply_overrides,
    config_diff,
    dump_config,
    load_yaml,
    resolve_config,
    validate_config,
)
from eval.training.pretrain import pretrain

__all__ = [
    "COMPARE_DEFAULTS",
    "DEFAULT_METHODS",
    "RANDOM_INIT",
    "RAW_PIXELS",
    "TABLE_COLUMNS",
    "Comparison",
    "MethodEntry",
    "apply_budget",
    "check_seeds",
    "Tables",
    "write_tables",
    "describe_budget",
    "folder_name",
    "load_sections",
    "method_rows",
    "method_user_config",
    "parse_methods",
    "pixel_rows",
    "random_init_rows",
    "resolve_comparison",
    "run_comparison",
    "set_dotted",
    "train_method",
]

# The ``compare`` section: every key, with its default (the comments document it; so does
# docs/evaluation.md).
COMPARE_DEFAULTS: dict[str, Any] = {
    "methods": None,  # [{label, overrides, positions}]; null: DEFAULT_METHODS
    "budget": {
        "epochs": None,  # epochs per method
        "seconds": None,  # wall-clock seconds of training per method (probes not counted)
    },  # both null: the configuration's trainer.max_epochs / trainer.max_time_s
    "probes": ["knn", "linear"],  # any of knn, linear, mlp (the DIM paper's one-hidden-layer probe)
    "positions": ["pool"],  # probed for every method that has them (pool: all; DIM: conv, fc, y)
    "knn_k": 200,
    "knn_temperature": 0.1,
    "linear_l2_grid": None,  # the linear probe's weight decays; null: 1e-1 ... 1e-6 (eval.probes.linear)
    "seeds": None,  # [0, 1, 2]: every method and the untrained encoder once per seed, mean ± std; null: `seed`
    "random_init": True,  # the untrained encoder's row (and each row's gain over it at the same position)
    "raw_pixels": True,  # the flattened input images' row
    "probe_limit_train": None,  # images of the probes' training split; null: data.limit_train
    "probe_limit_test": None,  # images of the probes' test split; null: data.limit_val
    "curve": {
        "every_n_epochs": 1,  # kNN accuracy during training every N epochs; 0: none
        "every_n_seconds": None,  # and every S seconds of training (points at equal times); null: none
        "position": "pool",
        "limit_train": 1000,  # memory bank of the curve's kNN (first N probe training images)
        "limit_test": 1000,  # images it is measured on (first N probe test images)
        "knn_k": 20,  # neighbours (a smaller memory bank than the final probe's: fewer)
    },
    "embedding": {
        "method": "pca",  # pca | tsne
        "max_points": 2000,
    },
}

#: The methods compared when the ``compare`` section lists none: the paper's two DIM
#: objectives and lightly's two contrastive baselines.
DEFAULT_METHODS: list[dict[str, Any]] = [
    {
        "label": "DIM(L)",
        "overrides": {
            "method.name": "dim",
            "method.head.alpha": 0.0,
            "method.head.beta": 1.0,
            "method.head.gamma": 0.1,
        },
    },
    {
        "label": "DIM(G)",
        "overrides": {
            "method.name": "dim",
            "method.head.alpha": 1.0,
            "method.head.beta": 0.0,
            "method.head.gamma": 1.0,
        },
    },
    {"label": "SimCLR", "overrides": {"method.name": "simclr"}},
    {"label": "MoCo", "overrides": {"method.name": "moco"}},
]

#: The comparison table's columns.
TABLE_COLUMNS: tuple[str, ...] = (
    "method",
    "position",
    "knn_acc",
    "linear_acc",
    "mlp_acc",
    "knn_gain",
    "linear_gain",
    "mlp_gain",
    "features",
    "images_per_s",
    "wall_clock_s",
    "peak_memory_mb",
    "steps",
    "epochs",
    "seeds",
)

RANDOM_INIT = "random init"
RAW_PIXELS = "raw pixels"

# Under a wall-clock budget alone, the epoch limit is this cap: the time stops the run first.
SECONDS_BUDGET_EPOCH_CAP = 1000

_ENTRY_KEYS = ("label", "overrides", "positions")


# --------------------------------------------------------------------------------------------
# Configuration


def load_sections(path: str | Path, overrides: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The user's configuration with the command-line overrides applied, split in two:
    ``(pretraining part, {section: mapping})`` for the sections of :data:`COMMAND_SECTIONS`.

    Raises:
        ConfigError: Unreadable file, malformed override, a section that is not a mapping.
    """
    user = apply_overrides(load_yaml(path), overrides)
    sections = {}
    for name in COMMAND_SECTIONS:
        value = user.pop(name, None)
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            raise ConfigError(f"{name} is a section (a mapping of keys); got the value {value!r}")
        sections[name] = dict(value)
    return user, sections


@dataclass(frozen=True)
class MethodEntry:
    """One method of a comparison.

    Attributes:
        label: Its name in tables and plots (``"DIM(L)"``).
        overrides: Dotted keys of the shared configuration and their values for this method.
        positions: Positions to probe; ``None``: the comparison's positions it has.
    """

    label: str
    overrides: dict[str, Any]
    positions: tuple[str, ...] | None = None

    @property
    def slug(self) -> str:
        """The label as a folder name: ``"DIM(L)"`` -> ``"dim-l"``."""
        return folder_name(self.label)


def section_probe_data(base: Mapping[str, Any], section: Mapping[str, Any]) -> ProbeData:
    """The probes' train/test data of an experiment (compare, sweep): the run configuration's
    dataset and held-out split, at the section's probe limits (else the run's own limits)."""
    data_config = base["data"]
    return probe_data(
        data_config["dataset"],
        data_config["image_size"],
        data_config["channels"],
        root=data_config["root"],
        limit_train=section["probe_limit_train"] or data_config["limit_train"],
        limit_test=section["probe_limit_test"] or data_config["limit_val"],
        test_split=data_config["val_split"],
        download=data_config["download"],
        holdout=data_config["holdout"],
    )


def folder_name(label: str) -> str:
    """A label or dataset name as a folder name: ``"DIM(L)"`` -> ``"dim-l"``."""
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-") or "method"


def _dotted(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"method": {"head": {"alpha": 0}}, "data.batch_size": 64}`` -> dotted leaves."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(_dotted(value, f"{path}."))
        else:
            flat[path] = copy.deepcopy(value)
    return flat


def parse_methods(raw: Any, where: str = "compare.methods") -> list[MethodEntry]:
    """The method entries of a ``methods`` list (``None``: :data:`DEFAULT_METHODS`).

    Each entry is a mapping with ``label`` (required), ``overrides`` (dotted or nested keys of
    the shared configuration) and ``positions`` (optional list).

    Raises:
        ConfigError: Not a list of mappings, a missing or repeated label (or two labels that
            name the same folder), an unknown entry key, overrides that are not a mapping.
    """
    if raw is None:
        raw = DEFAULT_METHODS
    if not isinstance(raw, (list, tuple)) or not raw:
        raise ConfigError(f"{where} must be a list of {{label, overrides}} mappings; got {raw!r}")
    entries: list[MethodEntry] = []
    for index, item in enumerate(raw):
        here = f"{where}[{index}]"
        if not isinstance(item, Mapping):
            raise ConfigError(f"{here} must be a mapping {{label: ..., overrides: {{...}}}}; got {item!r}")
        unknown = [k for k in item if k not in _ENTRY_KEYS]
        if unknown:
            raise ConfigError(f"{here}: unknown key {unknown[0]!r}; an entry has {', '.join(_ENTRY_KEYS)}")
        label = item.get("label")
        if not isinstance(label, str) or not label.strip():
            raise ConfigError(f"{here} needs a label (a name for the table, e.g. 'DIM(L)'); got {label!r}")
        overrides = item.get("overrides") or {}
        if not isinstance(overrides, Mapping):
            raise ConfigError(f"{here} ({label}): overrides must be a mapping of config keys; got {overrides!r}")
        positions = item.get("positions")
        if positions is not None:
            if isinstance(positions, str):
                positions = [positions]
            if (
                not isinstance(positions, (list, tuple))
                or not positions
                or not all(isinstance(p, str) for p in positions)
            ):
                raise ConfigError(f"{here} ({label}): positions must be a list of names; got {positions!r}")
            positions = tuple(positions)
        entries.append(MethodEntry(label.strip(), _dotted(overrides), positions))
    seen: dict[str, str] = {}
    for entry in entries:
        if entry.slug in seen:
            raise ConfigError(
                f"{where}: the labels {seen[entry.slug]!r} and {entry.label!r} name the same output folder "
                f"({entry.slug}); give every method its own label"
            )
        seen[entry.slug] = entry.label
    return entries


def set_dotted(config: dict[str, Any], key: str, value: Any, where: str) -> None:
    """``config[a][b][c] = value`` for ``key="a.b.c"``, creating sections; errors name ``where``."""
    parts = key.split(".")
    if any(not part for part in parts):
        raise ConfigError(f"{where}: the key {key!r} has an empty part")
    node = config
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise ConfigError(f"{where}: {'.'.join(parts[: depth + 1])} is a value ({child!r}), not a section")
        node = child
    node[parts[-1]] = copy.deepcopy(value)


def _method_name(user: Mapping[str, Any]) -> Any:
    method = user.get("method")
    return method.get("name", "dim") if isinstance(method, Mapping) else "dim"


def method_user_config(
    base_user: Mapping[str, Any], entry: MethodEntry, budget: Mapping[str, Any], where: str
) -> dict[str, Any]:
    """The shared configuration with one method's overrides and the budget applied (unresolved).

    An entry that switches ``method.name`` starts from an empty ``method`` section: the shared
    configuration's method keys belong to the other method (DIM's ``head`` means nothing to
    SimCLR).
    """
    user = copy.deepcopy(dict(base_user))
    name = entry.overrides.get("method.name")
    if name is not None and name != _method_name(user):
        user["method"] = {}
    for key, value in entry.overrides.items():
        set_dotted(user, key, value, f"{where} ({entry.label})")
    apply_budget(user, budget)
    return user


def apply_budget(user: dict[str, Any], budget: Mapping[str, Any]) -> None:
    """Sets ``trainer.max_epochs`` / ``trainer.max_time_s`` of a user configuration from a budget.

    ``{epochs: N}``: N epochs, no time limit. ``{seconds: S}``: S seconds of training and an
    epoch cap of :data:`SECONDS_BUDGET_EPOCH_CAP` (so a learning-rate schedule over
    ``max_epochs`` barely moves); ``{seconds: S, epochs: N}``: whichever comes first. Neither:
    the configuration's own trainer settings.
    """
    epochs, seconds = budget.get("epochs"), budget.get("seconds")
    if epochs is None and seconds is None:
        return
    trainer = user.setdefault("trainer", {})
    if not isinstance(trainer, dict):
        raise ConfigError(f"trainer is a section; got the value {trainer!r}")
    trainer["max_time_s"] = float(seconds) if seconds is not None else None
    trainer["max_epochs"] = int(epochs) if epochs is not None else SECONDS_BUDGET_EPOCH_CAP


def check_budget(budget: Mapping[str, Any], where: str) -> None:
    epochs, seconds = budget.get("epochs"), budget.get("seconds")
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
        raise ConfigError(f"{where}.epochs must be a whole number >= 1 (or null); got {epochs!r}")
    if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds <= 0):
        raise ConfigError(f"{where}.seconds must be a positive number of seconds (or null); got {seconds!r}")


def describe_budget(budget: Mapping[str, Any], config: Mapping[str, Any]) -> str:
    """``"45 s"``, ``"3 epochs"``, ``"45 s or 3 epochs"`` for one method's resolved configuration."""
    epochs, seconds = config["trainer"]["max_epochs"], config["trainer"]["max_time_s"]
    if budget.get("seconds") is not None:
        return f"{seconds:g} s" + (f" or {epochs} epochs" if budget.get("epochs") is not None else "")
    return f"{epochs} epochs" + (f" or {seconds:g} s" if seconds else "")


def validate_section(
    user: Mapping[str, Any], name: str, defaults: Mapping[str, Any], free_form: Sequence[str] = ()
) -> dict[str, Any]:
    """A command's section checked key by key against its defaults (errors name ``name.key``);
    ``free_form`` keys hold mappings passed through unchecked."""
    free = frozenset(f"{name}.{key}" for key in free_form)
    section = validate_config({name: dict(user)}, {name: defaults}, free)[name]
    check_budget(section["budget"], f"{name}.budget")
    for key in ("probe_limit_train", "probe_limit_test"):
        value = section.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"{name}.{key} must be a whole number >= 1 (or null); got {value!r}")
    positions = section.get("positions")
    if not positions or not all(isinstance(p, str) for p in positions):
        raise ConfigError(f"{name}.positions must be a list of position names (e.g. [pool, conv]); got {positions!r}")
    return section


def probe_settings(section: Mapping[str, Any], seed: int, where: str):

    try:
        return ProbeSettings(
            tuple(section["probes"]),
            section["knn_k"],
            section["knn_temperature"],
            seed,
            linear_l2_grid=section.get("linear_l2_grid"),
        )
    except ValueError as err:
        raise ConfigError(f"{where}: {err}") from None


def check_single_process(config: Mapping[str, Any], command: str) -> None:
    """Refuses multi-device trainer settings: these commands run every method in one process."""

    trainer = config["trainer"]
    devices = trainer["devices"]
    gpus = torch.cuda.device_count()
    several = (
        trainer["num_nodes"] > 1
        or (isinstance(devices, int) and (devices > 1 or (devices == -1 and gpus > 1)))
        or (isinstance(devices, (list, tuple)) and len(devices) > 1)
        or (devices == "auto" and gpus > 1)
    )
    if several:
        raise ConfigError(
            f"dim-ssl {command} trains its methods one after another in one process: set trainer.devices=1 "
            f"and trainer.num_nodes=1 (got devices={devices!r}, num_nodes={trainer['num_nodes']}); for several "
            "devices pretrain each method with `dim-ssl pretrain` and probe the checkpoints with `dim-ssl evaluate`"
        )


@dataclass
class Comparison:
    """A resolved ``dim-ssl compare`` run.

    Attributes:
        base: The shared configuration, resolved (as the first method's data and encoder).
        section: The ``compare`` section, checked, every key present.
        methods: The method entries.
        out: The comparison's output folder.
        seeds: The seeds every method runs with (``compare.seeds``, else ``[seed]``).
        seed_configs: Per method, its resolved pretraining configuration for each seed (its
            own output folder; with several seeds ``<method folder>/seed-<seed>``).
    """

    base: dict[str, Any]
    section: dict[str, Any]
    methods: list[MethodEntry]
    out: Path
    seeds: list[int]
    seed_configs: list[list[dict[str, Any]]]

    @property
    def configs(self) -> list[dict[str, Any]]:
        """Each method's configuration for the first seed (the same objects as in ``seed_configs``)."""
        return [per_seed[0] for per_seed in self.seed_configs]

    def resolved(self) -> dict[str, Any]:
        """The resolved configuration written to ``config.yaml``: the shared part and the section."""
        section = copy.deepcopy(self.section)
        section["methods"] = [
            {"label": m.label, "overrides": m.overrides, **({"positions": list(m.positions)} if m.positions else {})}
            for m in self.methods
        ]
        return {**copy.deepcopy(self.base), "output_dir": str(self.out), "compare": section}


def resolve_comparison(
    path: str | Path, overrides: Sequence[str] = (), only: Sequence[str] | None = None
) -> Comparison:
    """A comparison from a configuration file and dotted overrides (``compare.budget.seconds=60``).

    ``only`` keeps the methods with these labels (to run parts of a long comparison in
    separate processes, each with its own ``output_dir``).

    The output folder is ``output_dir`` when the file or an override sets it, else
    ``runs/<name>-compare``; each method trains in ``<output folder>/<label as a folder name>``.

    Raises:
        ConfigError: Anything the configuration cannot mean: an unknown key in the shared part,
            the section or a method's overrides; a bad budget, probe or label; several devices.
    """
    base_user, sections = load_sections(path, overrides)
    section = validate_section(sections["compare"], "compare", COMPARE_DEFAULTS)
    methods = parse_methods(section["methods"])
    if only:
        labels = [entry.label for entry in methods]
        unknown = [label for label in only if label not in labels]
        if unknown:
            raise ConfigError(
                f"--methods: no method labelled {', '.join(map(repr, unknown))}; "
                f"the configuration has {', '.join(map(repr, labels))}"
            )
        methods = [entry for entry in methods if entry.label in only]
    base = resolve_config(None, base=base_user)
    check_single_process(base, "compare")
    out = Path(base_user["output_dir"]) if base_user.get("output_dir") else Path("runs") / f"{base['name']}-compare"
    probe_settings(section, int(base["seed"]), "compare")
    seeds = check_seeds(section["seeds"], int(base["seed"]))

    seed_configs = []
    for index, entry in enumerate(methods):
        where = f"compare.methods[{index}]"
        per_seed = []
        for seed in seeds:
            user = method_user_config(base_user, entry, section["budget"], where)
            user["seed"] = seed
            user["name"] = f"{base['name']}-{entry.slug}" + (f"-seed{seed}" if len(seeds) > 1 else "")
            user["output_dir"] = str(out / entry.slug / (f"seed-{seed}" if len(seeds) > 1 else ""))
            try:
                config = resolve_config(None, base=user)
            except ConfigError as err:
                raise ConfigError(f"{where} ({entry.label}): {err}") from None
            check_single_process(config, "compare")
            per_seed.append(config)
        seed_configs.append(per_seed)
    _refuse_twins(methods, [per_seed[0] for per_seed in seed_configs])
    return Comparison(base, section, methods, out, seeds, seed_configs)


def _refuse_twins(methods: Sequence[MethodEntry], configs: Sequence[Mapping[str, Any]]) -> None:
    """Two labels that train the same thing: a mistake in the overrides, not a comparison."""

    seen: dict[str, str] = {}
    for entry, config in zip(methods, configs):
        recipe = dump_config({k: v for k, v in config.items() if k not in ("name", "output_dir")})
        if recipe in seen:
            raise ConfigError(
                f"compare.methods: {seen[recipe]!r} and {entry.label!r} resolve to the same configuration, so they "
                "would train the same model twice. An entry that switches method.name starts from an empty method "
                "section: name every method key it needs (e.g. method.head.estimator), and list several positions "
                "on one entry rather than repeating it"
            )
        seen[recipe] = entry.label


def check_seeds(seeds: Any, default: int, key: str = "compare.seeds") -> list[int]:
    """``compare.seeds`` (or ``key``) as a list of distinct ints; null: the configuration's own seed."""
    if seeds is None:
        return [default]
    if (
        not isinstance(seeds, (list, tuple))
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
    ):
        raise ConfigError(f"{key} must be a list of whole numbers >= 0, e.g. [0, 1, 2] (or null); got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{key} has a seed twice: {list(seeds)}; give each seed once")
    return list(seeds)


# --------------------------------------------------------------------------------------------
# Training one method


def _finished(out: Path, config: Mapping[str, Any]) -> bool:
    """A finished run of exactly this configuration in ``out`` (reusable)."""
    needed = [out / "summary.json", out / "training.json", out / "checkpoints" / "last.ckpt", out / "config.yaml"]
    if not all(p.is_file() for p in needed):
        return False
    try:
        earlier = yaml.safe_load((out / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(earlier, dict) and not config_diff(earlier, yaml.safe_load(dump_config(config)))


def _earlier_run(out: Path) -> bool:
    return any(p.exists() for p in (out / "checkpoints", out / "metrics.csv", out / "summary.json"))


def train_method(
    config: Mapping[str, Any],
    label: str,
    curve_data: tuple[Any, Any] | None,
    curve: Mapping[str, Any],
    settings: Any,
    overwrite: bool = False,
    reuse: bool = False,
    echo: Callable[[str], None] = print,
    initial: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Pretrains one method (or reuses its finished run) and returns what the tables need.

    ``initial`` is shared by the methods of one comparison: the curve's accuracy at step 0 per
    starting weights, so methods that start from the same weights measure it once.

    Writes ``training.json`` into the method's folder (curve points, training seconds, peak
    memory) and, when there is a curve, ``knn_vs_time.png``.

    Returns:
        ``{"summary", "checkpoint", "curve", "train_seconds", "probe_seconds", "peak_memory_mb",
        "memory_measure", "reused"}``.
    """

    out = Path(config["output_dir"])
    record_path = out / "training.json"
    if reuse and _finished(out, config):
        record = json.loads(record_path.read_text())
        echo(f"  reusing the finished run in {out}")
        return {**record, "reused": True}

    every = int(curve["every_n_epochs"]) if curve_data is not None else 0
    every_seconds = curve.get("every_n_seconds") if curve_data is not None else None
    train, test = curve_data if curve_data is not None else (None, None)
    probe_curve = ProbeCurve(
        train,
        test,
        position=curve["position"],
        every_n_epochs=every,
        every_n_seconds=every_seconds,
        knn_k=int(curve.get("knn_k") or settings.knn_k),
        knn_temperature=settings.knn_temperature,
        start_cache=initial,
    )
    memory = PeakMemory()
    summary = pretrain(config, overwrite=overwrite or reuse, callbacks=[probe_curve, memory], echo=echo)
    record = {
        "label": label,
        "summary": summary,
        "checkpoint": summary["last_checkpoint"],
        "curve": probe_curve.points,
        "curve_position": curve["position"],
        "train_seconds": probe_curve.train_seconds,
        "probe_seconds": probe_curve.probe_seconds,
        "peak_memory_mb": memory.peak_mb,
        "memory_measure": memory.measure,
    }
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    if probe_curve.points:
        plot_accuracy_vs_time(
            {label: [(p["seconds"], p["knn_acc"]) for p in probe_curve.points]},
            out / "knn_vs_time.png",
            title=f"{label}: kNN accuracy ({curve['position']}) against training time",
            ylabel="kNN accuracy",
        )
    return {**record, "reused": False}


# --------------------------------------------------------------------------------------------
# Probing the rows


def method_rows(
    label: str,
    trained: Mapping[str, Any],
    data: Any,
    positions: Sequence[str],
    settings: Any,
    cache_dir: Path,
    echo: Callable[[str], None],
    extra: Mapping[str, Any] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows of one trained method (one per position) and its test features per position."""

    model = model_from_checkpoint(trained["checkpoint"])
    available = tuple(getattr(model, "feature_positions", ("pool",)))
    chosen = [p for p in positions if p in available]
    missing = [p for p in positions if p not in available]
    if missing:
        echo(f"  {label} has no position {', '.join(missing)} (it has {', '.join(available)}): skipped")
    features = model_features(model, data, chosen, cache_dir=cache_dir, checkpoint=trained["checkpoint"])
    summary = trained["summary"]
    training = {
        "images_per_s": summary.get("images_per_s"),
        "wall_clock_s": trained.get("train_seconds") or summary.get("wall_clock_s"),
        "peak_memory_mb": trained.get("peak_memory_mb"),
        "epochs": summary.get("epochs"),
        "steps": summary.get("steps"),
        "method_name": summary.get("method"),
    }
    rows = probe_rows(label, features, chosen, settings, echo, {**training, **dict(extra or {})}, cache_dir)
    return rows, {p: features[p][1] for p in chosen}


def probe_rows(
    label: str,
    features: Mapping[str, Any],
    positions: Sequence[str],
    settings: Any,
    echo: Callable[[str], None],
    columns: Mapping[str, Any],
    cache_dir: Path | None = None,
) -> list[dict[str, Any]]:
    """One table row per position: the probes' accuracies on its features, and ``columns``
    (with ``cache_dir``, results already probed there are read back, not probed again)."""
    rows = []
    for position in positions:
        result = run_probes(*features[position], settings, cache_dir=cache_dir)
        echo(f"  {label} @ {position}: {format_accuracies(result)}")
        rows.append(
            {
                "method": label,
                "position": position,
                **{c: result.get(c) for c in settings.columns},
                "features": feature_dim(features[position]),
                "linear_l2": result.get("linear_l2"),
                "mlp_epoch": result.get("mlp_epoch"),
                **columns,
            }
        )
    return rows


def random_init_rows(
    config: Mapping[str, Any],
    data: Any,
    positions: Sequence[str],
    settings: Any,
    cache_dir: Path,
    echo: Callable[[str], None],
    extra: Mapping[str, Any] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows of the configuration's encoder as the seed builds it, untrained."""

    pl.seed_everything(int(config["seed"]), workers=True, verbose=False)
    encoder = build_encoder(config["encoder"], data.channels, data.image_size)
    available = encoder.feature_positions
    chosen = [p for p in dict.fromkeys(positions) if p in available]
    name = "|".join(f"{k}={config['encoder'][k]!r}" for k in sorted(config["encoder"]))
    features = model_features(
        encoder, data, chosen, cache_dir=cache_dir, cache_name=f"random-init|seed={config['seed']}|{name}"
    )
    untrained = {
        "images_per_s": None,
        "wall_clock_s": None,
        "peak_memory_mb": None,
        "epochs": 0,
        "steps": 0,
        "method_name": None,
    }
    rows = probe_rows(RANDOM_INIT, features, chosen, settings, echo, {**untrained, **dict(extra or {})}, cache_dir)
    return rows, {p: features[p][1] for p in chosen}


def pixel_rows(
    data: Any,
    settings: Any,
    echo: Callable[[str], None],
    extra: Mapping[str, Any] | None = None,
    cache_dir: Path | None = None,
) -> tuple[list[dict[str, Any]], Any]:
    """The raw-pixel row and its test features."""

    features = pixel_features(data)
    result = run_probes(*features, settings, cache_dir=cache_dir)
    echo(f"  {RAW_PIXELS}: {format_accuracies(result)}")
    row = {
        "method": RAW_PIXELS,
        "position": "pixels",
        **{c: result.get(c) for c in settings.columns},
        "features": feature_dim(features),
        "images_per_s": None,
        "wall_clock_s": None,
        "peak_memory_mb": None,
        "epochs": None,
        "steps": None,
        "method_name": None,
        "linear_l2": result.get("linear_l2"),
        "mlp_epoch": result.get("mlp_epoch"),
        **dict(extra or {}),
    }
    return [row], features[1]


class Tables(NamedTuple):
    """What :func:`write_tables` wrote: the table's rows and columns, every seed's rows (with
    their gains), the files and the title."""

    rows: list[dict[str, Any]]
    seed_rows: list[dict[str, Any]]
    columns: list[str]
    files: dict[str, Path]
    title: str


def write_tables(
    rows: Sequence[Mapping[str, Any]],
    out: Path,
    accuracies: Sequence[str],
    seeds: Sequence[int],
    title: str,
    stem: str = "comparison",
    columns: Sequence[str] = TABLE_COLUMNS,
    keys: Sequence[str] = (),
    pair_by: Sequence[str] = (),
) -> Tables:
    """The comparison's tables from its rows (one per method, position and seed).

    Adds each trained row's gain over the untrained encoder when there are untrained rows; with
    several seeds writes every seed's rows to ``<stem>_seeds.*`` and the mean ± standard
    deviation to ``<stem>.*``, else the rows themselves to ``<stem>.*``.

    Args:
        rows, out, accuracies, seeds, title: The rows, the folder, the probes' accuracy columns,
            the seeds and the tables' title.
        stem: The files' name (``comparison``; a transfer's ``transfer``).
        columns: The table's columns, gains and ``seeds`` included (those not used are left out).
        keys: Further columns that tell rows apart besides method and position (a transfer's
            ``source`` and ``target``).
        pair_by: Columns besides position (and seed) that a trained row shares with the
            untrained row its gain is measured against (a transfer's ``target``: the untrained
            encoder has no source, and is probed on each target).

    Returns:
        :class:`Tables`.
    """
    accuracies = [c for c in columns if c in accuracies]
    with_gains = any(row["method"] == RANDOM_INIT for row in rows)
    if with_gains:
        rows = add_gains(rows, accuracies, untrained=RANDOM_INIT, without=(RAW_PIXELS,), keys=tuple(pair_by))
    gains = [gain_column(c) for c in accuracies] if with_gains else []
    kept = {*accuracies, *gains}
    columns = [c for c in columns if c in kept or not c.endswith(("_acc", "_gain"))]
    files: dict[str, Path] = {}
    seed_rows = [dict(row) for row in rows]
    if len(seeds) > 1:
        title += f", seeds {', '.join(map(str, seeds))} (mean ± standard deviation)"
        seed_columns = [c for c in columns if c != "seeds"]
        seed_columns.insert(seed_columns.index("position") + 1, "seed")
        runs_files = write_report(rows, out, stem=f"{stem}_seeds", columns=seed_columns, title=f"{title}: every seed")
        files.update({f"seeds_{k}": v for k, v in runs_files.items()})
        rows = summarise_seeds(rows, [*accuracies, *gains], keys=keys)
        columns = [x for c in columns for x in ((c, std_column(c)) if c in kept else (c,))]
    else:
        rows = seed_rows
        columns = [c for c in columns if c != "seeds"]
    files.update(write_report(rows, out, stem=stem, columns=columns, title=title))
    return Tables(rows, seed_rows, columns, files, title)


# --------------------------------------------------------------------------------------------
# The comparison


def prepare_output(out: Path, method_dirs: Sequence[Path], files: Sequence[str], overwrite: bool, reuse: bool) -> None:
    """Refuses a folder with earlier results unless told what to do with them; clears on overwrite."""
    earlier = [out / name for name in files if (out / name).exists()] + [d for d in method_dirs if _earlier_run(d)]
    if earlier and not (overwrite or reuse):
        shown = ", ".join(str(p.relative_to(out)) for p in earlier[:4]) + (" ..." if len(earlier) > 4 else "")
        raise OutputInUse(
            f"{out} already holds results ({shown}): start afresh with --overwrite, keep the finished "
            "method runs with --reuse, or choose another output_dir=..."
        )
    if overwrite:
        for directory in method_dirs:
            if directory.exists():
                shutil.rmtree(directory)
    out.mkdir(parents=True, exist_ok=True)


def curve_subsets(data: Any, curve: Mapping[str, Any]) -> tuple[Any, Any] | None:
    """The first N images of the probe splits, for the training-time kNN curve."""

    if not int(curve["every_n_epochs"]) and not curve.get("every_n_seconds"):
        return None
    subsets = []
    for dataset, limit in ((data.train, curve["limit_train"]), (data.test, curve["limit_test"])):
        n = len(dataset) if limit is None else min(int(limit), len(dataset))
        subsets.append(dataset if n == len(dataset) else Subset(dataset, range(n)))
    return subsets[0], subsets[1]


def write_curves(curves: Mapping[str, Sequence[Mapping[str, Any]]], out: Path, title: str) -> dict[str, Path]:
    """``curves.csv`` (method, epoch, step, seconds, knn_acc; one line per probe) and
    ``accuracy_vs_time.png`` (one line per method) in ``out``; methods without points are left out."""
    curves = {label: points for label, points in curves.items() if points}
    if not curves:
        return {}
    path = out / "curves.csv"
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["method", "epoch", "step", "seconds", "knn_acc"])
        for label, points in curves.items():
            for p in points:
                writer.writerow([label, p["epoch"], p["step"], f"{p['seconds']:.3f}", f"{p['knn_acc']:.6f}"])
    plot = plot_accuracy_vs_time(
        {label: [(p["seconds"], p["knn_acc"]) for p in points] for label, points in curves.items()},
        out / "accuracy_vs_time.png",
        title=title,
        ylabel="kNN accuracy",
    )
    return {"curves_csv": path, "accuracy_vs_time": plot}


def run_comparison(
    comparison: Comparison, overwrite: bool = False, reuse: bool = False, echo: Callable[[str], None] = print
) -> dict[str, Any]:
    """Runs a resolved comparison (see the module docstring) and writes its output folder.

    Args:
        comparison: From :func:`resolve_comparison`.
        overwrite: Start afresh in a folder that holds an earlier comparison (deletes its runs).
        reuse: Keep finished method runs whose configuration is unchanged; train the others.
        echo: Where progress lines go.

    Returns:
        ``{"rows", "curves", "methods", "files", "seconds"}`` (also in ``results.json``).

    Raises:
        OutputInUse: An earlier comparison in the folder without ``overwrite`` or ``reuse``.
        eval.training.config.ConfigError, eval.data.DatasetNotFoundError, eval.training.checkpoint.CheckpointError,
        eval.training.TrainingInterrupted: From the runs.
    """

    began = time.monotonic()
    base, section, out = comparison.base, comparison.section, comparison.out
    method_dirs = [Path(c["output_dir"]) for per_seed in comparison.seed_configs for c in per_seed]
    prepare_output(out, method_dirs, ("comparison.json", "results.json"), overwrite, reuse)
    (out / "config.yaml").write_text(dump_config(comparison.resolved()))
    settings = probe_settings(section, int(base["seed"]), "compare")

    data = section_probe_data(base, section)
    curve_data = curve_subsets(data, section["curve"])
    budget = describe_budget(section["budget"], comparison.configs[0])
    echo(
        f"comparing {', '.join(m.label for m in comparison.methods)} on {data.describe()}, "
        f"encoder {base['encoder']['name']}, {budget} per method; output {out}"
    )

    rows: list[dict[str, Any]] = []
    curves: dict[str, list[dict[str, Any]]] = {}
    embeddings: dict[str, tuple[Any, Any]] = {}
    methods: dict[str, Any] = {}
    cache_dir = out / "features"
    initial: dict[str, float] = {}  # the curve's step-0 accuracy, per starting weights
    seeds = comparison.seeds
    several = len(seeds) > 1
    runs = [
        (entry, config) for entry, per_seed in zip(comparison.methods, comparison.seed_configs) for config in per_seed
    ]
    for index, (entry, config) in enumerate(runs, start=1):
        seed = int(config["seed"])
        name = f"{entry.label} (seed {seed})" if several else entry.label
        where = f"[{index}/{len(runs)}] {name}"
        echo(f"{where}: {config['method']['name']}, {budget} -> {config['output_dir']}")
        trained = train_method(config, name, curve_data, section["curve"], settings, overwrite, reuse, echo, initial)
        echo(f"{where}: probing {data.describe()}")
        positions = entry.positions or section["positions"]
        extra = {"seed": seed} if several else None
        method_rows_, test_features = method_rows(
            entry.label, trained, data, positions, settings, cache_dir, echo, extra
        )
        rows += method_rows_
        first = seed == seeds[0]
        if first:  # the plots show the first seed; every seed's record is in results.json
            curves[entry.label] = trained["curve"]
            if test_features:
                embeddings[entry.label] = test_features.get("pool", next(iter(test_features.values())))
        methods[name] = {k: v for k, v in trained.items()}

    if section["random_init"]:
        positions = list(
            dict.fromkeys([*section["positions"], *(p for m in comparison.methods for p in m.positions or ())])
        )
        for seed in seeds:
            echo(f"[baselines] {RANDOM_INIT}: {base['encoder']['name']} as seed {seed} builds it, untrained")
            init_rows, test_features = random_init_rows(
                {**base, "seed": seed}, data, positions, settings, cache_dir, echo, {"seed": seed} if several else None
            )
            rows += init_rows
            if test_features and seed == seeds[0]:
                embeddings[RANDOM_INIT] = test_features.get("pool", next(iter(test_features.values())))
    if section["raw_pixels"]:
        echo(f"[baselines] {RAW_PIXELS}: the normalised {data.channels}x{data.image_size}x{data.image_size} inputs")
        pixel_rows_, test_pixels = pixel_rows(data, settings, echo, cache_dir=cache_dir)
        rows += pixel_rows_
        embeddings[RAW_PIXELS] = test_pixels

    # ---- files ------------------------------------------------------------------------------
    title = (
        f"{', '.join(m.label for m in comparison.methods)} on {data.dataset}, {base['encoder']['name']}, "
        f"{budget} per method"
    )
    tables = write_tables(rows, out, settings.columns, seeds, title)
    rows, columns, files, title = tables.rows, tables.columns, tables.files, tables.title
    if curve_data is not None:
        files.update(
            write_curves(
                curves,
                out,
                title=f"kNN accuracy (k={section['curve']['knn_k']}, {section['curve']['position']}, "
                f"{len(curve_data[1])} held-out images) against training time",
            )
        )
    if embeddings:
        embedding = section["embedding"]
        files["embeddings"] = plot_embeddings(
            embeddings,
            out / "embeddings.png",
            method=embedding["method"],
            max_points=int(embedding["max_points"]),
            seed=int(base["seed"]),
            class_names=data.class_names,
            title=f"{data.dataset} {data.test_split} features (pool; pixels for raw pixels)",
        )
    seconds = time.monotonic() - began
    result = {
        "title": title,
        "dataset": data.dataset,
        "encoder": base["encoder"]["name"],
        "budget": budget,
        "rows": rows,
        "seed_rows": tables.seed_rows if several else None,
        "seeds": seeds,
        "curves": curves,
        "methods": methods,
        "seconds": seconds,
        "files": {k: str(v) for k, v in files.items()},
    }
    (out / "results.json").write_text(json.dumps(plain(result, finite=True), indent=2, allow_nan=False) + "\n")
    files["results"] = out / "results.json"
    result["files"] = {k: str(v) for k, v in files.items()}
    result["table"] = format_markdown_table(rows, columns)
    return result
