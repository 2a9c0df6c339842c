"""Recipes: the typed schema, `load_recipe(path, overrides)` and path resolution.

A recipe is flat YAML validated by pydantic with extra keys forbidden. Its
`stages` run in order; each stage names its `method` and carries that
method's fields directly, so dotted paths read naturally:
`stages.cacl.lambda_cycle=0.1`, `stages.reco.strong_threshold=0.9`
(stages are addressed by `name`, which defaults to the method).

A cluster overlay (`--cluster gpu`, or a YAML path) is a partial recipe laid
over any recipe before the `key=value` overrides: recipe < overlay < overrides.

Every problem (unknown key, wrong type, missing file) is collected and raised
at once as one `RecipeError`, each with its key path, before Ray starts.
"""

from __future__ import annotations

import difflib
import importlib.resources
import os
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import RecipeError

RECIPE_SUFFIX = ".yaml"
OVERLAY_FOLDER = "clusters/overlays"


class Section(BaseModel):
    """Base for every recipe section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


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
    lambda_global: float = Field(1.0, ge=0.0)
    lambda_pixel: float = Field(1.0, ge=0.0)
    lambda_cycle: float = Field(1.0, ge=0.0)
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
    saliency_weight: float = Field(1.0, ge=0.0)
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
    strong_threshold: float = Field(0.97, gt=0.0, le=1.0)
    weak_threshold: float = Field(0.7, gt=0.0, le=1.0)
    temperature: float = Field(0.5, gt=0)
    num_queries: int = Field(256, ge=1)
    num_negatives: int = Field(512, ge=1)
    lambda_reco: float = Field(1.0, ge=0.0)
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


class StorageSection(Section):
    """Where runs are written and how they are checkpointed."""

    path: str = "./runs"
    name: str | None = Field(None, description="default: <recipe name>-<timestamp>")
    checkpoint_every: int = Field(50, ge=1)
    num_to_keep: int = Field(2, ge=1)
    max_failures: int = Field(1, ge=-1)
    log_every: int = Field(1, ge=1)


class LinearProbeSection(Section):
    """The linear probe: MaskContrast's linear protocol by default (maskcontrast.md §6.1).

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


EvalProtocol = Literal["linear-probe", "kmeans", "maskcontrast-kmeans", "segmentation"]
EVAL_PROTOCOLS: tuple[str, ...] = get_args(EvalProtocol)


class EvalSection(Section):
    """The evaluation `cseg pretrain` runs at the end (CONTRACTS.md §3)."""

    data: str | None = Field(None, description="segmentation shards; null: no evaluation")
    num_classes: int | None = Field(
        None, ge=2, description="default: the class count of the data's manifest"
    )
    protocols: list[EvalProtocol] = Field(default_factory=lambda: ["linear-probe", "kmeans"])
    baseline: Literal["random"] | None = None
    image_size: int = Field(
        512,
        ge=16,
        description="input of linear-probe, kmeans and maskcontrast-kmeans: each image resized "
        "to this square (MaskContrast: 512); `segmentation` uses its stage's full resolution",
    )
    linear_probe: LinearProbeSection = Field(default_factory=LinearProbeSection)


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

    def optim_for(self, stage: StageBase) -> OptimSection:
        """The optimiser settings of `stage` (its own, else the recipe's)."""
        return stage.optim or self.optim


# ----------------------------------------------------------------------------- loading


def shipped_recipes() -> list[str]:
    """Names of the recipes shipped with the package, e.g. `quickstart`, `cacl/debug`."""
    root = importlib.resources.files("raycseg.recipes")
    names = []
    for entry in _walk(root):
        rel = entry[0]
        if rel.endswith(RECIPE_SUFFIX) and not rel.startswith(("clusters/", "tune/")):
            names.append(rel[: -len(RECIPE_SUFFIX)])
    return sorted(names)


def shipped_files(folder: str = "") -> list[str]:
    """Relative paths of every shipped YAML file under `folder` (e.g. `tune`)."""
    root = importlib.resources.files("raycseg.recipes")
    return sorted(
        rel for rel, _ in _walk(root) if rel.endswith(RECIPE_SUFFIX) and rel.startswith(folder)
    )


def _walk(node, prefix: str = ""):
    for child in node.iterdir():
        rel = f"{prefix}{child.name}"
        if child.is_dir():
            if not child.name.startswith(("_", ".")):
                yield from _walk(child, rel + "/")
        else:
            yield rel, child


