"""All-pairs scores of a dot critic and the MI bound from them, in memory-bounded chunks.

With ``negatives="all"`` the local term scores every location vector of every candidate image
against every summary: ``(N_all, n, M^2)`` scores, which grows as N^2 M^2 (and holds several
copies of that size while the backward runs). Every estimator needs only two things from
those scores (``dim_ssl.estimators``): the positives, and one statistic of the negatives that
adds up over blocks of candidate rows (a sum for JSD, a log-sum-exp for DV and InfoNCE). So the
bound can be computed block by block, exactly.

Without a limit the scores come from one matrix product (``input factors (N_all * M^2, K) @
summary factors (K, n)``, ``DotCritic``), in one block. With ``rows_per_chunk``, each block
of candidate images runs under ``torch.utils.checkpoint``: the critic's input side, the
block's scores and everything the estimator makes of them are freed after the forward and
recomputed, one block at a time, in the backward. Memory then holds one block's scores and
critic activations instead of all of them, for the price of a second forward of the blocks.

AMDIM's two score stabilisers (Bachman et al. 2019) act on the scores themselves, so they go
where the scores are made, block by block: ``score_clip`` passes every score through
``c * tanh(s / c)`` before the estimator sees it, and ``mean_square`` adds up the squares of
the raw (unclipped) scores of every block, divided by the number of scores at the end: the
mean over the whole score tensor, whatever the blocks.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Callable

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from dim_ssl.estimators import (
    Estimator,
    ReduceNegatives,
    check_candidates,
    count_negatives,
    get_estimator,
    in_bound_precision,
    positive_scores,
)


def all_pairs_bound(
    inputs: Tensor,
    summaries: Tensor,
    offsets: Tensor | None,
    estimator: str,
    positive_offset: int = 0,
    negatives_across_locations: bool = False,
    reduce_negatives: ReduceNegatives | None = None,
    input_transform: Callable[[Tensor], Tensor] | None = None,
    rows_per_chunk: int | None = None,
    score_clip: float | None = None,
) -> Tensor:
    """The MI bound of the scores ``scores[i, j, l] = <f(inputs[i, l]), summaries[j]> + offsets[j]``.

    ``all_pairs_bound_and_mean_square`` without the mean square, which documents the arguments.
    """
    bound, _ = all_pairs_bound_and_mean_square(
        inputs,
        summaries,
        offsets,
        estimator,
        positive_offset,
        negatives_across_locations=negatives_across_locations,
        reduce_negatives=reduce_negatives,
        input_transform=input_transform,
        rows_per_chunk=rows_per_chunk,
        score_clip=score_clip,
        mean_square=False,
    )
    return bound


def all_pairs_bound_and_mean_square(
    inputs: Tensor,
    summaries: Tensor,
    offsets: Tensor | None,
    estimator: str,
    positive_offset: int = 0,
    negatives_across_locations: bool = False,
    reduce_negatives: ReduceNegatives | None = None,
    input_transform: Callable[[Tensor], Tensor] | None = None,
    rows_per_chunk: int | None = None,
    score_clip: float | None = None,
    mean_square: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """The MI bound of the scores ``scores[i, j, l] = <f(inputs[i, l]), summaries[j]> + offsets[j]``,
    and the mean of their squares.

    The same number as ``mi_lower_bound_offset(scores, ...)`` on the whole ``(N_all, n, L)``
    score tensor, with the same gradients, without ever holding all of it when chunked.

    Args:
        inputs: the candidates' inputs (all ranks' under data parallelism), one per row of
            dim 0: their factors ``(N_all, L, K)``, or anything ``input_transform`` turns
            into factors block by block (the feature maps themselves, for instance).
        summaries: ``(n, K)``: this rank's summary-side factors.
        offsets: ``(n,)`` added to every score of summary j, or None.
        estimator: a name in ``dim_ssl.estimators.ESTIMATORS``.
        positive_offset: the row of the first summary's positive (this rank's first image).
        negatives_across_locations: InfoNCE's candidates for ``(j, l)``: the positive and
            every location of every other image (True), or the other images at l (False).
        reduce_negatives: DV's combination of per-rank statistics (``dim_ssl.distributed``).
        input_transform: ``f``, maps a block of ``c`` inputs to ``(c, L, K)`` factors; None for
            the identity. Under chunking it runs per block, so its activations are recomputed too.
        rows_per_chunk: candidate images per block; None (or at least N_all) for one block
            without recomputation.
        score_clip: c: the bound is that of ``c * tanh(scores / c)`` (AMDIM's soft clip); None
            for the raw scores.
        mean_square: whether to compute ``mean(scores ** 2)`` over all ``N_all * n * L`` raw
            (unclipped) scores (AMDIM's score penalty), the same number however they are chunked.

    Returns:
        The bound (a scalar), and the mean square (a scalar) or None when ``mean_square`` is
        False; both in at least float32 whatever the precision of the critic's products.
    """
    spec = get_estimator(estimator)
    num_candidates, num_summaries = inputs.shape[0], summaries.shape[0]
    check_candidates(num_candidates, num_summaries, positive_offset)
    rows = num_candidates if rows_per_chunk is None else max(1, min(int(rows_per_chunk), num_candidates))
    recompute = rows < num_candidates and torch.is_grad_enabled()

    # One split rather than a slice per block: the backward then assembles the inputs'
    # gradient once, where every slice would add a zero-filled copy of the whole input.
    blocks = (inputs,) if rows == num_candidates else inputs.split(rows)
    statistics, positives, square_sums, start = [], [], [], 0
    for block_inputs in blocks:
        block = partial(
            _block_statistics,
            estimator=spec,
            positive_offset=positive_offset - start,
            negatives_across_locations=negatives_across_locations,
            input_transform=input_transform,
            score_clip=score_clip,
            mean_square=mean_square,
        )
        args = (block_inputs, summaries, offsets)
        statistic, positive, square_sum = (
            checkpoint(block, *args, use_reentrant=False, preserve_rng_state=False) if recompute else block(*args)
        )
        statistics.append(statistic)
        positives.append(positive)
        square_sums.append(square_sum)
        start += block_inputs.shape[0]

    # Blocks are in row order, so their positives (columns j whose row j + offset they hold)
    # come out in column order; blocks without positives give empty pieces.
    positive = positives[0] if len(positives) == 1 else torch.cat(positives, dim=0)  # (n, L)
    statistic = statistics[0] if len(statistics) == 1 else spec.combine(torch.stack(statistics))
    num_negatives = count_negatives((num_candidates, num_summaries, *positive.shape[1:]))
    bound = spec.bound(positive, statistic, num_negatives, reduce_negatives)
    if not mean_square:
        return bound, None
    num_scores = num_candidates * num_summaries * math.prod(positive.shape[1:])
    total = square_sums[0] if len(square_sums) == 1 else torch.stack(square_sums).sum()
    return bound, total / num_scores


def _block_statistics(
    inputs: Tensor,
    summaries: Tensor,
    offsets: Tensor | None,
    *,
    estimator: Estimator,
    positive_offset: int,
    negatives_across_locations: bool,
    input_transform: Callable[[Tensor], Tensor] | None,
    score_clip: float | None,
    mean_square: bool,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """One block of candidate rows: its negatives' statistic and the positives it holds (both of
    the clipped scores), and the sum of its raw scores' squares (None unless ``mean_square``)."""
    factors = inputs if input_transform is None else input_transform(inputs)
    rows, locations, width = factors.shape
    flat = factors.reshape(rows * locations, width)
    # Every pair of the block from one matrix product.
    scores = flat @ summaries.T if offsets is None else torch.addmm(offsets, flat, summaries.T)
    scores = scores.view(rows, locations, -1).transpose(1, 2)  # (rows, n, L): scores[i, j, l]
    # The product may run in half precision (autocast); everything made of its scores runs in
    # at least float32. Cast here, inside the block, so a chunk's float32 copy is freed with it.
    scores = in_bound_precision(scores)
    square_sum = squared_sum(scores) if mean_square else None
    scores = tanh_clip(scores, score_clip)
    positive = positive_scores(scores, positive_offset)
    statistic = estimator.negative_statistic(scores, positive, positive_offset, negatives_across_locations)
    return statistic, positive, square_sum


def tanh_clip(scores: Tensor, clip: float | None) -> Tensor:
    """AMDIM's soft clip ``clip * tanh(scores / clip)``: every score within (-clip, clip), about
    unchanged where ``|score| << clip``; the scores themselves when ``clip`` is None.

    Bachman, Hjelm & Buchwalter, "Learning Representations by Maximizing Mutual Information
    Across Views", 2019 (clip 20). It bounds what any estimator makes of the scores: the DV
    bound, for one, then lies within ``[-2 clip, 2 clip]``.
    """
    return scores if clip is None else clip * torch.tanh(scores / clip)


def squared_sum(scores: Tensor) -> Tensor:
    """The sum of the squares of all scores, in at least float32 (half-precision squares overflow early)."""
    return scores.to(torch.promote_types(scores.dtype, torch.float32)).square().sum()
