"""`run_tune`: a Ray Tune search over a recipe, one Ray Train run per trial.

Ray 2.60's Train V2 no longer takes a `TorchTrainer` as a Tune trainable
(`Tuner(TorchTrainer(...))` fails), so each trial is a light driver function
(`raycseg.tune.trial.make_trial_driver`) that builds and fits the trainers
itself: it applies the trial's sampled values to the base recipe, fits every
stage with `run_stages`, and reports each of rank 0's reports to Tune with a
trial checkpoint, which PBT needs to exploit (the schedulers act on `step`, the
global step the workers report, which survives a restore; `training_iteration`
does not).

Experiment directory, `<storage.path>/tune/<name>/`:

    search.json      the plan: space, base recipe, overrides (for `--resume NAME`)
    space.yaml       the space as searched (metric, mode and recipe resolved), for reports
    runs/<trial_id>/ each trial's run directory (config.yaml, metrics.jsonl, stages,
                     lineage.json: the values it trained with, and PBT's exploits)
    <trial_id>/      Tune's own per-trial files (progress.csv, result.json)
    trials.json      one summary per trial (status, final and best metric, step)
    best.yaml        the best trial's full resolved recipe (`cseg pretrain best.yaml`)

The same name and storage restore the experiment (`Tuner.restore`): unfinished
and errored trials restart under their old trial ids, so each finds its run
directory and Ray Train resumes it from its latest checkpoint.
"""

from __future__ import annotations

import importlib
import json
import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import yaml
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from ..config import StorageSection, validate_recipe
from ..data.synthetic import prepare_data
from ..errors import CsegError, RecipeError
from ..run_directory import LOGS_DIR
from ..storage import is_url
from ..tracking import tune_callbacks
from ..train.preflight import check_run_data
from ..train.ray_start import start_ray
from .pbt import pbt_scheduler
from .resources import default_max_concurrent, remove_leaked_placement_groups, trial_demand
from .results import TuneResult, summarise_results, write_atomic
from .spaces import (
    SEARCH_ALGORITHMS,
    SearchPlan,
    Space,
    load_space,
    to_param_space,
)
from .trial import make_trial_driver

PLAN_FILE = "search.json"
SPACE_FILE = "space.yaml"
TUNE_ENVIRONMENT: dict[str, str | None] = {
    # Workers log every step but report `val_*` metrics only every `val_every` steps. Tune
    # would reject the reports without the metric; ASHA skips them anyway. A metric no
    # trial ever reports is reported as no best trial instead.
    "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",
    # Hidden from Tune: Ray 2.60's Tune copies them from the driver's environment into
    # every trial actor's runtime_env (ray/tune/execution/class_cache.py), and Ray's
    # runtime-env agent writes runtime envs to its log on every node. Trials get
    # credentials the way Train workers do: from their node (its environment, instance
    # profile or service account).
    **dict.fromkeys(
        ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN")
    ),
}


