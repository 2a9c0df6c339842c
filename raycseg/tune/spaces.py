"""Search spaces: a YAML file of recipe paths mapped to distributions.

A space file names the recipe it searches, the objective and the scheduler:

    recipe: cacl/debug                  # a shipped name, or a path (relative: to the space file)
    metric: val_miou                    # default: the recipe's tune.metric
    mode: max                           # default: the recipe's tune.mode
    num_samples: 4
    max_concurrent_trials: 2            # optional; default from the cluster's maximum size
    scheduler: {type: asha, time_attr: step, grace_period: 2, reduction_factor: 2}
                                        # or {type: pbt, perturbation_interval: 4} (`tune.pbt`)
    search_alg: optuna                  # optional; needs that library installed
    overrides: {scaling.num_workers: 1} # fixed for every trial (recipe < overrides < command line)
    params:
      stages.cacl.lambda_cycle: {loguniform: [0.1, 3.0]}
      stages.cacl.lambda_pixel: {choice: [0.3, 1.0, 3.0]}

Distributions: `uniform` and `loguniform` take `[lo, hi]` (lo < hi); `randint`
takes `[lo, hi]`, both ends included; `choice` and `grid` take a non-empty
list (`grid` tries every value, times `num_samples`).

Everything is checked before Ray starts (`load_space`): each path must exist
in the recipe schema and accept the distribution's values (lo, middle and hi,
or every listed value), applied through the recipe's own override machinery.
Problems raise one `RecipeError` naming the path.
"""

from __future__ import annotations

import copy
import importlib.resources
import importlib.util
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..config import (
    RECIPE_SUFFIX,
    Recipe,
    apply_overrides,
    cluster_overlay,
    find_recipe,
    missing_inputs,
    read_yaml,
    resolve_paths,
    validate_recipe,
)
from ..errors import RecipeError
from .pbt import check_pbt

DISTRIBUTIONS = ("uniform", "loguniform", "randint", "choice", "grid")

# search_alg name -> (module that must be importable, ray.tune.search class path)
SEARCH_ALGORITHMS = {
    "optuna": ("optuna", "ray.tune.search.optuna.OptunaSearch"),
    "hyperopt": ("hyperopt", "ray.tune.search.hyperopt.HyperOptSearch"),
    "bayesopt": ("bayes_opt", "ray.tune.search.bayesopt.BayesOptSearch"),
    "hebo": ("hebo", "ray.tune.search.hebo.HEBOSearch"),
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Distribution(_Strict):
    """One parameter's distribution: exactly one of the five keys."""

    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    randint: tuple[int, int] | None = None
    choice: list[Any] | None = None
    grid: list[Any] | None = None

    @model_validator(mode="after")
    def _one_valid_kind(self) -> Distribution:
        given = [name for name in DISTRIBUTIONS if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(DISTRIBUTIONS)} (got {given})")
        kind, value = given[0], getattr(self, given[0])
        if kind in ("choice", "grid") and not value:
            raise ValueError(f"{kind} needs at least one value")
        if kind in ("uniform", "loguniform") and not value[0] < value[1]:
            raise ValueError(
                f"{kind} needs lo < hi (got {list(value)}); a fixed value goes under `overrides:`"
            )
        if kind == "randint" and value[0] > value[1]:
            raise ValueError(f"randint needs lo <= hi (got {list(value)})")
        if kind == "loguniform" and value[0] <= 0:
            raise ValueError(f"loguniform needs lo > 0 (got {value[0]})")
        return self

    @property
    def kind(self) -> str:
        """The distribution's name (`uniform`, ..., `grid`)."""
        return next(name for name in DISTRIBUTIONS if getattr(self, name) is not None)

    @property
    def arguments(self) -> Any:
        """`[lo, hi]` or the list of values."""
        return getattr(self, self.kind)

    def probe_values(self) -> list[Any]:
        """Values that stand for the whole distribution when checking it against the schema."""
        if self.kind in ("choice", "grid"):
            return list(self.arguments)
        lo, hi = self.arguments
        if self.kind == "uniform":
            return [lo, (lo + hi) / 2, hi]
        if self.kind == "loguniform":
            return [lo, math.sqrt(lo * hi), hi]
        return [lo, hi]


class SchedulerSpec(_Strict):
    """The trial scheduler: ASHA (early stopping), FIFO (all to the end) or PBT (`tune.pbt`)."""

    type: Literal["asha", "fifo", "pbt"] = "asha"
    time_attr: str = Field("step", description="a reported counter; `step` survives a restore")
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2.0, gt=1.0)
    max_t: int | None = Field(None, ge=1, description="default: the recipe's total steps")
    perturbation_interval: int | None = Field(None, ge=1, description="PBT: checkpoint_every")
    quantile_fraction: float = Field(0.25, gt=0.0, le=0.5, description="PBT")
    resample_probability: float = Field(0.25, ge=0.0, le=1.0, description="PBT")
    synch: bool = Field(False, description="PBT: trials wait for each other at every interval")


