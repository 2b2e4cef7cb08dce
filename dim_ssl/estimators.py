"""Lower bounds on mutual information computed from critic scores.

Scores follow one convention everywhere (DESIGN.md, "Meaning of the numbers"): a tensor of
shape ``(N, N, *rest)`` with ``scores[i, j, ...] = T(x_i, y_j)``; i indexes the input / local
side, j the summary side. The diagonal ``i == j`` holds the joint (positive) pairs, every
off-diagonal entry a product-of-marginals (negative) pair, and trailing dimensions (locations)
are averaged. Each bound is in nats and is to be *maximised*.

Under data parallelism one rank scores all gathered candidates against its own summaries,
so the score tensor is rectangular, ``(N_all, n, *rest)``, and the positive of column j sits
at row ``j + positive_offset``. The functions here take that offset; the public
``mi_lower_bound`` is the square case.

References:
    Hjelm et al., "Learning deep representations by mutual information estimation and
    maximization", ICLR 2019 (eqs. 2-5). Nowozin et al., "f-GAN", 2016 (JSD).
    Belghazi et al., "MINE", 2018 (DV). van den Oord et al., "CPC", 2018 (InfoNCE).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

ESTIMATORS = ("jsd", "infonce", "dv")

LOG2 = math.log(2.0)


def check_estimator(estimator: str) -> str:
    """Returns ``estimator`` if it names a known bound, else raises a ValueError."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; expected one of {', '.join(ESTIMATORS)}")
    return estimator


def mi_lower_bound(
    scores: Tensor,
    estimator: str = "jsd",
    negatives_across_locations: bool = False,
) -> Tensor:
    """A lower bound on mutual information (nats) from a square score tensor.

    Args:
        scores: ``(N, N, *rest)`` with ``scores[i, j, ...] = T(x_i, y_j)``; positives on the
            diagonal ``i == j``, negatives elsewhere, trailing dimensions are locations.
        estimator: ``"jsd"``, ``"infonce"`` or ``"dv"``:

            - jsd: ``mean_pos[log 2 - softplus(-s)] - mean_neg[softplus(s) - log 2]``
            - dv: ``mean_pos[s] - log mean_neg[exp(s)]`` (Donsker-Varadhan, MINE)
            - infonce: for every summary ``y_j``, the log-softmax over candidates ``x_i`` of
              ``scores[:, j]`` taken at ``i == j``, averaged over j and locations.
        negatives_across_locations: InfoNCE only. If True, the candidates for the positive
            ``(j, j, loc)`` are that positive plus every location of every other image,
            ``(N - 1) * M^2`` negatives, as in the DIM reference implementation of local
            InfoNCE. If False, the softmax runs over i at each location separately.

    Returns:
        A scalar tensor: the bound, to be maximised.

    Raises:
        ValueError: for an unknown estimator, fewer than two rows, or a non-square score tensor.

    Examples:
        >>> scores = torch.tensor([[2.0, -1.0], [0.0, 3.0]])
        >>> mi_lower_bound(scores, "dv")  # mean(2, 3) - log mean(exp(-1), exp(0))
        tensor(2.8799)
    """
    check_estimator(estimator)
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
    reduce_negatives: Callable[[Tensor, float], tuple[Tensor, float]] | None = None,
) -> Tensor:
    """``mi_lower_bound`` on ``(N_all, n, *rest)`` scores whose positives sit at ``(j + offset, j)``.

    ``reduce_negatives`` lets a data-parallel caller turn this rank's DV statistic
    (log-sum-exp of its negatives, and their count) into the global one: DV's
    ``log mean_neg exp`` does not decompose into an average over ranks, unlike the means of
    JSD and InfoNCE.
    """
    check_candidates(scores.shape[0], scores.shape[1], positive_offset)
    positive = positive_scores(scores, positive_offset)  # (n, *rest)
    statistic = negative_statistic(scores, estimator, positive_offset, negatives_across_locations, positive)
    return bound_from_statistic(
        positive, statistic, count_negatives(scores.shape), estimator, reduce_negatives
    )


def negative_statistic(
    scores: Tensor,
    estimator: str,
    positive_offset: int = 0,
    negatives_across_locations: bool = False,
    positive: Tensor | None = None,
) -> Tensor:
    """What an estimator needs from the negatives of ``(rows, n, *rest)`` scores.

    The statistic of a whole score tensor follows from those of its row blocks (candidate
    images), which is what lets ``dim_ssl.scoring`` score in memory-bounded chunks:

    - jsd: ``sum softplus(s)`` over the negatives, a scalar; blocks add up.
    - dv: ``logsumexp(s)`` over the negatives, a scalar; blocks combine by ``logsumexp``.
    - infonce: for every summary j, ``logsumexp`` over its negative candidates ``scores[i, j]``
      (and over locations when ``negatives_across_locations``): ``(n,)``, else ``(n, *rest)``;
      blocks combine by ``logsumexp``.

    ``positive_offset`` says where the positives sit in *this* block: ``(j + offset, j)``. It
    may put some or all of them outside the block (negative, or past its last row).
    ``positive``: ``positive_scores(scores, positive_offset)`` when the caller has it already
    (one diagonal view, so one full-size gradient buffer in the backward instead of two).
    """
    if positive is None:
        positive = positive_scores(scores, positive_offset)
    if estimator == "jsd":
        # The sum over everything minus the sum over the positives: no mask, no masked copy.
        # (The diagonal's two gradient contributions cancel exactly: the same softplus'
        # on the same value.)
        return F.softplus(scores).sum() - F.softplus(positive).sum()
    rows, columns = scores.shape[0], scores.shape[1]
    # An (rows, n, 1, ...) mask, broadcast over the locations rather than materialised.
    is_positive = _positive_mask(rows, columns, positive_offset, scores.device)
    negatives = scores.masked_fill(is_positive.view(rows, columns, *([1] * (scores.dim() - 2))), float("-inf"))
    if estimator == "dv":
        return torch.logsumexp(negatives, dim=tuple(range(scores.dim())))
    across = (0, *range(2, scores.dim())) if negatives_across_locations else (0,)
    return torch.logsumexp(negatives, dim=across)


