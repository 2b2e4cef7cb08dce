"""``DIMHead``: the Deep InfoMax objective as one module that drops into any training loop.

Hjelm et al. 2019, eq. 8: the encoder maximises

    alpha * I(X; E(X))  +  beta / M^2 * sum_i I(X^(i); E(X))

(the global and the local term, each a lower bound from ``dim_ssl.estimators``), and plays the
prior game of ``dim_ssl.prior`` with weight gamma. ``DIMHead(feature_map, y).loss`` is the one
number to minimise: ``-(alpha * I_global + beta * I_local) + gamma * prior``, plus, optionally,
AMDIM's score penalty ``lam * mean(s^2)`` for each term (Bachman et al. 2019; ``score_penalty``),
whose bounds may also be taken on soft-clipped scores ``c * tanh(s / c)`` (``score_clip``).
"""

from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass
from functools import partial
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from dim_ssl.critics import DotCritic, get_critic_shape
from dim_ssl.distributed import _gather_sizes, all_reduce_log_sum_exp, gather_with_grad, world_size
from dim_ssl.estimators import ReduceNegatives, get_estimator, in_bound_precision, mi_lower_bound_from_pairs
from dim_ssl.negatives import gather_locations, shuffled_partners
from dim_ssl.prior import PRIORS, PriorMatching
from dim_ssl.scoring import all_pairs_bound_and_mean_square, squared_sum, tanh_clip

# The paper's two headline models (Hjelm et al. 2019, section 4.2).
PRESETS: dict[str, dict[str, float]] = {
    "dim_l": {"alpha": 0.0, "beta": 1.0, "gamma": 0.1},
    "dim_g": {"alpha": 1.0, "beta": 0.0, "gamma": 1.0},
}


@dataclass
class DIMOutput:
    """What ``DIMHead`` returns.

    Attributes:
        loss: the objective to minimise, with gradients for encoder, critics and discriminator;
            the only number that includes the score penalty (``DIMHead(score_penalty=...)``).
        global_mi: the global MI bound in nats (detached); NaN when alpha == 0 (not computed).
            With ``score_clip`` it is the bound of the clipped critic ``c * tanh(T / c)``. 0 for
            a critic that tells nothing apart; at most 2 log 2 for JSD, log K for InfoNCE (K the
            candidates of one positive: N, 2 for shuffled pairs), unbounded for DV.
        local_mi: the local MI bound in nats, averaged over locations (detached); NaN when beta == 0.
            With ``score_clip`` it is the bound of the clipped critic, as ``global_mi``. InfoNCE
            with ``negatives="all"`` has K = 1 + (N - 1) * M^2 candidates per positive.
        prior_loss: the prior discriminator's cross-entropy (detached): about log 4 = 1.386 when
            it cannot tell prior samples from the encoder's outputs; NaN without a prior term.
        prior_encoder_loss: the encoder's adversarial loss ``-log D(E(x))`` (detached).
    """

    loss: Tensor
    global_mi: Tensor
    local_mi: Tensor
    prior_loss: Tensor
    prior_encoder_loss: Tensor


