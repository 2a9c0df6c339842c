"""The driver: one Ray Train `TorchTrainer` run per stage, in recipe order.

Run directory (CONTRACTS.md §2), `<storage.path>/<name>/`:

    config.yaml      the resolved recipe
    metrics.jsonl    one line per logged step (rank 0 writes it)
    workers.jsonl    which process ran which rank
    <stage>/         Ray Train's run folder for that stage: its checkpoints
    stages.json      finished stages and their final checkpoints (for resume),
                     relative to the run directory
    eval.json        after evaluation
    logs/ray.log     what Ray's processes printed, and local Ray's notices
                     about itself, kept off the terminal (see `ray_logs`)

Running again with the same name and storage resumes: finished stages are
skipped, and Ray Train restores the unfinished stage from its latest
registered checkpoint (local mode: from the newest folder in
`<stage>/local_checkpoints`). Every path the run stores into itself is
relative to it, and Ray Train's snapshot names its checkpoints by folder
name, so a run copied or moved elsewhere (also from a bucket to a disk)
resumes, evaluates and exports from its new place.

`storage.path` may be a URL (s3://bucket/runs, gs://...): Ray Train writes the
checkpoints there itself, the driver writes config.yaml, stages.json and
eval.json through `raycseg.remote`, and rank 0 uploads metrics.jsonl at every
checkpoint (see `MetricsLog`). Such runs need Ray Train workers
(`scaling.num_workers >= 1`): local mode keeps its checkpoints on the driver's disk.
"""

from __future__ import annotations

import logging
import os
import queue as queue_module
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from .. import remote
from ..config import Recipe, ScalingSection, is_url, recipe_to_yaml
from ..data.synthetic import prepare_data
from ..errors import CsegError, RecipeError
from .checkpoint import (
    STATE_FILE,
    latest_local_checkpoint,
    read_stages,
    resolve_in_run,
    write_stages,
)
from .preflight import check_run_data


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
    storage = recipe.storage.path
    if not is_url(storage):
        storage = Path(storage).expanduser().resolve()
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    if recipe.storage.name and not new:
        run_dir = remote.join(storage, recipe.storage.name)
        exists = remote.is_file(remote.join(run_dir, "config.yaml"))
        if resume and not exists:
            raise CsegError(f"nothing to resume at {run_dir}; drop --resume to start this run")
        return run_dir, exists
    if resume:
        earlier = [
            remote.join(storage, name)
            for name in remote.list_names(storage)
            if name.startswith(f"{recipe.name}-")
            and remote.is_file(remote.join(storage, name, "config.yaml"))
        ]
        if not earlier:
            raise CsegError(
                f"nothing to resume: no run of {recipe.name!r} under {storage}; drop --resume"
            )
        latest = max(earlier, key=lambda run: remote.modified_time(remote.join(run, "config.yaml")))
        return latest, True
    base = recipe.storage.name or recipe.name
    run_dir = remote.join(storage, f"{base}-{stamp}")
    suffix = 1
    while remote.exists(run_dir):
        suffix += 1
        run_dir = remote.join(storage, f"{base}-{stamp}-{suffix}")
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
    remote.make_dirs(run_dir)
    remote.write_text(remote.join(run_dir, "config.yaml"), recipe_to_yaml(recipe))
    on_message(f"{'resuming' if resumed else 'run'} {run_dir}")

    result = PretrainResult(run_dir=run_dir, resumed=resumed)
    if recipe.scaling.num_workers:
        log_dir = None if is_url(str(run_dir)) else Path(run_dir) / "logs"
        start_ray(address, recipe.scaling, quiet=quiet, log_dir=log_dir, on_phase=on_phase)
    result.checkpoints = run_stages(
        recipe,
        run_dir,
        address=address,
        on_metrics=on_metrics,
        on_message=on_message,
        on_phase=on_phase,
    )
    if recipe.eval is not None:
        on_message("evaluating the pretrained backbone")
        final_checkpoint = result.checkpoints[recipe.stages[-1].name]
        result.eval = evaluate_into_run(final_checkpoint, recipe, run_dir, on_message)
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
    from .evaluation import EVAL_FILE, evaluate_checkpoint

    if not is_url(str(run_dir)):
        return evaluate_checkpoint(checkpoint, recipe, run_dir=run_dir, on_message=on_message)
    stored = remote.join(run_dir, EVAL_FILE)
    with tempfile.TemporaryDirectory(prefix="raycseg-eval-") as staging:
        if remote.is_file(stored):
            (Path(staging) / EVAL_FILE).write_bytes(remote.read_bytes(stored))
        with remote.local_copy(checkpoint) as local_checkpoint:
            scores = evaluate_checkpoint(
                local_checkpoint, recipe, run_dir=Path(staging), on_message=on_message
            )
        remote.write_bytes(stored, (Path(staging) / EVAL_FILE).read_bytes())
    return scores


