"""BatchNorm with statistics over the global batch of every rank, on any backend.

`torch.nn.SyncBatchNorm` only runs on CUDA tensors (and DDP refuses it on a CPU
module), so CPU training on gloo needs its own global BatchNorm:
`GlobalBatchNorm2d`. `convert_to_global_batchnorm` swaps the BatchNorm layers of
a module for the right kind: torch's SyncBatchNorm on an NCCL process group (CUDA
tensors; same maths, fused kernels), `GlobalBatchNorm2d` otherwise.

`GlobalBatchNorm2d`, in training mode with more than one rank, per channel:

    local     n_r = B_r·h·w values, mean m_r, biased variance v_r      (this rank)
    gathered  [n_r, m_r, v_r] from every rank (one all-gather)
    global    N = Σ n_r,  mean = Σ n_r·m_r / N,
              var = Σ n_r·(v_r + (m_r − mean)²) / N                    (Chan et al.)
    output    (x − mean) / sqrt(var + eps) · weight + bias

so the output equals single-process BatchNorm over the concatenated batch (ranks
may hold different batch sizes). Backward, as SyncBatchNorm: the input gradient
needs Σ dy and Σ dy·(x − mean) over the global batch, summed over ranks by one
all-reduce, so each rank's input gradient is the gradient of the *sum* of the
ranks' losses, while weight and bias get this rank's own share; DDP's averaging
of parameter gradients then gives the single-process gradient of their mean (the
convention of `raycseg.distributed`). Running statistics move towards the global
mean and the unbiased global variance var·N/(N − 1), as `nn.BatchNorm2d` does
with its batch. In eval mode, and without a process group or with one rank, it
*is* `nn.BatchNorm2d` (same parameters, buffers and state-dict keys, so
checkpoints load either way).

Every rank must run the same BatchNorm layers in the same order, forward and
backward (each one is a collective); a rank with an empty batch is not supported.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..distributed import all_gather_no_grad, get_world_size

__all__ = ["GlobalBatchNorm2d", "convert_to_global_batchnorm", "global_moments"]


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """`nn.BatchNorm2d` whose training-mode statistics cover every rank's batch.

    Shapes:
        forward: float [B_r, C, H, W] → same shape and dtype (computed in float32
        or wider).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise with global batch statistics (training, W > 1) or as BatchNorm2d."""
        if not self.training or get_world_size() == 1:
            return super().forward(x)
        self._check_input_dim(x)
        work = x.to(torch.promote_types(x.dtype, torch.float32)).contiguous()
        mean, var, count = global_moments(work)
        if self.track_running_stats:
            self._update_running_stats(mean, var, count)
        channels = work.shape[1]
        weight = self.weight if self.affine else work.new_ones(channels)
        bias = self.bias if self.affine else work.new_zeros(channels)
        output = _GlobalBatchNorm.apply(work, weight, bias, mean, var, self.eps, count)
        return output.to(x.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
        """Move the running mean / unbiased variance as BatchNorm2d does (momentum or average)."""
        self.num_batches_tracked.add_(1)
        if self.momentum is None:  # cumulative moving average
            factor = 1.0 / float(self.num_batches_tracked)
        else:
            factor = self.momentum
        unbiased = var * (count / max(count - 1, 1))
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
        self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)


class _GlobalBatchNorm(torch.autograd.Function):
    """Normalise with given global statistics; the backward sums their gradients over ranks.

    The local part of the backward is torch's own BatchNorm backward (fused); the
    global sums then correct it by a per-channel affine function of x.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, mean, var, eps: float, count: int):
        invstd = torch.rsqrt(var + eps)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.eps, ctx.count = eps, count
        return F.batch_norm(x, mean, var, weight, bias, False, 0.0, eps)

    @staticmethod
    def backward(ctx, grad_output):
        x, weight, mean, invstd = ctx.saved_tensors
        grad_input, grad_weight, grad_bias = torch.ops.aten.native_batch_norm_backward(
            grad_output.contiguous(), x, weight, None, None, mean, invstd, True, ctx.eps,
            [True, True, True],
        )  # fmt: skip
        # Σ dy and Σ dy·(x − mean) over this rank, then over all ranks
        local_sums = torch.stack([grad_bias, grad_weight / invstd])
        global_sums = local_sums.clone()
        dist.all_reduce(global_sums)
        # the local backward used this rank's means of those sums: swap in the global ones
        delta = local_sums / (x.numel() // x.shape[1]) - global_sums / ctx.count
        scale = weight * invstd
        slope = scale * invstd**2 * delta[1]
        offset = scale * delta[0] - slope * mean
        shape = (1, -1, 1, 1)
        grad_input.addcmul_(x, slope.view(shape)).add_(offset.view(shape))
        return grad_input, grad_weight, grad_bias, None, None, None, None


@torch.no_grad()
def global_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per-channel mean and biased variance of ``x`` over every rank's batch (no gradient).

    Args:
        x: float [B_r, C, ...] on this rank (B_r may differ between ranks).

    Returns:
        (mean [C], var [C], N): the statistics of the concatenation of all ranks'
        ``x`` over every dim but 1, in x's dtype, and the global count N per channel.
    """
    dims = [0, *range(2, x.dim())]
    var, mean = torch.var_mean(x, dim=dims, correction=0)
    count = torch.tensor([x.numel() // x.shape[1]], dtype=torch.float64, device=x.device)
    local = torch.cat([count, mean.double(), var.double()])
    counts, means, variances = all_gather_no_grad(local[None], equal_shapes=True).split(
        [1, mean.numel(), var.numel()], dim=1
    )
    total = counts.sum()
    global_mean = (counts * means).sum(dim=0) / total
    spread = variances + (means - global_mean) ** 2
    global_var = (counts * spread).sum(dim=0) / total
    return global_mean.to(x.dtype), global_var.to(x.dtype), int(total)


def convert_to_global_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d in ``module`` by a global-statistics BatchNorm.

    On an NCCL process group the layers become `torch.nn.SyncBatchNorm` (CUDA);
    on any other backend (gloo: CPU) they become `GlobalBatchNorm2d`. Parameters
    are the same objects, buffers are shared and the train/eval flag is kept, so
    state-dict keys and an optimizer built afterwards are unchanged. Meant for use
    with a process group of more than one rank (Ray Train starts it before the worker
    function runs); without one the converted layers behave as BatchNorm2d.

    Args:
        module: any module; a BatchNorm2d itself is replaced too.

    Returns:
        ``module`` converted in place, or the replacement when ``module`` itself is
        a BatchNorm2d.
    """
    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _swap_batchnorms(module)


def _swap_batchnorms(module: nn.Module) -> nn.Module:
    if type(module) is nn.BatchNorm2d:
        return _global_copy(module)
    for name, child in module.named_children():
        module.add_module(name, _swap_batchnorms(child))
    return module


def _global_copy(layer: nn.BatchNorm2d) -> GlobalBatchNorm2d:
    """A GlobalBatchNorm2d holding `layer`'s parameters and buffers (shared, not copied)."""
    converted = GlobalBatchNorm2d(
        layer.num_features,
        eps=layer.eps,
        momentum=layer.momentum,
        affine=layer.affine,
        track_running_stats=layer.track_running_stats,
    )
    if layer.affine:
        converted.weight, converted.bias = layer.weight, layer.bias
    if layer.track_running_stats:
        converted.running_mean = layer.running_mean
        converted.running_var = layer.running_var
        converted.num_batches_tracked = layer.num_batches_tracked
    converted.train(layer.training)
    return converted