class DIMHead(nn.Module):
    """Deep InfoMax head: critics, MI estimators, negatives and the prior adversary in one module.

    Follows Hjelm et al., "Learning deep representations by mutual information estimation and
    maximization", ICLR 2019. Build it next to any encoder that returns a local feature map
    ``(N, C, M, M)`` and a summary ``y`` of size D; one optimizer over encoder and head
    parameters and one ``loss.backward()`` train everything, the prior adversary included.

    Args:
        local_channels: C, channels of the local feature map.
        global_dim: D, size of the summary vector y.
        estimator: MI lower bound, a name in ``dim_ssl.estimators.ESTIMATORS``: ``"jsd"``,
            ``"infonce"`` or ``"dv"``.
        critic: critic shape, a name in ``dim_ssl.critics.CRITICS``: ``"dot"``
            (encode-and-dot-product) or ``"concat"`` (concat-and-convolve).
        negatives: ``"all"`` (every other image of the batch; local InfoNCE also takes all their
            locations, ``(N-1) * M^2`` negatives) or ``"shuffle"`` (one negative per positive,
            the map shuffled across the batch at each location; the only mode for ``"concat"``).
        alpha, beta, gamma: weights of the global, local and prior terms.
        prior: ``"uniform"`` (sigmoid(y) vs U[0,1]^D), ``"gaussian"`` (y vs N(0, I)) or None (no
            prior term: pass gamma=0 with it, else a warning says gamma acts on nothing).
        gather_distributed: score each rank's summaries against the inputs of every rank
            (negatives from the global batch) with gradients; loss and DDP-averaged gradients
            equal one process on the whole batch when ranks hold equal batch sizes.
        hidden_dim: width of the critics' hidden layers (paper: 512).
        embed_dim: size of the dot critics' embeddings (paper: 512).
        gradient_penalty: weight of the prior discriminator's input-gradient penalty (0: off).
        check_inputs: verify shapes and finiteness on every call (one sum per input and one
            host sync; the exact per-element test runs only when a sum is not finite).
        max_scores_in_memory: with ``negatives="all"``, the most critic scores held at once.
            None (default): all ``N_all * n * L`` scores of a term at once, fastest. Otherwise
            candidate images are scored in blocks of ``max(1, max_scores_in_memory // (n * L))``,
            each recomputed in the backward (``dim_ssl.scoring``): the same values and
            gradients, peak memory bounded by one block, about one more critic forward.
        num_locations: score only this many of the M^2 locations of the local term, a random
            subset drawn at every call (the same for all images of the batch); None: all.
            Local InfoNCE then has ``(N - 1) * num_locations`` negatives per positive. Under
            ``gather_distributed`` each rank draws its own subset.
        score_clip: c > 0, AMDIM's soft clip (Bachman et al. 2019 use 20): every critic score s
            enters the bounds as ``c * tanh(s / c)``, so no estimator sees a score beyond c in
            magnitude (DV stays within ``[-2c, 2c]``). ``out.local_mi`` and ``out.global_mi`` are
            the bounds of this clipped critic. None (default): raw scores.
        score_penalty: lam >= 0, AMDIM's score penalty (Bachman et al. 2019 use 4e-2): adds
            ``lam * mean(s^2)`` over the raw (unclipped) scores to ``out.loss``, once for each
            term computed (local, global; not weighted by alpha or beta). The mean runs over
            every score the term computed, positives and negatives at all scored locations:
            ``N_all * n * L`` scores for ``negatives="all"`` (the same however
            ``max_scores_in_memory`` splits them), ``2 * n * L`` (the positives and their shuffled
            partners) for ``"shuffle"``. Under ``gather_distributed`` it is each rank's mean over
            the scores of its own n summaries, so that, with equal rank batches, the DDP average
            of the rank losses equals one process on the whole batch. It enters ``out.loss`` only:
            the reported bounds do not include it. 0 (default): off, nothing computed.

    Raises:
        ValueError: for an unknown estimator, critic, negatives mode or prior, ``"concat"`` with
            ``"all"``, negative weights or all weights zero, ``score_clip`` not None nor a finite
            number > 0, ``score_penalty`` not a finite number >= 0; and in ``forward`` for inputs
            that do not match the head (channels, global size, batch sizes, a batch of one, NaN or inf)
            or that it cannot take (a non-floating dtype; float64 into a float32 head).

    Warns:
        UserWarning: ``gamma > 0`` with ``prior=None``: no prior term for gamma to weigh.

    Mixed precision: under ``torch.autocast`` (bfloat16 or float16) the critics' products run in
    low precision while the bounds, the prior losses and ``out.loss`` stay float32.

    Examples:
        >>> encoder = dim_ssl.TimmEncoder("resnet18", global_dim=64)
        >>> head = dim_ssl.DIMHead(encoder.feature_channels, encoder.global_dim)
        >>> optimizer = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=1e-4)
        >>> for images, _ in loader:              # a default DataLoader: one view per image
        ...     out = head(*encoder(images))
        ...     optimizer.zero_grad()
        ...     out.loss.backward()
        ...     optimizer.step()
    """

    def __init__(
        self,
        local_channels: int,
        global_dim: int,
        estimator: str = "jsd",
        critic: str = "dot",
        negatives: str = "all",
        alpha: float = 0.0,
        beta: float = 1.0,
        gamma: float = 0.1,
        prior: str | None = "uniform",
        gather_distributed: bool = False,
        hidden_dim: int = 512,
        embed_dim: int = 512,
        gradient_penalty: float = 0.0,
        check_inputs: bool = True,
        max_scores_in_memory: int | None = None,
        num_locations: int | None = None,
        score_clip: float | None = None,
        score_penalty: float = 0.0,
    ) -> None:
        super().__init__()
        get_estimator(estimator)
        shape = get_critic_shape(critic, negatives)
        if prior is not None and prior not in PRIORS:
            raise ValueError(f"unknown prior {prior!r}; expected one of {', '.join(PRIORS)} or None")
        for name, weight in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
            if not math.isfinite(weight) or weight < 0:
                raise ValueError(f"{name} must be a finite weight >= 0; got {weight}")
        if alpha == 0 and beta == 0 and (gamma == 0 or prior is None):
            raise ValueError("alpha, beta and gamma are all zero (or gamma without a prior): the head has no objective")
        if prior is None and gamma > 0:
            # Not an error: prior=None is how a user turns the prior term off, and gamma keeps its
            # default 0.1. But a gamma that acts on nothing may be a mistake (prior_loss reads NaN).
            warnings.warn(
                f"DIMHead: gamma={gamma} has no effect with prior=None (no prior term; out.prior_loss "
                "reads NaN). Pass gamma=0 with prior=None, or a prior ('uniform', 'gaussian')",
                UserWarning,
                stacklevel=2,
            )
        for name, size in (("local_channels", local_channels), ("global_dim", global_dim)):
            if size < 1:
                raise ValueError(f"{name} must be >= 1; got {size}")
        for name, limit in (("max_scores_in_memory", max_scores_in_memory), ("num_locations", num_locations)):
            if limit is not None and (isinstance(limit, bool) or int(limit) != limit or limit < 1):
                raise ValueError(f"{name} must be None or an integer >= 1; got {limit!r}")
        if score_clip is not None and not (_is_real(score_clip) and math.isfinite(score_clip) and score_clip > 0):
            raise ValueError(f"score_clip must be None or a finite number > 0 (AMDIM: 20); got {score_clip!r}")
        if not (_is_real(score_penalty) and math.isfinite(score_penalty) and score_penalty >= 0):
            raise ValueError(f"score_penalty must be a finite weight >= 0 (AMDIM: 4e-2); got {score_penalty!r}")

        self.local_channels = local_channels
        self.global_dim = global_dim
        self.estimator = estimator
        self.critic_kind = critic
        self.negatives = negatives
        self.alpha, self.beta, self.gamma = float(alpha), float(beta), float(gamma)
        self.gather_distributed = gather_distributed
        self.check_inputs = check_inputs
        self.max_scores_in_memory = None if max_scores_in_memory is None else int(max_scores_in_memory)
        self.num_locations = None if num_locations is None else int(num_locations)
        self.score_clip = None if score_clip is None else float(score_clip)
        self.score_penalty = float(score_penalty)

        # Only the networks a term needs, so that every parameter gets a gradient (DDP insists).
        self.local_critic = self.global_critic = self.prior_matching = None
        widths = shape.options(hidden_dim=hidden_dim, embed_dim=embed_dim)
        if beta > 0:
            self.local_critic = shape.local_critic(local_channels, global_dim, **widths)
        if alpha > 0:
            self.global_critic = shape.global_critic(local_channels, global_dim, **widths)
        if gamma > 0 and prior is not None:
            self.prior_matching = PriorMatching(global_dim, prior, gradient_penalty)

    @classmethod
    def from_preset(cls, preset: str, local_channels: int, global_dim: int, **overrides: Any) -> "DIMHead":
        """The paper's DIM(L) (``"dim_l"``: alpha=0, beta=1, gamma=0.1) or DIM(G) (``"dim_g"``: 1, 0, 1)."""
        key = preset.lower().replace("(", "_").replace(")", "").strip("_")
        if key not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
        return cls(local_channels, global_dim, **{**PRESETS[key], **overrides})

    def discriminator_parameters(self) -> Iterator[nn.Parameter]:
        """The prior discriminator's parameters, for users who want a separate optimizer for it."""
        return iter(()) if self.prior_matching is None else self.prior_matching.parameters()

    def critic_parameters(self) -> Iterator[nn.Parameter]:
        """The MI critics' parameters (everything but the prior discriminator)."""
        for critic in (self.local_critic, self.global_critic):
            if critic is not None:
                yield from critic.parameters()

    def forward(self, feature_map: Tensor, y: Tensor) -> DIMOutput:
        """Computes the DIM objective for a batch.

        Precision: the critics' and the discriminator's layers run in the head's parameter
        dtype, or in low precision under ``torch.autocast``; every bound, the prior losses and
        ``out.loss`` are computed in at least float32 whatever the autocast dtype. Inputs of a
        lower precision than the head's parameters (float16 or bfloat16 into a float32 head,
        outside autocast) are cast up to them, which loses nothing; other mismatches are
        refused (see Raises).

        Args:
            feature_map: ``(N, C, M, M)`` local features C(x), post-ReLU as in the paper; a non-square
                map ``(N, C, H, W)`` works the same way (its H*W locations are the M^2 of the math).
            y: ``(N, D)`` summaries E(x) of the same images.

        Raises:
            ValueError: for non-floating inputs, inputs of a higher precision than the head's
                parameters (float64 into a float32 head), and, with ``check_inputs``, inputs
                that do not match the head (see the class).
        """
        feature_map, y = self._match_dtype(feature_map, "feature_map"), self._match_dtype(y, "y")
        if self.check_inputs:
            self._check(feature_map, y)
        wide = torch.promote_types(y.dtype, torch.float32)  # what the bounds come out in
        nan = y.new_full((), float("nan"), dtype=wide)
        loss = y.new_zeros((), dtype=wide)
        global_mi = local_mi = prior_loss = prior_encoder_loss = nan

        if self.local_critic is not None:
            local_mi, local_square = self._mi(self.local_critic, feature_map, y, per_location=True)
            loss = loss - self.beta * local_mi
            if local_square is not None:
                loss = loss + self.score_penalty * local_square
        if self.global_critic is not None:
            global_mi, global_square = self._mi(self.global_critic, feature_map, y, per_location=False)
            loss = loss - self.alpha * global_mi
            if global_square is not None:
                loss = loss + self.score_penalty * global_square
        if self.prior_matching is not None:
            prior = self.prior_matching(y)
            loss = loss + self.gamma * prior.total
            prior_loss, prior_encoder_loss = prior.discriminator, prior.encoder

        return DIMOutput(
            loss=loss,
            global_mi=global_mi.detach(),
            local_mi=local_mi.detach(),
            prior_loss=prior_loss.detach(),
            prior_encoder_loss=prior_encoder_loss.detach(),
        )

    def _gather(self, tensor: Tensor) -> tuple[Tensor, int]:
        return gather_with_grad(tensor) if self.gather_distributed else (tensor, 0)

    def _mi(
        self, critic: nn.Module, feature_map: Tensor, y: Tensor, per_location: bool
    ) -> tuple[Tensor, Tensor | None]:
        """One MI term: its bound (of the clipped scores) and the mean square of its raw scores
        (None without a score penalty). A ``DotCritic`` scores from factors; any other critic
        scores given pairs (``dim_ssl.critics.CriticShape``), which only shuffled negatives afford."""
        if isinstance(critic, DotCritic):
            return self._dot_mi(critic, feature_map, y, per_location)
        reduce = all_reduce_log_sum_exp if self.gather_distributed else None
        count = y.shape[0]
        if per_location:
            feature_map = self._sample_map_locations(feature_map)

        # Concat-and-convolve: one critic forward for the positives, one for shuffled negatives.
        if per_location:
            vectors, offset = self._gather(critic.input_vectors(feature_map))  # (N_all, M*M, C)
            partners = shuffled_partners(vectors.shape[0], offset, count, vectors.shape[1], vectors.device)
            positive = critic.score_vectors(_rows(vectors, offset, count), y)  # (n, L)
            negative = critic.score_vectors(gather_locations(vectors, partners), y)
        else:
            maps, offset = self._gather(feature_map)  # (N_all, C, M, M)
            partners = shuffled_partners(maps.shape[0], offset, count, 1, maps.device)
            positive, negative = critic(feature_map, y), critic(maps[partners[:, 0]], y)
        return self._pairs_bound(positive, negative, reduce)

    def _dot_mi(
        self, critic: DotCritic, feature_map: Tensor, y: Tensor, per_location: bool
    ) -> tuple[Tensor, Tensor | None]:
        """Encode-and-dot-product: scores ``<f(x_i[l]), g(y_j)>`` from factors (``DotCritic``).

        The critic's last input layer is folded into the summary side when that is cheaper
        (``DotCritic.fold_pays``): the same scores for about half the multiply-adds when
        location vectors outnumber summaries, as they do for the local term.
        """
        reduce = all_reduce_log_sum_exp if self.gather_distributed else None
        if per_location:
            feature_map = self._sample_map_locations(feature_map)
        count, locations = feature_map.shape[0], critic.vectors_per_image(feature_map)
        # What gets gathered depends on the two choices below, so every rank must make the
        # same ones: decide from the largest rank batch and the global one.
        largest, candidates = self._batch_sizes(count, feature_map.device)
        pairs = candidates * locations * largest if self.negatives == "all" else 2 * largest * locations
        fold = critic.fold_pays(candidates * locations, largest, pairs)
        summaries, offsets = critic.summary_factors(y, fold)  # (n, K), (n,) or None

        if self.negatives == "all":
            rows = self._rows_per_chunk(largest, locations)
            if rows is not None and rows < candidates:
                # Memory-bounded: gather the maps themselves; each block of candidate images
                # computes (and, in the backward, recomputes) its own critic activations.
                inputs, offset = self._gather(feature_map)  # (N_all, C, M, M)
                transform = partial(_input_factors, critic, fold=fold)
            else:
                inputs, offset = self._gather(_input_factors(critic, feature_map, fold))  # (N_all, L, K)
                transform, rows = None, None
            return all_pairs_bound_and_mean_square(
                inputs,
                summaries,
                offsets,
                self.estimator,
                offset,
                negatives_across_locations=per_location,
                reduce_negatives=reduce,
                input_transform=transform,
                rows_per_chunk=rows,
                score_clip=self.score_clip,
                mean_square=self.score_penalty > 0,
            )

        inputs, offset = self._gather(_input_factors(critic, feature_map, fold))  # (N_all, L, K)
        partners = shuffled_partners(inputs.shape[0], offset, count, locations, inputs.device)
        by_summary = summaries.unsqueeze(-1)  # (n, K, 1): one batched matrix-vector product each
        positive = (_rows(inputs, offset, count) @ by_summary).squeeze(-1)  # (n, L)
        negative = (gather_locations(inputs, partners) @ by_summary).squeeze(-1)
        if offsets is not None:
            positive, negative = positive + offsets[:, None], negative + offsets[:, None]
        return self._pairs_bound(positive, negative, reduce)

    def _pairs_bound(
        self, positive: Tensor, negative: Tensor, reduce: ReduceNegatives | None
    ) -> tuple[Tensor, Tensor | None]:
        """The bound of paired scores (shuffled negatives), clipped, and the mean square of the
        raw scores over positives and negatives together (None without a score penalty)."""
        positive, negative = in_bound_precision(positive), in_bound_precision(negative)
        mean_square = None
        if self.score_penalty > 0:
            mean_square = (squared_sum(positive) + squared_sum(negative)) / (positive.numel() + negative.numel())
        positive, negative = tanh_clip(positive, self.score_clip), tanh_clip(negative, self.score_clip)
        return mi_lower_bound_from_pairs(positive, negative, self.estimator, reduce), mean_square

    def _batch_sizes(self, count: int, device: torch.device) -> tuple[int, int]:
        """(largest batch on any rank, global batch): ``(count, count)`` without gathering."""
        if not self.gather_distributed or world_size() == 1:
            return count, count
        sizes = _gather_sizes(count, device)
        return max(sizes), sum(sizes)

    def _rows_per_chunk(self, count: int, locations: int) -> int | None:
        if self.max_scores_in_memory is None:
            return None
        return max(1, self.max_scores_in_memory // (count * locations))

    def _location_subset(self, locations: int, device: torch.device) -> Tensor | None:
        if self.num_locations is None or self.num_locations >= locations:
            return None
        return torch.randperm(locations, device=device)[: self.num_locations]

    def _sample_map_locations(self, feature_map: Tensor) -> Tensor:
        """``(N, C, M, M)`` to an ``(N, C, num_locations, 1)`` map of randomly chosen locations.

        The same subset for every image of the batch, drawn anew at every call.
        """
        subset = self._location_subset(feature_map[0, 0].numel(), feature_map.device)
        if subset is None:
            return feature_map
        return feature_map.flatten(2).index_select(2, subset).unsqueeze(-1)

    def _match_dtype(self, tensor: Tensor, name: str) -> Tensor:
        """``tensor`` in a dtype the head's layers take: refuses non-floating inputs, casts a
        lower precision up to the parameters', refuses a higher one (it would be cut down)."""
        if not tensor.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor (the encoder's output); got {tensor.dtype}")
        parameters = next(self.parameters()).dtype
        if tensor.dtype == parameters:
            return tensor
        low = (torch.float16, torch.bfloat16)
        if torch.is_autocast_enabled(tensor.device.type) and tensor.dtype in (*low, torch.float32):
            return tensor  # autocast casts what meets the parameters in its products
        if tensor.dtype in low and parameters not in low:
            return tensor.to(parameters)  # exact: every half-precision value is a float32 value
        raise ValueError(
            f"{name} is {tensor.dtype} but the head's parameters are {parameters}. Pass {parameters} inputs, "
            f"or convert the head with head.to({tensor.dtype}); for half precision, run encoder and head under "
            "torch.autocast(device_type, dtype=torch.bfloat16 or torch.float16), which keeps the head's "
            "parameters and its MI bounds in float32"
        )

    def _check(self, feature_map: Tensor, y: Tensor) -> None:
        if feature_map.dim() != 4:
            raise ValueError(
                f"feature_map must be 4-D (N, C, M, M); got shape {tuple(feature_map.shape)}. "
                "A ViT's tokens need reshaping to a grid (TimmEncoder does this)."
            )
        if y.dim() != 2:
            raise ValueError(f"y must be 2-D (N, D); got shape {tuple(y.shape)}")
        if feature_map.shape[1] != self.local_channels:
            raise ValueError(
                f"feature map has {feature_map.shape[1]} channels; the head was built for {self.local_channels} "
                "(local_channels=encoder.feature_channels)"
            )
        if y.shape[1] != self.global_dim:
            raise ValueError(
                f"y has size {y.shape[1]}; the head was built for global_dim={self.global_dim} "
                "(global_dim=encoder.global_dim)"
            )
        if feature_map.shape[0] != y.shape[0]:
            raise ValueError(
                f"feature_map holds {feature_map.shape[0]} images but y holds {y.shape[0]}: "
                "they must come from the same batch"
            )
        if y.shape[0] < 2:
            raise ValueError(
                "a batch of one image has no in-batch negatives: use a batch size >= 2 "
                "(DataLoader(drop_last=True) avoids a final batch of one)"
            )
        # One sum per input and one host sync: a NaN or inf anywhere makes its sum non-finite.
        # Only then (or when finite values overflow the sum) look at every element.
        if not bool(torch.isfinite(_wide_sum(feature_map) + _wide_sum(y))):
            bad = [name for name, t in (("feature_map", feature_map), ("y", y)) if not torch.isfinite(t).all()]
            if not bad:
                return
            which = bad[0]
            raise ValueError(
                f"{which} contains NaN or inf: check the inputs and the learning rate "
                "(a diverged encoder produces them), or use gradient clipping"
            )


def _is_real(value: Any) -> bool:
    """A real number, not a bool (``True`` is an int to Python, never a meant weight)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _rows(tensor: Tensor, start: int, count: int) -> Tensor:
    """``tensor[start : start + count]``, or the tensor itself when that is all of it (a full
    slice would cost a zero-filled copy of the tensor in the backward)."""
    return tensor if start == 0 and count == tensor.shape[0] else tensor[start : start + count]


def _input_factors(critic: DotCritic, feature_map: Tensor, fold: bool) -> Tensor:
    """The input side of a dot critic's scores for a (block of the) feature map: ``(N, L, K)``."""
    return critic.input_factors(critic.input_vectors(feature_map), fold)


def _wide_sum(tensor: Tensor) -> Tensor:
    """The sum of all elements in at least float32 (a half-precision sum overflows early)."""
    return tensor.sum(dtype=torch.promote_types(tensor.dtype, torch.float32))