def find_recipe(name_or_path: str | Path) -> Path:
    """Resolve a file path or a shipped recipe name (`quickstart`, `cacl/debug`).

    Raises:
        RecipeError: neither exists; a shipped name close to it is suggested.
    """
    text = str(name_or_path)
    try:
        path = Path(name_or_path).expanduser()
    except RuntimeError:  # `~name` where no user is called name
        path = Path(name_or_path)
    if _is_file(path):
        return path.resolve()
    name = text.removeprefix("recipes/").removesuffix(RECIPE_SUFFIX)
    shipped = importlib.resources.files("raycseg.recipes").joinpath(name + RECIPE_SUFFIX)
    if _is_file(shipped):
        return Path(str(shipped))
    raise RecipeError(
        f"no recipe file or shipped recipe named {text!r}; "
        f"{_did_you_mean(name, shipped_recipes())}list shipped recipes with `cseg recipes ls`"
    )


def _is_file(path: Any) -> bool:
    """`path.is_file()`, False for names the OS rejects (too long, NUL bytes, no access)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def _did_you_mean(word: str, choices: list[str]) -> str:
    """`did you mean X? ` for the choice closest to a misspelt `word`, else ``""``."""
    matches = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"did you mean {matches[0]}? " if matches else ""


MAX_YAML_BYTES = 10 << 20  # recipes, spaces and overlays are a few KiB


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping (a recipe, a space, an overlay).

    Raises:
        RecipeError: one line naming the fix when the file cannot be read, is not
            UTF-8 YAML text, or does not hold a mapping at the top level.
    """
    try:
        size = path.stat().st_size
        if size > MAX_YAML_BYTES:
            raise RecipeError(
                f"{path}: {size / 2**20:.0f} MiB is not a recipe; give a YAML file of key: value lines"
            )
        data = path.read_bytes()
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise RecipeError(f"{path}: cannot read it ({reason}); check the path") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise RecipeError(
            f"{path}: not UTF-8 text (byte {error.start}); give a YAML file saved as UTF-8"
        ) from None
    try:
        loaded = yaml.safe_load(text)
    except Exception as error:  # PyYAML raises ValueError, KeyError, RecursionError too
        raise RecipeError(f"{path}: invalid YAML{_yaml_problem(error)}; fix the syntax") from None
    if not isinstance(loaded, dict):
        found = "nothing" if loaded is None else f"a {type(loaded).__name__}"
        raise RecipeError(
            f"{path}: expected a mapping of key: value lines at the top level, found {found}"
        )
    return loaded


