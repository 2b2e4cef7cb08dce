"""Any timm backbone, measured: one DIM step per family, or a clear refusal, never a crash from timm.

The default suite trains one small model of every major family for one DIM step (finite loss,
gradients reaching the stem, pooled features from the whole network) and pins down the
refusals: a size timm cannot build, images of another size than the encoder was built for, a
model without pooled features. The slow sweep does the same for every small model of
``timm.list_models()`` and counts trained / refused with a clear error / crashed (zero allowed).

Run as a script it prints the per-model lines and the table of docs/compatibility.md::

    OMP_NUM_THREADS=1 .venv/bin/python tests/test_timm_compat.py --size 64
    .venv/bin/python tests/test_timm_compat.py --from-log runs/timm_sweep.log   # the table again
"""

from __future__ import annotations

import argparse
import collections
import functools
import re
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest
import timm
import torch

from dim_ssl import DIMHead, TimmEncoder
from dim_ssl import encoder as encoder_module

GLOBAL_DIM = 32
BATCH = 2  # the MLP to y has a BatchNorm: two images is the fewest it trains on

# One small model per major family, at the smallest input that gives it a local map of 4x4 or
# more (64: total stride 16 or 32 and windows sized by img_size; 32 for the CNNs that reach 4x4).
FAMILIES = [
    ("resnet10t", 32),  # ResNet
    ("tinynet_e", 64),  # EfficientNet
    ("mobilenetv3_small_050", 64),  # MobileNetV3
    ("mobilenetv4_conv_small_035", 64),  # MobileNetV4
    ("ghostnet_050", 64),  # GhostNet
    ("convnext_atto", 32),  # ConvNeXt
    ("regnetx_002", 32),  # RegNet
    ("hrnet_w18_small", 64),  # HRNet
    ("vit_tiny_patch16_224", 64),  # ViT (built for 64 by img_size)
    ("swin_tiny_patch4_window7_224", 64),  # Swin
    ("maxvit_rmlp_pico_rw_256", 64),  # MaxViT
    ("hiera_tiny_224", 64),  # Hiera
    ("sam2_hiera_tiny", 64),  # HieraDet (SAM2): stops early by default
    ("coat_lite_tiny", 64),  # CoaT
    ("coatnet_pico_rw_224", 64),  # CoAtNet
    ("fastvit_t8", 64),  # FastViT
    ("efficientvit_b0", 64),  # EfficientViT (MIT)
    ("efficientvit_m0", 64),  # EfficientViT (MSRA)
    ("mobilevit_xxs", 64),  # MobileViT
    ("levit_128s", 64),  # LeViT
    ("pvt_v2_b0", 64),  # PVT v2
    ("edgenext_xx_small", 64),  # EdgeNeXt
]


def one_dim_step(encoder: TimmEncoder, size: int) -> float:
    """One DIM step on ``BATCH`` random ``size`` x ``size`` images; asserts what makes it a real one.

    Finite loss; a non-zero gradient at the stem (the first 4-D weight: the first conv or the
    patch embedding; the first matrix where a Linear embeds the patches), so the local term
    reaches the whole backbone below the local stage; the optimiser moves it; and, in eval mode,
    ``encode(x).pooled`` equals timm's full path ``forward_head(forward_features(x),
    pre_logits=True)``: pool, fc and y come from the last stage, not from the stage the local
    map is read at.

    Returns:
        The loss.
    """
    torch.manual_seed(0)
    head = DIMHead(encoder.feature_channels, encoder.global_dim, hidden_dim=32, embed_dim=32, alpha=0.5)
    optimizer = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=1e-3)
    x = torch.randn(BATCH, encoder.in_chans, size, size)
    encoder.train()
    feature_map, y = encoder(x)
    width = encoder.feature_map_size(size)
    assert feature_map.shape == (BATCH, encoder.feature_channels, width, width), (
        f"map {tuple(feature_map.shape)}; feature_info says {encoder.feature_channels} x {width} x {width}"
    )
    assert y.shape == (BATCH, encoder.global_dim)
    loss = head(feature_map, y).loss
    assert torch.isfinite(loss), f"loss {loss.item()}"
    optimizer.zero_grad()
    loss.backward()
    weights = [p for p in encoder.backbone.parameters() if p.dim() in (2, 4)]
    stem = next((p for p in weights if p.dim() == 4), weights[0])  # naflexvit embeds patches with a Linear
    assert stem.grad is not None and stem.grad.abs().sum() > 0, "no gradient reaches the stem"
    before = stem.detach().clone()
    optimizer.step()
    assert not torch.equal(before, stem), "the optimiser did not move the stem"

    encoder.eval()
    with torch.no_grad():
        pooled = encoder.encode(x).pooled
        full = encoder.backbone.forward_head(encoder.backbone.forward_features(x), pre_logits=True).flatten(1)
    assert pooled.shape == (BATCH, encoder.pooled_dim)
    torch.testing.assert_close(pooled, full, rtol=1e-4, atol=1e-5)
    return loss.item()


