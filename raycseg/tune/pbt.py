"""Population Based Training: the scheduler of a `scheduler: {type: pbt}` space, and its checks.

    scheduler: {type: pbt, perturbation_interval: 4, quantile_fraction: 0.5}

Every `perturbation_interval` steps, a trial in the bottom `quantile_fraction`
of the population (by the space's metric) takes over the checkpoint of a trial
in the top one (exploit) and goes on with that trial's values, each perturbed
(explore): with probability `resample_probability` drawn afresh from the space's
distribution, else multiplied by 0.8 or 1.2 (a `choice` moves to a neighbouring
value), and kept inside the distribution's range. With `synch: true` a trial that
reaches the interval first is paused until every trial has (then resumed from its
checkpoint), so all are compared at the same step: slower, but an exploit no longer
depends on trials overlapping in time, which short CPU trials that start seconds
apart may not.

An exploit restores the donor's checkpoint of that very step, so the interval
must be the recipe's `storage.checkpoint_every`, and the metric must be reported
at every checkpoint. The searched values change while trials train, so only
fields that take step schedules can be searched (loss weights and thresholds,
`raycseg.config.step_schedule`): the trials' recipes, and `best.yaml`, hold them
as schedules. How a trial takes over another's checkpoint: `raycseg.tune.trial`.
"""

from __future__ import annotations

from typing import Any

from ray.tune.schedulers import PopulationBasedTraining
from ray.tune.search.sample import Categorical

from ..config import Recipe, schedulable_fields
from ..errors import RecipeError

PERTURBATION_FACTORS = (1.2, 0.8)


def pbt_scheduler(plan, domains: dict[str, Any]) -> PopulationBasedTraining:
    """The PBT scheduler of a plan whose space asks for `type: pbt` (checked by `check_pbt`).

    `domains` are the space's Tune sampling objects (`spaces.to_param_space`).
    """
    spec = plan.space.scheduler
    return PopulationBasedTraining(
        time_attr="step",
        perturbation_interval=spec.perturbation_interval,
        quantile_fraction=spec.quantile_fraction,
        resample_probability=spec.resample_probability,
        perturbation_factors=PERTURBATION_FACTORS,
        hyperparam_mutations=mutations(domains),
        custom_explore_fn=clamped_to(plan.space.params),
        synch=spec.synch,
    )


def mutations(domains: dict[str, Any]) -> dict[str, Any]:
    """PBT's mutations: the space's domains, a `choice` as its list (PBT then moves along it)."""
    return {
        path: list(domain.categories) if isinstance(domain, Categorical) else domain
        for path, domain in domains.items()
    }


def clamped_to(params: dict[str, Any]):
    """PBT's `custom_explore_fn`: perturbed values back inside their distributions' ranges."""

    def explore(config: dict[str, Any]) -> dict[str, Any]:
        for path, distribution in params.items():
            if distribution.kind in ("uniform", "loguniform", "randint"):
                low, high = distribution.arguments
                value = min(max(config[path], low), high)
                config[path] = round(value) if distribution.kind == "randint" else float(value)
        return config

    return explore


def check_pbt(plan) -> None:
    """Reject a PBT space that cannot work, naming the fix (before Ray starts)."""
    space, recipe, source = plan.space, plan.recipe, plan.source
    spec = space.scheduler
    if spec.perturbation_interval is None:
        raise RecipeError(
            f"{source}: scheduler.perturbation_interval is missing; PBT needs it equal to the "
            f"recipe's storage.checkpoint_every ({recipe.storage.checkpoint_every})"
        )
    if spec.perturbation_interval != recipe.storage.checkpoint_every:
        raise RecipeError(
            f"{source}: scheduler.perturbation_interval={spec.perturbation_interval} differs from "
            f"the recipe's storage.checkpoint_every={recipe.storage.checkpoint_every}; an "
            "exploit takes over the donor's checkpoint of that step, so set both to one value"
        )
    if spec.time_attr != "step":
        raise RecipeError(f"{source}: PBT counts `step`; drop scheduler.time_attr")
    if space.num_samples < 2:
        raise RecipeError(f"{source}: PBT needs a population; set num_samples >= 2")
    if space.search_alg not in (None, "random"):
        raise RecipeError(f"{source}: PBT samples its own values; drop search_alg")
    allowed = schedulable_paths(recipe)
    for path, distribution in space.params.items():
        if distribution.kind == "grid":
            raise RecipeError(
                f"{source}: params.{path}: PBT cannot mutate a grid; use choice: {{...}}"
            )
        if path not in allowed:
            raise RecipeError(
                f"{source}: params.{path}: PBT changes values while trials train and best.yaml "
                "replays them as step schedules, which only loss weights and thresholds take; "
                f"search one of {', '.join(allowed)}"
            )
    _check_metric_at_checkpoints(plan)


def schedulable_paths(recipe: Recipe) -> list[str]:
    """Every `stages.<name>.<field>` of the recipe that takes a step schedule."""
    return [
        f"stages.{stage.name}.{name}"
        for stage in recipe.stages
        for name in schedulable_fields(type(stage))
    ]


def _check_metric_at_checkpoints(plan) -> None:
    """Validation metrics must come with every checkpoint, or PBT cannot compare trials there."""
    if not plan.metric.startswith("val_"):
        return  # the losses, lr and throughput are in every report
    every = plan.recipe.storage.checkpoint_every
    for stage in plan.recipe.stages:
        if not stage.val_every or stage.data.val is None or every % stage.val_every:
            raise RecipeError(
                f"{plan.source}: PBT compares trials on {plan.metric} at every checkpoint, but "
                f"stage {stage.name} validates every {stage.val_every} steps; set "
                f"stages.{stage.name}.val_every to a divisor of storage.checkpoint_every ({every})"
            )
