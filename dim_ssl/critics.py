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

The dot critics also hand their two sides to ``dim_ssl.scoring`` as *factors* whose products
are the scores. Because a score is a bilinear form, the input net's last linear layer (and its
linear shortcut) can move to the summary side: ``<W h + b + S x, s> = <[h, x], s [W | S]> +
<b, s>``. With many more location vectors (N * M^2) than summaries (n) this halves the cost
of the all-pairs scores; ``DotCritic.fold_pays`` decides from the sizes.

``CRITICS`` registers the shapes by name (``DIMHead(critic=name)``): each ``CriticShape`` names
its local and global critic classes and the negatives modes it can score. A new shape is one
entry there.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dim_ssl.negatives import NEGATIVE_MODES
from dim_ssl.suggest import did_you_mean


class ResidualEmbedding(nn.Module):
    """``x -> f(x) + Wx``: a two-layer net plus a linear shortcut (the paper's dot-critic block).

    The shortcut makes the embedding start near a random linear projection, so scores carry
    signal from the first step; the nonlinear branch adds what the projection misses.
    With ``pointwise=True`` the layers are 1x1 convolutions over an ``(N, C, H, W)`` map.
    """

    def __init__(self, in_features: int, hidden_features: int, out_features: int, pointwise: bool) -> None:
        super().__init__()
        linear = partial(nn.Conv2d, kernel_size=1) if pointwise else nn.Linear  # timm's layers/mlp.py idiom
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

    def forward_rows(self, x: Tensor) -> Tensor:
        """The same map on vectors in the last dimension, ``(..., in) -> (..., out)``.

        For ``pointwise=True`` this is the 1x1-conv net applied to every location vector,
        computed as matrix products on rows (no NCHW reorders; measurably faster on CPU).
        """
        weight, bias, shortcut = self.output_layer()
        return F.linear(self.hidden_rows(x), weight, bias) + F.linear(x, shortcut)

    def hidden_rows(self, x: Tensor) -> Tensor:
        """The hidden layer ``relu(W1 x + b1)`` on vectors in the last dimension."""
        first = self.branch[0]
        return F.relu(F.linear(x, first.weight.flatten(1), first.bias))

    def output_layer(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(W, b, S)`` of ``x -> W h + b + S x`` as 2-D matrices (a 1x1 conv's weight flattened)."""
        last = self.branch[2]
        return last.weight.flatten(1), last.bias, self.shortcut.weight.flatten(1)


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


class DotCritic(nn.Module, ABC):
    """What both encode-and-dot-product critics share: ``T(x, y) = <phi(x), psi(y)> / sqrt(E)``.

    Subclasses set ``input_net`` and ``summary_net`` (``ResidualEmbedding``s) and say which
    vectors of a feature map ``phi`` embeds (``input_vectors``).
    """

    input_net: ResidualEmbedding
    summary_net: ResidualEmbedding
    scale: float

    @abstractmethod
    def input_vectors(self, feature_map: Tensor) -> Tensor:
        """The vectors ``phi`` embeds, ``(N, L, F)``: L per image."""

    @abstractmethod
    def vectors_per_image(self, feature_map: Tensor) -> int:
        """L of ``input_vectors(feature_map)``, without computing them."""

    def embed_inputs(self, feature_map: Tensor) -> Tensor:
        """``(N, C, M, M)`` to ``(N, L, E)`` input embeddings."""
        return self.input_net.forward_rows(self.input_vectors(feature_map))

    def embed_summaries(self, y: Tensor) -> Tensor:
        """``(N, D)`` to ``(N, E)`` summary embeddings, the ``1 / sqrt(E)`` included."""
        return self.summary_net(y) * self.scale

    # Factors for dim_ssl.scoring: scores = input_factors @ summary_factors.T + offsets.

    def fold_pays(self, num_rows: int, num_summaries: int, num_pairs: int) -> bool:
        """Whether folding the input net's last layer into the summary side saves multiply-adds.

        ``num_rows`` input vectors are embedded, ``num_summaries`` summaries, and ``num_pairs``
        dot products taken. Unfolded: the last layer on every input vector and products of
        width E; folded: the last layer on every summary and products of width hidden + F.
        """
        weight, _, shortcut = self.input_net.output_layer()
        embed, width = weight.shape[0], weight.shape[1] + shortcut.shape[1]
        unfolded = num_rows * embed * width + num_pairs * embed
        folded = num_summaries * embed * width + num_pairs * width
        return folded < unfolded

    def input_factors(self, vectors: Tensor, fold: bool) -> Tensor:
        """``(..., F)`` input vectors to the input side of the scores: ``phi(x)``, or ``[h, x]`` folded."""
        if not fold:
            return self.input_net.forward_rows(vectors)
        return torch.cat([self.input_net.hidden_rows(vectors), vectors], dim=-1)

    def summary_factors(self, y: Tensor, fold: bool) -> tuple[Tensor, Tensor | None]:
        """``(n, D)`` summaries to the summary side ``(n, K)`` and per-summary offsets ``(n,)`` or None.

        Folded: ``psi(y) [W | S]`` and ``<b, psi(y)>``, so that
        ``<[h, x], psi [W | S]> + <b, psi> = <W h + b + S x, psi> = <phi(x), psi>``.
        """
        summaries = self.embed_summaries(y)
        if not fold:
            return summaries, None
        weight, bias, shortcut = self.input_net.output_layer()
        return summaries @ torch.cat([weight, shortcut], dim=1), summaries @ bias


class LocalDotCritic(DotCritic):
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

    def input_vectors(self, feature_map: Tensor) -> Tensor:
        """The location vectors ``(N, M*M, C)``, locations in row-major order, as one contiguous tensor."""
        n, c = feature_map.shape[:2]
        return feature_map.permute(0, 2, 3, 1).reshape(n, -1, c)

    def vectors_per_image(self, feature_map: Tensor) -> int:
        return feature_map.shape[2] * feature_map.shape[3]


class GlobalDotCritic(DotCritic):
    """Encode-and-dot-product critic for the global term: the whole map becomes one embedding.

    Scores are dot products divided by ``sqrt(E)``, as in ``LocalDotCritic``.
    """

    def __init__(self, local_channels: int, global_dim: int, hidden_dim: int = 512, embed_dim: int = 512) -> None:
        super().__init__()
        self.map_encoder = MapEncoder(local_channels, hidden_dim)
        self.input_net = ResidualEmbedding(hidden_dim, hidden_dim, embed_dim, pointwise=False)
        self.summary_net = ResidualEmbedding(global_dim, hidden_dim, embed_dim, pointwise=False)
        self.scale = embed_dim**-0.5

    def input_vectors(self, feature_map: Tensor) -> Tensor:
        """``(N, C, M, M)`` to ``(N, 1, hidden)``: one "location" per image."""
        return self.map_encoder(feature_map).unsqueeze(1)

    def vectors_per_image(self, feature_map: Tensor) -> int:
        return 1


class LocalConcatCritic(nn.Module):
    """Concat-and-convolve critic for the local term: y tiled over the map, 1x1 convs 512-512-1.

    Computed on location vectors (``score_vectors``) rather than on a tiled map: the first
    layer's ``[x, y] -> W_x x + W_y y + b`` takes ``W_y y + b`` once per image instead of once
    per location, and the 1x1 convolutions become matrix products on rows. The same numbers.
    """

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
        return self.score_vectors(self.input_vectors(feature_map), y)

    def input_vectors(self, feature_map: Tensor) -> Tensor:
        """The location vectors ``(N, M*M, C)``, locations in row-major order."""
        n, c = feature_map.shape[:2]
        return feature_map.permute(0, 2, 3, 1).reshape(n, -1, c)

    def score_vectors(self, vectors: Tensor, y: Tensor) -> Tensor:
        """Scores ``(N, L)`` of location vectors ``(N, L, C)`` of image n against ``y[n]``."""
        first, _, second, _, last = self.net
        channels = vectors.shape[-1]
        weight = first.weight.flatten(1)
        per_image = F.linear(y, weight[:, channels:], first.bias)  # W_y y + b: (N, hidden)
        hidden = F.relu(F.linear(vectors, weight[:, :channels]) + per_image[:, None, :])
        hidden = F.relu(F.linear(hidden, second.weight.flatten(1), second.bias))
        return F.linear(hidden, last.weight.flatten(1), last.bias).squeeze(-1)


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


@dataclass(frozen=True)
class CriticShape:
    """One critic shape: the classes ``DIMHead`` builds for its two terms and what they can score.

    The head scores a critic by what it is. A ``DotCritic`` hands over factors whose matrix
    product gives every pair at once, so it serves every negatives mode. Any other critic scores
    the pairs it is given, one forward each (local: ``input_vectors`` and ``score_vectors``,
    global: ``forward(feature_map, y) -> (N, 1)``, as the concat critics do), which only
    ``"shuffle"`` affords: all pairs would cost N forwards.

    Attributes:
        local_critic: class of the local term's critic, built as
            ``local_critic(local_channels, global_dim, **widths)``.
        global_critic: class of the global term's critic, built the same way.
        negatives: the negatives modes (``dim_ssl.negatives.NEGATIVE_MODES``) it can score.
        widths: which of the head's width arguments (``hidden_dim``, ``embed_dim``) both
            classes take.
        restriction: why the other negatives modes are refused, for the error message
            (``""`` when it takes them all).

    Raises:
        ValueError: for an unknown negatives mode, none at all, or ``"all"`` with critics
            that are not ``DotCritic``s.

    Examples:
        >>> # MyLocalCritic, MyGlobalCritic: DotCritic subclasses taking (channels, dim, hidden_dim)
        >>> CRITICS["mine"] = CriticShape(MyLocalCritic, MyGlobalCritic, negatives=("all", "shuffle"))
        >>> head = DIMHead(128, 64, critic="mine", negatives="all")
    """

    local_critic: type[nn.Module]
    global_critic: type[nn.Module]
    negatives: tuple[str, ...]
    widths: tuple[str, ...] = ("hidden_dim",)
    restriction: str = ""

    def __post_init__(self) -> None:
        unknown = [mode for mode in self.negatives if mode not in NEGATIVE_MODES]
        if not self.negatives or unknown:
            raise ValueError(
                f"a critic shape needs negatives modes from {', '.join(NEGATIVE_MODES)}; got {self.negatives!r}"
            )
        scores_all_pairs = all(issubclass(c, DotCritic) for c in (self.local_critic, self.global_critic))
        if "all" in self.negatives and not scores_all_pairs:
            raise ValueError(
                f'negatives="all" needs DotCritic subclasses (all pairs from one matrix product); '
                f"{self.local_critic.__name__} and {self.global_critic.__name__} score one pair per forward"
            )

    def options(self, **available: int) -> dict[str, int]:
        """The width arguments this shape's classes take, picked from the head's ``available`` ones."""
        return {name: available[name] for name in self.widths}


# The paper's two shapes by name (Hjelm et al. 2019, appendix A.2), in the order error
# messages list them. Register a new one here.
CRITICS: dict[str, CriticShape] = {
    "dot": CriticShape(
        LocalDotCritic, GlobalDotCritic, negatives=("all", "shuffle"), widths=("hidden_dim", "embed_dim")
    ),
    "concat": CriticShape(
        LocalConcatCritic,
        GlobalConcatCritic,
        negatives=("shuffle",),
        restriction="scores one pair per forward, so all pairs would cost N forwards",
    ),
}


def get_critic_shape(critic: str, negatives: str) -> CriticShape:
    """The registered shape named ``critic``, checked against the negatives mode it must score.

    Raises:
        ValueError: for an unknown critic or negatives mode, or a mode the shape cannot score
            (the message names the modes it can, and the critics that can score this one).
    """
    if not isinstance(critic, str) or critic not in CRITICS:
        raise ValueError(
            f"unknown critic {critic!r}; expected one of {', '.join(CRITICS)}{did_you_mean(critic, CRITICS)}"
        )
    if not isinstance(negatives, str) or negatives not in NEGATIVE_MODES:
        raise ValueError(
            f"unknown negatives mode {negatives!r}; expected one of {', '.join(NEGATIVE_MODES)}"
            f"{did_you_mean(negatives, NEGATIVE_MODES)}"
        )
    shape = CRITICS[critic]
    if negatives not in shape.negatives:
        supported = " or ".join(f'negatives="{mode}"' for mode in shape.negatives)
        others = " or ".join(f'critic="{name}"' for name, other in CRITICS.items() if negatives in other.negatives)
        reason = f" {shape.restriction}" if shape.restriction else f' cannot score negatives="{negatives}"'
        alternative = f", or {others} for {NEGATIVE_MODES[negatives]}" if others else ""
        raise ValueError(f'critic="{critic}"{reason}: use {supported} with it{alternative}')
    return shape
