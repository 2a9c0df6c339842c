"""The recipe schema: pydantic models of every section, extra keys forbidden.

A recipe is flat YAML. Its `stages` run in order; each stage names its `method`
and carries that method's fields directly, so dotted paths read naturally:
`stages.cacl.lambda_cycle=0.1`, `stages.reco.strong_threshold=0.9` (stages are
addressed by `name`, which defaults to the method). Loading, overrides and
error messages are `raycseg.config.loading` and `raycseg.config.validation`;
path resolution is `raycseg.config.paths`. Loss weights and thresholds also take
step-wise schedules (`raycseg.config.step_schedule`).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from .eval_schema import EvalSection
from .section import Section
from .step_schedule import ScheduledThreshold, ScheduledWeight

# ----------------------------------------------------------------------------- data


class SyntheticData(Section):
    """Procedural data that `cseg pretrain` builds in `data.root/<name>` when absent.

    The folder keeps the spec it was built from; a different spec rebuilds it.
    """

    name: str = Field("synthetic", pattern=r"^[A-Za-z0-9_.-]+$")
    seed: int = 0
    num_clips: int = Field(300, ge=4)
    val_clips: int = Field(100, ge=2)
    image_size: int = Field(64, ge=16)
    frames: int = Field(8, ge=2)
    fps: int = Field(8, ge=1)


class DataSection(Section):
    """Where data lives. Relative shard paths in stages resolve against `root`."""

    root: str = "~/.cache/raycseg/data"
    synthetic: SyntheticData | None = None
    loader_workers: int = Field(1, ge=0)


class DecodePoolSection(Section):
    """The Ray Data decode pool of a stage with `loader: ray_data` (raycseg.data.decode_pool)."""

    tasks: int = Field(1, ge=1, description="decode tasks running at once, over the cluster")
    cpus_per_task: float = Field(1.0, gt=0)
    resources: dict[str, float] = Field(
        default_factory=dict,
        description="custom resources per task, e.g. {decode_node: 0.01} to run the pool on "
        "the CPU worker group of `cseg cluster render --decode-nodes`",
    )


class StageData(Section):
    """A stage's inputs and augmentations (shard roots built by `cseg shards`)."""

    train: str
    val: str | None = None
    unlabelled: str | None = None
    batch_size: int = Field(32, ge=1, description="per worker")
    image_size: int = Field(224, ge=16)
    crop_scale: tuple[float, float] = (0.3, 1.0)
    frame_gap_s: tuple[float, float] = (0.25, 2.0)
    scale_range: tuple[float, float] = (0.5, 1.5)
    color_jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    hue_full_range: bool = False
    grayscale_p: float = Field(0.2, ge=0.0, le=1.0)
    blur_p: float = Field(
        0.5, ge=0.0, le=1.0, description="Gaussian blur of CACL views (cacl stages only)"
    )
    min_mask_area: float = Field(0.01, ge=0.0, le=1.0)
    max_mask_area: float = Field(0.99, ge=0.0, le=1.0)
    samples_per_epoch: int | None = Field(None, ge=1, description="default: the manifest count")
    loader: Literal["webdataset", "ray_data"] = Field(
        "webdataset",
        description="webdataset: decode in each training worker's DataLoader; ray_data: a Ray "
        "Data decode pool with its own CPUs (cacl and maskcontrast stages)",
    )
    decode_pool: DecodePoolSection = Field(default_factory=DecodePoolSection)
    val_pad_to: int | None = Field(
        None,
        ge=16,
        description="ReCo validation: full-resolution images reflect-padded to at least this "
        "side (the official 513 on VOC); default: the batch's largest image",
    )

    @model_validator(mode="after")
    def _ranges_ordered(self) -> StageData:
        for key in ("crop_scale", "frame_gap_s", "scale_range"):
            low, high = getattr(self, key)
            if low > high:
                raise ValueError(f"{key}: low {low} > high {high}")
        if self.min_mask_area >= self.max_mask_area:
            raise ValueError("min_mask_area must be below max_mask_area")
        return self


# ----------------------------------------------------------------------------- model, optim


class ModelSection(Section):
    """The backbone shared by every stage of a recipe."""

    backbone: Literal["tiny", "resnet18", "resnet50", "resnet101"] = "resnet50"
    output_stride: Literal[4, 8, 16] = 16
    width: int = Field(64, ge=8, description="base width of the tiny backbone")
    init_from: str | None = Field(None, description="torchvision or raycseg checkpoint")

    @model_validator(mode="after")
    def _stride_fits_backbone(self) -> ModelSection:
        if self.backbone == "tiny" and self.output_stride != 4:
            raise ValueError("the tiny backbone has output_stride 4")
        if self.backbone != "tiny" and self.output_stride == 4:
            raise ValueError("ResNet backbones support output_stride 8 or 16")
        return self


