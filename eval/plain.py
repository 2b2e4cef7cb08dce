"""Plain data: what YAML, JSON and weights-only checkpoints can hold.

One converter for every place the harness writes values out (resolved configurations,
checkpoint metadata, hyperparameters, reports, comparison summaries), so that they all agree
on how a tensor, a numpy scalar, a tuple, a path or a NaN is written.
"""

from __future__ import annotations

import math
from pathlib import PurePath
from typing import Any, Mapping

__all__ = ["plain", "scalar"]


def scalar(value: Any) -> Any:
    """A one-element tensor or numpy value as the Python number it holds; anything else unchanged."""
    if not isinstance(value, (str, bytes)) and hasattr(value, "item") and callable(value.item):
        try:
            return value.item()
        except (ValueError, RuntimeError):  # several values: leave it to the caller
            return value
    return value


def plain(value: Any, finite: bool = False) -> Any:
    """``value`` as plain data: mappings -> dicts with string keys, tuples -> lists, tensors and
    numpy arrays -> (lists of) numbers, paths -> strings; other objects -> their ``str``.

    Args:
        value: Anything.
        finite: Also turn NaN and infinities into ``None`` (JSON has no such numbers).
    """
    if isinstance(value, Mapping):
        return {str(k): plain(v, finite) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v, finite) for v in value]
    if isinstance(value, PurePath):
        return str(value)
    if hasattr(value, "tolist") and callable(value.tolist):  # tensors, numpy arrays and scalars
        return plain(value.tolist(), finite)
    if isinstance(value, float) and finite and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