def run_stages(
    recipe: Recipe,
    run_dir: Path | str,
    *,
    address: str | None = None,
    trainer_callbacks: list | None = None,
    on_metrics: Callable[[dict[str, Any]], None] | None = None,
    on_message: Callable[[str], None] = lambda _: None,
    on_phase: Callable[[str], None] | None = None,
) -> dict[str, str]:
    """Fit the recipe's stages in order, each from the previous stage's checkpoint.

    Stages listed as finished in `run_dir/stages.json` are skipped, so calling
    this again on the same `run_dir` (a local path or a URL) resumes; their
    checkpoints are found relative to `run_dir`, wherever the run now lies.
    `trainer_callbacks` go to every stage's `ray.train.RunConfig` (a Tune trial
    passes `TuneReportCallback`).

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
                step_offset,
                run_dir,
                previous_checkpoint,
                address,
                trainer_callbacks or [],
                on_metrics,
                on_message,
                on_phase,
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
    recipe,
    index,
    step_offset,
    run_dir,
    init_from,
    address,
    callbacks,
    on_metrics,
    on_message,
    on_phase=None,
) -> str:
    """Fit one stage with a TorchTrainer; return the location (a path or a URL, inside
    `run_dir`) of its final checkpoint's state file."""
    import ray
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from .worker import train_loop_per_worker

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
        start_ray(address, scaling, on_phase=on_phase)
    if on_metrics is not None or on_phase is not None:
        # local mode: the loop runs in this process, and a plain queue reaches it
        progress = queue_module.Queue() if local_mode else _progress_queue()
    on_message(
        f"stage {stage.name}: {stage.steps} steps on {max(scaling.num_workers, 1)} worker(s)"
    )
    config = {
        "recipe": recipe.model_dump(mode="json"),
        "stage_index": index,
        "step_offset": step_offset,
        "run_dir": str(run_dir),
        "init_from": init_from,
        "progress_queue": progress,
        "local_mode": local_mode,
    }
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config,
        torch_config=TorchConfig(backend="nccl" if scaling.use_gpu else "gloo"),
        scaling_config=build_scaling_config(scaling),
        run_config=ray.train.RunConfig(
            name=stage.name,
            storage_path=str(run_dir),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=recipe.storage.num_to_keep),
            failure_config=ray.train.FailureConfig(max_failures=recipe.storage.max_failures),
            callbacks=callbacks,
            # Train logs every report at INFO; our progress display already shows them.
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        ),
    )
    workers = scaling.num_workers
    plural = "s" * (workers != 1)
    _say(
        on_phase, f"starting {workers} worker{plural}" if workers else "starting the training loop"
    )
    with _streamed(progress, on_metrics, on_phase):
        outcome = trainer.fit()
    summary = outcome.return_value or {}
    if summary.get("error"):
        raise CsegError(summary["error"])
    if outcome.checkpoint is not None:
        location = remote.url_of(outcome.checkpoint.filesystem, outcome.checkpoint.path)
    elif local_mode and latest_local_checkpoint(run_dir, stage.name) is not None:
        # resumed from its final checkpoint: nothing left to train, so nothing reported
        location = str(latest_local_checkpoint(run_dir, stage.name))
    else:
        raise CsegError(f"stage {stage.name} finished without a checkpoint; see the Ray logs above")
    return str(remote.join(location, STATE_FILE))


