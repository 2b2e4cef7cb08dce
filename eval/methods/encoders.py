"""The encoder of a run configuration: the paper's 32x32 encoder or any timm model, by name.

Every method trains and probes a :class:`dim_ssl.DIMEncoder`; this module builds it from the
configuration's ``encoder`` section and describes it as plain data for checkpoints (so that
``dim-ssl export`` can write a plain timm ``state_dict`` with the arguments to rebuild it).
"""

from __future__ import annotations

from typing import Any, Mapping

from dim_ssl import DIMEncoder, PaperEncoder, TimmEncoder
from eval.errors import ConfigError
from eval.plain import plain

__all__ = ["build_encoder", "describe_encoder"]


def build_encoder(encoder: Mapping[str, Any], channels: int, image_size: int) -> DIMEncoder:
    """The encoder of a configuration's ``encoder`` section, for inputs ``(channels, size, size)``.

    ``name: paper`` is the DIM paper's 32x32 encoder (``dim_ssl.PaperEncoder``); any other name
    is a timm model (``dim_ssl.TimmEncoder``), with ``kwargs`` passed to ``timm.create_model``.

    Raises:
        ConfigError: An unknown timm model, a model without intermediate features, options the
            paper encoder does not take, or an image size it cannot handle.
    """
    name = encoder["name"]
    kwargs = dict(encoder.get("kwargs") or {})
    try:
        if name == "paper":
            if kwargs or encoder.get("feature_stage") is not None or encoder.get("small_input"):
                raise ValueError(
                    "the paper encoder takes no encoder.kwargs, encoder.feature_stage or encoder.small_input "
                    f"(got kwargs={kwargs}, feature_stage={encoder.get('feature_stage')}, "
                    f"small_input={encoder.get('small_input')}): it is built for small images already"
                )
            return PaperEncoder(
                global_dim=int(encoder["global_dim"]),
                in_chans=channels,
                image_size=image_size,
                hidden_dim=int(encoder["hidden_dim"]),
            )
        return TimmEncoder(
            name,
            global_dim=int(encoder["global_dim"]),
            in_chans=channels,
            feature_stage=encoder.get("feature_stage"),
            hidden_dim=int(encoder["hidden_dim"]),
            input_size=image_size,
            small_input=bool(encoder.get("small_input", False)),
            **kwargs,
        )
    except (ValueError, TypeError) as err:
        raise ConfigError(f"encoder (name={name!r}): {err}") from None


def describe_encoder(encoder: DIMEncoder) -> dict[str, Any]:
    """How to rebuild an encoder's backbone, as plain data (stored in every checkpoint)."""
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
    if isinstance(encoder, TimmEncoder):
        return {
            "kind": "timm",
            "model_name": str(encoder.model_name),
            "in_chans": int(encoder.in_chans),
            "timm_kwargs": plain(dict(encoder.timm_kwargs)),
            "small_input": bool(encoder.small_input),
        }
    return {"kind": type(encoder).__name__}
