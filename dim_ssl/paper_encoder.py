"""The DIM paper's own encoder for 32x32 images (Hjelm et al. 2019, appendix: the CIFAR-10 encoder).

A DCGAN-style stack, the one the paper trains on CIFAR-10:

    conv 4x4/2, 64   -> BN -> ReLU      32x32 -> 16x16
    conv 4x4/2, 128  -> BN -> ReLU      16x16 ->  8x8      local feature map C(x): 128 x 8 x 8
    conv 4x4/2, 256  -> BN -> ReLU       8x8  ->  4x4      ("pool": the backbone's features)
    flatten -> FC 1024 -> BN -> ReLU                        ("fc")
    linear 1024 -> global_dim                               the summary y = f(C(x))

It has the same interface as :class:`dim_ssl.TimmEncoder` (``dim_ssl.DIMEncoder``), so the
head, the training loop, the probes and the baselines take either one: ``forward`` returns
``(feature_map, y)``, the attributes ``feature_channels`` and ``global_dim`` size the head,
``features(x, position)`` gives frozen features for probes, ``pool`` the backbone's features
with gradients, and ``summary_parameters`` the MLP that only DIM trains.
"""

from __future__ import annotations

from itertools import chain
from typing import Iterator, Sequence

import torch
from torch import Tensor, nn

