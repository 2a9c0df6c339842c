"""Training methods, one class per stage `method`, each following `StageMethod`.

`METHODS` maps a stage's `method` name to its class; the training loop
(`raycseg.train.worker`) builds one with `build_method` and then calls only the
members of `raycseg.methods.interface.StageMethod`.
"""

from __future__ import annotations

from ..config import ModelSection, StageBase
from .cacl import CACL
from .interface import StageMethod, StepOutput
from .maskcontrast import MaskContrast
from .reco import ReCo

METHODS: dict[str, type[StageMethod]] = {
    "cacl": CACL,
    "maskcontrast": MaskContrast,
    "reco": ReCo,
}

__all__ = ["METHODS", "StageMethod", "StepOutput", "build_method"]


def build_method(stage: StageBase, model: ModelSection) -> StageMethod:
    """The method of `stage` (its `method` names the class), built from its sections."""
    return METHODS[stage.method](stage, model)
