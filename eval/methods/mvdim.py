"""Multi-view Deep InfoMax: DIM's objective across augmented views of each image, as in AMDIM.

AMDIM (Bachman, Hjelm & Buchwalter, "Learning Representations by Maximizing Mutual
Information Across Views", NeurIPS 2019) scores the local features of one view of an image
against the summary of *another* view of it: the positive pair is then the same image seen
under two augmentations, so the encoder must keep what survives the augmentation instead of
what is trivially shared by a map and a summary computed from the same pixels.

There is no new head: the objective is ``dim_ssl.DIMHead`` applied to the map of view a and the
summary of view b, for every ordered pair of views a != b, averaged. Row i of both tensors is
image i, so the head's positives (its diagonal) are the same image across views and its
negatives the other images, exactly as in one-view DIM. Any estimator, critic, negatives mode
and ``gather_distributed`` work unchanged. In a plain loop, with two views from lightly's
``MultiViewTransform`` (or :class:`TranslationViews`) and the default collate::

    head = dim_ssl.DIMHead(encoder.feature_channels, encoder.global_dim, estimator="infonce")
    for (view_a, view_b), _ in loader:
        map_a, y_a = encoder(view_a)
        map_b, y_b = encoder(view_b)
        loss = (head(map_a, y_b).loss + head(map_b, y_a).loss) / 2
        optimizer.zero_grad(); loss.backward(); optimizer.step()

Composing ``DIMHead`` calls keeps one implementation of the bounds, the critics, blockwise
scoring and the DDP gather, all tested on their own; a dedicated module would repeat them.

AMDIM's local-to-local term (``local_to_local > 0``) is a second ``DIMHead`` whose "summary" is
a local feature vector: for each ordered pair of views (a, b), one location of view a per image,
drawn at random each step, is scored against every location of view b's map (positives: the
same image; negatives: the other images). Over the draws it is AMDIM's average over the
locations of view a, at 1/M^2 of the cost of scoring all of them every step::

    local_head = dim_ssl.DIMHead(C, C, alpha=0.0, beta=1.0, gamma=0.0)      # y is a local vector
    rows = torch.arange(N); i, j = torch.randint(M, (2, N))
    loss = loss + lam * local_head(map_b, map_a[rows, :, i, j]).loss
"""

from __future__ import annotations

import itertools
from typing import Any, Mapping, Sequence

import torch
from lightly.transforms.multi_view_transform import MultiViewTransform
from torch import Tensor
from torchvision.transforms import v2

from dim_ssl import DIMEncoder, DIMHead
from eval.methods.base import StepOutput, by_position
from eval.methods.dim import HEAD_DEFAULTS, build_head, head_terms, term_values
from eval.methods.registry import register_method
from eval.methods.two_view import MultiViewMethod

__all__ = ["MultiViewDIM", "TranslationViews", "random_location"]


class TranslationViews(MultiViewTransform):
    """Views of an image (a PIL image, or a tensor: uint8, or float in [0, 1]) by small
    translations, flips and, for colour images, colour changes.

    Each view: pad ``max_shift`` pixels by reflection and crop ``input_size`` at a random
    place (a translation of up to ``max_shift`` pixels with no black border), a horizontal flip
    with probability ``hf_prob``, then for colour images colour jitter (probability ``cj_prob``,
    strength ``cj_strength`` as in SimCLR: brightness, contrast, saturation ``0.8 * s``, hue
    ``0.2 * s``) and grayscale with probability ``random_gray_scale``; to a float tensor,
    normalised. It takes tensors (``takes_tensors``), so the harness hands it the prepared
    float image without a round trip through PIL's 8 bits.
    The augmentation of the multi-view DIM experiment in the DIM-family issue (translation up to
    4 pixels with reflection and a flip) is the default for grayscale images.

    Args:
        input_size: Side of the views.
        num_views: Views per image.
        max_shift: Largest translation, in pixels.
        hf_prob: Probability of a horizontal flip.
        colour: Whether the images are colour (jitter and grayscale apply only then).
        cj_prob, cj_strength, random_gray_scale: Colour jitter and grayscale, colour images only.
        normalize: ``{"mean": [...], "std": [...]}``.
    """

    takes_tensors = True

    def __init__(
        self,
        input_size: int = 32,
        num_views: int = 2,
        max_shift: int = 4,
        hf_prob: float = 0.5,
        colour: bool = True,
        cj_prob: float = 0.8,
        cj_strength: float = 0.5,
        random_gray_scale: float = 0.2,
        normalize: Mapping[str, Sequence[float]] | None = None,
    ) -> None:
        if num_views < 2 or max_shift < 0:
            raise ValueError(f"need num_views >= 2 and max_shift >= 0; got {num_views}, {max_shift}")
        steps: list[Any] = [
            v2.Pad(max_shift, padding_mode="reflect"),
            v2.RandomCrop(input_size),
            v2.RandomHorizontalFlip(hf_prob),
        ]
        if colour:
            s = cj_strength
            jitter = v2.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)
            steps += [v2.RandomApply([jitter], p=cj_prob), v2.RandomGrayscale(random_gray_scale)]
        steps += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
        if normalize is not None:
            steps.append(v2.Normalize(list(normalize["mean"]), list(normalize["std"])))
        view = v2.Compose([*steps, v2.ToPureTensor()])
        super().__init__(transforms=[view] * num_views)