from dim_ssl.encoder_protocol import FEATURE_POSITIONS, EncoderOutput, check_position


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    # Kernel 4, stride 2, padding 1 halves an even side exactly. No conv bias: BN has one.
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=4, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class PaperEncoder(nn.Module):
    """The 32x32 encoder of Deep InfoMax (Hjelm et al., ICLR 2019), conv 64-128-256 + FC 1024.

    Attributes:
        feature_channels: Channels of the local feature map C(x) (128).
        global_dim: Size of the summary vector y.
        pooled_dim: Width of the backbone's features, the flattened last conv:
            ``256 * (image_size / 8)^2`` (4096 at 32x32).
        feature_positions: ``FEATURE_POSITIONS``, the positions ``features`` accepts.
        image_size: Side length of the inputs it accepts.
        in_chans: Channels of the inputs it accepts.
        local: The first two conv blocks, whose output is the local feature map.
        last_conv: The third conv block.
        fc: Flatten, FC ``hidden_dim`` with BatchNorm and ReLU.
        to_y: The final linear layer to y (no normalisation, no activation).

    Any ``image_size`` divisible by 8 works (the local map is ``image_size / 4`` on a side);
    32 is the paper's. Training needs batches of two or more (BatchNorm). ``features`` leaves
    the train/eval mode as it is: call ``.eval()`` first for frozen-feature probes.

    Raises:
        ValueError: In the constructor, for sizes that are not positive or an ``image_size``
            not divisible by 8; in ``forward``, ``encode``, ``pool`` and ``features``, for an
            input of the wrong shape; in ``features``, for an unknown position.

    Example::

        encoder = PaperEncoder(global_dim=64, in_chans=3)
        head = DIMHead(local_channels=encoder.feature_channels, global_dim=encoder.global_dim)
        for images, _ in loader:
            feature_map, y = encoder(images)        # (N, 128, 8, 8), (N, 64)
            loss = head(feature_map, y).loss
            optimizer.zero_grad(); loss.backward(); optimizer.step()
    """

    feature_positions: tuple[str, ...] = FEATURE_POSITIONS

    def __init__(self, global_dim: int = 64, in_chans: int = 3, image_size: int = 32, hidden_dim: int = 1024) -> None:
        super().__init__()
        for name, value in (("global_dim", global_dim), ("in_chans", in_chans), ("hidden_dim", hidden_dim)):
            if value < 1:
                raise ValueError(f"{name} must be positive; got {value}")
        if image_size < 8 or image_size % 8 != 0:
            raise ValueError(f"image_size must be a positive multiple of 8 (three stride-2 convs); got {image_size}")
        self.global_dim = global_dim
        self.in_chans = in_chans
        self.image_size = image_size
        self.feature_channels = 128

        self.local = nn.Sequential(_conv_block(in_chans, 64), _conv_block(64, self.feature_channels))
        self.last_conv = _conv_block(self.feature_channels, 256)
        last_side = image_size // 8
        self.pooled_dim = 256 * last_side * last_side
        self.fc = nn.Sequential(
            nn.Flatten(),
            nn.Linear(self.pooled_dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
        )
        self.to_y = nn.Linear(hidden_dim, global_dim)

    def _check_input(self, x: Tensor) -> None:
        expected = (self.in_chans, self.image_size, self.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"expected input of shape (N, {', '.join(map(str, expected))}); got {tuple(x.shape)}")

    def encode(self, x: Tensor) -> EncoderOutput:
        """``(feature_map, pooled, hidden, y)`` from one pass, with gradients.

        ``feature_map`` (N, 128, M, M) with M = image_size / 4, ``pooled`` the flattened last
        conv (N, pooled_dim), ``hidden`` (N, hidden_dim) and ``y`` (N, global_dim).
        """
        self._check_input(x)
        feature_map = self.local(x)
        pooled = self.last_conv(feature_map).flatten(1)
        hidden = self.fc(pooled)
        return EncoderOutput(feature_map, pooled, hidden, self.to_y(hidden))

    def encode_with(self, x: Tensor, stages: Sequence[int]) -> tuple[EncoderOutput, list[Tensor]]:
        """:meth:`encode`, plus the maps of further conv blocks from the same pass.

        Args:
            x: Images ``(N, in_chans, image_size, image_size)``.
            stages: Conv blocks, 0 to 2: 0 is 64 x 2M x 2M, 1 the local map (128 x M x M), 2 the
                last conv (256 x M/2 x M/2); all post-ReLU (``stage_channels`` gives the widths).

        Raises:
            ValueError: a block that does not exist, or an input of the wrong shape.
        """
        stages = [self._check_stage(stage) for stage in stages]
        self._check_input(x)
        first = self.local[0](x)
        feature_map = self.local[1](first)
        last = self.last_conv(feature_map)
        pooled = last.flatten(1)
        hidden = self.fc(pooled)
        blocks = (first, feature_map, last)
        return EncoderOutput(feature_map, pooled, hidden, self.to_y(hidden)), [blocks[s] for s in stages]

    def stage_channels(self, stage: int) -> int:
        """Channels of a conv block's map (0: 64, 1: 128, 2: 256)."""
        return (64, self.feature_channels, 256)[self._check_stage(stage)]

    @staticmethod
    def _check_stage(stage: int) -> int:
        if not -3 <= stage < 3:
            raise ValueError(f"the paper encoder has conv blocks 0..2; got stage {stage}")
        return stage % 3

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(feature_map, y)``: C(x) of shape (N, 128, M, M) with M = image_size / 4, and y (N, D)."""
        out = self.encode(x)
        return out.feature_map, out.y

    def pool(self, x: Tensor) -> Tensor:
        """The flattened last conv ``(N, pooled_dim)``, with gradients, without ``fc`` and ``to_y``.

        The same numbers as ``encode(x).pooled``, for methods that train the backbone alone.
        """
        self._check_input(x)
        return self.last_conv(self.local(x)).flatten(1)

    def summary_parameters(self) -> Iterator[nn.Parameter]:
        """The parameters of f, pooled features -> y (``fc`` and ``to_y``), which only DIM trains."""
        return chain(self.fc.parameters(), self.to_y.parameters())

    @torch.no_grad()
    def features(self, x: Tensor, position: str = "pool") -> Tensor:
        """Frozen features (no gradient) for probes, one row per image.

        Args:
            x: Input images (N, in_chans, image_size, image_size).
            position: ``"conv"`` (the flattened local map C(x), N x 128*M*M), ``"pool"`` (the
                flattened output of the last conv, N x 256*(M/2)^2: the backbone's features),
                ``"fc"`` (the hidden layer after ReLU, N x hidden_dim) or ``"y"`` (N x global_dim).

        Raises:
            ValueError: Unknown position, or an input of the wrong shape.
        """
        check_position(position)
        return self.encode(x).at(position)
