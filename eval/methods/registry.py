"""Pretraining methods by name, and each method's configuration read from its constructor.

``method.name`` in a run configuration picks a :class:`~eval.methods.base.MethodModule`
subclass registered here. Its ``method`` section holds the keyword arguments of its
constructor (and of the constructors of its bases below ``MethodModule``), with their
defaults: a new hyperparameter is one new argument, and the configuration checks it key by
key with no list to update. A default that is a non-empty mapping is a nested section whose
keys are checked too (DIM's ``head``); an empty mapping is a free-form section (``transform``).
The method's :attr:`~eval.methods.base.MethodModule.recipe` gives its defaults of the shared
``optimizer`` and ``monitor`` sections.

Registering a method (a file of its own, imported by ``eval/methods/__init__.py`` or by any
module imported before the run)::

    @register_method("simclr")
    class SimCLR(TwoViewMethod):
        \"\"\"SimCLR (Chen et al., ICML 2020) from lightly's parts.\"\"\"   # first line: its description
        ...
"""

from __future__ import annotations

import copy
import inspect
from typing import Any, Callable, Mapping

from dim_ssl.suggest import did_you_mean
from eval.data import DataInfo
from eval.errors import ConfigError
from eval.methods.base import MONITOR_DEFAULTS, MethodModule
from eval.methods.encoders import build_encoder

__all__ = ["METHODS", "build_method", "describe_method", "get_method", "method_schema", "register_method"]

METHODS: dict[str, type[MethodModule]] = {}

# The arguments every method's constructor takes from the harness, not from its section.
_HARNESS_ARGUMENTS = frozenset(inspect.signature(MethodModule.__init__).parameters) | {"self"}


def register_method(name: str) -> Callable[[type[MethodModule]], type[MethodModule]]:
    """Class decorator registering a method under ``name``.

    Raises:
        ValueError: ``name`` is taken by another class, the class is not a ``MethodModule``, or
            its constructor has an argument ``name`` (the section's key for the method's name).
    """

    def decorate(cls: type[MethodModule]) -> type[MethodModule]:
        if not (isinstance(cls, type) and issubclass(cls, MethodModule)):
            raise ValueError(f"register_method({name!r}) takes a MethodModule subclass; got {cls!r}")
        if name in METHODS and METHODS[name] is not cls:
            raise ValueError(f"method {name!r} is already registered (by {METHODS[name].__module__})")
        if "name" in method_schema(cls):
            raise ValueError(f"{cls.__name__}'s constructor cannot take 'name' (the method's name in its section)")
        METHODS[name] = cls
        return cls

    return decorate


def get_method(name: str) -> type[MethodModule]:
    """The method registered as ``name``.

    Raises:
        ConfigError: No such method; the message lists the registered ones.
    """
    if not isinstance(name, str) or name not in METHODS:
        raise ConfigError(
            f"unknown method.name {name!r}; registered methods: {', '.join(sorted(METHODS))}"
            f"{did_you_mean(name, METHODS)}"
        )
    return METHODS[name]


def describe_method(cls: type[MethodModule]) -> str:
    """One line for listings: the first line of the class docstring."""
    return (inspect.getdoc(cls) or cls.__name__).splitlines()[0]


def method_schema(cls: type[MethodModule]) -> dict[str, Any]:
    """The keys of a method's ``method`` section with their defaults, read from its constructors.

    Walks the class and its bases down to ``MethodModule``; keyword arguments with a default
    are keys (``**common`` pass-throughs are not). Mutable defaults are copied.
    """
    schema: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        if not (isinstance(klass, type) and issubclass(klass, MethodModule)) or klass is MethodModule:
            continue
        if "__init__" not in vars(klass):
            continue
        for parameter in inspect.signature(klass.__init__).parameters.values():
            if parameter.name in _HARNESS_ARGUMENTS or parameter.default is inspect.Parameter.empty:
                continue
            if parameter.kind in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL):
                continue
            default = parameter.default
            schema[parameter.name] = dict(copy.deepcopy(default)) if isinstance(default, Mapping) else default
    return schema


def free_form_keys(schema: Mapping[str, Any]) -> tuple[str, ...]:
    """Keys of a method section whose value is a free-form mapping (an empty mapping as default)."""
    return tuple(key for key, value in schema.items() if isinstance(value, Mapping) and not value)


def build_method(config: Mapping[str, Any], data: DataInfo) -> MethodModule:
    """The method of a resolved configuration, on its encoder, for the data described by ``data``.

    Raises:
        ConfigError: An encoder that cannot be built or a setting the method refuses.
    """
    name = config["method"]["name"]
    cls = get_method(name)
    encoder = build_encoder(config["encoder"], data.channels, data.image_size)
    arguments = {key: value for key, value in config["method"].items() if key != "name"}
    try:
        return cls(
            encoder,
            num_classes=data.num_classes,
            image_shape=(data.channels, data.image_size, data.image_size),
            batch_size=int(config["data"]["batch_size"]),
            optimizer=dict(config["optimizer"]),
            monitor={key: config["monitor"][key] for key in MONITOR_DEFAULTS},
            **arguments,
        )
    except (TypeError, ValueError) as err:
        raise ConfigError(f"method {name}: {err}") from None
