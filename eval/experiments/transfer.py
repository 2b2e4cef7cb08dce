"""Transfer: pretrain on one dataset (or take given checkpoints), probe the frozen features on others.

:func:`run_transfer` is what ``dim-ssl transfer`` runs, top to bottom:

1. configuration: a pretraining configuration (encoder, data format, trainer, ...) plus its
   ``transfer`` section (:data:`TRANSFER_DEFAULTS`): the source datasets, the target
   datasets, the methods (as in ``compare``; default: the configuration's own method) and/or
   ready checkpoints, the budget, probes and positions;
2. each method on each source: pretrained by :func:`eval.experiments.compare.train_method` into
   ``<output folder>/<source>-<method>`` under the budget, once per seed of ``transfer.seeds``
   (with several, into ``<source>-<method>/seed-<s>``; the probes keep the configuration's own
   ``seed``, so parts run with different seeds merge: ``dim-ssl merge``); given checkpoints are
   taken as they are (a label may name several, one per seed: a comparison's ``<label>/seed-<s>`` runs);
3. each target: every model's frozen features of the target's training and test splits, read
   *in the model's input format* (its image size and channels: Fashion-MNIST and digits are
   both 1x32x32; CIFAR-10 and STL-10 models read 3x32x32), probed with the kNN and linear
   probes (and the MLP probe when listed) trained on the target's training split; plus the
   random-init encoder (once per seed the models were trained with, as that seed builds it)
   and the raw pixels of the target, probed alike;
4. outputs: ``transfer.md/.csv/.json`` (one row per model, target and position, with the gain
   over the untrained encoder of the same seed on the same target; with several seeds the mean
   ± standard deviation, every seed's rows in ``transfer_seeds.*``), ``embeddings-<target>.png``,
   ``results.json``, ``config.yaml``.

A row whose source is its target is the in-domain reference the transferred rows are read
against.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from eval.data import dataset_spec
from eval.errors import ConfigError, OutputInUse
from eval.experiments.compare import (
    RANDOM_INIT,
    RAW_PIXELS,
    TABLE_COLUMNS,
    MethodEntry,
    check_seeds,
    check_single_process,
    describe_budget,
    folder_name,
    load_sections,
    method_rows,
    method_user_config,
    parse_methods,
    pixel_rows,
    prepare_output,
    probe_settings,
    random_init_rows,
    set_dotted,
    train_method,
    validate_section,
    write_tables,
)
from eval.experiments.plots import plot_embeddings
from eval.experiments.report import format_markdown_table
from eval.plain import plain
from eval.probes.suite import input_format, probe_data
from eval.training.checkpoint import load_checkpoint
from eval.training.config import dump_config, resolve_config

__all__ = [
    "TRANSFER_COLUMNS",
    "TRANSFER_DEFAULTS",
    "OutputInUse",
    "Target",
    "Transfer",
    "resolve_transfer",
    "run_transfer",
]

TRANSFER_DEFAULTS: dict[str, Any] = {
    "sources": None,  # datasets to pretrain on: names or {dataset, overrides}; null: [data.dataset]
    "targets": None,  # datasets to probe: names or {dataset, limit_train, limit_test}; null: the sources
    "methods": None,  # as compare.methods; null: the configuration's own method (none if checkpoints are given)
    "checkpoints": {},  # {label: checkpoint path, or a list: one per seed}: probed as they are, no pretraining
    "budget": {"epochs": None, "seconds": None},  # per method and source; null: the trainer's settings
    "seeds": None,  # [0, 1, 2]: each method pretrained once per seed, mean ± std; null: `seed`
    "probes": ["knn", "linear"],  # any of knn, linear, mlp
    "positions": ["pool"],
    "knn_k": 200,
    "knn_temperature": 0.1,
    "linear_l2_grid": None,  # the linear probe's weight decays; null: 1e-1 ... 1e-6 (eval.probes.linear)
    "random_init": True,
    "raw_pixels": True,
    "embedding": {"method": "pca", "max_points": 2000},
}

TRANSFER_COLUMNS: tuple[str, ...] = (
    "method",
    "source",
    "target",
    "position",
    *(c for c in TABLE_COLUMNS if c.endswith(("_acc", "_gain"))),
    "features",
    "wall_clock_s",
    "seeds",
)


@dataclass(frozen=True)
class Target:
    """A dataset to probe on, with optional limits of its splits."""

    dataset: str
    limit_train: int | None = None
    limit_test: int | None = None


@dataclass
class Transfer:
    """A resolved ``dim-ssl transfer`` run.

    Attributes:
        base: The shared configuration, resolved.
        section: The ``transfer`` section, checked.
        runs: ``(label, source, resolved configuration)`` of every pretraining run.
        checkpoints: ``{label: [path, ...]}`` of the given checkpoints (several: one per seed).
        targets: The datasets probed.
        out: The output folder.
    """

    base: dict[str, Any]
    section: dict[str, Any]
    runs: list[tuple[str, str, dict[str, Any]]]
    checkpoints: dict[str, list[str]]
    targets: list[Target]
    out: Path

    def resolved(self) -> dict[str, Any]:
        section = copy.deepcopy(self.section)
        section["targets"] = [t.__dict__.copy() for t in self.targets]
        return {**copy.deepcopy(self.base), "output_dir": str(self.out), "transfer": section}


def _sources(raw: Any, default: str) -> list[tuple[str, dict[str, Any]]]:
    if raw is None:
        raw = [default]
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, (list, tuple)) or not raw:
        raise ConfigError(f"transfer.sources must be a list of dataset names or {{dataset, overrides}}; got {raw!r}")
    sources = []
    for index, item in enumerate(raw):
        if isinstance(item, str):
            sources.append((item, {}))
        elif (
            isinstance(item, Mapping) and isinstance(item.get("dataset"), str) and set(item) <= {"dataset", "overrides"}
        ):
            overrides = item.get("overrides") or {}
            if not isinstance(overrides, Mapping):
                raise ConfigError(f"transfer.sources[{index}].overrides must be a mapping; got {overrides!r}")
            sources.append((item["dataset"], dict(overrides)))
        else:
            raise ConfigError(
                f"transfer.sources[{index}] must be a dataset name or "
                f"{{dataset: NAME, overrides: {{...}}}}; got {item!r}"
            )
    return sources


def _checkpoints(raw: Any) -> dict[str, list[str]]:
    if not isinstance(raw or {}, Mapping):
        raise ConfigError(f"transfer.checkpoints must be a mapping {{label: path or [path, ...]}}; got {raw!r}")
    checkpoints = {}
    for label, paths in (raw or {}).items():
        paths = [paths] if isinstance(paths, (str, Path)) else paths
        if not isinstance(paths, (list, tuple)) or not paths or not all(isinstance(p, (str, Path)) for p in paths):
            raise ConfigError(
                f"transfer.checkpoints.{label} must be a checkpoint path or a list of them (one per seed); "
                f"got {paths!r}"
            )
        for path in paths:
            if not Path(path).is_file():
                raise ConfigError(f"transfer.checkpoints.{label}: {path} not found")
        checkpoints[str(label)] = [str(p) for p in paths]
    return checkpoints


def _targets(raw: Any, default: Sequence[str]) -> list[Target]:
    if raw is None:
        raw = list(default)
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, (list, tuple)) or not raw:
        raise ConfigError(
            f"transfer.targets must be a list of dataset names or {{dataset, limit_train, limit_test}}; got {raw!r}"
        )
    targets = []
    for index, item in enumerate(raw):
        if isinstance(item, str):
            targets.append(Target(item))
            continue
        allowed = {"dataset", "limit_train", "limit_test"}
        if not isinstance(item, Mapping) or not isinstance(item.get("dataset"), str) or not set(item) <= allowed:
            raise ConfigError(
                f"transfer.targets[{index}] must be a dataset name or a mapping with keys "
                f"{', '.join(sorted(allowed))}; got {item!r}"
            )
        for key in ("limit_train", "limit_test"):
            value = item.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"transfer.targets[{index}].{key} must be a whole number >= 1; got {value!r}")
        targets.append(Target(item["dataset"], item.get("limit_train"), item.get("limit_test")))
    return targets


def resolve_transfer(path: str | Path, overrides: Sequence[str] = ()) -> Transfer:
    """A transfer run from a configuration file and dotted overrides (``transfer.budget.seconds=60``).

    The output folder is ``output_dir`` when set, else ``runs/<name>-transfer``.

    Raises:
        ConfigError: An unknown key or a bad value anywhere, an unknown dataset, a missing checkpoint.
    """

    base_user, sections = load_sections(path, overrides)
    section = validate_section(sections["transfer"], "transfer", TRANSFER_DEFAULTS, free_form=("checkpoints",))
    base = resolve_config(None, base=base_user)
    check_single_process(base, "transfer")
    probe_settings(section, int(base["seed"]), "transfer")
    out = Path(base_user["output_dir"]) if base_user.get("output_dir") else Path("runs") / f"{base['name']}-transfer"

    checkpoints = _checkpoints(section["checkpoints"])
    if section["methods"] is None and checkpoints:
        entries: list[MethodEntry] = []
    elif section["methods"] is None:
        entries = [MethodEntry(str(base["method"]["name"]), {})]
    else:
        entries = parse_methods(section["methods"], "transfer.methods")
    seeds = check_seeds(section["seeds"], int(base["seed"]), "transfer.seeds")
    sources = _sources(section["sources"], base["data"]["dataset"])
    targets = _targets(section["targets"], [s for s, _ in sources] if entries else [base["data"]["dataset"]])
    for name in [s for s, _ in sources] + [t.dataset for t in targets]:
        try:
            dataset_spec(name)
        except ValueError as err:
            raise ConfigError(f"transfer: {err}") from None

    runs = []
    several = len(seeds) > 1
    for source, source_overrides in sources:
        for index, entry in enumerate(entries):
            where = f"transfer.methods[{index}]"
            for seed in seeds:
                user = method_user_config(base_user, entry, section["budget"], where)
                set_dotted(user, "data.dataset", source, f"transfer.sources ({source})")
                for key, value in source_overrides.items():
                    set_dotted(user, key, value, f"transfer.sources ({source})")
                folder = f"{folder_name(source)}-{entry.slug}"
                user["seed"] = seed
                user["name"] = f"{base['name']}-{folder}" + (f"-seed{seed}" if several else "")
                user["output_dir"] = str(out / folder / (f"seed-{seed}" if several else ""))
                try:
                    config = resolve_config(None, base=user)
                except ConfigError as err:
                    raise ConfigError(f"{where} ({entry.label}) on {source}: {err}") from None
                check_single_process(config, "transfer")
                runs.append((entry.label, source, config))
    if not runs and not checkpoints:
        raise ConfigError("transfer: nothing to probe: give transfer.methods (or leave it out) or transfer.checkpoints")
    return Transfer(base, section, runs, checkpoints, targets, out)


def run_transfer(
    transfer: Transfer, overwrite: bool = False, reuse: bool = False, echo: Callable[[str], None] = print
) -> dict[str, Any]:
    """Runs a resolved transfer (see the module docstring) and writes its output folder.

    Returns:
        ``{"rows", "table", "files", "seconds"}`` (the rows also in ``results.json``).

    Raises:
        OutputInUse: Earlier results in the folder without ``overwrite`` or ``reuse``.
        eval.training.config.ConfigError, eval.data.DatasetNotFoundError, eval.training.checkpoint.CheckpointError,
        eval.training.TrainingInterrupted: From the runs.
    """

    began = time.monotonic()
    base, section, out = transfer.base, transfer.section, transfer.out
    prepare_output(
        out, [Path(c["output_dir"]) for _, _, c in transfer.runs], ("transfer.json", "results.json"), overwrite, reuse
    )
    (out / "config.yaml").write_text(dump_config(transfer.resolved()))
    settings = probe_settings(section, int(base["seed"]), "transfer")
    no_curve = {"every_n_epochs": 0, "position": "pool"}

    # ---- the models: pretrained here, or given ---------------------------------------------
    models: list[dict[str, Any]] = []
    for index, (label, source, config) in enumerate(transfer.runs, start=1):
        budget = describe_budget(section["budget"], config)
        echo(
            f"[{index}/{len(transfer.runs)}] {label} on {source}: {config['method']['name']}, {budget} "
            f"-> {config['output_dir']}"
        )
        trained = train_method(config, label, None, no_curve, settings, overwrite, reuse, echo)
        models.append(
            {"label": label, "source": source, "trained": trained, "data": config["data"], "seed": int(config["seed"])}
        )
    for label, paths in transfer.checkpoints.items():
        seeds_seen: set[int] = set()
        for checkpoint in paths:
            saved = load_checkpoint(checkpoint)["dim_ssl"]["config"]
            seed = int(saved["seed"])
            if seed in seeds_seen:
                raise ConfigError(
                    f"transfer.checkpoints.{label}: two checkpoints trained with seed {seed}; give one per seed"
                )
            seeds_seen.add(seed)
            echo(
                f"[given] {label}: {checkpoint} ({saved['method']['name']} on {saved['data']['dataset']}, seed {seed})"
            )
            summary = {"method": saved["method"]["name"], "epochs": None, "steps": None}
            models.append(
                {
                    "label": label,
                    "source": saved["data"]["dataset"],
                    "data": saved["data"],
                    "seed": seed,
                    "trained": {"checkpoint": checkpoint, "summary": summary},
                }
            )
    seeds = sorted({m["seed"] for m in models})

    # ---- each target --------------------------------------------------------------------------
    rows: list[dict[str, Any]] = []
    files: dict[str, Any] = {}
    cache_dir = out / "features"
    root, download = base["data"]["root"], base["data"]["download"]
    for target in transfer.targets:
        echo(f"[target] {target.dataset}")
        # Read once per (image_size, channels), shared by the models that take that format.
        loaded: dict[tuple[int, int], Any] = {}

        def data_for(
            image_format: tuple[int, int], target: Target = target, loaded: dict[tuple[int, int], Any] = loaded
        ) -> Any:
            if image_format not in loaded:
                loaded[image_format] = probe_data(
                    target.dataset,
                    *image_format,
                    root=root,
                    download=download,
                    limit_train=target.limit_train,
                    limit_test=target.limit_test,
                )
            return loaded[image_format]

        embeddings: dict[str, Any] = {}  # the first seed's
        for model in models:
            data = data_for(input_format(model["data"]))  # the model's input format
            name = f"{model['label']} ({model['source']})"
            shown = name if len(seeds) == 1 else f"{name}, seed {model['seed']}"
            extra = {"source": model["source"], "target": target.dataset, "seed": model["seed"]}
            model_rows, test_features = method_rows(
                shown, model["trained"], data, section["positions"], settings, cache_dir, echo, extra
            )
            for row in model_rows:
                row["method"] = model["label"]
            rows += model_rows
            if test_features and name not in embeddings:
                embeddings[name] = test_features.get("pool", next(iter(test_features.values())))
        data = data_for(input_format(base["data"]))
        for seed in seeds if section["random_init"] else ():
            init_rows, test_features = random_init_rows(
                {**base, "seed": seed},
                data,
                section["positions"],
                settings,
                cache_dir,
                echo,
                {"source": None, "target": target.dataset, "seed": seed},
            )
            rows += init_rows
            if test_features and RANDOM_INIT not in embeddings:
                embeddings[RANDOM_INIT] = test_features.get("pool", next(iter(test_features.values())))
        if section["raw_pixels"]:
            pixel_rows_, test_pixels = pixel_rows(
                data, settings, echo, {"source": None, "target": target.dataset}, cache_dir
            )
            rows += pixel_rows_
            embeddings[RAW_PIXELS] = test_pixels
        if embeddings:
            embedding = section["embedding"]
            files[f"embeddings_{target.dataset}"] = plot_embeddings(
                embeddings,
                out / f"embeddings-{folder_name(target.dataset)}.png",
                method=embedding["method"],
                max_points=int(embedding["max_points"]),
                seed=int(base["seed"]),
                class_names=data.class_names,
                title=f"{target.dataset} test features (pool; pixels for raw pixels)",
            )

    columns = settings.table_columns(TRANSFER_COLUMNS)
    sources = sorted({m["source"] for m in models})
    title = f"transfer from {', '.join(sources)} to {', '.join(t.dataset for t in transfer.targets)}"
    tables = write_tables(
        rows,
        out,
        settings.columns,
        seeds,
        title,
        stem="transfer",
        columns=columns,
        keys=("source", "target"),
        pair_by=("target",),
    )
    files.update(tables.files)
    rows, columns = tables.rows, tables.columns
    seconds = time.monotonic() - began
    result = {
        "title": tables.title,
        "rows": rows,
        "seed_rows": tables.seed_rows,
        "seeds": seeds,
        "seconds": seconds,
        "files": {k: str(v) for k, v in files.items()},
    }
    (out / "results.json").write_text(json.dumps(plain(result, finite=True), indent=2, allow_nan=False) + "\n")
    files["results"] = out / "results.json"
    result["files"] = {k: str(v) for k, v in files.items()}
    result["table"] = format_markdown_table(rows, columns)
    return result