class Space(_Strict):
    """A search space file, as written."""

    recipe: str
    metric: str | None = Field(None, description="default: the recipe's tune.metric")
    mode: Literal["max", "min"] | None = Field(None, description="default: the recipe's tune.mode")
    num_samples: int = Field(1, ge=1)
    max_concurrent_trials: int | None = Field(None, ge=1)
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    search_alg: Literal["random", "optuna", "hyperopt", "bayesopt", "hebo"] | None = None
    overrides: dict[str, Any] = Field(default_factory=dict)
    params: dict[str, Distribution] = Field(min_length=1)


@dataclass
class SearchPlan:
    """A validated space bound to its recipe: everything `run_tune` needs."""

    space: Space
    source: str
    recipe_path: Path
    recipe: Recipe
    user_overrides: list[str] = field(default_factory=list)
    metric: str = "val_miou"
    mode: str = "max"
    max_t: int = 1

    @property
    def base_raw(self) -> dict[str, Any]:
        """The resolved base recipe (space and command-line overrides applied) as a plain dict."""
        return self.recipe.model_dump(mode="json")


# ----------------------------------------------------------------------------- loading


def shipped_spaces() -> list[str]:
    """Names of the shipped spaces, e.g. `cacl_debug` (files in recipes/tune/)."""
    root = importlib.resources.files("raycseg.recipes").joinpath("tune")
    if not root.is_dir():
        return []
    return sorted(
        entry.name[: -len(RECIPE_SUFFIX)]
        for entry in root.iterdir()
        if entry.name.endswith(RECIPE_SUFFIX)
    )


def find_space(name_or_path: str | Path) -> Path:
    """Resolve a space file path or a shipped space name (`cacl_debug`, `tune/cacl_debug`)."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path.resolve()
    name = str(name_or_path).removeprefix("recipes/").removeprefix("tune/")
    name = name.removesuffix(RECIPE_SUFFIX)
    shipped = importlib.resources.files("raycseg.recipes").joinpath("tune", name + RECIPE_SUFFIX)
    if shipped.is_file():
        return Path(str(shipped))
    known = ", ".join(shipped_spaces()) or "none"
    raise RecipeError(
        f"no space file or shipped space named {str(name_or_path)!r}; shipped spaces: {known}"
    )


def parse_space(raw: dict[str, Any], source: str = "space") -> Space:
    """Validate a raw space mapping, raising one RecipeError that names every bad key."""
    try:
        return Space.model_validate(raw)
    except ValidationError as error:
        problems = [_space_problem(item) for item in error.errors()]
        raise RecipeError(f"{source}: " + "; ".join(problems)) from None


def _space_problem(item: dict[str, Any]) -> str:
    """One pydantic error as `params.<path> (<distribution>): <message>`."""
    kind = next((part for part in item["loc"] if part in DISTRIBUTIONS), None)
    where = ".".join(
        str(part) for part in item["loc"] if part != kind and not isinstance(part, int)
    )
    message = item["msg"].removeprefix("Value error, ")
    if item["type"] == "extra_forbidden":
        message = f"unknown key (check the spelling; known keys here: {_known_keys(item['loc'])})"
    elif kind in ("uniform", "loguniform", "randint"):
        message = f"{kind} takes [lo, hi] ({message})"
    elif kind is not None:
        message = f"{kind} takes a list of values ({message})"
    return f"{where or 'space'}: {message}"


def _known_keys(loc: tuple[Any, ...]) -> str:
    """The keys allowed where an unknown key `loc` was found, comma-separated."""
    section = loc[0] if len(loc) > 1 else None
    model = {"params": Distribution, "scheduler": SchedulerSpec}.get(section, Space)
    return ", ".join(model.model_fields)


def load_space(
    space: str | Path,
    *,
    recipe: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    cluster: str | Path | None = None,
    check_files: bool = True,
) -> SearchPlan:
    """Load a space file and check it against its recipe, before Ray starts.

    Args:
        space: a space file or a shipped space name.
        recipe: a recipe (name or path) that replaces the one the space names.
        overrides: `key=value` overrides from the command line; they win over the
            space's own `overrides:` and may not touch a searched path.
        cluster: a cluster overlay (`gpu` or a YAML path), laid over the recipe and the
            space's overrides, under the command line's.
        check_files: also require the recipe's shard folders to exist.

    Returns:
        The plan: the space, its resolved base recipe, the metric, mode and `max_t`.

    Raises:
        RecipeError: an unknown path, a bad distribution or a value failing the schema,
            naming the path.
    """
    file = find_space(space)
    source = str(space)
    parsed = parse_space(read_yaml(file), source)
    recipe_path = _locate_recipe(recipe or parsed.recipe, file.parent if not recipe else None)
    _reject_conflicts(parsed, list(overrides), source)

    raw = read_yaml(recipe_path)
    apply_overrides(raw, dict(parsed.overrides))
    if cluster is not None:
        apply_overrides(raw, cluster_overlay(cluster))
    apply_overrides(raw, list(overrides))
    base = validate_recipe(raw, source=f"{source}: recipe {recipe_path.name}")
    resolve_paths(base)
    if check_files:
        missing = missing_inputs(base)
        if missing:
            raise RecipeError(f"{source}: recipe {recipe_path.name}: " + "; ".join(missing))
    base_raw = base.model_dump(mode="json")
    for path, distribution in parsed.params.items():
        for value in distribution.probe_values():
            check_param_value(base_raw, path, value, source)

    plan = SearchPlan(
        space=parsed,
        source=source,
        recipe_path=recipe_path,
        recipe=base,
        user_overrides=list(overrides),
        metric=parsed.metric or base.tune.metric,
        mode=parsed.mode or base.tune.mode,
    )
    plan.max_t = parsed.scheduler.max_t or sum(stage.steps for stage in base.stages)
    _check_objective(plan)
    if parsed.scheduler.type == "pbt":
        check_pbt(plan)
    _check_search_alg(parsed, source)
    return plan


def check_param_value(base_raw: dict[str, Any], path: str, value: Any, source: str) -> None:
    """Apply `path=value` to a copy of the base recipe and validate it; RecipeError if it fails."""
    try:
        trial_recipe(base_raw, {path: value})
    except RecipeError as error:
        detail = str(error).split(": ", 1)[-1]
        raise RecipeError(f"{source}: params.{path} = {value!r}: {detail}") from None


def trial_recipe(base_raw: dict[str, Any], params: dict[str, Any]) -> Recipe:
    """The recipe of one trial: `params` (dotted path -> value) applied to the base recipe."""
    raw = apply_overrides(copy.deepcopy(base_raw), {k: plain_value(v) for k, v in params.items()})
    recipe = validate_recipe(raw, source="trial")
    resolve_paths(recipe)
    return recipe


def to_param_space(space: Space) -> dict[str, Any]:
    """The space's params as ray.tune sampling objects (keys are the dotted recipe paths)."""
    from ray import tune

    domains: dict[str, Any] = {}
    for path, distribution in space.params.items():
        arguments = distribution.arguments
        if distribution.kind == "uniform":
            domains[path] = tune.uniform(*arguments)
        elif distribution.kind == "loguniform":
            domains[path] = tune.loguniform(*arguments)
        elif distribution.kind == "randint":
            domains[path] = tune.randint(arguments[0], arguments[1] + 1)  # hi included
        elif distribution.kind == "choice":
            domains[path] = tune.choice(list(arguments))
        else:
            domains[path] = tune.grid_search(list(arguments))
    return domains


