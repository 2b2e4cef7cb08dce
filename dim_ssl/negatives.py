"""In-batch negatives: which input pairs with which summary when they are not a joint pair.

``"all"`` needs nothing here: one matrix product scores every pair (``dim_ssl.head``).
``"shuffle"`` pairs each location of each image with the same location of another image of
the batch, drawn independently at every location. No collate function, no memory bank.
"""

from __future__ import annotations

import torch
from torch import Tensor

# The modes by name, each with the words an error message uses for it.
NEGATIVE_MODES: dict[str, str] = {
    "all": "all-pairs negatives",
    "shuffle": "shuffled negatives",
}


def shuffled_partners(num_candidates: int, offset: int, count: int, num_locations: int, device: torch.device) -> Tensor:
    """Indices of a negative partner for each of ``count`` summaries at each location.

    At every location independently, the ``num_candidates`` images are put in a random order
    and each image is paired with the next one in that cycle: a random permutation without
    fixed points, so no "negative" is ever the positive itself.

    Args:
        num_candidates: images on the input side (the whole gathered batch under DDP).
        offset: index of this rank's first image among the candidates.
        count: this rank's images (summaries).
        num_locations: independent shuffles, one per location (1 for the global term).

    Returns:
        A long tensor ``(count, num_locations)``: the partner of image ``offset + j`` at location l.
    """
    if num_candidates < 2:
        raise ValueError(f"shuffled negatives need at least two images; got {num_candidates}")
    order = torch.rand(num_locations, num_candidates, device=device).argsort(dim=1)  # (L, N)
    partner = torch.empty_like(order)
    partner.scatter_(1, order, order.roll(-1, dims=1))  # partner[l, order[l, t]] = order[l, t + 1]
    return partner[:, offset : offset + count].transpose(0, 1)


def gather_locations(candidates: Tensor, partners: Tensor) -> Tensor:
    """Picks ``candidates[partners[j, l], l]`` for a ``(N_all, L, ...)`` tensor: result ``(n, L, ...)``."""
    locations = torch.arange(partners.shape[1], device=partners.device)
    return candidates[partners, locations]
