"""The critics T(x, y) of DIM, in the paper's two shapes (Hjelm et al. 2019, appendix A.2, Fig. 5).

- Encode-and-dot-product (``"dot"``): one net embeds the input side (each location vector of
  the feature map, or the whole map), another embeds the summary y; the score is the dot
  product of the embeddings. Every pair in a batch then costs one matrix product.
- Concat-and-convolve (``"concat"``): y is tiled over the map and concatenated to it, and a
  1x1-conv net outputs one score per location. One forward per pair: negatives by shuffling.

The global critics first encode the whole feature map into one vector (conv 3x3 + flatten +
linear), which plays the role of a location vector for a 1x1 "map".

Both shapes end in a linear layer: no ReLU on the scores, which must range over the reals.
Every layer reads the previous layer's output (one public TensorFlow snippet of the concat
critic feeds the input map to every layer, which makes depth meaningless).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ResidualEmbedding(nn.Module):
    """``x -> f(x) + Wx``: a two-layer net plus a linear shortcut (the paper's dot-critic block).

    The shortcut makes the embedding start near a random linear projection, so scores carry
    signal from the first step; the nonlinear branch adds what the projection misses.
    With ``pointwise=True`` the layers are 1x1 convolutions over an ``(N, C, H, W)`` map.
    """

    def __init__(self, in_features: int, hidden_features: int, out_features: int, pointwise: bool) -> None:
        super().__init__()
        if pointwise:
            linear = lambda i, o, bias=True: nn.Conv2d(i, o, kernel_size=1, bias=bias)  # noqa: E731
        else:
            linear = lambda i, o, bias=True: nn.Linear(i, o, bias=bias)  # noqa: E731
        # No BatchNorm in critics: a score must not depend on which other images share the
        # batch (or the rank), so that data-parallel training equals one big batch exactly.
        self.branch = nn.Sequential(
            linear(in_features, hidden_features),
            nn.ReLU(inplace=True),
            linear(hidden_features, out_features),
        )
        self.shortcut = linear(in_features, out_features, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.branch(x) + self.shortcut(x)


class MapEncoder(nn.Module):
    """Encodes a whole ``(N, C, M, M)`` feature map into one vector per image (global critics).

    A 3x3 convolution mixes neighbouring locations, then flatten + linear sees the whole map,
    as the paper's global discriminator does. An adaptive pool to a fixed grid first makes the
    critic independent of M, so the head needs no map size when it is built.
    """

    def __init__(self, channels: int, out_features: int, conv_channels: int = 64, grid: int = 4) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, conv_channels, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(grid),
            nn.Flatten(),
            nn.Linear(conv_channels * grid * grid, out_features),
        )

    def forward(self, feature_map: Tensor) -> Tensor:
        return self.net(feature_map)


class LocalDotCritic(nn.Module):
    """Encode-and-dot-product critic for the local term.

    ``embed_inputs`` maps ``(N, C, M, M)`` to ``(N, M*M, E)`` location embeddings,
    ``embed_summaries`` maps ``(N, D)`` to ``(N, E)``; ``T(x_i[loc], y_j)`` is their dot product
    divided by ``sqrt(E)``, which keeps the first scores of order one whatever the width.
    """

    def __init__(self, local_channels: int, global_dim: int, hidden_dim: int = 512, embed_dim: int = 512) -> None:
        super().__init__()
        self.input_net = ResidualEmbedding(local_channels, hidden_dim, embed_dim, pointwise=True)
        self.summary_net = ResidualEmbedding(global_dim, hidden_dim, embed_dim, pointwise=False)
        self.scale = embed_dim**-0.5

    def embed_inputs(self, feature_map: Tensor) -> Tensor:
        return self.input_net(feature_map).flatten(2).transpose(1, 2)

    def embed_summaries(self, y: Tensor) -> Tensor:
        return self.summary_net(y) * self.scale


class GlobalDotCritic(nn.Module):
    """Encode-and-dot-product critic for the global term: the whole map becomes one embedding.

    Scores are dot products divided by ``sqrt(E)``, as in ``LocalDotCritic``.
    """

    def __init__(self, local_channels: int, global_dim: int, hidden_dim: int = 512, embed_dim: int = 512) -> None:
        super().__init__()
        self.map_encoder = MapEncoder(local_channels, hidden_dim)
        self.input_net = ResidualEmbedding(hidden_dim, hidden_dim, embed_dim, pointwise=False)
        self.summary_net = ResidualEmbedding(global_dim, hidden_dim, embed_dim, pointwise=False)
        self.scale = embed_dim**-0.5

    def embed_inputs(self, feature_map: Tensor) -> Tensor:
        """``(N, C, M, M)`` to ``(N, 1, E)``: one "location" per image."""
        return self.input_net(self.map_encoder(feature_map)).unsqueeze(1)

    def embed_summaries(self, y: Tensor) -> Tensor:
        return self.summary_net(y) * self.scale


class LocalConcatCritic(nn.Module):
    """Concat-and-convolve critic for the local term: y tiled over the map, 1x1 convs 512-512-1."""

    def __init__(self, local_channels: int, global_dim: int, hidden_dim: int = 512) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(local_channels + global_dim, hidden_dim, kernel_size=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_dim, hidden_dim, kernel_size=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_dim, 1, kernel_size=1),  # raw scores: no activation
        )

    def forward(self, feature_map: Tensor, y: Tensor) -> Tensor:
        """Scores ``(N, M*M)`` of each location of ``feature_map[n]`` against ``y[n]``."""
        tiled = y[:, :, None, None].expand(-1, -1, *feature_map.shape[-2:])
        return self.net(torch.cat([feature_map, tiled], dim=1)).flatten(1)


class GlobalConcatCritic(nn.Module):
    """Concat critic for the global term: encoded map concatenated with y, then FC 512-512-1."""

    def __init__(self, local_channels: int, global_dim: int, hidden_dim: int = 512) -> None:
        super().__init__()
        self.map_encoder = MapEncoder(local_channels, hidden_dim)
        self.net = nn.Sequential(
            nn.Linear(hidden_dim + global_dim, hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, 1),
        )

    def forward(self, feature_map: Tensor, y: Tensor) -> Tensor:
        """Scores ``(N, 1)`` of ``feature_map[n]`` against ``y[n]``."""
        return self.net(torch.cat([self.map_encoder(feature_map), y], dim=1))