def run_tune(
    space: str | Path | None,
    *,
    recipe: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    cluster: str | Path | None = None,
    name: str | None = None,
    storage_path: str | None = None,
    resume: bool = False,
    address: str | None = None,
    callbacks: list | None = None,
    verbose: int = 1,
    on_message: Callable[[str], None] = lambda _: None,
) -> TuneResult:
    """Run (or restore) a search, then summarise it and export the best recipe.

    Args:
        space: a space file or shipped space name; may be None when resuming by name.
        recipe: a recipe that replaces the one the space names.
        overrides: `key=value` overrides applied to every trial.
        cluster: a cluster overlay (`gpu` or a YAML path), under the overrides.
        name: the experiment name (default `<space>-<timestamp>`); an existing
            experiment of that name under the storage path is restored.
        storage_path: where experiments live (default `<recipe storage.path>/tune`).
        resume: require an experiment to restore (`name` may also be its directory).
        address: a Ray cluster to join (default: RAY_ADDRESS, else a local Ray
            started with the dashboard, which frees early-stopped trials' workers).
        callbacks: extra `ray.tune.Callback`s (loggers such as MLflow); kept on restore.
        verbose: Tune's verbosity (0 silences Tune's progress and worker logs).
        on_message: called with progress messages for the user.

    Raises:
        RecipeError: a bad space, recipe or override (before Ray starts).
        CsegError: `resume` with nothing to resume.
    """
    experiment_dir, plan, restorable = _prepare_experiment(
        space, recipe, overrides, cluster, name, storage_path, resume
    )
    _save_plan(plan, experiment_dir, fresh=not restorable)
    on_message(f"{'restoring' if restorable else 'experiment'} {experiment_dir}")
    prepare_data(plan.recipe, on_message)
    check_run_data(plan.recipe)  # the shards' kinds and classes; fills the class counts
    _, need = trial_demand(plan.recipe)
    start_ray(
        address,
        cpus_needed=need.get("CPU", 0.0),
        quiet=verbose == 0,
        log_dir=experiment_dir / LOGS_DIR,
        dashboard=True,  # the leaked-placement-group check reads the State API
    )

    with _environment(**TUNE_ENVIRONMENT), warnings.catch_warnings():
        # PBT's hint to reuse actors: each exploit starts a new Ray Train run anyway
        warnings.filterwarnings("ignore", message="Consider boosting PBT performance")
        grid = _build_tuner(plan, experiment_dir, restorable, callbacks, verbose, on_message).fit()
    remove_leaked_placement_groups(on_message)
    result = summarise_results(grid, plan, experiment_dir, resumed=restorable)
    if result.interrupted:
        on_message(f"interrupted; resume with `cseg tune --resume {experiment_dir}`")
    elif result.best is None:
        on_message(f"no trial reported {plan.metric}; no best recipe written")
    return result


def _build_tuner(plan, experiment_dir, restorable, callbacks, verbose, on_message):
    """A fresh Tuner for the plan, or the restored one of `experiment_dir`."""
    driver_resources, trial_need = trial_demand(plan.recipe)
    driver = make_trial_driver(
        plan.base_raw, experiment_dir, keep_state=plan.space.scheduler.type == "pbt"
    )
    trainable = tune.with_resources(driver, driver_resources)
    if restorable:  # the callbacks, trackers included, come back from the tuner's pickle
        return tune.Tuner.restore(
            str(experiment_dir), trainable, resume_unfinished=True, resume_errored=True
        )
    trackers = tune_callbacks(plan.recipe.storage.loggers, experiment_dir, on_message)
    concurrency = plan.space.max_concurrent_trials or default_max_concurrent(trial_need, on_message)
    on_message(f"up to {concurrency} trial(s) at once, each needing {trial_need}")
    return tune.Tuner(
        trainable,
        param_space=to_param_space(plan.space),
        tune_config=_tune_config(plan, concurrency),
        run_config=tune.RunConfig(
            name=experiment_dir.name,
            storage_path=str(experiment_dir.parent),
            callbacks=[*(callbacks or []), *trackers],
            verbose=verbose,
        ),
    )


# ----------------------------------------------------------------------------- setup


def _prepare_experiment(space, recipe, overrides, cluster, name, storage_path, resume):
    """Resolve the experiment directory and its plan; all before Ray starts."""
    plan = (
        load_space(space, recipe=recipe, overrides=overrides, cluster=cluster)
        if space is not None
        else None
    )
    if plan is None and not (resume or name):
        raise RecipeError("give a space (--space SPACE) or an experiment to resume (--resume NAME)")
    experiment_dir = _experiment_dir(plan, name, storage_path)
    restorable = tune.Tuner.can_restore(str(experiment_dir))
    if resume and not restorable:
        raise CsegError(
            f"nothing to resume at {experiment_dir}; check --resume NAME (or pass the "
            "experiment directory), or drop --resume to start a search"
        )
    if restorable:
        stored = load_plan(experiment_dir)
        if stored is None:
            raise CsegError(f"{experiment_dir} has no {PLAN_FILE}; it was not made by cseg tune")
        plan = stored
    elif plan is None:
        raise RecipeError(f"no experiment at {experiment_dir}; give --space SPACE to start one")
    return experiment_dir, plan, restorable


