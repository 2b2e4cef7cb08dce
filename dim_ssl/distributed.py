"""Gathering tensors across data-parallel ranks with gradients.

In-batch negatives get better with the batch: with ``gather_distributed=True`` each rank scores
its own summaries against the critic embeddings of every rank's images. The gather must pass
gradients back to the rank that produced each slice.

We do not use ``torch.distributed.nn.functional.all_gather``: under gloo (torch 2.14.1, CPU) it
returns wrong gradients when the incoming gradient is not contiguous, which is what an einsum
or a transposed matmul produces (DESIGN.md, "Known pitfalls"). The Function below makes the
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
    """Concatenates ``tensor`` from all ranks along dim 0, with gradients.

    Returns:
        The gathered tensor and the row at which this rank's slice starts. Without an
        initialised process group it returns ``(tensor, 0)`` unchanged.
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
