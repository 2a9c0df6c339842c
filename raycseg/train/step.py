"""One training step of a stage: what every Ray Train worker runs and `cseg bench train` times.

Ray-free on purpose: `cseg bench train` runs it on GPU machines that have no Ray.

A step is `to_device` (the batch), `forward` (learning rate, the stage's
scheduled loss weights and thresholds, autocast, the method's loss), `backward` and `update` (clipping, the optimizer, the method's
`after_step`); `run` does the last three. None of them waits for the device: the
non-finite check is a device flag (`first_non_finite`) that `logged_values` reads,
with the loss and its terms, in the one host sync of a logging step.

The GPU settings of the recipe's `scaling` section act here: bf16 autocast with
channels_last images (`mixed_precision`), a fused optimizer (`fused_optimizer`),
`cudnn.benchmark` and `torch.compile` of the method's networks (`compile`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..config import OptimSection, ScalingSection, has_schedules, stage_at_step
from ..distributed import reduce_logged_values
from ..methods import StageMethod, StepOutput
from .schedules import build_lr_schedule

NONE_YET = 2**52  # `first_non_finite` before any non-finite loss (exact as a float64)


@dataclass
class LoggedValues:
    """What a logging step reads back: means over ranks, the corrupt count, the first bad step."""

    loss: float
    terms: dict[str, float]
    skipped_corrupt: int
    first_non_finite: int | None  # the stage step (0-based) where a rank first saw one


class StageStep:
    """The optimizer, learning-rate schedule and device settings of one stage's steps.

    Args:
        method: the stage's method (parameters, `after_step`).
        model: what runs the forward: the method, or its DDP wrapper.
        optim: the stage's optimizer section.
        total_steps: the stage's steps (the learning-rate schedule's length).
        scaling: the recipe's scaling section (mixed precision, fused optimizer, ...).
        device: where the step runs.
    """

    def __init__(
        self,
        method: StageMethod,
        model: nn.Module,
        optim: OptimSection,
        total_steps: int,
        scaling: ScalingSection,
        device: torch.device,
    ):
        self.method, self.model, self.optim, self.device = method, model, optim, device
        self.use_amp = device.type == "cuda" and scaling.mixed_precision
        self.optimizer = build_optimizer(method, optim, fused=scaling.fused_optimizer)
        self.lr_schedule = build_lr_schedule(optim, total_steps)
        # A stage whose weights or thresholds follow step schedules: the method gets the
        # stage section as it stands at each step (`raycseg.config.step_schedule`).
        self.scheduled_stage = method.stage if has_schedules(method.stage) else None
        self.first_non_finite = torch.full((), NONE_YET, dtype=torch.long, device=device)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = scaling.cudnn_benchmark

    def to_device(self, batch: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """The batch on the device (images channels_last under autocast), and its corrupt count.

        The count is read on the host before the copy: it never waits for the device.
        """
        skipped = int(batch.pop("skipped_corrupt", 0))
        return {key: self._moved(value) for key, value in batch.items()}, skipped

    def _moved(self, value: Any) -> Any:
        if not torch.is_tensor(value):
            return value
        moved = value.to(self.device, non_blocking=True)
        if self.use_amp and moved.dim() == 4:
            return moved.contiguous(memory_format=torch.channels_last)
        return moved

    def forward(self, batch: dict[str, Any], stage_step: int) -> StepOutput:
        """Set this step's learning rate and scheduled values; compute the loss (noting a non-finite one)."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr(stage_step)
        if self.scheduled_stage is not None:
            self.method.stage = stage_at_step(self.scheduled_stage, stage_step)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_amp):
            output = self.model(batch)
        bad = ~torch.isfinite(output["loss"].detach())
        self.first_non_finite = torch.where(
            bad, self.first_non_finite.clamp_max(stage_step), self.first_non_finite
        )
        return output

    def backward(self, output: StepOutput) -> None:
        """Gradients of the step's loss (the previous ones dropped)."""
        self.optimizer.zero_grad(set_to_none=True)
        output["loss"].backward()

    def update(self, stage_step: int) -> None:
        """Clip (when the recipe asks), step the optimizer, then the method's own update."""
        if self.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(
                self.method.parameters(), self.optim.grad_clip, foreach=True
            )
        self.optimizer.step()
        self.method.after_step(stage_step)

    def run(self, batch: dict[str, Any], stage_step: int) -> StepOutput:
        """Forward, backward and update on a batch already on the device."""
        output = self.forward(batch, stage_step)
        self.backward(output)
        self.update(stage_step)
        return output

    def lr(self, stage_step: int) -> float:
        """The learning rate of a step."""
        return float(self.lr_schedule[stage_step])

    def logged_values(self, output: StepOutput, skipped_corrupt: int) -> LoggedValues:
        """Means over ranks of the loss and its terms, the corrupt total, the first bad step.

        Every rank must call it (collectives). It reads the device once.
        """
        terms = output["terms"]
        values = [output["loss"].detach(), *[t.detach() for t in terms.values()]]
        means, total, first_bad = reduce_logged_values(
            values, skipped_corrupt, self.first_non_finite, self.device
        )
        return LoggedValues(
            loss=means[0],
            terms=dict(zip(terms, means[1:], strict=True)),
            skipped_corrupt=total,
            first_non_finite=None if first_bad == NONE_YET else first_bad,
        )


def compile_networks(method: nn.Module) -> None:
    """torch.compile, in place, each network of the method (its children that hold parameters).

    In place (`nn.Module.compile`), so parameter names and checkpoints are unchanged;
    the losses and the step's own code stay eager.
    """
    for child in method.children():
        if any(True for _ in child.parameters()):
            child.compile()


def build_optimizer(
    module: nn.Module, optim: OptimSection, *, fused: bool = False
) -> torch.optim.Optimizer:
    """SGD (with momentum, optional Nesterov), Adam or AdamW over the trainable parameters.

    `fused`: torch's fused kernels (CPU and CUDA), one kernel for all parameters
    and no read of the step counters on the host (the for-each Adam reads them).
    """
    params = [p for p in module.parameters() if p.requires_grad]
    implementation = {"fused": True} if fused else {}
    if optim.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=optim.lr,
            momentum=optim.momentum,
            nesterov=optim.nesterov,
            weight_decay=optim.weight_decay,
            **implementation,
        )
    kind = torch.optim.Adam if optim.optimizer == "adam" else torch.optim.AdamW
    return kind(params, lr=optim.lr, weight_decay=optim.weight_decay, **implementation)
