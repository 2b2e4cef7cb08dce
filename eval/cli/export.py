"""``dim-ssl export CHECKPOINT OUT``: the pretrained backbone as a plain state_dict.

For a timm encoder, ``OUT`` loads with ``timm.create_model(name, num_classes=0, in_chans=...,
**kwargs).load_state_dict(torch.load(OUT), strict=True)``; ``OUT`` with the suffix ``.json``
says which name and keyword arguments. For the paper's encoder (not a timm model) ``OUT`` is
the whole ``dim_ssl.PaperEncoder``'s state_dict, and the JSON file says so.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from eval.cli.guard import run_guarded
from eval.training.checkpoint import export_backbone


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a dim-ssl checkpoint, e.g. runs/quickstart/checkpoints/last.ckpt")
    parser.add_argument("out", help="where to write the state_dict (e.g. backbone.pth); OUT.json goes beside it")


def run(args: argparse.Namespace) -> int:
    outcome = run_guarded("export", lambda: args.checkpoint, lambda checkpoint: export_backbone(checkpoint, args.out))
    if isinstance(outcome, int):
        return outcome
    _, description = outcome
    json_path = Path(args.out).with_suffix(".json")
    if description.get("small_input"):
        print(
            f"wrote {args.out} (timm {description['model_name']} with dim-ssl's small-image stem) and {json_path}\n"
            f"load with:\n  model = {description['load'].replace('torch.load(path)', f'torch.load({str(args.out)!r})')}"
        )
    elif description["format"] == "timm":
        kwargs = ", ".join(f"{k}={v!r}" for k, v in description["create_model_kwargs"].items())
        print(
            f"wrote {args.out} (timm {description['model_name']}) and {json_path}\nload with:\n"
            f"  model = timm.create_model({description['model_name']!r}, {kwargs})\n"
            f"  model.load_state_dict(torch.load({str(args.out)!r}), strict=True)"
        )
    else:
        print(
            f"wrote {args.out} and {json_path}: {description['note']}\nload with:\n"
            f"  encoder = dim_ssl.PaperEncoder(**{description['kwargs']})\n"
            f"  encoder.load_state_dict(torch.load({str(args.out)!r}), strict=True)"
        )
    return 0
