"""Lower bounds on mutual information computed from critic scores, one registry of them.

Scores follow one convention everywhere (docs/design.md, "Meaning of the numbers"): a tensor
of shape ``(N, N, *rest)`` with ``scores[i, j, ...] = T(x_i, y_j)``; i indexes the input /
local side, j the summary side. The diagonal ``i == j`` holds the joint (positive) pairs, every
off-diagonal entry a product-of-marginals (negative) pair, and trailing dimensions (locations)
are averaged. Each bound is in nats and is to be *maximised*.

Under data parallelism one rank scores all gathered candidates against its own summaries,
so the score tensor is rectangular, ``(N_all, n, *rest)``, and the positive of column j sits
at row ``j + positive_offset``. The functions here take that offset; the public
``mi_lower_bound`` is the square case.

Every bound is an ``Estimator`` registered by name in ``ESTIMATORS``. An estimator reads the
scores through two things only: the positives, and one statistic of the negatives that can be
computed on blocks of candidate rows and combined exactly (a sum, a log-sum-exp). That split
is what lets ``dim_ssl.scoring`` score in memory-bounded chunks and ``dim_ssl.distributed``
combine ranks. A new bound is one ``Estimator`` subclass and one entry in ``ESTIMATORS``.

References:
    Hjelm et al., "Learning deep representations by mutual information estimation and
    maximization", ICLR 2019 (eqs. 2-5). Nowozin et al., "f-GAN", 2016 (JSD).
    Belghazi et al., "MINE", 2018 (DV). van den Oord et al., "CPC", 2018 (InfoNCE).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from dim_ssl.suggest import did_you_mean

LOG2 = math.log(2.0)

# (this rank's log-sum-exp of its negatives, their count) -> the same over all ranks.
ReduceNegatives = Callable[[Tensor, float], tuple[Tensor, float]]


class Estimator(ABC):
    """One lower bound on MI, in the pieces that make blockwise and data-parallel scoring exact.

    The bound of a score tensor ``(rows, n, *rest)`` (positives at ``(j + offset, j)``) is

        ``bound(positives, combine(stack([negative_statistic(block) for block in row_blocks])))``

    for any split of the candidate rows into blocks, in row order: ``negative_statistic``
    summarises a block's negatives, ``combine`` merges the blocks' summaries, ``bound`` turns
    positives and summary into nats. ``pair_statistic`` is the same summary for explicitly
    paired scores (one negative per positive, as shuffled negatives give).

    To add a bound, subclass this, implement the four methods, and register an instance:
    ``ESTIMATORS["name"] = MyEstimator()``. ``mi_lower_bound``, ``DIMHead(estimator="name")``,
    chunked scoring and the tests that run over ``ESTIMATORS`` then take it.
    """

    @abstractmethod
    def negative_statistic(
        self, scores: Tensor, positive: Tensor, positive_offset: int, negatives_across_locations: bool
    ) -> Tensor:
        """What the bound needs from the negatives of a block of ``(rows, n, *rest)`` scores.

        Args:
            scores: the block's scores, ``scores[i, j, ...] = T(x_i, y_j)``.
            positive: ``positive_scores(scores, positive_offset)``, ``(k, *rest)`` for the k
                positives that fall in the block (the caller has them anyway: one diagonal
                view, so one gradient buffer in the backward instead of two).
            positive_offset: where the positives sit in *this* block, ``(j + offset, j)``; some
                or all of them may lie outside it (a negative offset, or past its last row).
            negatives_across_locations: whether the candidates of the positive ``(j, j, l)``
                span every location of the other images (InfoNCE) or only location l.
        """

    @abstractmethod
    def pair_statistic(self, negative: Tensor) -> Tensor:
        """The ``negative_statistic`` of ``(n, *rest)`` negative scores, one per positive."""

    @abstractmethod
    def combine(self, statistics: Tensor) -> Tensor:
        """The statistic of a whole score tensor from its blocks' statistics stacked on dim 0."""

    @abstractmethod
    def bound(
        self,
        positive: Tensor,
        statistic: Tensor,
        num_negatives: int,
        reduce_negatives: ReduceNegatives | None = None,
    ) -> Tensor:
        """The bound in nats from the positive scores ``(n, *rest)`` and the negatives' statistic.

        Args:
            positive: the joint pairs' scores.
            statistic: the negatives' statistic (``negative_statistic`` combined over blocks,
                or ``pair_statistic``).
            num_negatives: how many negative scores the statistic covers.
            reduce_negatives: under data parallelism, turns this rank's log-sum-exp of its
                negatives and their count into the global ones (``dim_ssl.distributed``). Only
                a bound whose negative term is not a mean over summaries needs it (DV); the
                others ignore it, as DDP's gradient average over ranks already equals the
                single-process mean.
        """