def build_scaling_config(scaling: ScalingSection):
    """The `ray.train.ScalingConfig` of a stage: the request the autoscaler acts on.

    Each worker asks for `cpus_per_worker` CPUs, one GPU with `use_gpu` (unless
    `resources_per_worker` names another count) and the recipe's custom
    resources, such as `{worker_node: 1}` to land on a node type that offers it.
    With `min_workers` the count is elastic, `(min_workers, num_workers)`: Ray
    Train starts once `min_workers` fit and regroups as nodes come and go.
    """
    import ray.train

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


PREEMPTION_WATCHER_VARIABLE = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"  # Ray Train 2.60


def start_ray(
    address: str | None,
    scaling,
    *,
    quiet: bool = False,
    log_dir: Path | None = None,
    on_phase: Callable[[str], None] | None = None,
) -> None:
    """Join `address` (or RAY_ADDRESS), else start local Ray with this machine's CPUs.

    Local services (the dashboard) bind to 127.0.0.1, and Ray Train's preemption
    watcher is off there. `quiet` keeps the workers' logs out of the driver's
    output and shows only Ray's errors. The workers' lines reach stderr, never
    stdout; local Ray's notices about itself go to `log_dir/ray.log` instead
    (see `ray_logs`). `on_phase` hears "starting Ray" (or "joining Ray at ...").
    """
    import ray

    from .ray_logs import route_driver_notices, route_worker_output

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    logging_config = ray.LoggingConfig(log_level="ERROR" if quiet else "WARNING")
    if address:
        _say(on_phase, f"joining Ray at {address}")
        ray.init(address=address, logging_config=logging_config, log_to_driver=not quiet)
        route_worker_output(log_dir, local=False)
        return
    # One machine has no spot preemptions to watch; Ray Train's watcher actor would only
    # print a core-worker error line at each stage start. Set by the user, it stays.
    os.environ.setdefault(PREEMPTION_WATCHER_VARIABLE, "0")
    needed = scaling.num_workers * scaling.cpus_per_worker
    route_driver_notices(log_dir)
    _say(on_phase, "starting Ray")
    ray.init(
        address="local",
        num_cpus=max(os.cpu_count() or 1, int(needed + 0.999)),
        dashboard_host="127.0.0.1",
        logging_config=logging_config,
        log_to_driver=not quiet,
    )
    route_worker_output(log_dir, local=True)


def _progress_queue():
    """The queue that streams rank 0's metrics to this driver.

    It lives on the driver's own node: a 0-CPU actor could otherwise land on a
    worker node that the autoscaler later removes, taking the stream with it.
    """
    import ray
    from ray.util.queue import Queue
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return Queue(actor_options={"num_cpus": 0, "scheduling_strategy": here})


def _say(on_phase: Callable[[str], None] | None, phase: str) -> None:
    if on_phase is not None:
        on_phase(phase)


class _streamed:
    """Drain the workers' queue in a thread while fit() runs: metrics records into
    `on_metrics`, rank 0's `{"phase": ...}` records (before its first step) into `on_phase`."""

    def __init__(self, progress, on_metrics, on_phase=None):
        self.progress, self.on_metrics, self.on_phase = progress, on_metrics, on_phase
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._drain, daemon=True)

    def __enter__(self):
        if self.progress is not None:
            self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout=5)
        return False

    def _drain(self):
        while True:
            try:
                record = self.progress.get(timeout=0.5)
            except queue_module.Empty:  # ray's Empty subclasses queue.Empty
                if self.stop.is_set():
                    return
                continue
            except Exception:  # noqa: BLE001 (the queue's actor is gone: nothing more comes)
                return
            if "phase" in record:
                _say(self.on_phase, record["phase"])
            elif self.on_metrics is not None:
                self.on_metrics(record)
