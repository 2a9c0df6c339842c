"""`cseg tune [RECIPE] --space SPACE [key=value ...]`: a Ray Tune search, then its report."""

from __future__ import annotations

import contextlib
import sys

import typer
from rich.table import Table

from raycseg.errors import FoundProblems, RecipeError

from .console import err, out


def tune(
    recipe: str = typer.Argument(
        None, help="A recipe (name or path) replacing the one the space names."
    ),
    overrides: list[str] = typer.Argument(
        None, help="key=value overrides for every trial, e.g. stages.cacl.steps=100."
    ),
    space: str = typer.Option(
        None, "--space", "-s", help="A space file or shipped space name (e.g. cacl_debug)."
    ),
    name: str = typer.Option(
        None, "--name", help="Experiment name; an existing one of that name is resumed."
    ),
    resume: str = typer.Option(
        None, "--resume", help="Resume experiment NAME (or its directory); error if none."
    ),
    address: str = typer.Option(
        None, "--address", help="Ray cluster address (default: RAY_ADDRESS, else local Ray)."
    ),
    cluster: str = typer.Option(
        None, "--cluster", help="A cluster overlay (`gpu` or a YAML path) under the overrides."
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Validate the space against its recipe; run nothing."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the experiment directory."),
) -> None:
    """Search hyperparameters with Ray Tune (ASHA by default), then write the search report."""
    from raycseg.reports import write_experiment_report
    from raycseg.tune.search import run_tune
    from raycseg.tune.spaces import load_space

    from .report import print_summary

    recipe, overrides = _split_recipe_and_overrides(recipe, overrides or [])
    if resume and name and resume != name:
        raise RecipeError(f"--resume {resume} and --name {name} differ; give one of them")
    if space is None and resume is None:
        raise RecipeError("give a space, e.g. `cseg tune --space cacl_debug`, or --resume NAME")
    if dry_run:
        plan = load_space(
            space, recipe=recipe, overrides=overrides, cluster=cluster, check_files=False
        )
        _print_plan(plan)
        return
    say = (lambda message: None) if quiet else (lambda message: err.print(message, markup=False))
    with contextlib.redirect_stdout(sys.stderr):  # Tune's progress tables are progress
        result = run_tune(
            space,
            recipe=recipe,
            overrides=overrides,
            cluster=cluster,
            name=resume or name,
            resume=resume is not None,
            address=address,
            verbose=0 if quiet else 1,
            on_message=say,
        )
    if result.interrupted:
        err.print(f"interrupted; resume with: cseg tune --resume {result.experiment_dir}")
        raise typer.Exit(130)
    summary = write_experiment_report(result.experiment_dir, metric=result.metric, mode=result.mode)
    if quiet:
        out.print(str(result.experiment_dir), markup=False)
    else:
        for path in summary.files:
            say(f"wrote {path}")
        print_summary(summary)
        if result.best_recipe_path is not None:
            out.print(f"best recipe: {result.best_recipe_path}", markup=False)
        out.print(f"experiment directory: {result.experiment_dir}", markup=False)
    _raise_on_problems(result)


def _split_recipe_and_overrides(recipe: str | None, overrides: list[str]):
    """`cseg tune --space S a.b=1` puts the first override where the recipe goes."""
    if recipe is not None and "=" in recipe:
        return None, [recipe, *overrides]
    return recipe, overrides


def _print_plan(plan) -> None:
    table = Table("parameter", "distribution", "values", title=f"space {plan.source}")
    for path, distribution in plan.space.params.items():
        table.add_row(path, distribution.kind, str(distribution.arguments))
    out.print(table)
    scheduler = plan.space.scheduler
    if scheduler.type == "pbt":
        acts = f"perturbing every {scheduler.perturbation_interval} steps"
    else:
        acts = f"on {scheduler.time_attr}"
    out.print(
        f"recipe {plan.recipe_path} ({plan.recipe.name}); metric {plan.metric} ({plan.mode}); "
        f"{plan.space.num_samples} sample(s); scheduler {scheduler.type} {acts} up to {plan.max_t}",
        markup=False,
    )


def _raise_on_problems(result) -> None:
    if result.failed:
        ids = ", ".join(trial.trial_id for trial in result.failed)
        raise FoundProblems(
            f"{len(result.failed)} trial(s) failed ({ids}); see their error.txt under "
            f"{result.experiment_dir}"
        )
    if result.best is None:
        raise FoundProblems(
            f"no trial reported {result.metric}; check the space's metric and the stages' val_every"
        )