class JSDEstimator(Estimator):
    """Jensen-Shannon: ``mean_pos[log 2 - softplus(-s)] - mean_neg[softplus(s) - log 2]``.

    The f-GAN bound of the Jensen-Shannon divergence (Nowozin et al.; Hjelm et al. eq. 4),
    shifted by log 2 on each side so that an uninformative critic (all scores 0) gives 0.
    Statistic: ``sum softplus(s)`` over the negatives, a scalar; blocks add up.
    """

    def negative_statistic(
        self, scores: Tensor, positive: Tensor, positive_offset: int, negatives_across_locations: bool
    ) -> Tensor:
        # The sum over everything minus the sum over the positives: no mask, no masked copy.
        # (The diagonal's two gradient contributions cancel exactly: the same softplus' on the
        # same value.)
        return F.softplus(scores).sum() - F.softplus(positive).sum()

    def pair_statistic(self, negative: Tensor) -> Tensor:
        return F.softplus(negative).sum()

    def combine(self, statistics: Tensor) -> Tensor:
        return statistics.sum(dim=0)

    def bound(
        self,
        positive: Tensor,
        statistic: Tensor,
        num_negatives: int,
        reduce_negatives: ReduceNegatives | None = None,
    ) -> Tensor:
        # E_P[-sp(-T)] - E_PxQ[sp(T)], shifted by log 2 on each side (Hjelm et al. eq. 4).
        positive_term = (LOG2 - F.softplus(-positive)).mean()
        negative_term = statistic / num_negatives - LOG2
        return positive_term - negative_term


class InfoNCEEstimator(Estimator):
    """InfoNCE: ``log K`` + for every summary ``y_j``, the log-softmax over its K candidates at the positive.

    van den Oord et al. (CPC): ``I(X; Y) >= log K - L_NCE``, with ``L_NCE`` the cross-entropy of
    picking the positive among K candidates; Hjelm et al. eq. 5. The candidates of the positive
    ``(j, j, l)`` are the positive and its negatives: the other images at location l
    (K = N_all), or every location of the other images with ``negatives_across_locations`` (the
    DIM reference implementation of local InfoNCE; K = 1 + (N_all - 1) * L), or its one
    shuffled partner (K = 2). The value lies in ``[log K - inf, log K]``: 0 for an uninformative
    critic (all scores equal), log K for a perfect one. The ``log K`` is a constant: the
    gradients are those of the mean log-softmax.
    Statistic: for every summary j, ``logsumexp`` over its negatives, ``(n,)`` across locations
    else ``(n, *rest)``; blocks combine by ``logsumexp``.
    """

    def negative_statistic(
        self, scores: Tensor, positive: Tensor, positive_offset: int, negatives_across_locations: bool
    ) -> Tensor:
        across = (0, *range(2, scores.dim())) if negatives_across_locations else (0,)
        return torch.logsumexp(negatives_only(scores, positive_offset), dim=across)

    def pair_statistic(self, negative: Tensor) -> Tensor:
        return negative  # the log-sum-exp over one candidate is its score

    def combine(self, statistics: Tensor) -> Tensor:
        return torch.logsumexp(statistics, dim=0)

    def bound(
        self,
        positive: Tensor,
        statistic: Tensor,
        num_negatives: int,
        reduce_negatives: ReduceNegatives | None = None,
    ) -> Tensor:
        # log-softmax at the positive, whose candidates are the positive itself and the
        # negatives the statistic summed (broadcast over locations when it spans them).
        negative_lse = statistic.view(*statistic.shape, *([1] * (positive.dim() - statistic.dim())))
        log_softmax = (positive - torch.logaddexp(positive, negative_lse)).mean()
        # K: each entry of the statistic is the log-sum-exp over the negatives of one group of
        # positives that share them, so num_negatives / statistic.numel() are the negatives of
        # one positive: N_all - 1, (N_all - 1) * L across locations, 1 for shuffled pairs.
        candidates = 1 + num_negatives // max(1, statistic.numel())
        return log_softmax + math.log(candidates)


