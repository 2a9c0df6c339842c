"""The driver: one Ray Train `TorchTrainer` run per stage, in recipe order.

The run directory and its files are described in `raycseg.run_directory`.

Running again with the same name and storage resumes: finished stages are
skipped, and Ray Train restores the unfinished stage from its latest
registered checkpoint (local mode: from the newest folder in
`<stage>/local_checkpoints`). Every path the run stores into itself is
relative to it, and Ray Train's snapshot names its checkpoints by folder
name, so a run copied or moved elsewhere (also from a bucket to a disk)
resumes, evaluates and exports from its new place.

`storage.path` may be a URL (s3://bucket/runs, gs://...): Ray Train writes the
checkpoints there itself, the driver writes config.yaml, stages.json and
eval.json through `raycseg.storage`, and rank 0 uploads metrics.jsonl at every
checkpoint (see `raycseg.run_directory.MetricsLog`). Such runs need Ray Train workers
(`scaling.num_workers >= 1`): local mode keeps its checkpoints on the driver's disk.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import ray.train
from ray.train.torch import TorchConfig, TorchTrainer

from .. import storage
from ..config import Recipe, ScalingSection
from ..data.synthetic import prepare_data
from ..errors import CsegError, RecipeError
from ..methods import decode_pool_training_dataset
from ..run_directory import (
    EVAL_FILE,
    LOGS_DIR,
    STATE_FILE,
    has_recipe,
    latest_local_checkpoint,
    read_stages,
    recipe_time,
    resolve_in_run,
    write_recipe,
    write_stages,
)
from ..storage import is_url
from ..tracking import RunTracking
from .evaluation import evaluate_checkpoint
from .preflight import check_run_data
from .progress import progress_queue, say, streamed
from .ray_start import start_ray
from .worker import train_loop_per_worker


@dataclass
class PretrainResult:
    """What `run_pretrain` produced."""

    run_dir: Path | str  # a URL string when storage.path is one
    checkpoints: dict[str, str] = field(default_factory=dict)
    eval: dict[str, Any] | None = None
    resumed: bool = False


def choose_run_dir(
    recipe: Recipe, *, resume: bool = False, new: bool = False
) -> tuple[Path | str, bool]:
    """The run directory (a URL when storage.path is one), and whether it resumes a run.

    A named run (`storage.name`) resumes when its folder exists; `new` picks a
    fresh name instead. An unnamed run gets `<recipe name>-<timestamp>`;
    `resume` then picks the latest earlier run of this recipe.
    """
    runs = recipe.storage.path
    if not is_url(runs):
        runs = Path(runs).expanduser().resolve()
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    if recipe.storage.name and not new:
        run_dir = storage.join(runs, recipe.storage.name)
        exists = has_recipe(run_dir)
        if resume and not exists:
            raise CsegError(f"nothing to resume at {run_dir}; drop --resume to start this run")
        return run_dir, exists
    if resume:
        earlier = [
            storage.join(runs, name)
            for name in storage.list_names(runs)
            if name.startswith(f"{recipe.name}-") and has_recipe(storage.join(runs, name))
        ]
        if not earlier:
            raise CsegError(
                f"nothing to resume: no run of {recipe.name!r} under {runs}; drop --resume"
            )
        latest = max(earlier, key=recipe_time)
        return latest, True
    base = recipe.storage.name or recipe.name
    run_dir = storage.join(runs, f"{base}-{stamp}")
    suffix = 1
    while storage.exists(run_dir):
        suffix += 1
        run_dir = storage.join(runs, f"{base}-{stamp}-{suffix}")
    return run_dir, False


def run_pretrain(
    recipe: Recipe,
    *,
    address: str | None = None,
    resume: bool = False,
    new: bool = False,
    on_metrics: Callable[[dict[str, Any]], None] | None = None,
    on_message: Callable[[str], None] = lambda _: None,
    quiet: bool = False,
    on_phase: Callable[[str], None] | None = None,
) -> PretrainResult:
    """Run every stage of `recipe` on Ray Train, then its eval section.

    Args:
        recipe: a validated recipe (`load_recipe`).
        address: a Ray cluster to join; None starts local Ray (unless RAY_ADDRESS is set).
        resume: require an earlier run to continue (error if none).
        new: start afresh under a new name even if the named run exists.
        on_metrics: called in the driver with every metrics record rank 0 logs.
        on_message: called with progress messages for the user.
        quiet: keep Ray's own logs out of the output (errors only).
        on_phase: called in the driver with what each stage waits on before its first
            step: "starting Ray", "starting 2 workers", "waiting for the first batch",
            "running the first step".
    """
    if is_url(recipe.storage.path) and recipe.scaling.num_workers == 0:
        raise RecipeError(
            f"storage.path={recipe.storage.path} needs Ray Train workers; set "
            "scaling.num_workers>=1 or use a local storage.path (local mode keeps checkpoints here)"
        )
    prepare_data(recipe, on_message)
    check_run_data(recipe)
    run_dir, resumed = choose_run_dir(recipe, resume=resume, new=new)
    storage.make_dirs(run_dir)
    write_recipe(run_dir, recipe)
    on_message(f"{'resuming' if resumed else 'run'} {run_dir}")

    result = PretrainResult(run_dir=run_dir, resumed=resumed)
    tracking = RunTracking.open(recipe, run_dir, on_message)  # storage.loggers, in this driver
    try:
        if recipe.scaling.num_workers:
            log_dir = None if is_url(str(run_dir)) else Path(run_dir) / LOGS_DIR
            start_ray(
                address,
                cpus_needed=_cpus_needed(recipe),
                quiet=quiet,
                log_dir=log_dir,
                on_phase=on_phase,
            )
        result.checkpoints = run_stages(
            recipe,
            run_dir,
            address=address,
            on_metrics=tracking.wrap(on_metrics),
            on_message=on_message,
            on_phase=on_phase,
        )
        final_checkpoint = result.checkpoints[recipe.stages[-1].name]
        if recipe.eval is not None:
            on_message("evaluating the pretrained backbone")
            result.eval = evaluate_into_run(final_checkpoint, recipe, run_dir, on_message)
    except BaseException:
        tracking.close(failed=True)
        raise
    tracking.finish(final_checkpoint)
    return result


def evaluate_into_run(
    checkpoint: str,
    recipe: Recipe,
    run_dir: Path | str,
    on_message: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Run the recipe's eval section on `checkpoint` and merge the scores into the run's eval.json.

    A run directory at a URL gets the same merge: its eval.json is downloaded
    (if any), merged locally and uploaded whole.
    """
    if not is_url(str(run_dir)):
        return evaluate_checkpoint(checkpoint, recipe, run_dir=run_dir, on_message=on_message)
    stored = storage.join(run_dir, EVAL_FILE)
    with tempfile.TemporaryDirectory(prefix="raycseg-eval-") as staging:
        if storage.is_file(stored):
            (Path(staging) / EVAL_FILE).write_bytes(storage.read_bytes(stored))
        with storage.local_copy(checkpoint) as local_checkpoint:
            scores = evaluate_checkpoint(
                local_checkpoint, recipe, run_dir=Path(staging), on_message=on_message
            )
        storage.write_bytes(stored, (Path(staging) / EVAL_FILE).read_bytes())
    return scores


