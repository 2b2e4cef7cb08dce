"""``TimmEncoder``: any timm backbone as a DIM encoder E = f o C.

C(x) is an intermediate stage of the backbone (the local feature map), read through timm's one
documented path to intermediate features, ``forward_intermediates``, which treats CNNs and ViTs
alike (a ViT's patch tokens come back as a grid, prefix tokens dropped). The summary
y = f(C(x)) is an MLP (hidden 1024, as in the paper) on the backbone's pooled final features.
It satisfies ``dim_ssl.DIMEncoder`` (``dim_ssl.encoder_protocol``).

``small_input=True`` adapts an ImageNet stem to CIFAR-scale images as solo-learn's ``cifar``
flag and lightly's benchmark ResNets do (timm's ResNet family).
"""

from __future__ import annotations

import difflib
from itertools import chain
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dim_ssl.encoder_protocol import FEATURE_POSITIONS, EncoderOutput, check_position


class TimmEncoder(nn.Module):
    """A timm model split into a local feature map and a global summary for DIM.

    A ``dim_ssl.DIMEncoder``: ``forward``, ``encode``, ``pool``, ``features`` and
    ``summary_parameters`` (the MLP f: ``fc`` and ``to_summary``).

    Args:
        model_name: any timm model name with ``forward_intermediates`` (``timm.list_models()``).
        global_dim: D, size of the summary y (paper: 64).
        in_chans: input channels (1 for grayscale data).
        feature_stage: index into ``backbone.feature_info`` of the stage that gives the local
            map. By default, the deepest stage before the last whose map is at least
            ``min_map_size`` wide for ``input_size`` inputs (for a resnet18 at 32x32: layer2,
            128 x 4 x 4; with ``small_input=True``: layer3, 256 x 8 x 8). Deeper stages see more
            of the image per location; too deep and the map has too few locations for the local
            term to mean anything.
        hidden_dim: hidden width of the MLP that computes y (paper: 1024).
        input_size: the image size the stage choice is made for (a ViT's own ``img_size`` wins).
        min_map_size: the smallest map width the default stage may have.
        small_input: adapt the stem to small (CIFAR-scale, 32x32) images, as solo-learn's
            ``cifar`` flag and lightly's benchmark ResNets do: the first convolution becomes 3x3
            with stride 1 (a plain stem's 7x7/2 conv is replaced by a new, freshly initialised
            ``Conv2d(in_chans, width, 3, 1, 1, bias=False)``; a deep stem's three 3x3 convs, as
            in ``resnet18d``, ``resnet26d``, ``resnet10t``, keep their weights and the first
            one's stride becomes 1) and the stem pool becomes ``nn.Identity()``. The stem then
            no longer divides the side by 4 (the stem's own map by 2); ``backbone.feature_info``
            reductions, ``feature_reduction``, the default stage and ``feature_map_size`` say so
            (resnet18 at 32x32: layer1..layer4 maps of 32, 16, 8, 4 instead of 8, 4, 2, 1).
            Later stages are unchanged (a ``resnet*d``'s average-pool downsample included).
            timm's ResNet family only (``timm.models.resnet.ResNet``: resnet*, resnet*d/t,
            resnext, seresnet(x), ecaresnet, wide_resnet, res2net, resnest, skresnet...); other
            families are refused. With ``pretrained=True`` a plain stem's first conv is not
            pretrained. Compute: at the same input size every stage sees 16x the locations;
            measured with ``torch.utils.flop_counter.FlopCounterMode`` (a multiply-add counts
            2), resnet18's ``forward_features`` on one 3x32x32 image costs 1.111 GFLOPs with
            the small stem against 0.074 with the plain one: 15.0x (15.7x for 1 channel; not
            quite 16x because the new 3x3 conv costs less than the 7x7/2 one it replaces).
            Recorded as ``self.small_input`` (rebuild with it), never in ``timm_kwargs``.
        **timm_kwargs: passed to ``timm.create_model`` unchanged (``img_size=64``, ``drop_path_rate``...).

    Attributes:
        backbone: the timm model (``num_classes=0``).
        fc: f's hidden layer, FC ``hidden_dim`` + BatchNorm + ReLU on the pooled features.
        to_summary: f's last layer, linear to y (no normalisation, no activation).
        feature_channels, feature_reduction: channels and stride of the local map's stage.
        pooled_dim: width of the pooled features (``head_hidden_size`` or ``num_features``).
        feature_positions: ``FEATURE_POSITIONS``, the positions ``features`` accepts.

    Raises:
        ValueError: for an unknown model name, a model without ``forward_intermediates`` or
            ``feature_info``, a stage index that does not exist, or ``small_input=True`` for a
            family whose stem it cannot adapt (the message names the ones it can); in
            ``forward``, ``encode``, ``pool`` and ``features``, for images with the wrong number
            of channels.

    Examples:
        >>> encoder = TimmEncoder("resnet18", global_dim=64, in_chans=1)
        >>> feature_map, y = encoder(torch.randn(8, 1, 32, 32))   # (8, 128, 4, 4), (8, 64)
    """

    feature_positions: tuple[str, ...] = FEATURE_POSITIONS

    def __init__(
        self,
        model_name: str,
        global_dim: int = 64,
        in_chans: int = 3,
        feature_stage: int | None = None,
        hidden_dim: int = 1024,
        input_size: int = 32,
        min_map_size: int = 4,
        small_input: bool = False,
        **timm_kwargs: Any,
    ) -> None:
        super().__init__()
        import timm  # imported here so that `import dim_ssl` stays light

        if not timm.is_model(model_name):
            close = difflib.get_close_matches(model_name, timm.list_models(), n=5, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
            raise ValueError(f"unknown timm model {model_name!r}{hint}")
        timm_kwargs.setdefault("pretrained", False)
        self.backbone = timm.create_model(model_name, num_classes=0, in_chans=in_chans, **timm_kwargs)
        if not hasattr(self.backbone, "forward_intermediates") or not getattr(self.backbone, "feature_info", None):
            raise ValueError(
                f"timm model {model_name!r} cannot give an intermediate feature map: it has no "
                "forward_intermediates / feature_info; choose a CNN or ViT that has them"
            )

        if small_input:
            _adapt_stem_to_small_input(self.backbone, model_name)

        self.model_name = model_name
        self.timm_kwargs = dict(timm_kwargs)
        self.in_chans = in_chans
        self.small_input = bool(small_input)
        stages = list(self.backbone.feature_info)
        input_size = _fixed_input_size(self.backbone) or input_size
        if feature_stage is None:
            feature_stage = _default_stage(model_name, stages, input_size, min_map_size)
        if not -len(stages) <= feature_stage < len(stages):
            raise ValueError(
                f"feature_stage={feature_stage} does not exist: {model_name} has {len(stages)} stages "
                f"({', '.join(str(s['module']) for s in stages)})"
            )
        self.feature_stage = feature_stage % len(stages)
        self.feature_channels: int = int(stages[self.feature_stage]["num_chs"])
        self.feature_reduction: int = int(stages[self.feature_stage]["reduction"])
        self.global_dim = global_dim
        # What forward_head(pre_logits=True) returns: some models (MobileNetV3) add a
        # pre-logits layer whose width differs from the last stage's.
        self.pooled_dim: int = int(getattr(self.backbone, "head_hidden_size", None) or self.backbone.num_features)

        # f's head: FC 1024 + BN + ReLU, then linear to y (the paper's encoder).
        self.fc = nn.Sequential(
            nn.Linear(self.pooled_dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
        )
        self.to_summary = nn.Linear(hidden_dim, global_dim)

    def encode(self, x: Tensor) -> EncoderOutput:
        """``(feature_map, pooled, hidden, y)`` from one backbone pass, with gradients.

        ``feature_map`` ``(N, C, M, M)`` is the chosen stage after a ReLU, ``pooled``
        ``(N, pooled_dim)`` the backbone's ``forward_head(..., pre_logits=True)``, ``hidden``
        ``(N, hidden_dim)`` f's hidden layer, ``y`` ``(N, global_dim)`` the summary.
        """
        self._check_input(x)
        final, (local,) = self.backbone.forward_intermediates(x, indices=[self.feature_stage])
        pooled = self.backbone.forward_head(final, pre_logits=True).flatten(1)
        # The map that enters the MI terms is post-ReLU (the paper found this matters); a
        # ViT's tokens or a ConvNeXt's normalised stage output are not, on their own.
        feature_map = F.relu(local)
        hidden = self.fc(pooled)
        return EncoderOutput(feature_map, pooled, hidden, self.to_summary(hidden))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x -> (feature_map (N, C, M, M), y (N, D))``."""
        out = self.encode(x)
        return out.feature_map, out.y

    def pool(self, x: Tensor) -> Tensor:
        """The backbone's pooled features ``(N, pooled_dim)``, with gradients, without f.

        ``backbone.forward_head(backbone.forward_features(x), pre_logits=True)``: the same
        numbers as ``encode(x).pooled``, for methods that train the backbone alone.
        """
        self._check_input(x)
        return self.backbone.forward_head(self.backbone.forward_features(x), pre_logits=True).flatten(1)

    @torch.no_grad()
    def features(self, x: Tensor, position: str = "pool") -> Tensor:
        """Frozen features for probes, ``(N, F)``, without gradients.

        Positions: ``"conv"`` (flattened local map), ``"fc"`` (the MLP's hidden layer),
        ``"y"`` (the summary) and ``"pool"`` (the backbone's pooled features). Call
        ``encoder.eval()`` first so that BatchNorm uses its running statistics.
        """
        check_position(position)
        return self.encode(x).at(position)

    def summary_parameters(self) -> Iterator[nn.Parameter]:
        """The parameters of f, pooled features -> y (``fc`` and ``to_summary``), which only DIM trains."""
        return chain(self.fc.parameters(), self.to_summary.parameters())

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(
                f"expected images of shape (N, {self.in_chans}, H, W); got {tuple(x.shape)}"
                + (" (set in_chans to the data's channels)" if x.dim() == 4 else "")
            )

    def feature_map_size(self, input_size: int) -> int:
        """Width M of the local map for square inputs of ``input_size`` pixels."""
        return max(1, input_size // self.feature_reduction)


_SMALL_INPUT_FAMILIES = (
    "timm's ResNet family (timm.models.resnet.ResNet: resnet*, resnet*d, resnet10t/14t, resnext*, "
    "seresnet*, seresnext*, ecaresnet*, wide_resnet*, resnetaa*, resnetblur*, resnetrs*, res2net*, "
    "resnest*, skresnet*)"
)


def _adapt_stem_to_small_input(backbone: nn.Module, model_name: str = "") -> None:
    """Adapts a timm ResNet's ImageNet stem to small images, in place.

    The first convolution gets stride 1 and a 3x3 kernel (a plain 7x7/2 conv is replaced by a
    new ``Conv2d(in_chans, width, 3, 1, 1, bias=False)``, initialised as timm initialises its
    convs; a deep stem's first 3x3 conv keeps its weights, its stride set to 1), and the stem
    pool (max-pool, anti-aliased pool, or ``resnetrs``' strided conv pool) becomes
    ``nn.Identity()``. ``backbone.feature_info`` is replaced by copies whose reductions drop
    the removed factors: 2 for the stem's own map (``act1``), 4 for every stage after the pool.

    Raises:
        ValueError: for a model outside timm's ResNet family, naming the families it adapts.
    """
    from timm.models.resnet import ResNet

    if not isinstance(backbone, ResNet):
        raise ValueError(
            f"small_input=True cannot adapt the stem of {model_name or 'this model'} "
            f"({type(backbone).__name__}); it adapts {_SMALL_INPUT_FAMILIES}"
        )
    stem = backbone.conv1
    first = stem[0] if isinstance(stem, nn.Sequential) else stem
    if not isinstance(first, nn.Conv2d) or tuple(first.stride) != (2, 2) or isinstance(backbone.maxpool, nn.Identity):
        raise ValueError(
            f"small_input=True expects {model_name or 'the model'}'s stem to be a stride-2 conv and a pool; "
            f"got {type(first).__name__} (stride {getattr(first, 'stride', None)}) and "
            f"{type(backbone.maxpool).__name__}"
        )
    if isinstance(stem, nn.Sequential):  # deep stem: three 3x3 convs, the first strided
        first.stride = (1, 1)
    else:  # the 7x7/2 ImageNet conv
        conv = nn.Conv2d(
            first.in_channels,
            first.out_channels,
            3,
            1,
            1,
            bias=False,
            device=first.weight.device,
            dtype=first.weight.dtype,
        )
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")  # as timm's init_weights
        backbone.conv1 = conv
    backbone.maxpool = nn.Identity()
    # act1 is read before the pool: only the conv's factor 2 goes; every later stage loses 4.
    backbone.feature_info = [
        {**info, "reduction": max(1, int(info["reduction"]) // (2 if info["module"] == "act1" else 4))}
        for info in backbone.feature_info
    ]


def _fixed_input_size(backbone: nn.Module) -> int | None:
    patch_embed = getattr(backbone, "patch_embed", None)
    size = getattr(patch_embed, "img_size", None)
    if size is None:
        return None
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def _default_stage(model_name: str, stages: list[dict], input_size: int, min_map_size: int) -> int:
    wide_enough = [i for i, stage in enumerate(stages) if input_size // int(stage["reduction"]) >= min_map_size]
    if not wide_enough:
        raise ValueError(
            f"no stage of {model_name} gives a feature map of at least {min_map_size}x{min_map_size} "
            f"for {input_size}x{input_size} inputs (reductions: {[s['reduction'] for s in stages]}); "
            "use larger images, a smaller patch size, or pass feature_stage= (and min_map_size=)"
        )
    # The deepest such stage, but keep at least one stage after it for f to build on.
    before_last = [i for i in wide_enough if i < len(stages) - 1]
    return (before_last or wide_enough)[-1]