def _experiment_dir(plan: SearchPlan | None, name: str | None, storage_path: str | None) -> Path:
    if name and Path(name).expanduser().is_dir() and (Path(name).expanduser() / PLAN_FILE).exists():
        return Path(name).expanduser().resolve()
    if storage_path is None:
        base = plan.recipe.storage.path if plan is not None else StorageSection().path
        storage_path = f"{base}/tune"
    if is_url(storage_path):
        raise RecipeError(
            f"cseg tune keeps each trial's run directory on a file system, not {storage_path}; "
            "set storage.path to a local or shared (NFS) folder, e.g. storage.path=/mnt/runs"
        )
    if name is None:
        stem = Path(plan.source).name.removesuffix(".yaml")
        name = f"{stem}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    return Path(storage_path).expanduser().resolve() / name


def _save_plan(plan: SearchPlan, experiment_dir: Path, *, fresh: bool) -> None:
    if not fresh and (experiment_dir / PLAN_FILE).exists():
        return
    experiment_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "source": plan.source,
        "recipe_path": str(plan.recipe_path),
        "user_overrides": plan.user_overrides,
        "metric": plan.metric,
        "mode": plan.mode,
        "max_t": plan.max_t,
        "space": plan.space.model_dump(mode="json"),
        "recipe": plan.base_raw,
    }
    write_atomic(experiment_dir / PLAN_FILE, json.dumps(record, indent=2))
    space = plan.space.model_dump(mode="json", exclude_none=True)
    space.update(recipe=str(plan.recipe_path), metric=plan.metric, mode=plan.mode)
    space["scheduler"]["max_t"] = plan.max_t
    header = (
        f"# The space this experiment searches (from {plan.source}), metric and mode resolved.\n"
    )
    write_atomic(experiment_dir / SPACE_FILE, header + yaml.safe_dump(space, sort_keys=False))


def load_plan(experiment_dir: Path) -> SearchPlan | None:
    """The plan an experiment was started with (None when `search.json` is absent)."""
    path = Path(experiment_dir) / PLAN_FILE
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    return SearchPlan(
        space=Space.model_validate(record["space"]),
        source=record["source"],
        recipe_path=Path(record["recipe_path"]),
        recipe=validate_recipe(record["recipe"], source=str(path)),
        user_overrides=record["user_overrides"],
        metric=record["metric"],
        mode=record["mode"],
        max_t=record["max_t"],
    )


def _tune_config(plan: SearchPlan, concurrency: int):

    spec = plan.space.scheduler
    if spec.type == "asha":
        scheduler = ASHAScheduler(
            time_attr=spec.time_attr,
            max_t=plan.max_t,
            grace_period=spec.grace_period,
            reduction_factor=spec.reduction_factor,
        )
    elif spec.type == "pbt":
        scheduler = pbt_scheduler(plan, to_param_space(plan.space))
    else:
        scheduler = FIFOScheduler()
    return tune.TuneConfig(
        metric=plan.metric,
        mode=plan.mode,
        num_samples=plan.space.num_samples,
        max_concurrent_trials=concurrency,
        scheduler=scheduler,
        search_alg=_search_alg(plan.space),
        trial_dirname_creator=_trial_dirname,
    )


def _search_alg(space: Space):
    if space.search_alg in (None, "random"):
        return None
    module_name, class_path = SEARCH_ALGORITHMS[space.search_alg]
    module, _, class_name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), class_name)()


def _trial_dirname(trial) -> str:
    return trial.trial_id


@contextmanager
def _environment(**values: str | None) -> Iterator[None]:
    """Set (a string) or hide (None) this process's environment variables for the block."""
    previous = {key: os.environ.get(key) for key in values}
    try:
        _set_environment(values)
        yield
    finally:
        _set_environment(previous)


def _set_environment(values: dict[str, str | None]) -> None:
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


# ----------------------------------------------------------------------------- results