class OptimSection(Section):
    """Optimiser and per-step schedules."""

    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(0.03, gt=0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    nesterov: bool = False
    weight_decay: float = Field(1e-4, ge=0.0)
    schedule: Literal["cosine", "poly", "constant"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    poly_power: float = 0.9
    min_lr: float = Field(0.0, ge=0.0)
    grad_clip: float | None = Field(
        None, gt=0, description="max gradient norm (none of the papers clips)"
    )


# ----------------------------------------------------------------------------- stages


class StageBase(Section):
    """Fields every stage has."""

    name: str | None = None
    steps: int = Field(ge=1)
    data: StageData
    optim: OptimSection | None = Field(None, description="default: the recipe's optim")
    init_from: str | None = Field(None, description="default: the previous stage")
    val_every: int = Field(0, ge=0, description="steps between validation metrics (0: off)")

    @model_validator(mode="after")
    def _default_name(self) -> StageBase:
        if self.name is None:
            self.name = self.method  # type: ignore[attr-defined]
        return self


class CACLStage(StageBase):
    """Cycle-attention contrastive learning (docs/methods/cacl.md)."""

    method: Literal["cacl"]
    mode: Literal["video", "image"] = "video"
    lambda_global: ScheduledWeight = 1.0
    lambda_pixel: ScheduledWeight = 1.0
    lambda_cycle: ScheduledWeight = 1.0
    temperature_global: float = Field(0.2, gt=0)
    temperature_pixel: float = Field(0.2, gt=0)
    temperature_cycle: float = Field(0.07, gt=0)
    cycle_edge_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    num_pixel_negatives: int = Field(4096, ge=0)
    queue_size: int = Field(0, ge=0)
    head_dim: int = Field(128, ge=8)
    batch_norm: Literal["global", "local"] = Field(
        "global",
        description="global: BN statistics over every worker's views (no per-worker leak); "
        "local: per worker, as plain DDP",
    )


class MaskContrastStage(StageBase):
    """Saliency-mask contrast (docs/methods/maskcontrast.md)."""

    method: Literal["maskcontrast"]
    temperature: float = Field(0.5, gt=0)
    queue_size: int = Field(128, ge=0)
    momentum: float = Field(0.999, ge=0.0, lt=1.0)
    embedding_dim: int = Field(32, ge=4)
    saliency_weight: ScheduledWeight = 1.0
    loss_resolution: Literal["full", "feature"] = "full"
    freeze_early_layers: bool = Field(
        False, description="conv1, bn1, layer1, layer2 fixed, BN in eval (ImageNet-supervised init)"
    )


class RecoStage(StageBase):
    """Regional contrast, supervised or semi-supervised (docs/methods/reco.md)."""

    method: Literal["reco"]
    mode: Literal["supervised", "semi", "partial"] = Field(
        "semi",
        description="partial: semi on sparsely labelled images (`cseg shards split --partial`)",
    )
    num_classes: int | None = Field(
        None, ge=2, description="default: the class count of data.train's manifest"
    )
    decoder: Literal["deeplabv3p", "deeplabv2"] = "deeplabv3p"
    rep_dim: int = Field(256, ge=8)
    strong_threshold: ScheduledThreshold = 0.97
    weak_threshold: ScheduledThreshold = 0.7
    temperature: float = Field(0.5, gt=0)
    num_queries: int = Field(256, ge=1)
    num_negatives: int = Field(512, ge=1)
    lambda_reco: ScheduledWeight = 1.0
    mix: Literal["classmix", "cutmix", "cutout"] = "classmix"
    ema_decay: float = Field(0.99, ge=0.0, lt=1.0)


Stage = Annotated[CACLStage | MaskContrastStage | RecoStage, Field(discriminator="method")]


# ----------------------------------------------------------------------------- run-level sections


class ScalingSection(Section):
    """How many Ray Train workers, and what each one asks the cluster for."""

    num_workers: int = Field(2, ge=0, description="0: run the loop in the driver (local mode)")
    min_workers: int | None = Field(None, ge=1, description="elastic lower bound")
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, ge=0)
    resources_per_worker: dict[str, float] = Field(default_factory=dict)
    driver_resources: dict[str, float] = Field(
        default_factory=dict, description="what each `cseg tune` trial driver asks for"
    )
    mixed_precision: bool = Field(True, description="bf16 autocast + channels_last on GPU")
    fused_optimizer: bool = Field(
        True, description="torch's fused SGD/Adam/AdamW kernels (no host read of step counts)"
    )
    cudnn_benchmark: bool = Field(False, description="let cuDNN time its kernels (GPU)")
    compile: bool = Field(False, description="torch.compile the method's networks")
    gradient_as_bucket_view: bool = Field(False, description="DDP: gradients in its buckets")
    static_graph: bool = Field(False, description="DDP: the same graph every step")


class StorageSection(Section):
    """Where runs are written and how they are checkpointed."""

    path: str = "./runs"
    name: str | None = Field(None, description="default: <recipe name>-<timestamp>")
    checkpoint_every: int = Field(50, ge=1)
    num_to_keep: int = Field(2, ge=1)
    max_failures: int = Field(1, ge=-1)
    log_every: int = Field(1, ge=1)
    loggers: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(
        default_factory=list,
        description="experiment trackers fed besides metrics.jsonl (pip install "
        "'raycseg[tracking]'); their URIs, projects and keys come from the environment",
    )


class TuneSection(Section):
    """Defaults that `cseg tune` uses when a space file does not say."""

    metric: str = "val_miou"
    mode: Literal["max", "min"] = "max"


class Recipe(Section):
    """A whole recipe: one `cseg pretrain` run."""

    name: str
    description: str = ""
    seed: int = 0
    data: DataSection = Field(default_factory=DataSection)
    model: ModelSection = Field(default_factory=ModelSection)
    stages: list[Stage] = Field(min_length=1)
    optim: OptimSection = Field(default_factory=OptimSection)
    scaling: ScalingSection = Field(default_factory=ScalingSection)
    storage: StorageSection = Field(default_factory=StorageSection)
    eval: EvalSection | None = None
    tune: TuneSection = Field(default_factory=TuneSection)

    @model_validator(mode="after")
    def _cross_checks(self) -> Recipe:
        if self.eval is not None and self.eval.data is None:
            self.eval = None  # `eval.data=null` turns evaluation off, as `eval=null` does
        names = [stage.name for stage in self.stages]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"stage names must be unique; give each a `name` ({duplicated})")
        for index, stage in enumerate(self.stages):
            weights = stage.init_from or self.model.init_from or index > 0
            if isinstance(stage, MaskContrastStage) and stage.freeze_early_layers and not weights:
                raise ValueError(
                    f"stages.{stage.name}.freeze_early_layers fixes conv1..layer2, but no weights "
                    "are loaded into them: set model.init_from (e.g. torchvision:resnet50, the "
                    "official ImageNet init) or set freeze_early_layers: false"
                )
            resnet = self.model.backbone != "tiny"
            if isinstance(stage, RecoStage) and stage.decoder == "deeplabv2" and resnet:
                if self.model.output_stride != 8:
                    raise ValueError(
                        f"stages.{stage.name}.decoder=deeplabv2 runs a ResNet at output stride 8 "
                        f"(rates 6/12/18/24, as the spec); set model.output_stride: 8 "
                        f"(it is {self.model.output_stride})"
                    )
        global_workers = max(self.scaling.num_workers, 1)
        for stage in self.stages:
            if isinstance(stage, MaskContrastStage) and stage.queue_size:
                global_batch = stage.data.batch_size * global_workers
                if stage.queue_size % global_batch:
                    raise ValueError(
                        f"stages.{stage.name}.queue_size={stage.queue_size} must be a multiple "
                        f"of the global batch {global_batch} (batch_size x num_workers)"
                    )
        return self

    @model_validator(mode="after")
    def _decode_pools_fit(self) -> Recipe:
        for stage in self.stages:
            if stage.data.loader != "ray_data":
                continue
            if isinstance(stage, RecoStage):
                raise ValueError(
                    f"stages.{stage.name}.data.loader=ray_data feeds one stream; ReCo reads "
                    "two, so use data.loader: webdataset on reco stages"
                )
            if self.scaling.num_workers == 0:
                raise ValueError(
                    f"stages.{stage.name}.data.loader=ray_data feeds Ray Train workers; set "
                    "scaling.num_workers >= 1 or use data.loader: webdataset"
                )
        return self

    def decode_pool_cpus(self) -> float:
        """The most CPUs one stage's Ray Data decode pool asks for (0: no stage has one)."""
        pools = [stage.data.decode_pool for stage in self.stages if stage.data.loader == "ray_data"]
        return max((pool.tasks * pool.cpus_per_task for pool in pools), default=0.0)

    def step_offset(self, stage_name: str) -> int:
        """The global steps the stages before `stage_name` take (`step` counts on across stages)."""
        names = [stage.name for stage in self.stages]
        return sum(stage.steps for stage in self.stages[: names.index(stage_name)])

    def optim_for(self, stage: StageBase) -> OptimSection:
        """The optimiser settings of `stage` (its own, else the recipe's)."""
        return stage.optim or self.optim
