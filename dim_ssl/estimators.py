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
from typing import Callable

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
    num_candidates, num_summaries = scores.shape[0], scores.shape[1]
    if num_candidates < 2:
        raise ValueError(f"MI bounds need at least two samples for in-batch negatives; got {num_candidates}")
    if positive_offset + num_summaries > num_candidates:
        raise ValueError(
            f"positives at rows {positive_offset}..{positive_offset + num_summaries - 1} do not fit in "
            f"{num_candidates} candidate rows"
        )
    is_positive = _positive_mask(num_candidates, num_summaries, positive_offset, scores.device)
    # Broadcast the (N_all, n) mask over the trailing location dimensions.
    is_positive = is_positive.view(num_candidates, num_summaries, *([1] * (scores.dim() - 2)))
    positive = _diagonal(scores, positive_offset)  # (n, *rest)

    if estimator == "jsd":
        # E_P[-sp(-T)] - E_PxQ[sp(T)], shifted by log 2 on each side (Hjelm et al. eq. 4).
        positive_term = (LOG2 - F.softplus(-positive)).mean()
        negative_softplus = F.softplus(scores).masked_fill(is_positive, 0.0)
        num_negatives = _count_negatives(scores, num_summaries)
        negative_term = negative_softplus.sum() / num_negatives - LOG2
        return positive_term - negative_term

    if estimator == "dv":
        # E_P[T] - log E_PxQ[e^T] (Donsker-Varadhan; Belghazi et al. eq. 2), in log-sum-exp form.
        negatives = scores.masked_fill(is_positive, float("-inf"))
        log_sum_exp = torch.logsumexp(negatives.flatten(), dim=0)
        num_negatives = float(_count_negatives(scores, num_summaries))
        if reduce_negatives is not None:
            log_sum_exp, num_negatives = reduce_negatives(log_sum_exp, num_negatives)
        return positive.mean() - (log_sum_exp - math.log(num_negatives))

    # InfoNCE (van den Oord et al.; Hjelm et al. eq. 5): log-softmax at the positive.
    if not negatives_across_locations or scores.dim() == 2:
        return (positive - torch.logsumexp(scores, dim=0)).mean()
    # Candidates for (j, loc): the positive itself plus every location of the other images.
    negatives = scores.masked_fill(is_positive, float("-inf"))
    negative_lse = torch.logsumexp(negatives.transpose(0, 1).flatten(1), dim=1)  # (n,)
    negative_lse = negative_lse.view(num_summaries, *([1] * (scores.dim() - 2)))
    return (positive - torch.logaddexp(positive, negative_lse)).mean()


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


def _diagonal(scores: Tensor, offset: int) -> Tensor:
    """Entries ``scores[j + offset, j, ...]`` as an ``(n, *rest)`` tensor."""
    # torch.diagonal puts the diagonal last; move it back to the front.
    return torch.diagonal(scores, offset=-offset, dim1=0, dim2=1).movedim(-1, 0)


def _count_negatives(scores: Tensor, num_summaries: int) -> int:
    locations = scores[0, 0].numel()
    return (scores.shape[0] - 1) * num_summaries * locations
