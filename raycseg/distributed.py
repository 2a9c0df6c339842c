"""Rank helpers, the all-gathers methods run before a loss, and the loop's log reductions.

Every helper works without a process group: ranks are 0 of 1 and both gathers
are identities. Losses never communicate; a method gathers
first, then calls the loss.

Gradient contract of :func:`all_gather_with_grad`. Let W ranks each hold a
slice x_r and let every rank compute a loss L_r from the gathered tensor (and
its own local tensors). Define the single-process loss on the concatenated batch
as L = mean_r L_r. The backward of the gather sums the incoming gradient over
ranks (``all_reduce``) and hands each rank the rows of its own slice, so rank r
receives sum_s dL_s/dx_r = W * dL/dx_r. DDP then averages parameter gradients
over ranks (divides by W), which gives exactly the single-process gradient.

Collective ordering: every rank must run the same sequence of gathers forward
*and* backward (a gathered tensor that reaches the loss on one rank must reach
it on all ranks), or the collectives deadlock.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = [
    "all_gather_no_grad",
    "all_gather_with_grad",
    "gather_objects",
    "get_rank",
    "get_world_size",
    "reduce_logged_values",
]


def _has_process_group() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """Return this process's rank in the default process group, 0 without one."""
    return dist.get_rank() if _has_process_group() else 0


def get_world_size() -> int:
    """Return the number of ranks in the default process group, 1 without one."""
    return dist.get_world_size() if _has_process_group() else 1


def _gather_rows(x: torch.Tensor, equal_shapes: bool = False) -> tuple[torch.Tensor, list[int]]:
    """All-gather ``x`` along dim 0 (sizes may differ between ranks).

    Returns the concatenation in rank order and the per-rank first-dim sizes.
    Sizes are exchanged first (one extra tiny collective) unless `equal_shapes`
    promises that every rank passes the same shape: rows are padded to the
    largest size for the gather and the padding is cut off afterwards.
    """
    world = get_world_size()
    x = x.contiguous()
    if equal_shapes:
        row_counts = [x.shape[0]] * world
    else:
        size = torch.tensor([x.shape[0]], device=x.device, dtype=torch.long)
        sizes = [torch.zeros_like(size) for _ in range(world)]
        dist.all_gather(sizes, size)
        row_counts = [int(s.item()) for s in sizes]
    longest = max(row_counts)
    if x.shape[0] < longest:
        padding = x.new_zeros((longest - x.shape[0], *x.shape[1:]))
        x = torch.cat([x, padding])
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x)
    return torch.cat([part[:n] for part, n in zip(parts, row_counts, strict=True)]), row_counts


class _AllGatherWithGrad(torch.autograd.Function):
    """Autograd all-gather: forward concatenates, backward sums over ranks and slices."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, equal_shapes: bool) -> torch.Tensor:
        gathered, row_counts = _gather_rows(x, equal_shapes)
        rank = get_rank()
        ctx.row_range = (sum(row_counts[:rank]), sum(row_counts[: rank + 1]))
        return gathered

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad_output.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start, stop = ctx.row_range
        return grad[start:stop], None


def all_gather_with_grad(x: torch.Tensor, *, equal_shapes: bool = False) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0, keeping a correct gradient path.

    Args:
        x: any tensor; its first dim may differ between ranks.
        equal_shapes: promise that every rank passes the same shape, which saves the
            size exchange and its host sync (a training step's full batches).

    Returns:
        The rank-ordered concatenation, shape ``[sum_r x_r.shape[0], ...]``. Its
        backward all-reduces (sums) the gradient over ranks and returns this
        rank's rows, so the gradient reaching ``x`` is W times the single-process
        gradient of the mean of per-rank losses (see the module docstring).
        Without a process group (or with one rank) ``x`` itself is returned.
    """
    if get_world_size() == 1:
        return x
    return _AllGatherWithGrad.apply(x, equal_shapes)


@torch.no_grad()
def all_gather_no_grad(x: torch.Tensor, *, equal_shapes: bool = False) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0, detached (for negatives, queues).

    Args:
        x: any tensor; its first dim may differ between ranks.
        equal_shapes: promise that every rank passes the same shape, which saves
            the size exchange (one collective instead of two, and no host sync; e.g.
            per-layer statistics, a training step's full batches).

    Returns:
        The rank-ordered concatenation, detached from the graph. Without a process
        group, ``x.detach()``.
    """
    if get_world_size() == 1:
        return x.detach()
    gathered, _ = _gather_rows(x.detach(), equal_shapes)
    return gathered


def reduce_logged_values(
    values: list[torch.Tensor], count: int, first_step: torch.Tensor, device: torch.device
) -> tuple[list[float], int, int]:
    """A logging step's reductions over ranks, read back with one host sync.

    Every rank must call it.

    Args:
        values: 0-dim tensors (the loss and its terms); their means over ranks.
        count: an integer (skipped corrupt samples); its sum over ranks.
        first_step: long 0-dim, below 2**53; its minimum over ranks.
        device: where the reductions run (the process group's device).

    Returns:
        (the means, the sum, the minimum).
    """
    summed = torch.stack([v.float() for v in values] + [torch.tensor(float(count))]).to(device)
    minimum = first_step.detach().clone().to(device)
    if _has_process_group():
        dist.all_reduce(summed)
        dist.all_reduce(minimum, op=dist.ReduceOp.MIN)
        summed[:-1] /= dist.get_world_size()
    *means, total, smallest = torch.cat([summed.double(), minimum.double().view(1)]).tolist()
    return means, round(total), int(smallest)


def gather_objects(record: object) -> list[object]:
    """Every rank's `record`, in rank order (every rank must call it)."""
    if not _has_process_group():
        return [record]
    records = [None] * dist.get_world_size()
    dist.all_gather_object(records, record)
    return records
