"""Pretraining methods by name: a small registry, the encoder factory, and DIM's entry.

``method.name`` in a run configuration picks a :class:`MethodSpec`; its ``build(config, data)``
returns the method's LightningModule, which follows the harness contract (``.encoder``,
``.features(x, position)``, ``.feature_positions``, batches ``(images or views, labels)``,
lightly's online-classifier metrics). Each method declares the keys of its ``method``
section with their defaults, so configurations are checked key by key.

Adding a method does not touch this file: write ``eval/baselines/<name>.py`` (imported on
demand the first time ``method.name=<name>`` is asked for) or any module imported before the
run, and register there::

    from eval.methods import register_method

    @register_method("simclr", defaults={"temperature": 0.5}, train_transform=my_two_views)
    def build_simclr(config, data):
        encoder = build_encoder(config["encoder"], data.channels, data.image_size)
        return SimCLRModule(encoder, num_classes=data.num_classes, ...)
"""

from __future__ import annotations

import copy
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from eval.config import ConfigError
from eval.data import DatasetSpec

__all__ = [
    "DataInfo",
    "METHODS",
    "MethodSpec",
    "build_encoder",
    "build_method",
    "get_method",
    "method_schema",
    "register_method",
]


@dataclass(frozen=True)
class DataInfo:
    """What a method builder needs to know about the data it will train on.

    Attributes:
        spec: The dataset's spec (name, normalisation, flip, ...).
        image_size: Side of the model's inputs.
        channels: Channels of the model's inputs.
        num_classes: Classes (online classifier, kNN check).
        train_size: Images in the training split (after ``data.limit_train``).
    """

    spec: DatasetSpec
    image_size: int
    channels: int
    num_classes: int
    train_size: int


@dataclass(frozen=True)
class MethodSpec:
    """A registered method.

    Attributes:
        name: The ``method.name`` that selects it.
        build: ``(config, data) -> LightningModule``.
        defaults: The keys of its ``method`` section (besides ``name``), with their defaults.
        free_form: Keys of that section whose value is a free-form mapping.
        train_transform: ``(config, spec) -> transform`` giving its training views (a list of
            views for two-view methods); ``None``: DIM's one-view light augmentation.
        description: One line for listings.
    """

    name: str
    build: Callable[[dict[str, Any], DataInfo], nn.Module]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    free_form: tuple[str, ...] = ()
    train_transform: Callable[[dict[str, Any], DatasetSpec], Callable[[Any], Any]] | None = None
    description: str = ""


METHODS: dict[str, MethodSpec] = {}


def register_method(
    name: str,
    defaults: Mapping[str, Any] | None = None,
    free_form: tuple[str, ...] = (),
    train_transform: Callable[[dict[str, Any], DatasetSpec], Callable[[Any], Any]] | None = None,
    description: str = "",
) -> Callable[[Callable[[dict[str, Any], DataInfo], nn.Module]], Callable[[dict[str, Any], DataInfo], nn.Module]]:
    """Decorator registering a method builder under ``name`` (see the module docstring).

    Raises:
        ValueError: ``name`` is already registered, or its defaults use the key ``name``.
    """
    defaults = dict(defaults or {})
    if "name" in defaults:
        raise ValueError("a method's defaults cannot hold the key 'name' (it is the method's name)")

    def decorate(build: Callable[[dict[str, Any], DataInfo], nn.Module]) -> Callable[[dict[str, Any], DataInfo], nn.Module]:
        if name in METHODS and METHODS[name].build is not build:
            raise ValueError(f"method {name!r} is already registered (by {METHODS[name].build.__module__})")
        METHODS[name] = MethodSpec(name, build, defaults, tuple(free_form), train_transform, description)
        return build

    return decorate


def get_method(name: str) -> MethodSpec:
    """The registered method ``name``, importing ``eval.baselines.<name>`` on first use.

    Raises:
        ConfigError: No such method; the message lists the registered ones.
    """
    plugin = Path(__file__).parent / "baselines" / f"{name}.py"
    if name not in METHODS and isinstance(name, str) and name.isidentifier() and plugin.is_file():
        # Imported only when the file is there: importing the package costs seconds.
        importlib.import_module(f"eval.baselines.{name}")
    if name not in METHODS:
        known = ", ".join(sorted(METHODS)) or "none"
        raise ConfigError(f"unknown method.name {name!r}; registered methods: {known}")
    return METHODS[name]


def method_schema(name: str) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The defaults and free-form keys of method ``name``'s configuration section."""
    spec = get_method(name)
    return copy.deepcopy(dict(spec.defaults)), spec.free_form


def build_method(config: Mapping[str, Any], data: DataInfo) -> nn.Module:
    """The LightningModule of ``config["method"]["name"]``, built from a resolved configuration."""
    spec = get_method(config["method"]["name"])
    return spec.build(dict(config), data)


# --------------------------------------------------------------------------------------------
# Encoders


