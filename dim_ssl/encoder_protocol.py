"""What a DIM encoder is: the interface ``TimmEncoder`` and ``PaperEncoder`` share.

A DIM encoder E = f o C maps images x to a local feature map C(x) and a summary y = f(C(x))
(Hjelm et al. 2019, section 3). Both encoders here read C(x) at an intermediate stage of a
backbone, pool the backbone's last stage, and compute y with a small MLP f on the pooled
features, so one pass yields four tensors (``EncoderOutput``):

    x --backbone--> feature_map (N, C, M, M)      "conv": the local map of the MI terms
      --backbone--> pooled      (N, pooled_dim)   "pool": what any backbone would give
      --fc-------->  hidden      (N, hidden_dim)   "fc":   f's hidden layer
      --to y------>  y           (N, global_dim)   "y":    the summary

The head, the training loop, the probes and the contrastive baselines rely only on
``DIMEncoder``: ``forward`` for DIM training, ``pool`` (with gradients, without f) for
baselines that train the backbone alone, ``features`` for frozen-feature probes, and
``summary_parameters`` for the parameters of f that only DIM trains.
"""

from __future__ import annotations

from typing import Iterator, NamedTuple, Protocol, runtime_checkable

from torch import Tensor, nn

# The positions at which features can be read for probes, in the order reports list them.
FEATURE_POSITIONS: tuple[str, ...] = ("conv", "fc", "y", "pool")


def check_position(position: str) -> str:
    """Returns ``position`` if it is one of ``FEATURE_POSITIONS``, else raises a ValueError."""
    if position not in FEATURE_POSITIONS:
        raise ValueError(f"unknown feature position {position!r}; expected one of {', '.join(FEATURE_POSITIONS)}")
    return position


class EncoderOutput(NamedTuple):
    """All of an encoder's tensors for a batch of N images, from one pass.

    Attributes:
        feature_map: ``(N, C, M, M)``, the local feature map C(x), post-ReLU.
        pooled: ``(N, pooled_dim)``, the backbone's pooled features (the input of f).
        hidden: ``(N, hidden_dim)``, the hidden layer of the MLP f (after BatchNorm and ReLU).
        y: ``(N, global_dim)``, the summary f(pooled).
    """

    feature_map: Tensor
    pooled: Tensor
    hidden: Tensor
    y: Tensor

    def at(self, position: str) -> Tensor:
        """The features at ``position`` (one of ``FEATURE_POSITIONS``), one row per image: ``(N, F)``.

        ``"conv"`` is the feature map flattened in (channel, row, column) order.
        """
        tensor = {"conv": self.feature_map, "fc": self.hidden, "y": self.y, "pool": self.pooled}[
            check_position(position)
        ]
        return tensor.flatten(1)


@runtime_checkable
class DIMEncoder(Protocol):
    """The interface of a DIM encoder: what ``TimmEncoder`` and ``PaperEncoder`` both provide.

    ``isinstance(encoder, DIMEncoder)`` checks that every attribute and method below exists
    (not their types or shapes). Any ``nn.Module`` that provides them works with ``DIMHead``,
    the training loop, the probes and the baselines.

    Attributes:
        in_chans: channels of the images it accepts.
        feature_channels: C, channels of the local feature map (``DIMHead(local_channels=...)``).
        global_dim: D, size of the summary y (``DIMHead(global_dim=...)``).
        pooled_dim: width of the backbone's pooled features (``pool``).
        feature_positions: the positions ``features`` accepts.

    Examples:
        >>> encoder = dim_ssl.TimmEncoder("resnet18", global_dim=64, in_chans=1)
        >>> assert isinstance(encoder, dim_ssl.DIMEncoder)
        >>> out = encoder.encode(images)       # feature_map, pooled, hidden, y
        >>> head(out.feature_map, out.y).loss.backward()
    """

    in_chans: int
    feature_channels: int
    global_dim: int
    pooled_dim: int
    feature_positions: tuple[str, ...]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x (N, in_chans, H, W) -> (feature_map (N, C, M, M), y (N, D))``, with gradients."""

    def encode(self, x: Tensor) -> EncoderOutput:
        """All four tensors of ``EncoderOutput`` from one pass, with gradients.

        Raises:
            ValueError: for images of the wrong shape, saying what was expected.
        """

    def pool(self, x: Tensor) -> Tensor:
        """The backbone's pooled features ``(N, pooled_dim)``, with gradients, without running f.

        The same numbers as ``encode(x).pooled``, for methods that train the backbone alone
        (SimCLR, MoCo): neither the local map's copy nor f is computed.

        Raises:
            ValueError: for images of the wrong shape.
        """

    def features(self, x: Tensor, position: str = "pool") -> Tensor:
        """Frozen features ``(N, F)`` at ``position`` (one of ``feature_positions``), without gradients.

        Leaves the train/eval mode as it is: call ``.eval()`` first so that BatchNorm uses its
        running statistics.

        Raises:
            ValueError: for an unknown position or images of the wrong shape.
        """

    def summary_parameters(self) -> Iterator[nn.Parameter]:
        """The parameters of f, the MLP from pooled features to y, which only DIM trains.

        A contrastive baseline that trains the backbone through ``pool`` freezes exactly these.
        """


def missing_encoder_members(encoder: object) -> list[str]:
    """What ``encoder`` lacks of :class:`DIMEncoder` (attribute and method names; empty: nothing).

    ``isinstance(encoder, DIMEncoder)`` says only yes or no; this says what to add.
    """
    members = [*DIMEncoder.__annotations__, "forward", "encode", "pool", "features", "summary_parameters"]
    return [name for name in members if not hasattr(encoder, name)]