def combine_statistics(statistics: Sequence[Tensor], estimator: str) -> Tensor:
    """The ``negative_statistic`` of a score tensor from those of its row blocks, in order."""
    if len(statistics) == 1:
        return statistics[0]
    stacked = torch.stack(list(statistics))
    return stacked.sum(dim=0) if estimator == "jsd" else torch.logsumexp(stacked, dim=0)


def bound_from_statistic(
    positive: Tensor,
    statistic: Tensor,
    num_negatives: int,
    estimator: str,
    reduce_negatives: Callable[[Tensor, float], tuple[Tensor, float]] | None = None,
) -> Tensor:
    """The bound from the positive scores ``(n, *rest)`` and the negatives' ``negative_statistic``.

    ``num_negatives`` is the number of negative scores the statistic covers (JSD and DV).
    """
    if estimator == "jsd":
        # E_P[-sp(-T)] - E_PxQ[sp(T)], shifted by log 2 on each side (Hjelm et al. eq. 4).
        positive_term = (LOG2 - F.softplus(-positive)).mean()
        negative_term = statistic / num_negatives - LOG2
        return positive_term - negative_term

    if estimator == "dv":
        # E_P[T] - log E_PxQ[e^T] (Donsker-Varadhan; Belghazi et al. eq. 2), in log-sum-exp form.
        log_sum_exp, count = statistic, float(num_negatives)
        if reduce_negatives is not None:
            log_sum_exp, count = reduce_negatives(log_sum_exp, count)
        return positive.mean() - (log_sum_exp - math.log(count))

    # InfoNCE (van den Oord et al.; Hjelm et al. eq. 5): log-softmax at the positive, whose
    # candidates are the positive itself and the negatives the statistic summed.
    negative_lse = statistic.view(*statistic.shape, *([1] * (positive.dim() - statistic.dim())))
    return (positive - torch.logaddexp(positive, negative_lse)).mean()


def count_negatives(shape: Sequence[int]) -> int:
    """Negative pairs in ``(N_all, n, *rest)`` scores: every candidate but the positive, per location."""
    locations = math.prod(shape[2:])
    return (shape[0] - 1) * shape[1] * locations


def mi_lower_bound_from_pairs(
    positive: Tensor,
    negative: Tensor,
    estimator: str,
    reduce_negatives: Callable[[Tensor, float], tuple[Tensor, float]] | None = None,
) -> Tensor:
    """The same bounds from explicitly paired scores, for shuffled negatives.

    Args:
        positive: ``(N, *rest)`` scores of joint pairs.
        negative: ``(N, *rest)`` scores of one product-of-marginals pair per positive (the
            feature map shuffled across the batch).
        estimator: ``"jsd"``, ``"infonce"`` or ``"dv"``; InfoNCE takes a two-way softmax
            between each positive and its negative.
        reduce_negatives: as in ``mi_lower_bound_offset``, for DV under data parallelism.
    """
    check_estimator(estimator)
    if positive.shape != negative.shape:
        raise ValueError(
            f"positive and negative scores must have the same shape; got {tuple(positive.shape)} "
            f"and {tuple(negative.shape)}"
        )
    if estimator == "jsd":
        return (LOG2 - F.softplus(-positive)).mean() - (F.softplus(negative) - LOG2).mean()
    if estimator == "dv":
        log_sum_exp, num_negatives = torch.logsumexp(negative.flatten(), dim=0), float(negative.numel())
        if reduce_negatives is not None:
            log_sum_exp, num_negatives = reduce_negatives(log_sum_exp, num_negatives)
        return positive.mean() - (log_sum_exp - math.log(num_negatives))
    return (positive - torch.logaddexp(positive, negative)).mean()


def _positive_mask(num_candidates: int, num_summaries: int, offset: int, device: torch.device) -> Tensor:
    rows = torch.arange(num_candidates, device=device).unsqueeze(1)
    columns = torch.arange(num_summaries, device=device).unsqueeze(0)
    return rows == columns + offset


def positive_scores(scores: Tensor, offset: int) -> Tensor:
    """Entries ``scores[j + offset, j, ...]`` as an ``(n, *rest)`` tensor."""
    # torch.diagonal puts the diagonal last; move it back to the front.
    return torch.diagonal(scores, offset=-offset, dim1=0, dim2=1).movedim(-1, 0)
