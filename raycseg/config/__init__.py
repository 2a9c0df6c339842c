"""Recipes: the typed schema, `load_recipe(path, overrides)` and path resolution.

* `raycseg.config.schema`: the pydantic models (`Recipe` and its sections);
* `raycseg.config.loading`: finding recipes and overlays, YAML, `key=value`
  overrides, `load_recipe`;
* `raycseg.config.validation`: validation, every problem named by its key path;
* `raycseg.config.paths`: resolving, listing and checking a recipe's paths.

The public names of all four are importable from `raycseg.config`.
"""

from __future__ import annotations

from .eval_schema import (
    EVAL_PROTOCOLS,
    DavisSection,
    EvalProtocol,
    EvalSection,
    LinearProbeSection,
)
from .loading import (
    MAX_YAML_BYTES,
    OVERLAY_FOLDER,
    RECIPE_SUFFIX,
    apply_overrides,
    cluster_overlay,
    find_cluster_overlay,
    find_recipe,
    load_recipe,
    read_yaml,
    recipe_to_yaml,
    shipped_cluster_overlays,
    shipped_files,
    shipped_recipes,
)
from .paths import (
    TORCHVISION_WEIGHTS_NAMES,
    TORCHVISION_WEIGHTS_PREFIX,
    data_paths,
    is_torchvision_weights,
    missing_inputs,
    resolve_paths,
    synthetic_dir,
)
from .schema import (
    CACLStage,
    DataSection,
    MaskContrastStage,
    ModelSection,
    OptimSection,
    Recipe,
    RecoStage,
    ScalingSection,
    Stage,
    StageBase,
    StageData,
    StorageSection,
    SyntheticData,
    TuneSection,
)
from .section import Section
from .step_schedule import (
    StepSchedule,
    has_schedules,
    schedulable_fields,
    stage_at_step,
    value_at,
    values_of,
)
from .validation import did_you_mean, validate_recipe

__all__ = [
    "CACLStage",
    "DataSection",
    "EVAL_PROTOCOLS",
    "EvalProtocol",
    "EvalSection",
    "DavisSection",
    "LinearProbeSection",
    "MAX_YAML_BYTES",
    "MaskContrastStage",
    "ModelSection",
    "OVERLAY_FOLDER",
    "OptimSection",
    "RECIPE_SUFFIX",
    "Recipe",
    "RecoStage",
    "ScalingSection",
    "Section",
    "Stage",
    "StageBase",
    "StageData",
    "StepSchedule",
    "StorageSection",
    "SyntheticData",
    "TORCHVISION_WEIGHTS_NAMES",
    "TORCHVISION_WEIGHTS_PREFIX",
    "TuneSection",
    "apply_overrides",
    "cluster_overlay",
    "data_paths",
    "did_you_mean",
    "find_cluster_overlay",
    "find_recipe",
    "has_schedules",
    "is_torchvision_weights",
    "load_recipe",
    "missing_inputs",
    "read_yaml",
    "recipe_to_yaml",
    "resolve_paths",
    "schedulable_fields",
    "shipped_cluster_overlays",
    "shipped_files",
    "shipped_recipes",
    "stage_at_step",
    "synthetic_dir",
    "validate_recipe",
    "value_at",
    "values_of",
]
