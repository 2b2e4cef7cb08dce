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
"""

from __future__ import annotations

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
) -> Tensor:
    """The MI bound of the scores ``scores[i, j, l] = <f(inputs[i, l]), summaries[j]> + offsets[j]``.

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
    """
    spec = get_estimator(estimator)
    num_candidates, num_summaries = inputs.shape[0], summaries.shape[0]
    check_candidates(num_candidates, num_summaries, positive_offset)
    rows = num_candidates if rows_per_chunk is None else max(1, min(int(rows_per_chunk), num_candidates))
    recompute = rows < num_candidates and torch.is_grad_enabled()

    # One split rather than a slice per block: the backward then assembles the inputs'
    # gradient once, where every slice would add a zero-filled copy of the whole input.
    blocks = (inputs,) if rows == num_candidates else inputs.split(rows)
    statistics, positives, start = [], [], 0
    for block_inputs in blocks:
        block = partial(
            _block_statistics,
            estimator=spec,
            positive_offset=positive_offset - start,
            negatives_across_locations=negatives_across_locations,
            input_transform=input_transform,
        )
        args = (block_inputs, summaries, offsets)
        statistic, positive = (
            checkpoint(block, *args, use_reentrant=False, preserve_rng_state=False) if recompute else block(*args)
        )
        statistics.append(statistic)
        positives.append(positive)
        start += block_inputs.shape[0]

    # Blocks are in row order, so their positives (columns j whose row j + offset they hold)
    # come out in column order; blocks without positives give empty pieces.
    positive = positives[0] if len(positives) == 1 else torch.cat(positives, dim=0)  # (n, L)
    statistic = statistics[0] if len(statistics) == 1 else spec.combine(torch.stack(statistics))
    num_negatives = count_negatives((num_candidates, num_summaries, *positive.shape[1:]))
    return spec.bound(positive, statistic, num_negatives, reduce_negatives)


def _block_statistics(
    inputs: Tensor,
    summaries: Tensor,
    offsets: Tensor | None,
    *,
    estimator: Estimator,
    positive_offset: int,
    negatives_across_locations: bool,
    input_transform: Callable[[Tensor], Tensor] | None,
) -> tuple[Tensor, Tensor]:
    """One block of candidate rows: its negatives' statistic and the positives it holds."""
    factors = inputs if input_transform is None else input_transform(inputs)
    rows, locations, width = factors.shape
    flat = factors.reshape(rows * locations, width)
    # Every pair of the block from one matrix product.
    scores = flat @ summaries.T if offsets is None else torch.addmm(offsets, flat, summaries.T)
    scores = scores.view(rows, locations, -1).transpose(1, 2)  # (rows, n, L): scores[i, j, l]
    positive = positive_scores(scores, positive_offset)
    statistic = estimator.negative_statistic(scores, positive, positive_offset, negatives_across_locations)
    return statistic, positive