@pytest.mark.parametrize("name,size", FAMILIES, ids=[name for name, _ in FAMILIES])
def test_one_dim_step_per_family(name, size):
    encoder = TimmEncoder(name, global_dim=GLOBAL_DIM, input_size=size, hidden_dim=64)
    assert encoder.feature_map_size(size) >= 4
    one_dim_step(encoder, size)


def test_hiera_summary_comes_from_the_last_stage_not_the_local_one():
    # HieraDet's forward_intermediates stops at the requested stage unless told otherwise: the
    # "final" tokens were the local stage's (192 wide here), which forward_head cannot take.
    encoder = TimmEncoder("sam2_hiera_tiny", global_dim=GLOBAL_DIM, input_size=64, hidden_dim=64).eval()
    stages = encoder.backbone.feature_info
    assert encoder.feature_stage < len(stages) - 1
    out = encoder.encode(torch.randn(2, 3, 64, 64))
    assert out.pooled.shape == (2, stages[-1]["num_chs"]) == (2, 768)
    assert out.feature_map.shape[1] == stages[encoder.feature_stage]["num_chs"] != 768


def test_input_size_builds_a_size_bound_model_for_it_and_export_can_rebuild_it():
    encoder = TimmEncoder("vit_tiny_patch16_224", global_dim=8, input_size=64, hidden_dim=16)
    assert encoder.takes_img_size and encoder.timm_kwargs["img_size"] == 64
    assert encoder(torch.randn(2, 3, 64, 64))[0].shape == (2, 192, 4, 4)
    # timm_kwargs are what a checkpoint stores to rebuild the backbone (dim-ssl export).
    rebuilt = timm.create_model("vit_tiny_patch16_224", num_classes=0, in_chans=3, **encoder.timm_kwargs)
    rebuilt.load_state_dict(encoder.backbone.state_dict(), strict=True)
    # A CNN's size is free: nothing is passed to timm for it.
    cnn = TimmEncoder("resnet10t", global_dim=8, input_size=48, hidden_dim=16)
    assert not cnn.takes_img_size and "img_size" not in cnn.timm_kwargs


def sizes_named(message: str) -> list[int]:
    listed = re.search(r"Sizes checked to work: ([\dx, ]+);", message)
    assert listed, message
    return [int(size.split("x")[0]) for size in listed.group(1).split(", ")]


def test_a_size_timm_cannot_build_is_refused_with_sizes_that_work():
    # CoAtNet's relative-position windows do not fit 48x48 (a RuntimeError deep inside timm).
    with pytest.raises(ValueError, match=r"does not work at input_size=48: timm raised RuntimeError") as refusal:
        TimmEncoder("coatnet_pico_rw_224", global_dim=8, input_size=48, hidden_dim=16)
    message = str(refusal.value)
    assert "pass input_size= one of them" in message
    named = sizes_named(message)
    assert 48 not in named and 64 in named
    one_dim_step(TimmEncoder("coatnet_pico_rw_224", global_dim=8, input_size=named[0], hidden_dim=16), named[0])


