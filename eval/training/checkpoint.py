"""dim-ssl checkpoints: read without executing code, checked, and exported as plain backbones.

A checkpoint is Lightning's (weights, optimizer, loops, callbacks) plus a ``"dim_ssl"`` entry
written by :class:`CheckpointMetadata`: the resolved run configuration and a description of the
encoder, as plain data. Every checkpoint is read with ``torch.load(weights_only=True)``, which
refuses anything but tensors, numbers, strings and containers of them; whatever goes wrong on
the way is one :class:`CheckpointError` that names the file.

Example::

    checkpoint = load_checkpoint("runs/quickstart/checkpoints/last.ckpt")
    checkpoint["dim_ssl"]["config"]["encoder"]["name"]            # "resnet18"
    export_backbone("runs/quickstart/checkpoints/last.ckpt", "resnet18_dim.pth")
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path
from typing import Any, Mapping

import timm
import torch
from pytorch_lightning.callbacks import Callback

from dim_ssl import TimmEncoder
from eval.data import DataInfo, dataset_spec
from eval.errors import CheckpointError
from eval.methods.encoders import describe_encoder
from eval.methods.registry import build_method

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointMetadata",
    "check_compatible",
    "export_backbone",
    "load_checkpoint",
    "model_from_checkpoint",
]

CHECKPOINT_FORMAT = 1
_ENCODER_PREFIX = "encoder."


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A dim-ssl checkpoint as a dict, read weights-only on the CPU.

    Raises:
        CheckpointError: The file is missing, not a torch file (truncated, random bytes), holds
            objects that weights-only loading refuses, or is a torch file without dim-ssl's
            entries (e.g. a bare state_dict).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error below says it all
            warnings.simplefilter("ignore")
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types here; for the user they mean one thing
        raise CheckpointError(f"file {path} is not a dim-ssl checkpoint: {_load_failure(err)}") from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(
            f"file {path} is not a dim-ssl checkpoint: it holds a {type(checkpoint).__name__}, not a checkpoint dict"
        )
    meta = checkpoint.get("dim_ssl")
    missing = [key for key in ("state_dict", "dim_ssl") if key not in checkpoint]
    if missing or not isinstance(meta, dict) or "config" not in meta or "encoder" not in meta:
        what = f"no {' or '.join(repr(k) for k in missing)} entry" if missing else "a damaged 'dim_ssl' entry"
        raise CheckpointError(
            f"file {path} is not a dim-ssl checkpoint: a torch file with {what} "
            "(dim-ssl checkpoints are written by `dim-ssl pretrain`)"
        )
    if meta.get("format", 0) > CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"file {path} is a dim-ssl checkpoint of format {meta['format']}, newer than this version reads "
            f"({CHECKPOINT_FORMAT}): update dim-ssl"
        )
    return checkpoint


def model_from_checkpoint(path: str | os.PathLike) -> torch.nn.Module:
    """The method's LightningModule rebuilt from a checkpoint's configuration, weights loaded, in
    eval mode: ``model.features(x, position)`` gives the pretrained features. Reads no data.

    Raises:
        CheckpointError: Not a dim-ssl checkpoint, or weights that do not fit the rebuilt model.
    """
    checkpoint = load_checkpoint(path)
    config = checkpoint["dim_ssl"]["config"]
    spec = dataset_spec(config["data"]["dataset"])
    classes = checkpoint["state_dict"].get("online_classifier.classification_head.weight")
    num_classes = spec.num_classes or (int(classes.shape[0]) if classes is not None else 2)
    data = DataInfo(
        spec,
        image_size=int(config["data"]["image_size"] or spec.default_image_size),
        channels=int(config["data"]["channels"] or spec.channels),
        num_classes=int(num_classes),
        train_size=0,
    )
    model = build_method(config, data)
    check_compatible(checkpoint, model, path)
    model.load_state_dict(checkpoint["state_dict"], strict=True)
    return model.eval()


def _load_failure(err: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` failed, in one sentence."""
    text = str(err)
    refused = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if refused:
        return (
            f"it holds a Python object ({refused.group(1)}) that weights-only loading refuses "
            "(loading it could run code), so it was not loaded"
        )
    if isinstance(err, EOFError) or not text.strip():
        return "the file is empty or cut short"
    detail = re.search(r"Unpickler error:\s*(.*?)(?:\s{2,}|$)", text)
    reason = detail.group(1) if detail else text.strip().splitlines()[0].split(". ")[0]
    return f"it cannot be read as a torch file (truncated or damaged?): {reason.strip()}"