# ----------------------------------------------------------------------------- checks


def _locate_recipe(name_or_path: str | Path, space_dir: Path | None) -> Path:
    """A recipe named in a space file may be relative to that file; else a path or shipped name."""
    if space_dir is not None and not Path(name_or_path).is_absolute():
        beside = space_dir / name_or_path
        if beside.is_file():
            return beside.resolve()
    return find_recipe(name_or_path)


def _reject_conflicts(space: Space, overrides: list[str], source: str) -> None:
    searched = set(space.params)
    fixed = set(space.overrides) & searched
    if fixed:
        raise RecipeError(
            f"{source}: {sorted(fixed)} are both searched (params) and fixed (overrides); "
            "keep each in one place"
        )
    given = {item.partition("=")[0].strip() for item in overrides}
    clash = given & searched
    if clash:
        raise RecipeError(
            f"{source}: the command line sets {sorted(clash)}, which the space searches; "
            "drop the override or edit the space's params"
        )


def _check_objective(plan: SearchPlan) -> None:
    """A validation metric needs a stage that validates; the scheduler needs room to stop."""
    recipe, scheduler = plan.recipe, plan.space.scheduler
    if plan.metric.startswith("val_"):
        validating = [s.name for s in recipe.stages if s.val_every and s.data.val]
        if not validating:
            stage = recipe.stages[-1].name
            raise RecipeError(
                f"{plan.source}: metric {plan.metric} is reported only by stages with "
                f"val_every > 0 and data.val; set e.g. stages.{stage}.val_every=10 "
                f"(and stages.{stage}.data.val), or choose another metric"
            )
    if scheduler.type == "asha" and scheduler.grace_period > plan.max_t:
        raise RecipeError(
            f"{plan.source}: scheduler.grace_period={scheduler.grace_period} exceeds "
            f"max_t={plan.max_t}; lower the grace period"
        )


def _check_search_alg(space: Space, source: str) -> None:
    name = space.search_alg
    if name in (None, "random"):
        return
    module, _ = SEARCH_ALGORITHMS[name]
    if importlib.util.find_spec(module) is None:
        raise RecipeError(
            f"{source}: search_alg {name} needs the `{module}` package, which is not installed; "
            "install it or drop search_alg (random search)"
        )
    grid = [path for path, d in space.params.items() if d.kind == "grid"]
    if grid:
        raise RecipeError(
            f"{source}: search_alg {name} cannot take grid params {grid}; use choice instead"
        )


def plain_value(value: Any) -> Any:
    """Turn numpy scalars (what Tune samples) into plain Python values, for pydantic and YAML."""
    return value.item() if hasattr(value, "item") and not isinstance(value, list | dict) else value