def _yaml_problem(error: Exception) -> str:
    """Where and what PyYAML found wrong, e.g. ` at line 3 (mapping values are not allowed here)`."""
    if isinstance(error, RecursionError):
        return " (nested too deeply)"
    if not isinstance(error, yaml.YAMLError):
        return f" ({type(error).__name__} while building a value)"
    mark = getattr(error, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(error, "problem", None) or getattr(error, "reason", None)
    return f"{where} ({problem})" if problem else where


def apply_overrides(raw: dict[str, Any], overrides: list[str] | dict[str, Any]) -> dict[str, Any]:
    """Apply `a.b=value` overrides (values parsed as YAML) to a raw recipe dict.

    Stages are addressed by name (`stages.cacl.lambda_cycle`) or index
    (`stages.0.steps`). Unknown keys are set anyway, so that validation
    reports them with their path alongside every other error.

    Raises:
        RecipeError: an override is not `key=value`, its value is not YAML, or
            its path runs through something that is not a section.
    """
    if isinstance(overrides, dict):
        pairs = [(str(key), value) for key, value in overrides.items()]
    else:
        pairs = [_parse_override(str(item)) for item in overrides]
    for key, value in pairs:
        _set_path(raw, key, value)
    return raw


def _parse_override(item: str) -> tuple[str, Any]:
    """Split `a.b=value` and read the value as YAML (empty: None)."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise RecipeError(f"override {item!r} is not key=value, e.g. stages.cacl.steps=100")
    if not all(part.strip() for part in key.split(".")):
        raise RecipeError(
            f"override {item!r}: {key!r} has an empty part; write keys like stages.cacl.steps"
        )
    if not text.strip():
        return key, None
    try:
        return key, yaml.safe_load(text)
    except Exception as error:  # PyYAML raises ValueError, KeyError, RecursionError too
        raise RecipeError(
            f"override {item!r}: the value is not YAML{_yaml_problem(error)}; "
            f"""quote a string value, e.g. {key}='"text"'"""
        ) from None


def _set_path(raw: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node: Any = raw
    for depth, part in enumerate(parts[:-1]):
        if depth == 0 and part == "stages":
            node = raw.setdefault("stages", [])
            if not isinstance(node, list):
                raise RecipeError(
                    f"override {dotted}: the recipe's stages is not a list; "
                    "write stages as a list of `- method: ...` entries"
                )
            continue
        if isinstance(node, list):
            node = node[_stage_index(node, part, dotted)]
            continue
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    last = parts[-1]
    if isinstance(node, list):
        raise RecipeError(f"override {dotted}: name a stage field, e.g. stages.cacl.steps")
    node[last] = value


def _stage_index(stages: list[Any], part: str, dotted: str) -> int:
    """The index of the stage named (or numbered) `part`; only mappings count as stages."""
    if part.isascii() and part.isdigit() and int(part) < len(stages):
        index = int(part)
        if isinstance(stages[index], dict):
            return index
    for index, stage in enumerate(stages):
        if isinstance(stage, dict) and (stage.get("name") or stage.get("method")) == part:
            return index
    known = [str(s.get("name") or s.get("method")) for s in stages if isinstance(s, dict)]
    if not known:
        raise RecipeError(f"override {dotted}: the recipe has no stages; add one under `stages:`")
    raise RecipeError(
        f"override {dotted}: no stage named {part!r}; {_did_you_mean(part, known)}"
        f"stages are {known} (or their indexes from 0)"
    )


def find_cluster_overlay(name_or_path: str | Path) -> Path:
    """Resolve a cluster overlay: a YAML path, or a shipped name (`gpu`)."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path.resolve()
    shipped = importlib.resources.files("raycseg.recipes").joinpath(
        f"{OVERLAY_FOLDER}/{name_or_path}{RECIPE_SUFFIX}"
    )
    if shipped.is_file():
        return Path(str(shipped))
    raise RecipeError(
        f"no cluster overlay file or shipped overlay named {str(name_or_path)!r}; "
        f"shipped overlays: {', '.join(shipped_cluster_overlays())}"
    )


def shipped_cluster_overlays() -> list[str]:
    """Names of the cluster overlays shipped with the package, e.g. `gpu`."""
    return [Path(rel).stem for rel in shipped_files(OVERLAY_FOLDER)]


def cluster_overlay(name_or_path: str | Path) -> dict[str, Any]:
    """A cluster overlay as dotted overrides, merged key by key (`scaling.use_gpu: true`)."""
    return dict(_dotted_leaves(read_yaml(find_cluster_overlay(name_or_path))))


def _dotted_leaves(node: dict[str, Any], prefix: str = ""):
    for key, value in node.items():
        if isinstance(value, dict) and value:
            yield from _dotted_leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def validate_recipe(raw: dict[str, Any], source: str = "recipe") -> Recipe:
    """Validate a raw dict, raising one RecipeError that lists every problem with its path."""
    try:
        return Recipe.model_validate(raw)
    except ValidationError as error:
        problems = [f"{_error_path(raw, e['loc'])}: {_error_message(e)}" for e in error.errors()]
        raise RecipeError(f"{source}: " + "; ".join(problems)) from None


def _error_path(raw: dict[str, Any], loc: tuple[Any, ...]) -> str:
    """Turn a pydantic location into a dotted recipe path, naming stages by name."""
    parts: list[str] = []
    index = 0
    while index < len(loc):
        part = loc[index]
        if parts == ["stages"] and isinstance(part, int):
            stages = raw.get("stages")
            stages = stages if isinstance(stages, list) else []
            stage = stages[part] if part < len(stages) and isinstance(stages[part], dict) else {}
            parts.append(_path_part(stage.get("name") or stage.get("method") or part))
            # pydantic puts the discriminator tag (the method) after the index
            if index + 1 < len(loc) and loc[index + 1] == stage.get("method"):
                index += 1
        else:
            parts.append(_path_part(part))
        index += 1
    return ".".join(parts) or "recipe"


def _path_part(part: Any) -> str:
    """A key as written in a dotted path; quoted when it has dots, spaces or odd characters."""
    text = str(part)
    plain = text and text.isprintable() and not any(c in text for c in ". \t'\"")
    return text if plain else repr(text)


def _error_message(error: dict[str, Any]) -> str:
    if error["type"] == "extra_forbidden":
        loc = error["loc"]
        hint = _did_you_mean(str(loc[-1]), _schema_fields(loc[:-1])) if loc else ""
        if hint:
            return f"unknown key; {hint.strip()}"
        return "unknown key (check the spelling; `cseg recipes show` lists the schema)"
    return error["msg"].removeprefix("Value error, ")


def _schema_fields(loc: tuple[Any, ...]) -> list[str]:
    """The field names of the recipe section at a pydantic location (for "did you mean")."""
    node: Any = Recipe
    for part in loc:
        node = _schema_child(node, part)
        if node is None:
            return []
    node = _strip_optional(node)
    if isinstance(node, type) and issubclass(node, BaseModel):
        return list(node.model_fields)
    return []


def _schema_child(node: Any, part: Any) -> Any:
    """The type found at `part` inside the type `node`, or None."""
    node = _strip_optional(node)
    if isinstance(node, type) and issubclass(node, BaseModel):
        field = node.model_fields.get(part) if isinstance(part, str) else None
        return None if field is None else field.annotation
    origin = get_origin(node)
    if origin is list and isinstance(part, int):
        return get_args(node)[0]
    if origin is dict:
        return get_args(node)[1]
    if origin in (Union, UnionType):  # the stage union: pydantic adds the method tag to loc
        for member in get_args(node):
            method = getattr(member, "model_fields", {}).get("method")
            if method is not None and part in get_args(method.annotation):
                return member
    return None


def _strip_optional(node: Any) -> Any:
    """`X` for `Annotated[X, ...]` and `X | None`."""
    while True:
        if get_origin(node) is Annotated:
            node = get_args(node)[0]
        elif get_origin(node) in (Union, UnionType) and type(None) in get_args(node):
            members = [arg for arg in get_args(node) if arg is not type(None)]
            if len(members) != 1:
                return node
            node = members[0]
        else:
            return node


def load_recipe(
    path: str | Path,
    overrides: list[str] | dict[str, Any] | None = None,
    *,
    cluster: str | Path | None = None,
    check_files: bool = True,
) -> Recipe:
    """Load, override and validate a recipe, then resolve its paths.

    Args:
        path: a YAML file or the name of a shipped recipe (`quickstart`, `cacl/debug`).
        overrides: `a.b=value` strings (or a dict of dotted path -> value).
        cluster: a cluster overlay (a shipped name such as `gpu`, or a YAML path),
            applied before the overrides.
        check_files: also report missing shard folders and checkpoints.

    Returns:
        The validated recipe with `data.root`, shard paths, checkpoints and
        `storage.path` made absolute (URLs such as s3:// are kept as they are).

    Raises:
        RecipeError: listing every problem at once, each with its key path.
    """
    file = find_recipe(path)
    raw = read_yaml(file)
    if cluster is not None:
        apply_overrides(raw, cluster_overlay(cluster))
    raw = apply_overrides(raw, overrides or [])
    source = str(path) if cluster is None else f"{path} with cluster overlay {cluster}"
    recipe = validate_recipe(raw, source=source)
    resolve_paths(recipe)
    if check_files:
        missing = missing_inputs(recipe)
        if missing:
            raise RecipeError(f"{path}: " + "; ".join(missing))
    return recipe


# ----------------------------------------------------------------------------- paths


def is_url(path: str) -> bool:
    """True for remote locations such as s3://bucket/key or gs://bucket/key."""
    return "://" in path


TORCHVISION_WEIGHTS_PREFIX = "torchvision:"
TORCHVISION_WEIGHTS_NAMES = ("resnet18", "resnet50", "resnet101")


def is_torchvision_weights(value: str | Path) -> bool:
    """True for an init_from naming torchvision's ImageNet weights (``torchvision:resnet50``).

    Such a value is a weights name, not a path: it is never resolved or checked as a file.
    """
    return isinstance(value, str) and value.startswith(TORCHVISION_WEIGHTS_PREFIX)


def resolve_paths(recipe: Recipe) -> None:
    """Make every local path absolute: shard paths against `data.root`, others against cwd.

    An init_from that names torchvision weights (``torchvision:resnet50``) stays as it is.

    Raises:
        RecipeError: such a name is unknown, or its weights are of another backbone,
            or a local path is one the OS cannot use.
    """
    unusable = _unusable_local_paths(recipe)
    if unusable:
        raise RecipeError("; ".join(unusable))
    root = (
        recipe.data.root
        if is_url(recipe.data.root)
        else str(Path(recipe.data.root).expanduser().resolve())
    )
    recipe.data.root = root

    def under_root(value: str | None) -> str | None:
        if value is None or is_url(value) or Path(value).expanduser().is_absolute():
            return (
                None
                if value is None
                else (value if is_url(value) else str(Path(value).expanduser()))
            )
        return f"{root}/{value}" if is_url(root) else str(Path(root) / value)

    def from_cwd(value: str | None) -> str | None:
        if value is None or is_url(value) or is_torchvision_weights(value):
            return value
        return str(Path(value).expanduser().resolve())

    for stage in recipe.stages:
        stage.data.train = under_root(stage.data.train)
        stage.data.val = under_root(stage.data.val)
        stage.data.unlabelled = under_root(stage.data.unlabelled)
        stage.init_from = from_cwd(stage.init_from)
    if recipe.eval is not None:
        recipe.eval.data = under_root(recipe.eval.data)
    recipe.model.init_from = from_cwd(recipe.model.init_from)
    recipe.storage.path = from_cwd(recipe.storage.path)
    _check_torchvision_weights(recipe)


def _unusable_local_paths(recipe: Recipe) -> list[str]:
    """Local paths the OS cannot use, each with its key.

    A NUL byte, a character the file system cannot encode (a lone surrogate), or
    `~name` for a user that does not exist here.
    """
    values = {
        "data.root": recipe.data.root,
        "model.init_from": recipe.model.init_from,
        "storage.path": recipe.storage.path,
        **data_paths(recipe),
        **{f"stages.{stage.name}.init_from": stage.init_from for stage in recipe.stages},
    }
    problems = []
    for key, value in values.items():
        if value is None or is_url(value) or is_torchvision_weights(value):
            continue
        if "\x00" in value:
            problems.append(f"{key}: {value!r} holds a NUL byte; fix the path")
            continue
        try:
            os.fsencode(value)
        except UnicodeError:
            problems.append(f"{key}: {value!r} holds a character no path can; fix the path")
            continue
        try:
            Path(value).expanduser()
        except RuntimeError:
            problems.append(f"{key}: {value!r} names no user here after ~; write the path out")
    return problems


def _check_torchvision_weights(recipe: Recipe) -> None:
    """Every ``torchvision:`` init_from names known weights of the recipe's backbone."""
    model = recipe.model
    values = {f"stages.{stage.name}.init_from": stage.init_from for stage in recipe.stages}
    values["model.init_from"] = model.init_from
    names = ", ".join(TORCHVISION_WEIGHTS_PREFIX + name for name in TORCHVISION_WEIGHTS_NAMES)
    problems = []
    for key, value in values.items():
        if value is None or not is_torchvision_weights(value):
            continue
        name = value.removeprefix(TORCHVISION_WEIGHTS_PREFIX)
        tiny_fits = model.backbone == "tiny" and model.width == 64 and name == "resnet18"
        if name not in TORCHVISION_WEIGHTS_NAMES:
            problems.append(f"{key}: unknown weights {value}; use one of {names}")
        elif name != model.backbone and not tiny_fits:
            problems.append(
                f"{key}: {value} holds {name} weights but model.backbone is {model.backbone}; "
                f"set model.backbone: {name}"
            )
    if problems:
        raise RecipeError("; ".join(problems))


def data_paths(recipe: Recipe) -> dict[str, str]:
    """Every shard set the run reads, by key (`stages.cacl.data.train`, `eval.data`)."""
    paths = {}
    for stage in recipe.stages:
        for field in ("train", "val", "unlabelled"):
            value = getattr(stage.data, field)
            if value is not None:
                paths[f"stages.{stage.name}.data.{field}"] = value
    if recipe.eval is not None:
        paths["eval.data"] = recipe.eval.data
    return paths


def synthetic_dir(recipe: Recipe) -> str | None:
    """The folder of the recipe's generated data, when the run reads from it.

    Generated data is built only when a data path the run reads points into it: a
    recipe whose paths all point at the user's own shards never builds it, even with
    its `data.synthetic` section still there.
    """
    if recipe.data.synthetic is None:
        return None
    folder = f"{recipe.data.root}/{recipe.data.synthetic.name}"
    reads = any(
        path == folder or path.startswith(folder + "/") for path in data_paths(recipe).values()
    )
    return folder if reads else None


def missing_inputs(recipe: Recipe) -> list[str]:
    """Problems with local input paths, each with its key path (generated data excepted)."""
    generated = synthetic_dir(recipe)
    problems = []

    def check(key: str, value: str | None, fix: str) -> None:
        if value is None or is_url(value) or is_torchvision_weights(value):
            return
        if generated and value.startswith(generated):
            return
        if not Path(value).exists():
            problems.append(f"{key}: {value} does not exist; {fix}")

    shards_fix = "build shards with `cseg shards build` (or `cseg shards synthetic`)"
    weights_fix = "give an existing checkpoint file, or torchvision weights (torchvision:resnet50)"
    for key, path in data_paths(recipe).items():
        check(key, path, shards_fix)
    for stage in recipe.stages:
        check(f"stages.{stage.name}.init_from", stage.init_from, weights_fix)
    check("model.init_from", recipe.model.init_from, weights_fix)
    return problems


def recipe_to_yaml(recipe: Recipe) -> str:
    """The resolved recipe as YAML (what `--print-config` shows and runs store)."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