def run_stages(
    recipe: Recipe,
    run_dir: Path | str,
    *,
    address: str | None = None,
    on_metrics: Callable[[dict[str, Any]], None] | None = None,
    on_report: Callable[[dict[str, Any], str | None], None] | None = None,
    on_message: Callable[[str], None] = lambda _: None,
    on_phase: Callable[[str], None] | None = None,
    resume_from: dict[str, str] | None = None,
) -> dict[str, str]:
    """Fit the recipe's stages in order, each from the previous stage's checkpoint.

    Stages listed as finished in `run_dir/stages.json` are skipped, so calling
    this again on the same `run_dir` (a local path or a URL) resumes; their
    checkpoints are found relative to `run_dir`, wherever the run now lies.
    `on_report(record, checkpoint)` gets, in this process, every record rank 0
    reports to Ray Train and where its checkpoint was stored (a Tune trial passes
    them on to Tune). `resume_from` maps a stage to a state file it resumes from
    while it has no checkpoint of its own (a trial that takes over another's weights).

    Returns:
        stage name -> location (path or URL) of the stage's final checkpoint state file.
    """
    finished = read_stages(run_dir)
    checkpoints: dict[str, str] = {}
    previous_checkpoint = None
    step_offset = 0
    for index, stage in enumerate(recipe.stages):
        if stage.name in finished:
            previous_checkpoint = str(
                resolve_in_run(
                    run_dir, finished[stage.name]["checkpoint"], f"stage {stage.name}'s checkpoint"
                )
            )
            finished[stage.name]["checkpoint"] = previous_checkpoint  # an older run's, found here
            on_message(f"stage {stage.name}: already finished, skipping")
        else:
            previous_checkpoint = _run_stage(
                recipe,
                index,
                step_offset=step_offset,
                run_dir=run_dir,
                init_from=previous_checkpoint,
                address=address,
                resume_from=(resume_from or {}).get(stage.name),
                on_metrics=on_metrics,
                on_report=on_report,
                on_message=on_message,
                on_phase=on_phase,
            )
            finished[stage.name] = {
                "checkpoint": previous_checkpoint,
                "last_step": step_offset + stage.steps,
            }
            write_stages(run_dir, finished)  # relative to the run directory
        checkpoints[stage.name] = previous_checkpoint
        step_offset += stage.steps
    return checkpoints


