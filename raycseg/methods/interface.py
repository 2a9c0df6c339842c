"""The stage interface: what the training loop asks of every method.

An interface, not a base class: each method is an `nn.Module` that provides
these members itself, and `METHODS` (in `raycseg.methods`) maps a stage's
`method` name to its class. The worker (`raycseg.train.worker`) calls nothing
else on a method.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol, TypedDict

import torch
from torch import nn

from ..config import ModelSection, StageBase
from ..data.loaders import StreamShare


class StepOutput(TypedDict):
    """What `forward` returns: the loss to minimise and its named parts (all 0-dim tensors).

    A dict, so that DDP sees the tensors of the forward pass.
    """

    loss: torch.Tensor
    terms: dict[str, torch.Tensor]


class StageMethod(Protocol):
    """One training method (CACL, MaskContrast, ReCo), built from its stage section.

    Attributes:
        stage: the stage section. Where the recipe gives a loss weight or threshold
            a step schedule, the training step replaces it at every step with the
            section as it stands then (`stage_at_step`), so `forward` reads this
            step's values from it.
        backbone: the trunk whose weights the next stage and `cseg eval` read.
        find_unused_parameters: DDP must look for parameters a step leaves unused
            (a head whose loss weight is 0).
    """

    stage: StageBase
    backbone: nn.Module
    find_unused_parameters: bool

    def __init__(self, stage: StageBase, model: ModelSection) -> None: ...

    def forward(self, batch: dict[str, torch.Tensor]) -> StepOutput:
        """One training step's loss on a batch of the stage's loader."""
        ...

    def after_step(self, step: int) -> None:
        """Work after the optimizer step `step` (0-based, within the stage): EMA, queues."""
        ...

    def training_loader(self, share: StreamShare) -> Iterable[dict[str, Any]]:
        """The stage's training batches for this process's share of the stream."""
        ...

    def validation_metrics(self, device: torch.device) -> dict[str, float]:
        """The periodic validation on the stage's val shards (at least `val_miou`)."""
        ...

    def is_better(self, metrics: dict[str, float]) -> bool:
        """True when these validation metrics are the best so far (kept as `<stage>/best`)."""
        ...