def test_images_of_another_size_are_refused_at_forward_with_the_way_to_change_it():
    encoder = TimmEncoder("vit_tiny_patch16_224", global_dim=8, input_size=64, hidden_dim=16)
    expected = (
        r"cannot take 96x96 images: timm raised AssertionError: Input height \(96\) doesn't match model \(64\)\. "
        r"It works at 64x64 \(timm built vit_tiny_patch16_224 for img_size=64\): build the encoder with input_size=96"
    )
    with pytest.raises(ValueError, match=expected):
        encoder(torch.randn(2, 3, 96, 96))
    with pytest.raises(ValueError, match="cannot take 96x96 images"):
        encoder.pool(torch.randn(2, 3, 96, 96))
    one_dim_step(TimmEncoder("vit_tiny_patch16_224", global_dim=8, input_size=96, hidden_dim=16), 96)  # the advice


def test_without_input_size_a_size_bound_model_is_built_for_its_own_size():
    encoder = TimmEncoder("vit_tiny_patch16_224", global_dim=8, hidden_dim=16)
    assert encoder.input_size == 224 and "img_size" not in encoder.timm_kwargs
    with pytest.raises(ValueError, match=r"cannot take 64x48 images \(TimmEncoder builds for square images\).*"):
        encoder(torch.randn(2, 3, 64, 48))
    with pytest.raises(ValueError, match=r"It works at 224x224 .*build the encoder with input_size=64"):
        encoder(torch.randn(2, 3, 64, 64))


def test_an_img_size_that_contradicts_input_size_is_named():
    with pytest.raises(ValueError, match=r"does not work at input_size=64.*leave out img_size=224") as refusal:
        TimmEncoder("vit_tiny_patch16_224", global_dim=8, input_size=64, img_size=224)
    assert 64 in sizes_named(str(refusal.value))


def test_too_small_a_map_is_refused_naming_the_size_that_gives_one():
    expected = r"no stage of vit_tiny_patch16_224 .* for 32x32 inputs .*use images of 64x64 or more \(input_size=\)"
    with pytest.raises(ValueError, match=expected):
        TimmEncoder("vit_tiny_patch16_224", global_dim=8, input_size=32)
    encoder = TimmEncoder("vit_tiny_patch16_224", global_dim=8, input_size=32, min_map_size=2)  # or lower the bar
    assert encoder.feature_map_size(32) == 2
    assert encoder(torch.randn(2, 3, 32, 32))[0].shape == (2, 192, 2, 2)


def test_feature_map_size_is_measured_where_unpadded_convs_shrink_the_map():
    encoder = TimmEncoder("inception_v3", global_dim=8, input_size=96, hidden_dim=16)
    assert encoder.feature_reduction == 16 and 96 // 16 == 6
    assert encoder.feature_map_size(96) == 4  # valid convolutions: 4, not 6
    assert encoder(torch.randn(2, 3, 96, 96))[0].shape[-1] == 4


def test_a_failure_that_is_not_about_the_size_propagates_unchanged(monkeypatch):
    encoder = TimmEncoder("resnet10t", global_dim=8, input_size=32, hidden_dim=16)

    def broken(*args, **kwargs):
        raise RuntimeError("not a size problem")

    monkeypatch.setattr(encoder.backbone, "forward_intermediates", broken)
    for size in (32, 48):  # the size it was checked at, and one where every size fails alike
        with pytest.raises(RuntimeError, match="not a size problem"):
            encoder(torch.randn(2, 3, size, size))