class DVEstimator(Estimator):
    """Donsker-Varadhan: ``mean_pos[s] - log mean_neg[exp(s)]`` (MINE; Belghazi et al. eq. 2).

    Statistic: ``logsumexp(s)`` over all negatives, a scalar; blocks combine by ``logsumexp``.
    ``log mean_neg exp`` is not an average over ranks, so under data parallelism ``bound``
    takes the global log-sum-exp and count from ``reduce_negatives``.
    """

    def negative_statistic(
        self, scores: Tensor, positive: Tensor, positive_offset: int, negatives_across_locations: bool
    ) -> Tensor:
        return torch.logsumexp(negatives_only(scores, positive_offset), dim=tuple(range(scores.dim())))

    def pair_statistic(self, negative: Tensor) -> Tensor:
        return torch.logsumexp(negative.flatten(), dim=0)

    def combine(self, statistics: Tensor) -> Tensor:
        return torch.logsumexp(statistics, dim=0)

    def bound(
        self,
        positive: Tensor,
        statistic: Tensor,
        num_negatives: int,
        reduce_negatives: ReduceNegatives | None = None,
    ) -> Tensor:
        # E_P[T] - log E_PxQ[e^T], in log-sum-exp form.
        log_sum_exp, count = statistic, float(num_negatives)
        if reduce_negatives is not None:
            log_sum_exp, count = reduce_negatives(log_sum_exp, count)
        return positive.mean() - (log_sum_exp - math.log(count))


# The bounds by name, in the order error messages list them. Register a new one here.
ESTIMATORS: dict[str, Estimator] = {
    "jsd": JSDEstimator(),
    "infonce": InfoNCEEstimator(),
    "dv": DVEstimator(),
}


def in_bound_precision(scores: Tensor) -> Tensor:
    """``scores`` in at least float32: the precision every bound is computed in.

    Under autocast (or a half-precision critic) the critic's matrix products give bfloat16 or
    float16 scores; the bounds' log-sum-exps, softplus sums and means over thousands of
    scores would then run on an 8- or 11-bit mantissa (bfloat16 moved the MI terms by about 2%).
    The cast is one copy of the scores; the products themselves stay in low precision, and the
    gradient flows back to them cast to their dtype. Float32 and float64 pass unchanged.
    """
    return scores.to(torch.promote_types(scores.dtype, torch.float32))


def get_estimator(estimator: str) -> Estimator:
    """The registered ``Estimator`` named ``estimator``; a ValueError naming the known ones otherwise."""
    if not isinstance(estimator, str) or estimator not in ESTIMATORS:
        raise ValueError(
            f"unknown estimator {estimator!r}; expected one of {', '.join(ESTIMATORS)}"
            f"{did_you_mean(estimator, ESTIMATORS)}"
        )
    return ESTIMATORS[estimator]


def mi_lower_bound(
    scores: Tensor,
    estimator: str = "jsd",
    negatives_across_locations: bool = False,
) -> Tensor:
    """A lower bound on mutual information (nats) from a square score tensor.

    Args:
        scores: ``(N, N, *rest)`` with ``scores[i, j, ...] = T(x_i, y_j)``; positives on the
            diagonal ``i == j``, negatives elsewhere, trailing dimensions are locations.
        estimator: a name in ``ESTIMATORS``: ``"jsd"``, ``"infonce"`` or ``"dv"``:

            - jsd: ``mean_pos[log 2 - softplus(-s)] - mean_neg[softplus(s) - log 2]``
            - dv: ``mean_pos[s] - log mean_neg[exp(s)]`` (Donsker-Varadhan, MINE)
            - infonce: ``log K`` + for every summary ``y_j``, the log-softmax over the K
              candidates ``x_i`` of ``scores[:, j]`` taken at ``i == j``, averaged over j and
              locations (van den Oord et al.'s bound, at most log K; K = N, or
              ``1 + (N - 1) * L`` with ``negatives_across_locations``).
        negatives_across_locations: InfoNCE only. If True, the candidates for the positive
            ``(j, j, loc)`` are that positive plus every location of every other image,
            ``(N - 1) * M^2`` negatives, as in the DIM reference implementation of local
            InfoNCE. If False, the softmax runs over i at each location separately.

    Returns:
        A scalar tensor: the bound, to be maximised, in at least float32 (half-precision
        scores are cast up first, ``in_bound_precision``).

    Raises:
        ValueError: for an unknown estimator, fewer than two rows, or a non-square score tensor.

    Examples:
        >>> scores = torch.tensor([[2.0, -1.0], [0.0, 3.0]])
        >>> mi_lower_bound(scores, "dv")  # mean(2, 3) - log mean(exp(-1), exp(0))
        tensor(2.8799)
    """
    get_estimator(estimator)
    if scores.dim() < 2 or scores.shape[0] != scores.shape[1]:
        raise ValueError(
            f"scores must have shape (N, N, *rest) with positives on the diagonal; got {tuple(scores.shape)}"
        )
    return mi_lower_bound_offset(scores, estimator, 0, negatives_across_locations)


