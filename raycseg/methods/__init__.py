"""Training methods, one class per stage `method`, each following `StageMethod`.

`METHODS` maps a stage's `method` name to its class; the training loop
(`raycseg.train.worker`) builds one with `build_method` and then calls only the
members of `raycseg.methods.interface.StageMethod`.
"""

from __future__ import annotations

from ..config import CACLStage, MaskContrastStage, ModelSection, StageBase
from ..data.loaders import pair_decoder, saliency_view_decoder
from .cacl import CACL
from .common import training_urls
from .interface import StageMethod, StepOutput
from .maskcontrast import MaskContrast
from .reco import ReCo

METHODS: dict[str, type[StageMethod]] = {
    "cacl": CACL,
    "maskcontrast": MaskContrast,
    "reco": ReCo,
}

__all__ = ["METHODS", "StageMethod", "StepOutput", "build_method", "decode_pool_training_dataset"]


def build_method(stage: StageBase, model: ModelSection) -> StageMethod:
    """The method of `stage` (its `method` names the class), built from its sections."""
    return METHODS[stage.method](stage, model)


def decode_pool_training_dataset(stage: StageBase):
    """The stage's training samples, decoded by its Ray Data pool (`data.loader: ray_data`).

    The items are those of the stage's default loader (`training_loader`); the
    driver hands the dataset to Ray Train, and each worker reads its share with
    `raycseg.data.decode_pool.pool_batches`.
    """
    if isinstance(stage, CACLStage):
        decode = pair_decoder(stage.data, stage.mode)
    elif isinstance(stage, MaskContrastStage):
        decode = saliency_view_decoder(stage.data)
    else:
        raise ValueError(f"stage {stage.name}: {stage.method} has no decode pool")
    from ..data.decode_pool import decode_pool_dataset  # Ray Data: only where a pool runs

    urls, _ = training_urls(stage.data, 1)
    return decode_pool_dataset(urls, decode, stage.data.decode_pool)