@register_method("mvdim")
class MultiViewDIM(MultiViewMethod):
    """Multi-view DIM (AMDIM's cross-view objective): local features of each view against the
    summary of every other view, through ``dim_ssl.DIMHead``.

    Args:
        encoder: A :class:`dim_ssl.DIMEncoder`; all of it is trained.
        num_classes, image_shape, transform, **common: See
            :class:`~eval.methods.two_view.MultiViewMethod` (``transform``: keyword arguments of
            :class:`TranslationViews`, e.g. ``{max_shift: 2}``).
        views: Views per image (2: AMDIM's pair).
        head: Keyword arguments of ``dim_ssl.DIMHead`` (missing ones: DIM's defaults).
        local_to_local: Weight of AMDIM's local-to-local term (0: off): a random location of
            each view against every location of the other, through a second head with the
            same estimator, critic and negatives (local term only, no prior).
        second_stage: A second local scale, AMDIM's multi-scale objective: the map of this
            backbone stage (an index into ``backbone.feature_info``; the paper encoder's conv
            block 0, 1 or 2) of each view against the summary of every other view, through its
            own head (local term only), added to the loss. Needs an encoder with
            ``encode_with(x, stages)`` and ``stage_channels`` (``TimmEncoder``, ``PaperEncoder``):
            both maps come from one pass.

    Logged terms: those of DIM (``train_local_mi``, ...), averaged over the ordered view pairs,
    and ``train_local_to_local_mi`` and ``train_second_scale_mi`` when those terms are on.
    """

    # The paper's code, as DIM: Adam, lr 1e-4, betas (0.5, 0.999), no schedule.
    recipe = {"optimizer": {"name": "adam", "lr": 1.0e-4, "betas": [0.5, 0.999]}}
    view_transform = TranslationViews

    def __init__(
        self,
        encoder: DIMEncoder,
        num_classes: int,
        image_shape: Sequence[int],
        *,
        views: int = 2,
        head: Mapping[str, Any] = HEAD_DEFAULTS,
        local_to_local: float = 0.0,
        second_stage: int | None = None,
        **common: Any,
    ) -> None:
        if views < 2:
            raise ValueError(f"the multi-view DIM needs at least 2 views per image; got views={views}")
        if not local_to_local >= 0:
            raise ValueError(f"local_to_local must be a weight >= 0; got {local_to_local}")
        self.num_views = int(views)  # before the base reads it
        super().__init__(encoder, num_classes, image_shape, **common)
        self.head = build_head(encoder, head)
        self.terms = head_terms(self.head)
        self.local_to_local = float(local_to_local)
        self.local_head: DIMHead | None = None
        if self.local_to_local > 0:
            settings = {**HEAD_DEFAULTS, **dict(head), "alpha": 0.0, "beta": 1.0, "gamma": 0.0}
            channels = encoder.feature_channels
            self.local_head = DIMHead(channels, channels, **settings)
        self.second_stage = second_stage
        self.second_head: DIMHead | None = None
        if second_stage is not None:
            if not callable(getattr(encoder, "encode_with", None)):
                raise ValueError(
                    f"second_stage needs an encoder with encode_with(x, stages) and stage_channels(stage) "
                    f"(TimmEncoder, PaperEncoder); {type(encoder).__name__} has none"
                )
            settings = {**HEAD_DEFAULTS, **dict(head), "alpha": 0.0, "beta": 1.0, "gamma": 0.0}
            self.second_head = DIMHead(encoder.stage_channels(second_stage), encoder.global_dim, **settings)
        heads = {"local_to_local_mi": self.local_head, "second_scale_mi": self.second_head}
        self.track_terms(*self.terms, *(name for name, extra in heads.items() if extra is not None))

    def view_options(self, channels: int) -> dict[str, Any]:
        """:class:`TranslationViews` with this method's view count, colour changes for colour data."""
        return {"num_views": self.num_views, "colour": channels == 3, **self.transform_overrides}

    def training_loss(self, views: Sequence[Tensor]) -> StepOutput:
        """The mean over ordered view pairs (a, b), a != b, of the head on (map of a, summary of b)."""
        count = len(views)
        # One pass over every view: BatchNorm sees all of them, and one batch is faster.
        batch = torch.cat(list(views))
        if self.second_head is None:
            encoded, second = self.encoder.encode(batch), None
        else:
            encoded, (second,) = self.encoder.encode_with(batch, [self.second_stage])
        maps, summaries = encoded.feature_map.chunk(count), encoded.y.chunk(count)
        pairs = list(itertools.permutations(range(count), 2))
        outputs = [self.head(maps[a], summaries[b]) for a, b in pairs]
        loss = torch.stack([out.loss for out in outputs]).mean()
        terms = {
            name: torch.stack([term_values(out, self.terms)[name] for out in outputs]).mean() for name in self.terms
        }
        if self.local_head is not None:
            local = [self.local_head(maps[b], random_location(maps[a])) for a, b in pairs]
            loss = loss + self.local_to_local * torch.stack([out.loss for out in local]).mean()
            terms["local_to_local_mi"] = torch.stack([out.local_mi for out in local]).mean()
        if self.second_head is not None:
            second_maps = second.chunk(count)
            scale = [self.second_head(second_maps[a], summaries[b]) for a, b in pairs]
            loss = loss + torch.stack([out.loss for out in scale]).mean()
            terms["second_scale_mi"] = torch.stack([out.local_mi for out in scale]).mean()
        return StepOutput(loss, features=by_position(encoded), terms=terms)


def random_location(feature_map: Tensor) -> Tensor:
    """One local feature vector per image, (N, C), at a location drawn uniformly for each image."""
    n, _, height, width = feature_map.shape
    rows = torch.arange(n, device=feature_map.device)
    i = torch.randint(height, (n,), device=feature_map.device)
    j = torch.randint(width, (n,), device=feature_map.device)
    return feature_map[rows, :, i, j]