def check_compatible(checkpoint: Mapping[str, Any], model: torch.nn.Module, path: str | os.PathLike) -> None:
    """Refuses a checkpoint whose weights do not fit ``model`` (another encoder or head).

    Raises:
        CheckpointError: Missing, unexpected or differently shaped weights (a few named).
    """
    saved = checkpoint["state_dict"]
    expected = model.state_dict()
    missing = [k for k in expected if k not in saved]
    unexpected = [k for k in saved if k not in expected]
    shapes = [k for k in expected if k in saved and tuple(saved[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or shapes:
        details = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("different shape", shapes)):
            if keys:
                details.append(f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}")
        raise CheckpointError(
            f"checkpoint {path} was written by a different model than this configuration builds "
            f"({'; '.join(details)}): resume with the configuration it was trained with"
        )


class CheckpointMetadata(Callback):
    """Adds ``checkpoint["dim_ssl"]``: format, resolved configuration and encoder description."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = dict(config)

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        checkpoint["dim_ssl"] = {
            "format": CHECKPOINT_FORMAT,
            "config": self.config,
            "encoder": describe_encoder(pl_module.encoder),
        }


# --------------------------------------------------------------------------------------------
# Export


def export_backbone(checkpoint_path: str | os.PathLike, out_path: str | os.PathLike) -> dict[str, Any]:
    """Writes the checkpoint's backbone as a plain state_dict, and a JSON file beside it.

    For a timm encoder the state_dict is the timm model's own, loadable with
    ``timm.create_model(model_name, num_classes=0, in_chans=..., **kwargs).load_state_dict(sd,
    strict=True)``; this is verified before anything is written. For the paper's encoder
    (not a timm model) it is the whole ``dim_ssl.PaperEncoder``'s state_dict.

    Returns:
        The JSON description (also written to ``out_path`` with the suffix ``.json``).

    Raises:
        CheckpointError: Not a dim-ssl checkpoint, an encoder that cannot be exported, or
            weights that do not load into the model they describe.
    """
    checkpoint = load_checkpoint(checkpoint_path)
    encoder = checkpoint["dim_ssl"]["encoder"]
    state = {k[len(_ENCODER_PREFIX) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(_ENCODER_PREFIX)}
    out_path = Path(out_path)
    if encoder.get("kind") == "timm":
        backbone = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
        kwargs = {"num_classes": 0, "in_chans": encoder["in_chans"], **encoder["timm_kwargs"]}
        small = bool(encoder.get("small_input", False))
        try:
            if small:  # timm's model with the small-image stem dim_ssl gives it (3x3 stride-1 conv, no pool)
                model = TimmEncoder(
                    encoder["model_name"], in_chans=encoder["in_chans"], small_input=True, **encoder["timm_kwargs"]
                ).backbone
            else:
                model = timm.create_model(encoder["model_name"], **kwargs)
            model.load_state_dict(backbone, strict=True)
        except Exception as err:
            raise CheckpointError(
                f"checkpoint {checkpoint_path}: its backbone does not load into timm's "
                f"{encoder['model_name']}({kwargs}{', small_input=True' if small else ''}): {err}"
            ) from None
        create = (
            f"dim_ssl.TimmEncoder({encoder['model_name']!r}, in_chans={encoder['in_chans']}, small_input=True, "
            f"**{encoder['timm_kwargs']!r}).backbone"
            if small
            else f"timm.create_model({encoder['model_name']!r}, **create_model_kwargs)"
        )
        description = {
            "format": "timm",
            "model_name": encoder["model_name"],
            "create_model_kwargs": kwargs,
            "small_input": small,
            "load": f"{create}.load_state_dict(torch.load(path), strict=True)",
        }
        weights = backbone
    elif encoder.get("kind") == "paper":
        description = {
            "format": "dim_ssl.PaperEncoder",
            "note": "the DIM paper's encoder is not a timm model: this is the whole encoder's state_dict",
            "kwargs": encoder["kwargs"],
            "load": "dim_ssl.PaperEncoder(**kwargs).load_state_dict(torch.load(path), strict=True)",
        }
        weights = state
    else:
        raise CheckpointError(
            f"checkpoint {checkpoint_path}: cannot export an encoder of kind {encoder.get('kind')!r} "
            "(only timm encoders and the paper encoder)"
        )
    description["source_checkpoint"] = str(checkpoint_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.contiguous() for k, v in weights.items()}, out_path)
    out_path.with_suffix(".json").write_text(json.dumps(description, indent=2) + "\n")
    return description
