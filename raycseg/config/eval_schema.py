"""The recipe's `eval` section: the protocols `cseg pretrain` runs at the end, and `cseg eval`'s.

`EvalSection` holds the linear probe's settings (`LinearProbeSection`), the
overclustering K list and the DAVIS label propagation's (`DavisSection`).
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import Field

from .section import Section


class LinearProbeSection(Section):
    """The linear probe: MaskContrast's linear protocol by default (docs/methods/maskcontrast.md §6.1).

    A 1×1 conv on frozen features (all BatchNorm frozen), SGD, a step decay, the best
    epoch on the scored split kept. A recipe may shorten it; `eval.json`'s `protocol`
    record then lists what differs from the paper.
    """

    epochs: int = Field(60, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    lr_decay_epochs: list[int] = Field(
        default_factory=lambda: [25], description="lr x 0.1 for the epochs after each of these"
    )
    augment: bool = Field(True, description="flip, zoom 0.75-1.25 and rotation +-5 degrees")
    select_best: bool = Field(True, description="score the best epoch on the scored split")


class DavisSection(Section):
    """Label propagation on DAVIS-style video (CRW's test code, docs/methods/crw.md §4)."""

    data: str | None = Field(None, description="vos shards (`cseg shards build --kind vos`)")
    resolution: int = Field(
        480, ge=32, description="each frame resized so its short side is this (DAVIS 480p: as is)"
    )
    feature_stride: int = Field(
        8, ge=1, description="features are average-pooled (or upsampled) to this stride"
    )
    context: int = Field(20, ge=1, description="previous frames in the context, besides the first")
    radius: int = Field(12, ge=1, description="feature cells; the first frame is not limited")
    topk: int = Field(10, ge=1)
    temperature: float = Field(0.05, gt=0)


EvalProtocol = Literal[
    "linear-probe", "kmeans", "maskcontrast-kmeans", "segmentation", "overcluster", "davis"
]
DEFAULT_PROTOCOLS: tuple[EvalProtocol, ...] = (
    "linear-probe",
    "kmeans",
)  # an eval section's default
EVAL_PROTOCOLS: tuple[str, ...] = get_args(EvalProtocol)


class EvalSection(Section):
    """The evaluation `cseg pretrain` runs at the end (README.md, Evaluation)."""

    data: str | None = Field(None, description="segmentation shards; null: no evaluation")
    num_classes: int | None = Field(
        None, ge=2, description="default: the class count of the data's manifest"
    )
    protocols: list[EvalProtocol] = Field(default_factory=lambda: list(DEFAULT_PROTOCOLS))
    baseline: Literal["random"] | None = None
    image_size: int = Field(
        512,
        ge=16,
        description="input of linear-probe, kmeans and maskcontrast-kmeans: each image resized "
        "to this square (MaskContrast: 512); `segmentation` uses its stage's full resolution",
    )
    linear_probe: LinearProbeSection = Field(default_factory=LinearProbeSection)
    overcluster_ks: list[int] = Field(
        default_factory=lambda: [100, 300, 500],
        description="overcluster's cluster counts (each clamped to the train pixels)",
    )
    davis: DavisSection = Field(default_factory=DavisSection)