def build_encoder(encoder: Mapping[str, Any], channels: int, image_size: int) -> nn.Module:
    """The encoder of a configuration's ``encoder`` section, for inputs ``(channels, size, size)``.

    ``name: paper`` is the DIM paper's 32x32 encoder (``dim_ssl.PaperEncoder``); any other name
    is a timm model (``dim_ssl.TimmEncoder``), with ``kwargs`` passed to ``timm.create_model``.

    Raises:
        ConfigError: An unknown timm model, a model without intermediate features, options the
            paper encoder does not take, or an image size it cannot handle.
    """
    from dim_ssl import PaperEncoder, TimmEncoder

    name = encoder["name"]
    kwargs = dict(encoder.get("kwargs") or {})
    try:
        if name == "paper":
            if kwargs or encoder.get("feature_stage") is not None:
                raise ValueError(
                    "the paper encoder takes no encoder.kwargs or encoder.feature_stage "
                    f"(got kwargs={kwargs}, feature_stage={encoder.get('feature_stage')})"
                )
            return PaperEncoder(
                global_dim=int(encoder["global_dim"]), in_chans=channels, image_size=image_size,
                hidden_dim=int(encoder["hidden_dim"]),
            )
        return TimmEncoder(
            name, global_dim=int(encoder["global_dim"]), in_chans=channels,
            feature_stage=encoder.get("feature_stage"), hidden_dim=int(encoder["hidden_dim"]),
            input_size=image_size, **kwargs,
        )
    except (ValueError, TypeError) as err:
        raise ConfigError(f"encoder (name={name!r}): {err}") from None


# --------------------------------------------------------------------------------------------
# DIM

def _head_defaults() -> dict[str, Any]:
    """``dim_ssl.DIMHead``'s keyword arguments and defaults: every one is a config key.

    Read from the signature, so a new head option is configurable without touching this file.
    The one change: negatives are gathered across DDP ranks by default (a no-op on one process).
    DIM(L): alpha 0, beta 1, gamma 0.1 (the head's defaults); DIM(G): alpha 1, beta 0, gamma 1.
    """
    import inspect

    from dim_ssl import DIMHead

    skip = {"self", "local_channels", "global_dim"}
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(DIMHead.__init__).parameters.items()
        if name not in skip and parameter.default is not inspect.Parameter.empty
    }
    defaults["gather_distributed"] = True
    return defaults


DIM_DEFAULTS: dict[str, Any] = {"head": _head_defaults()}


@register_method("dim", defaults=DIM_DEFAULTS, description="Deep InfoMax (Hjelm et al., ICLR 2019)")
def build_dim(config: Mapping[str, Any], data: DataInfo) -> nn.Module:
    """``DIMLightningModule`` with the configured encoder, head, optimizer and monitors."""
    from dim_ssl import DIMHead
    from dim_ssl.lightning import DIMLightningModule

    encoder = build_encoder(config["encoder"], data.channels, data.image_size)
    optimizer, monitor = config["optimizer"], config["monitor"]
    try:
        head = DIMHead(encoder.feature_channels, encoder.global_dim, **config["method"]["head"])
        return DIMLightningModule(
            encoder,
            head,
            num_classes=data.num_classes,
            image_shape=(data.channels, data.image_size, data.image_size),
            optimizer=optimizer["name"],
            lr=optimizer["lr"],
            betas=tuple(optimizer["betas"]),
            momentum=optimizer["momentum"],
            weight_decay=optimizer["weight_decay"],
            schedule=optimizer["schedule"],
            warmup_epochs=optimizer["warmup_epochs"],
            online_lr=monitor["online_lr"],
            online_feature=monitor["feature"],
            knn_every_n_epochs=monitor["knn_every_n_epochs"],
            knn_k=monitor["knn_k"],
            knn_temperature=monitor["knn_temperature"],
        )
    except (ValueError, TypeError) as err:
        raise ConfigError(f"method dim: {err}") from None


def describe_encoder(encoder: nn.Module) -> dict[str, Any]:
    """How to rebuild an encoder's backbone, as plain data (stored in every checkpoint)."""
    from dim_ssl import PaperEncoder

    if isinstance(encoder, PaperEncoder):
        return {
            "kind": "paper",
            "kwargs": {
                "global_dim": int(encoder.global_dim),
                "in_chans": int(encoder.in_chans),
                "image_size": int(encoder.image_size),
                "hidden_dim": int(encoder.to_y.in_features),
            },
        }
    if hasattr(encoder, "model_name") and hasattr(encoder, "backbone"):
        return {
            "kind": "timm",
            "model_name": str(encoder.model_name),
            "in_chans": int(encoder.in_chans),
            "timm_kwargs": _plain(dict(getattr(encoder, "timm_kwargs", {}))),
        }
    return {"kind": type(encoder).__name__}


def _plain(value: Any) -> Any:
    """Plain data only (weights-only checkpoints): tuples become lists, tensors numbers."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