def test_checking_the_size_at_construction_leaves_the_model_untouched():
    encoder = TimmEncoder("resnet10t", global_dim=8, input_size=32, hidden_dim=16)
    assert encoder.training and encoder.backbone.training
    norms = [m for m in encoder.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(int(m.num_batches_tracked) == 0 for m in norms)
    assert all(torch.equal(m.running_mean, torch.zeros_like(m.running_mean)) for m in norms)
    assert not any(p.grad is not None for p in encoder.parameters())


def test_a_model_without_pooled_features_is_refused(monkeypatch):
    real_create = timm.create_model

    def create_feature_only(*args, **kwargs):
        model = real_create(*args, **kwargs)
        model.forward_head = lambda x: x  # what mobilenetv5_300m_enc's forward_head looks like
        return model

    monkeypatch.setattr(timm, "create_model", create_feature_only)
    with pytest.raises(ValueError, match="no pooled features to compute y from: its forward_head takes no pre_logits"):
        TimmEncoder("resnet10t", input_size=32)


# --- the sweep -------------------------------------------------------------------------------

SMALL = re.compile(r"tiny|small|nano|mobile|ghost|pico|femto|atto|micro|xxs|lite|mini")
MAX_PARAMS = 150e6  # the largest family representative built (vgg11: 129M; deepseek_vit: 412M is left out)


def small_models(max_params: float = MAX_PARAMS) -> list[str]:
    """Every model of ``timm.list_models()`` with a small name, and the smallest model of every other family.

    A family is a timm module (``timm.list_modules()``); where none of its names says tiny,
    small, nano..., its smallest model by parameter count (built on the meta device, without
    memory) stands for it, if it has at most ``max_params`` parameters. timm's own test models
    (``test_*``) are left out.
    """
    names = set()
    for module in timm.list_modules():
        models = [name for name in timm.list_models(module=module) if not name.startswith("test_")]
        small = [name for name in models if SMALL.search(name)]
        if small:
            names.update(small)
            continue
        counts = []
        for name in models:  # ~0.5 s each: the meta device skips memory, not the constructors
            with torch.device("meta"):
                model = timm.create_model(name, num_classes=0)
            counts.append((sum(p.numel() for p in model.parameters()), name))
        if counts and min(counts)[0] <= max_params:
            names.add(min(counts)[1])
    return sorted(names)


@dataclass
class Outcome:
    name: str
    size: int
    result: str  # "trained" | "refused" | "crashed"
    detail: str
    seconds: float


def raised_by_encoder(err: BaseException) -> bool:
    """Whether ``err`` is a ValueError raised by TimmEncoder itself (not one from deep inside timm)."""
    frames = traceback.extract_tb(err.__traceback__)
    return isinstance(err, ValueError) and bool(frames) and frames[-1].filename == encoder_module.__file__


def try_model(name: str, size: int) -> Outcome:
    """One DIM step for ``name`` at ``size`` x ``size``: trained, refused with a clear error, or crashed."""
    start = time.perf_counter()
    try:
        encoder = TimmEncoder(name, global_dim=GLOBAL_DIM, input_size=size, hidden_dim=64)
        loss = one_dim_step(encoder, size)
        result = "trained"
        detail = f"stage {encoder.feature_stage} ({encoder.feature_channels}x{encoder.feature_map_size(size)}^2), "
        detail += f"pooled {encoder.pooled_dim}, loss {loss:.3f}"
        if encoder.timm_kwargs.get("img_size") is not None:
            detail += f", img_size={size}"
    except Exception as err:  # every failure is counted, none stops the sweep
        result = "refused" if raised_by_encoder(err) else "crashed"
        detail = f"{type(err).__name__}: {err}"
    return Outcome(name, size, result, " ".join(detail.split()), time.perf_counter() - start)


@functools.cache
def families() -> dict[str, str]:
    """Model name -> the timm module it is defined in (its family)."""
    return {name: module for module in timm.list_modules() for name in timm.list_models(module=module)}


def sweep(names: list[str], size: int, out=sys.stdout) -> list[Outcome]:
    outcomes = []
    for index, name in enumerate(names, 1):
        outcome = try_model(name, size)
        outcomes.append(outcome)
        line = f"[{index}/{len(names)}] {outcome.result:8s} {name} ({outcome.seconds:.1f} s): {outcome.detail[:400]}"
        print(line, file=out)
        out.flush()
    counts = collections.Counter(outcome.result for outcome in outcomes)
    by_family = collections.defaultdict(set)
    for outcome in outcomes:
        by_family[families()[outcome.name]].add(outcome.result)
    trained_families = sum("trained" in results for results in by_family.values())
    print(
        f"timm {timm.__version__}, {size}x{size}: {counts['trained']} trained / {counts['refused']} refused with a "
        f"clear error / {counts['crashed']} crashed, of {len(outcomes)} models; {trained_families} of "
        f"{len(by_family)} families have a model that trains",
        file=out,
    )
    print(family_table(outcomes), file=out)
    return outcomes


def read_log(path: str) -> list[Outcome]:
    """The outcomes a sweep printed (its per-model lines), to tabulate a finished run again."""
    line = re.compile(r"\[\d+/\d+\] (\w+) +(\S+) \(([\d.]+) s\): (.*)")
    size = re.search(r"(\d+)x\1: \d+ trained", Path(path).read_text())
    outcomes = []
    for text in Path(path).read_text().splitlines():
        if match := line.match(text):
            result, name, seconds, detail = match.groups()
            outcomes.append(Outcome(name, int(size.group(1)) if size else 0, result, detail, float(seconds)))
    return outcomes


def reason(outcome: Outcome) -> str:
    """A refusal or crash in a few words, for the table."""
    detail = outcome.detail
    if match := re.search(r"Sizes checked to work: ([\dx, ]+);", detail):
        return f"not {outcome.size}x{outcome.size}; works at {match.group(1)}"
    if match := re.search(r"no stage of .*\(reductions: \[(\d+)", detail):
        stride = int(match.group(1))
        width = outcome.size // stride
        return f"every stage has stride >= {stride}: maps of {width}x{width}; {4 * stride}x{4 * stride} gives 4x4"
    if "no pooled features" in detail:
        return "feature-only encoder: no pooled features for y"
    if "cannot give an intermediate feature map" in detail:
        return "no forward_intermediates / feature_info"
    return detail[:100]


def family_table(outcomes: list[Outcome]) -> str:
    """One markdown row per timm family: models that trained, and why the others did not."""
    by_family = collections.defaultdict(list)
    for outcome in outcomes:
        by_family[families()[outcome.name]].append(outcome)
    rows = [
        "| family (timm module) | trained | built with img_size | refused or crashed: why |",
        "|---|---:|---:|---|",
    ]
    for name, members in sorted(by_family.items()):
        trained = [o for o in members if o.result == "trained"]
        sized = sum("img_size=" in o.detail for o in trained)
        others = "; ".join(f"{o.result} {o.name}: {reason(o)}" for o in members if o.result != "trained")
        rows.append(f"| {name} | {len(trained)} of {len(members)} | {sized or ''} | {others} |")
    return "\n".join(rows)


@pytest.mark.slow
def test_every_small_timm_model_trains_or_is_refused_clearly():
    outcomes = sweep(small_models(), 64)
    crashed = [f"{o.name}: {o.detail}" for o in outcomes if o.result == "crashed"]
    assert not crashed, "\n".join(crashed)
    assert sum(o.result == "trained" for o in outcomes) > 0.9 * len(outcomes)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--models", nargs="*", help="model names (default: every small model, as the slow test)")
    parser.add_argument("--from-log", help="tabulate the per-model lines of a finished sweep's log instead")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.from_log:
        print(family_table(read_log(args.from_log)))
    else:
        sweep(args.models or small_models(), args.size)
