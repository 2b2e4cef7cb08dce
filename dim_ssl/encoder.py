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
import inspect
from contextlib import contextmanager
from itertools import chain
from typing import Any, Iterator, Sequence

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
        input_size: the side of the (square) images the encoder is for. The default stage is
            chosen for it; a model whose timm constructor takes ``img_size`` (ViT, DeiT, Swin,
            MaxViT, CoaT, CoAtNet, Hiera, GCViT, ...: position embeddings, windows and
            relative positions sized by it) is built for it (``img_size=input_size`` goes to
            timm and into ``timm_kwargs``, unless ``img_size`` is passed); and one forward pass
            of one image checks it at construction, so that a size the model cannot take is
            refused here, with the sizes checked to work. Default: the size timm builds the
            model for (its ``img_size``, else its ``pretrained_cfg`` input size) for such a
            model, else 32; not checked.
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
        input_size: the side the stage was chosen for (the argument, or the default above).
        takes_img_size: whether timm builds the backbone for one input size (its constructor
            takes ``img_size``).
        timm_kwargs: the keywords that rebuild the backbone with ``timm.create_model``
            (``img_size`` included where ``input_size`` set it).

    Raises:
        ValueError: for an unknown model name, a model without ``forward_intermediates`` or
            ``feature_info``, one whose ``forward_head`` gives no pooled features (no
            ``pre_logits``), a stage index that does not exist, no stage with a map of
            ``min_map_size`` for ``input_size``, an ``input_size`` timm cannot build or run the
            model at (the message names the sizes checked to work), or ``small_input=True`` for
            a family whose stem it cannot adapt (the message names the ones it can); in
            ``forward``, ``encode``, ``pool`` and ``features``, for images with the wrong number
            of channels, or of a size the backbone fails at where it runs at its own size (the
            message names that size and how to build for the other: timm's error is the cause).

    Examples:
        >>> encoder = TimmEncoder("resnet18", global_dim=64, in_chans=1)
        >>> feature_map, y = encoder(torch.randn(8, 1, 32, 32))   # (8, 128, 4, 4), (8, 64)
        >>> vit = TimmEncoder("vit_tiny_patch16_224", input_size=64)   # built with img_size=64
        >>> vit(torch.randn(8, 3, 64, 64))[0].shape                    # (8, 192, 4, 4)
    """

    feature_positions: tuple[str, ...] = FEATURE_POSITIONS

    def __init__(
        self,
        model_name: str,
        global_dim: int = 64,
        in_chans: int = 3,
        feature_stage: int | None = None,
        hidden_dim: int = 1024,
        input_size: int | None = None,
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
        if input_size is not None and input_size < 1:
            raise ValueError(f"input_size must be a positive number of pixels; got {input_size}")
        timm_kwargs.setdefault("pretrained", False)
        self.model_name = model_name
        self.in_chans = in_chans
        self.small_input = bool(small_input)
        self.min_map_size = min_map_size
        self.backbone, self.timm_kwargs, build_error = self._create_backbone(timm_kwargs, input_size)
        self._check_backbone()
        if small_input:
            _adapt_stem_to_small_input(self.backbone, model_name)
        # Whether timm builds this model for one input size (its constructor takes img_size: ViTs,
        # Swin, MaxViT, CoaT, CoAtNet, Hiera...); a CNN's size is free.
        self.takes_img_size: bool = "img_size" in self.timm_kwargs or _takes_img_size(self.backbone)
        # The side the stage choice is made for: the user's, else the one timm built the model
        # for, else 32 (CIFAR scale).
        self.input_size: int = input_size or _built_size(self.backbone, self.timm_kwargs, self.takes_img_size) or 32
        # The side a forward pass is known to work at (checked below when the user gives it).
        self._works_at: int | None = None
        self._map_sizes: dict[int, int] = {}  # feature_map_size's measurements

        stages = list(self.backbone.feature_info)
        if feature_stage is None:
            feature_stage = _default_stage(model_name, stages, self.input_size, min_map_size)
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

        if input_size is not None:
            # The size the user declared is checked now (one image, no gradients), so that a size
            # timm cannot take is refused here, with the sizes that work, not inside a training step.
            error = build_error or _forward_error(self.backbone, self.in_chans, (input_size,) * 2, self.feature_stage)
            if error is not None:
                raise ValueError(self._refusal(input_size, error)) from error
            self._works_at = input_size

    def encode(self, x: Tensor) -> EncoderOutput:
        """``(feature_map, pooled, hidden, y)`` from one backbone pass, with gradients.

        ``feature_map`` ``(N, C, M, M)`` is the chosen stage after a ReLU, ``pooled``
        ``(N, pooled_dim)`` the backbone's ``forward_head(..., pre_logits=True)`` on its last
        stage, ``hidden`` ``(N, hidden_dim)`` f's hidden layer, ``y`` ``(N, global_dim)`` the summary.

        Raises:
            ValueError: for images with the wrong number of channels, or of a size the backbone
                cannot take (the message names the size it works at and how to change it).
        """
        self._check_input(x)
        with self._size_errors_named(x):
            # stop_early=False: pool, fc and y come from the whole network. Hiera's default stops
            # at the requested stage and would hand that stage's tokens to forward_head.
            final, (local,) = self.backbone.forward_intermediates(x, indices=[self.feature_stage], stop_early=False)
            pooled = self.backbone.forward_head(final, pre_logits=True).flatten(1)
        # The map that enters the MI terms is post-ReLU (the paper found this matters); a
        # ViT's tokens or a ConvNeXt's normalised stage output are not, on their own.
        feature_map = F.relu(local)
        hidden = self.fc(pooled)
        return EncoderOutput(feature_map, pooled, hidden, self.to_summary(hidden))

    def encode_with(self, x: Tensor, stages: Sequence[int]) -> tuple[EncoderOutput, list[Tensor]]:
        """:meth:`encode`, plus the post-ReLU maps of further stages from the same pass.

        Multi-scale objectives (AMDIM's, ``eval.methods.MultiViewDIM(second_stage=...)``) score
        local features of several depths at once.

        Args:
            x: Images ``(N, in_chans, H, W)``.
            stages: Indices into ``backbone.feature_info`` (channels: ``stage_channels``).

        Raises:
            ValueError: a stage that does not exist, or what :meth:`encode` raises.
        """
        stages = [self._check_stage(stage) for stage in stages]
        self._check_input(x)
        # timm returns one map per distinct index, in increasing order.
        indices = sorted({self.feature_stage % len(self.backbone.feature_info), *stages})
        with self._size_errors_named(x):
            final, maps = self.backbone.forward_intermediates(x, indices=indices, stop_early=False)
            pooled = self.backbone.forward_head(final, pre_logits=True).flatten(1)
        by_stage = {index: F.relu(m) for index, m in zip(indices, maps)}
        hidden = self.fc(pooled)
        feature_map = by_stage[self.feature_stage % len(self.backbone.feature_info)]
        return EncoderOutput(feature_map, pooled, hidden, self.to_summary(hidden)), [by_stage[s] for s in stages]

    def stage_channels(self, stage: int) -> int:
        """Channels of a stage's map (an index into ``backbone.feature_info``)."""
        return int(self.backbone.feature_info[self._check_stage(stage)]["num_chs"])

    def _check_stage(self, stage: int) -> int:
        count = len(self.backbone.feature_info)
        if not -count <= stage < count:
            raise ValueError(f"{self.model_name} has stages 0..{count - 1} (backbone.feature_info); got stage {stage}")
        return stage % count

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
        with self._size_errors_named(x):
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

    def _create(self, timm_kwargs: dict[str, Any]) -> nn.Module:
        import timm

        return timm.create_model(self.model_name, num_classes=0, in_chans=self.in_chans, **timm_kwargs)

    def _create_backbone(
        self, timm_kwargs: dict[str, Any], input_size: int | None
    ) -> tuple[nn.Module, dict[str, Any], Exception | None]:
        """The backbone, the keywords that rebuild it, and the error timm raised building it for ``input_size``.

        A model whose constructor takes ``img_size`` is built for ``input_size`` (unless the user
        passed ``img_size``): a ViT's position embedding, a Swin's or MaxViT's windows, CoaT's
        and CoAtNet's relative positions are sized by it. Where timm cannot build the model for
        that size, it is built at its own size and the error is returned for the refusal.
        """
        if input_size is not None and "img_size" not in timm_kwargs:
            sized = {**timm_kwargs, "img_size": input_size}
            try:
                return self._create(sized), sized, None
            except TypeError as err:
                if "img_size" not in str(err):  # another keyword the model does not take
                    raise
            except _SIZE_ERRORS as err:
                return self._create(timm_kwargs), dict(timm_kwargs), err
        return self._create(timm_kwargs), dict(timm_kwargs), None

    def _check_backbone(self) -> None:
        if not hasattr(self.backbone, "forward_intermediates") or not getattr(self.backbone, "feature_info", None):
            raise ValueError(
                f"timm model {self.model_name!r} cannot give an intermediate feature map: it has no "
                "forward_intermediates / feature_info; choose a CNN or ViT that has them"
            )
        if "pre_logits" not in inspect.signature(self.backbone.forward_head).parameters:
            raise ValueError(
                f"timm model {self.model_name!r} has no pooled features to compute y from: its forward_head "
                "takes no pre_logits, as in a feature-only encoder; choose a variant with a classifier head "
                "(for mobilenetv5_300m_enc: mobilenetv5_300m)"
            )

    @contextmanager
    def _size_errors_named(self, x: Tensor) -> Iterator[None]:
        """Turns an error timm raises for the size of ``x`` into a ValueError that names the sizes that work.

        A failure counts as a size problem only when a forward pass of one image of ``x``'s size
        fails where one of the size the encoder works at runs (both checked in eval mode, without
        gradients); any other failure propagates unchanged.
        """
        try:
            yield
        except torch.cuda.OutOfMemoryError:
            raise
        except _SIZE_ERRORS as err:
            message = self._size_error(tuple(x.shape[-2:]), err)
            if message is None:
                raise
            raise ValueError(message) from err

    def _size_error(self, size: tuple[int, int], err: Exception) -> str | None:
        works = self._works_at or self.input_size
        if size == (works, works):
            return None  # it fails at the size it works at: not a size problem
        if _forward_error(self.backbone, self.in_chans, size, self.feature_stage) is None:
            return None  # one image of that size runs: the failure is something else
        if _forward_error(self.backbone, self.in_chans, (works, works), self.feature_stage) is not None:
            return None  # it fails at its own size too: not a size problem
        self._works_at = works
        height, width = size
        if self.takes_img_size:
            how = (
                f"(timm built {self.model_name} for img_size={works}): build the encoder with input_size={height} "
                f"for {height}x{height} images (it passes img_size={height} to timm.create_model and checks that "
                f"size), or resize the images to {works}x{works}"
            )
        else:
            how = (
                f": resize the images to {works}x{works}, or build the encoder with input_size={height} (it checks "
                "that size and names the sizes that work)"
            )
        square = "" if height == width else " (TimmEncoder builds for square images)"
        return (
            f"TimmEncoder({self.model_name!r}) cannot take {height}x{width} images{square}: timm raised "
            f"{_describe(err)}. It works at {works}x{works} {how}"
        )

    def _refusal(self, input_size: int, error: Exception) -> str:
        """The message that refuses ``input_size`` with the sizes checked to work; ``error`` again if none does."""
        passed = self.timm_kwargs.get("img_size")
        conflict = passed is not None and _side(passed) != input_size
        works = self._working_sizes(input_size, include_near=conflict)
        if not works:
            raise error  # the model fails at every size tried: not a size problem
        sizes = ", ".join(f"{s}x{s}" for s in works)
        built = f" (timm builds {self.model_name} for it)" if self.takes_img_size else ""
        note = f"; leave out img_size={passed}: input_size sets it" if conflict else ""
        return (
            f"TimmEncoder({self.model_name!r}) does not work at input_size={input_size}: timm raised "
            f"{_describe(error)}. Sizes checked to work: {sizes}; pass input_size= one of them{built} and "
            f"resize or crop the images to it{note}"
        )

    def _working_sizes(self, near: int, include_near: bool = False, tries: int = 4) -> list[int]:
        """Sizes near ``near`` at which the model runs, each checked with one image.

        Candidates: the multiples of the model's total stride on either side of ``near`` (windows
        and patches divide those), twice the upper one, and the size timm's pretrained_cfg gives
        (``near`` itself too with ``include_near``: when the user's own ``img_size`` was the
        problem); only those that keep the local map at least ``min_map_size`` wide. A model that
        takes ``img_size`` is rebuilt for each candidate, as ``input_size=`` would build it.
        """
        stride = max(int(stage["reduction"]) for stage in self.backbone.feature_info)
        low, high = stride * (near // stride), stride * (near // stride + 1)
        default = (self.backbone.pretrained_cfg or {}).get("input_size") or (0, 0, 0)
        smallest = self.feature_reduction * self.min_map_size
        candidates = {size for size in (low, high, 2 * high, int(default[-1])) if size >= smallest}
        candidates = (candidates | {near}) if include_near else (candidates - {near})
        candidates = sorted(candidates, key=lambda size: (abs(size - near), size))
        works = []
        for size in candidates[:tries]:
            backbone = self.backbone
            if self.takes_img_size:
                try:
                    backbone = self._create({**self.timm_kwargs, "img_size": size})
                except _SIZE_ERRORS:
                    continue
            if _forward_error(backbone, self.in_chans, (size, size), self.feature_stage) is None:
                works.append(size)
        return sorted(works)

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(
                f"expected images of shape (N, {self.in_chans}, H, W); got {tuple(x.shape)}"
                + (" (set in_chans to the data's channels)" if x.dim() == 4 else "")
            )

    def feature_map_size(self, input_size: int) -> int:
        """Width M of the local map for square inputs of ``input_size`` pixels.

        Measured on one zero image (eval mode, no gradients) and remembered per size: families
        with unpadded convolutions have maps narrower than ``input_size // feature_reduction``
        (Inception-v3 at 96x96: 4, not 6). Where the backbone cannot run at that size, that
        estimate.
        """
        if input_size not in self._map_sizes:
            width = _local_width(self.backbone, self.in_chans, input_size, self.feature_stage)
            self._map_sizes[input_size] = width or max(1, input_size // self.feature_reduction)
        return self._map_sizes[input_size]


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


# What timm raises for an input it cannot take: torch._assert and plain asserts, shape
# mismatches in reshapes, views and additions, and a few explicit checks.
_SIZE_ERRORS = (AssertionError, RuntimeError, ValueError, IndexError, ZeroDivisionError)


def _describe(err: Exception) -> str:
    message = str(err).strip().rstrip(".")
    return f"{type(err).__name__}: {message}" if message else f"{type(err).__name__} (without a message)"


def _side(size: int | tuple[int, int] | list[int]) -> int:
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def _takes_img_size(backbone: nn.Module) -> bool:
    """Whether the backbone's class (or a base class its ``**kwargs`` reach) takes ``img_size``."""
    return any(
        "img_size" in inspect.signature(cls.__init__).parameters
        for cls in type(backbone).__mro__
        if cls is not nn.Module and "__init__" in vars(cls)
    )


def _built_size(backbone: nn.Module, timm_kwargs: dict[str, Any], takes_img_size: bool) -> int | None:
    """The side timm built the model for, or None (a CNN).

    Its ``img_size`` (passed, or its patch embedding's), else, for a model that takes one, its
    pretrained_cfg's input size (what timm's builder passes it).
    """
    if timm_kwargs.get("img_size") is not None:
        return _side(timm_kwargs["img_size"])
    patch_embed_size = getattr(getattr(backbone, "patch_embed", None), "img_size", None)
    if patch_embed_size is not None:
        return _side(patch_embed_size)
    input_size = (getattr(backbone, "pretrained_cfg", None) or {}).get("input_size")
    return int(input_size[-1]) if input_size and takes_img_size else None


@contextmanager
def _probing(backbone: nn.Module) -> Iterator[None]:
    """Eval mode (restored after) and no gradients: a probe learns nothing and moves no statistic."""
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        backbone.train(was_training)


def _zero_images(backbone: nn.Module, in_chans: int, size: tuple[int, int]) -> Tensor:
    parameter = next(backbone.parameters(), None)
    device, dtype = (None, None) if parameter is None else (parameter.device, parameter.dtype)
    return torch.zeros(1, in_chans, *size, device=device, dtype=dtype)


def _forward_error(backbone: nn.Module, in_chans: int, size: tuple[int, int], stage: int) -> Exception | None:
    """The error the encoder's backbone pass raises on one zero image of ``size``, or None if it runs."""
    try:
        with _probing(backbone):
            final, _ = backbone.forward_intermediates(
                _zero_images(backbone, in_chans, size), indices=[stage], stop_early=False
            )
            backbone.forward_head(final, pre_logits=True)
    except torch.cuda.OutOfMemoryError:
        raise
    except _SIZE_ERRORS as err:
        return err
    return None


def _local_width(backbone: nn.Module, in_chans: int, size: int, stage: int) -> int | None:
    """The width of stage ``stage``'s map for one zero image of ``size`` x ``size``, or None if it fails."""
    try:
        with _probing(backbone):
            (local,) = backbone.forward_intermediates(
                _zero_images(backbone, in_chans, (size, size)), indices=[stage], intermediates_only=True
            )
    except torch.cuda.OutOfMemoryError:
        raise
    except _SIZE_ERRORS:
        return None
    return int(local.shape[-1])


def _default_stage(model_name: str, stages: list[dict], input_size: int, min_map_size: int) -> int:
    wide_enough = [i for i, stage in enumerate(stages) if input_size // int(stage["reduction"]) >= min_map_size]
    if not wide_enough:
        smallest = min(int(stage["reduction"]) for stage in stages)
        raise ValueError(
            f"no stage of {model_name} gives a feature map of at least {min_map_size}x{min_map_size} "
            f"for {input_size}x{input_size} inputs (reductions: {[s['reduction'] for s in stages]}); "
            f"use images of {min_map_size * smallest}x{min_map_size * smallest} or more (input_size=), a smaller "
            f"patch size, or a smaller min_map_size= (and feature_stage=)"
        )
    # The deepest such stage, but keep at least one stage after it for f to build on.
    before_last = [i for i in wide_enough if i < len(stages) - 1]
    return (before_last or wide_enough)[-1]
