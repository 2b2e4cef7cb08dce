"""Gathering tensors across data-parallel ranks with gradients.

In-batch negatives get better with the batch: with ``gather_distributed=True`` each rank scores
its own summaries against the critic embeddings of every rank's images. The gather must pass
gradients back to the rank that produced each slice. The same gather, public as
``dim_ssl.gather_with_grad``, serves anything else that needs every rank's rows (validation
features for a kNN check, their labels), gradients or not, equal row counts or not.

We do not use ``torch.distributed.nn.functional.all_gather``: under gloo (torch 2.14.1, CPU) it
returns wrong gradients when the incoming gradient is not contiguous, which is what an einsum
or a transposed matmul produces (docs/design.md, "Known pitfalls"). The Function below makes the
gradients contiguous and sums them over ranks itself.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


class _GatherWithGrad(torch.autograd.Function):
    """Forward: ``all_gather`` along dim 0. Backward: sum every rank's gradient, keep this rank's slice.

    Every rank's loss depends on every rank's slice, so the gradient of rank r's input is the sum
    over ranks of the gradient each loss sends to that slice. DDP then averages parameter
    gradients over ranks, which together equals the gradient of the mean of the rank losses.
    """

    @staticmethod
    def forward(ctx, tensor: Tensor, sizes: list[int]) -> Tensor:  # type: ignore[override]
        tensor = tensor.contiguous()
        ctx.sizes = sizes
        ctx.rank = dist.get_rank()
        # all_gather needs equal shapes: pad to the largest slice (a no-op when all are equal).
        largest = max(sizes)
        if tensor.shape[0] < largest:
            padding = tensor.new_zeros((largest - tensor.shape[0], *tensor.shape[1:]))
            tensor = torch.cat([tensor, padding], dim=0)
        parts = [torch.empty_like(tensor) for _ in sizes]
        dist.all_gather(parts, tensor)
        return torch.cat([part[:size] for part, size in zip(parts, sizes)], dim=0)

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad_output.contiguous()  # the gloo pitfall: never reduce a strided view
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None


def _gather_sizes(local_size: int, device: torch.device) -> list[int]:
    size = torch.tensor([local_size], device=device, dtype=torch.long)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    return [int(s.item()) for s in sizes]


def gather_with_grad(tensor: Tensor) -> tuple[Tensor, int]:
    """Concatenates ``tensor`` from all ranks along dim 0, in rank order, with gradients.

    The backward sums the gradients every rank's loss sends to a slice and hands each rank
    the gradient of its own rows (with DDP's average over ranks, the gradient of the global
    batch's mean loss). The gloo pitfall of ``torch.distributed.nn.functional.all_gather``
    (docs/design.md, "Known pitfalls") does not apply: incoming gradients are made contiguous.

    It also gathers rows that need no gradient: validation features and labels for a kNN
    check, say, under ``torch.no_grad()`` or for integer tensors (then it is a plain
    ``all_gather`` with no backward). Ranks may hold different numbers of rows (the last,
    smaller batch of a split that does not divide evenly): slices are padded to the largest
    for the collective and the padding is dropped, so nothing needs padding or trimming by
    the caller. On one process, or without an initialised process group, it returns the
    tensor itself: the same code runs unchanged with and without data parallelism.

    Every rank must call it (a collective), with tensors equal in every dimension but the first
    and in dtype and device.

    Args:
        tensor: ``(n_rank, *rest)``, this rank's rows.

    Returns:
        The gathered ``(sum of n_rank over ranks, *rest)`` tensor, and the row at which this
        rank's slice starts in it (``0`` on one process).

    Examples:
        >>> features, offset = gather_with_grad(embeddings)      # (N_all, K): every rank's rows
        >>> with torch.no_grad():
        ...     val_features, _ = gather_with_grad(encoder.features(images, "pool"))
        ...     val_labels, _ = gather_with_grad(labels)
    """
    if not is_distributed() or dist.get_world_size() == 1:
        return tensor, 0
    sizes = _gather_sizes(tensor.shape[0], tensor.device)
    return _GatherWithGrad.apply(tensor, sizes), sum(sizes[: rank()])


def all_reduce_log_sum_exp(log_sum_exp: Tensor, count: float) -> tuple[Tensor, float]:
    """Combines per-rank ``logsumexp`` statistics (with gradients) into the global one.

    DV's ``log mean_neg exp(s)`` over the whole batch is not an average of per-rank values;
    gathering each rank's log-sum-exp and combining them gives exactly the single-process value.
    """
    if not is_distributed() or dist.get_world_size() == 1:
        return log_sum_exp, count
    gathered, _ = gather_with_grad(log_sum_exp.reshape(1))
    counts = torch.tensor([count], device=log_sum_exp.device, dtype=torch.float64)
    dist.all_reduce(counts, op=dist.ReduceOp.SUM)
    return torch.logsumexp(gathered, dim=0), float(counts.item())