def _run_stage(
    recipe: Recipe,
    index: int,
    *,
    step_offset: int,
    run_dir: Path | str,
    init_from: str | None,
    address: str | None,
    resume_from: str | None,
    on_metrics: Callable[[dict[str, Any]], None] | None,
    on_report: Callable[[dict[str, Any], str | None], None] | None,
    on_message: Callable[[str], None],
    on_phase: Callable[[str], None] | None,
) -> str:
    """Fit one stage with a TorchTrainer; return where its final checkpoint's state file is.

    The location is a path or a URL inside `run_dir`.
    """
    stage = recipe.stages[index]
    scaling = recipe.scaling
    local_mode = scaling.num_workers == 0
    train_logger = logging.getLogger("ray.train")
    if local_mode and train_logger.level == logging.NOTSET:
        # Ray Train's INFO notes in this process ("Running in local mode...", "Moving
        # model to device: cpu") say nothing about the run; a level set by the user stays.
        train_logger.setLevel(logging.WARNING)
    progress = None
    if not local_mode:
        start_ray(address, cpus_needed=_cpus_needed(recipe), on_phase=on_phase)
    if on_metrics is not None or on_phase is not None or on_report is not None:
        progress = progress_queue(local_mode)
    on_message(
        f"stage {stage.name}: {stage.steps} steps on {max(scaling.num_workers, 1)} worker(s)"
    )
    config = {
        "recipe": recipe.model_dump(mode="json"),
        "stage_index": index,
        "step_offset": step_offset,
        "run_dir": str(run_dir),
        "init_from": init_from,
        "resume_from": resume_from,
        "progress_queue": progress,
        "local_mode": local_mode,
    }
    trainer = _build_trainer(recipe, stage.name, config, run_dir)
    workers = scaling.num_workers
    plural = "s" * (workers != 1)
    say(on_phase, f"starting {workers} worker{plural}" if workers else "starting the training loop")
    with streamed(progress, on_metrics, on_phase, on_report):
        outcome = trainer.fit()
    summary = outcome.return_value or {}
    if summary.get("error"):
        raise CsegError(summary["error"])
    return _final_checkpoint(outcome, run_dir, stage.name, local_mode)


def _build_trainer(recipe, stage_name, config, run_dir) -> TorchTrainer:
    """The stage's TorchTrainer: the worker loop, its scaling, storage and fault tolerance."""
    scaling = recipe.scaling
    stage = recipe.stages[config["stage_index"]]
    pooled = stage.data.loader == "ray_data"
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config,
        datasets={"train": decode_pool_training_dataset(stage)} if pooled else None,
        torch_config=TorchConfig(backend="nccl" if scaling.use_gpu else "gloo"),
        scaling_config=build_scaling_config(scaling),
        run_config=ray.train.RunConfig(
            name=stage_name,
            storage_path=str(run_dir),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=recipe.storage.num_to_keep),
            failure_config=ray.train.FailureConfig(max_failures=recipe.storage.max_failures),
            # Train logs every report at INFO; our progress display already shows them.
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        ),
    )


def _final_checkpoint(outcome, run_dir, stage_name: str, local_mode: bool) -> str:
    """The location of the stage's final checkpoint's state file."""
    if outcome.checkpoint is not None:
        location = storage.url_of(outcome.checkpoint.filesystem, outcome.checkpoint.path)
    elif local_mode and latest_local_checkpoint(run_dir, stage_name) is not None:
        # resumed from its final checkpoint: nothing left to train, so nothing reported
        location = str(latest_local_checkpoint(run_dir, stage_name))
    else:
        raise CsegError(f"stage {stage_name} finished without a checkpoint; see the Ray logs above")
    return str(storage.join(location, STATE_FILE))


def build_scaling_config(scaling: ScalingSection):
    """The `ray.train.ScalingConfig` of a stage: the request the autoscaler acts on.

    Each worker asks for `cpus_per_worker` CPUs, one GPU with `use_gpu` (unless
    `resources_per_worker` names another count) and the recipe's custom
    resources, such as `{worker_node: 1}` to land on a node type that offers it.
    With `min_workers` the count is elastic, `(min_workers, num_workers)`: Ray
    Train starts once `min_workers` fit and regroups as nodes come and go.
    """
    resources = {"CPU": scaling.cpus_per_worker, **scaling.resources_per_worker}
    if scaling.use_gpu:
        resources.setdefault("GPU", 1)
    workers = (
        scaling.num_workers
        if scaling.min_workers is None
        else (scaling.min_workers, scaling.num_workers)
    )
    return ray.train.ScalingConfig(
        num_workers=workers, use_gpu=scaling.use_gpu, resources_per_worker=resources
    )


def _cpus_needed(recipe: Recipe) -> float:
    """The CPUs a stage asks for in all, at most (local Ray offers at least as many).

    A stage's Ray Train workers, plus its decode pool's tasks (`data.loader: ray_data`):
    Ray Train keeps its workers' CPUs from Ray Data, so the pool needs CPUs of its own.
    """
    scaling = recipe.scaling
    return scaling.num_workers * scaling.cpus_per_worker + recipe.decode_pool_cpus()