def check_candidates(num_candidates: int, num_summaries: int, positive_offset: int) -> None:
    """Refuses a batch without negatives, or positives ``(j + offset, j)`` outside the candidates."""
    if num_candidates < 2:
        raise ValueError(f"MI bounds need at least two samples for in-batch negatives; got {num_candidates}")
    if positive_offset + num_summaries > num_candidates:
        raise ValueError(
            f"positives at rows {positive_offset}..{positive_offset + num_summaries - 1} do not fit in "
            f"{num_candidates} candidate rows"
        )


def mi_lower_bound_offset(
    scores: Tensor,
    estimator: str,
    positive_offset: int = 0,
    negatives_across_locations: bool = False,
    reduce_negatives: ReduceNegatives | None = None,
) -> Tensor:
    """``mi_lower_bound`` on ``(N_all, n, *rest)`` scores whose positives sit at ``(j + offset, j)``.

    ``reduce_negatives`` lets a data-parallel caller turn this rank's DV statistic
    (log-sum-exp of its negatives, and their count) into the global one: DV's
    ``log mean_neg exp`` does not decompose into an average over ranks, unlike the means of
    JSD and InfoNCE.
    """
    spec = get_estimator(estimator)
    check_candidates(scores.shape[0], scores.shape[1], positive_offset)
    scores = in_bound_precision(scores)
    positive = positive_scores(scores, positive_offset)  # (n, *rest)
    statistic = spec.negative_statistic(scores, positive, positive_offset, negatives_across_locations)
    return spec.bound(positive, statistic, count_negatives(scores.shape), reduce_negatives)


def count_negatives(shape: Sequence[int]) -> int:
    """Negative pairs in ``(N_all, n, *rest)`` scores: every candidate but the positive, per location."""
    locations = math.prod(shape[2:])
    return (shape[0] - 1) * shape[1] * locations


def mi_lower_bound_from_pairs(
    positive: Tensor,
    negative: Tensor,
    estimator: str,
    reduce_negatives: ReduceNegatives | None = None,
) -> Tensor:
    """The same bounds from explicitly paired scores, for shuffled negatives.

    Args:
        positive: ``(N, *rest)`` scores of joint pairs.
        negative: ``(N, *rest)`` scores of one product-of-marginals pair per positive (the
            feature map shuffled across the batch).
        estimator: a name in ``ESTIMATORS``; InfoNCE takes a two-way softmax between each
            positive and its negative.
        reduce_negatives: as in ``mi_lower_bound_offset``, for DV under data parallelism.
    """
    spec = get_estimator(estimator)
    if positive.shape != negative.shape:
        raise ValueError(
            f"positive and negative scores must have the same shape; got {tuple(positive.shape)} "
            f"and {tuple(negative.shape)}"
        )
    positive, negative = in_bound_precision(positive), in_bound_precision(negative)
    return spec.bound(positive, spec.pair_statistic(negative), negative.numel(), reduce_negatives)


def positive_scores(scores: Tensor, offset: int) -> Tensor:
    """Entries ``scores[j + offset, j, ...]`` as an ``(n, *rest)`` tensor."""
    # torch.diagonal puts the diagonal last; move it back to the front.
    return torch.diagonal(scores, offset=-offset, dim1=0, dim2=1).movedim(-1, 0)


def negatives_only(scores: Tensor, positive_offset: int) -> Tensor:
    """``(rows, n, *rest)`` scores with the positives ``(j + offset, j, ...)`` set to -inf.

    What a log-sum-exp over the negatives reads: ``exp(-inf) = 0`` drops the positives.
    """
    rows, columns = scores.shape[0], scores.shape[1]
    candidate = torch.arange(rows, device=scores.device).unsqueeze(1)
    summary = torch.arange(columns, device=scores.device).unsqueeze(0)
    is_positive = candidate == summary + positive_offset
    # An (rows, n, 1, ...) mask, broadcast over the locations rather than materialised.
    return scores.masked_fill(is_positive.view(rows, columns, *([1] * (scores.dim() - 2))), float("-inf"))
