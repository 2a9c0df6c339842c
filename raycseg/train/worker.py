"""`train_loop_per_worker`: THE training loop, run by every Ray Train worker.

It reads top to bottom as the recipe: context and seed, model, optimizer and
schedules, resume, data, the loop, the end of the stage. One call trains one
stage; the driver (`launch.py`) runs the stages in order.

`config` (built by the driver) holds:
    recipe          the resolved recipe as a plain dict
    stage_index     which stage to train
    step_offset     global steps finished by earlier stages (`step` counts on across stages)
    run_dir         the run directory, a local path or a URL (rank 0 writes metrics.jsonl there)
    init_from       checkpoint of the previous stage (a path), or None
    resume_from     a state file to resume this stage from when the run has no checkpoint of
                    its own yet (a `cseg tune` trial that takes over another trial's weights)
    progress_queue  the queue that streams rank 0's records to the driver, or None
    local_mode      True without Ray Train workers (`scaling.num_workers: 0`)

The loop calls only the members of `raycseg.methods.StageMethod` on the method;
checkpoints reach Ray Train through `StageCheckpoints`.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from typing import Any

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from .. import storage
from ..config import Recipe, is_torchvision_weights
from ..data.decode_pool import pool_batches
from ..data.loaders import StreamShare
from ..data.synthetic import prepare_data
from ..distributed import gather_objects
from ..methods import StageMethod, build_method
from ..models import load_backbone_weights
from ..run_directory import METRICS_FILE, MetricsLog, latest_local_checkpoint, record_workers
from ..storage import is_url
from .checkpoint import StageCheckpoints, load_ray_checkpoint, load_state, training_state
from .progress import ProgressStream
from .step import LoggedValues, StageStep, compile_networks


# One loop in numbered sections on purpose (house_check exempts this file for the same reason).
def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any]:  # noqa: PLR0912, PLR0915
    """Train one stage of a recipe on this worker. Returns rank 0's summary."""
    # 1. Context and seed -------------------------------------------------------------
    recipe = Recipe.model_validate(config["recipe"])
    stage = recipe.stages[config["stage_index"]]
    step_offset = config["step_offset"]
    run_dir = config["run_dir"]
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    progress = ProgressStream(config["progress_queue"] if rank == 0 else None)
    torch.manual_seed(recipe.seed)  # same initial weights on every rank and in the random baseline
    _quiet_per_report_logs()
    _record_worker(run_dir, stage.name, rank, world_size)
    _generated_data_on_this_node(recipe, context.get_local_rank())

    # 2. Model --------------------------------------------------------------------------
    method = build_method(stage, recipe.model)
    init_from = config.get("init_from") or stage.init_from
    if init_from:
        load_init_weights(method.backbone, init_from)
    if rank == 0:
        _log_loaded_weights(method.backbone, stage.name)
    if device.type == "cuda" and recipe.scaling.mixed_precision:
        method = method.to(memory_format=torch.channels_last)
    if recipe.scaling.compile:
        compile_networks(method)
    model = ray.train.torch.prepare_model(
        method,
        parallel_strategy="ddp" if world_size > 1 else None,
        parallel_strategy_kwargs={
            "find_unused_parameters": method.find_unused_parameters,
            "gradient_as_bucket_view": recipe.scaling.gradient_as_bucket_view,
            "static_graph": recipe.scaling.static_graph,
        },
    )

    # 3. Optimizer and per-step schedules ------------------------------------------------
    optim = recipe.optim_for(stage)
    stepper = StageStep(method, model, optim, stage.steps, recipe.scaling, device)

    # 4. Resume from the latest registered checkpoint ------------------------------------
    start_step = 0
    state = _restored_state(config, stage.name, device)
    if state is not None:
        method.load_state_dict(state["model"])
        stepper.optimizer.load_state_dict(state["optimizer"])
        start_step = state["stage_step"]
    metrics_log = MetricsLog(storage.join(run_dir, METRICS_FILE))
    if rank == 0:
        metrics_log.truncate_after(step_offset + start_step)  # every step exactly once
    checkpoints = StageCheckpoints(
        run_dir, stage.name, config["local_mode"], recipe.storage.num_to_keep
    )
    torch.manual_seed(recipe.seed + 7919 * rank + start_step)  # per-rank sampling noise

    # 5. Data: split by rank, then by loader worker --------------------------------------
    if stage.data.loader == "ray_data":  # decoded by the Ray Data pool the driver started
        batches = pool_batches(ray.train.get_dataset_shard("train"), stage.data.batch_size)
    else:
        share = StreamShare(
            rank, world_size, recipe.data.loader_workers, recipe.seed, start_step,
            pin_memory=device.type == "cuda",
        )  # fmt: skip
        batches = iter(method.training_loader(share))
    progress.phase("waiting for the first batch")

    # 6. The loop ------------------------------------------------------------------------
    model.train()
    skipped_corrupt = 0
    window_start, window_samples = time.perf_counter(), 0
    last_metrics: dict[str, Any] = {}
    for stage_step in range(start_step, stage.steps):
        batch, corrupt = stepper.to_device(next(batches))
        skipped_corrupt += corrupt
        if stage_step == start_step:
            progress.phase("running the first step")
        output = stepper.run(batch, stage_step)  # no host sync: non-finite losses are flagged
        window_samples += _batch_size(batch)

        step = step_offset + stage_step + 1
        last = stage_step + 1 == stage.steps
        save_now = last or (stage_step + 1) % recipe.storage.checkpoint_every == 0
        validate_now = bool(stage.val_every) and ((stage_step + 1) % stage.val_every == 0 or last)
        # ray.train.report blocks until Train's controller polls it (every ~2 s), so Ray
        # hears only checkpoints and validation; metrics.jsonl and the driver get every log.
        report_now = save_now or validate_now
        if not (report_now or (stage_step + 1) % recipe.storage.log_every == 0):
            continue
        elapsed = time.perf_counter() - window_start
        logged = stepper.logged_values(output, skipped_corrupt)  # the step's one host sync
        if logged.first_non_finite is not None:  # before any checkpoint holds its weights
            if rank == 0:
                metrics_log.close()
            return _stop_non_finite(stage.name, step_offset + logged.first_non_finite + 1, logged)
        metrics = {
            "stage": stage.name,
            "step": step,
            "loss": logged.loss,
            **{f"loss_{name}": value for name, value in logged.terms.items()},
            "lr": stepper.lr(stage_step),
            "samples_per_s": window_samples * world_size / max(elapsed, 1e-9),
            "skipped_corrupt": logged.skipped_corrupt,
        }
        best = False
        if validate_now and rank == 0 and stage.data.val is not None:
            metrics.update(_validate(method, device))  # the other ranks wait at the report
            best = method.is_better(metrics)
        window_start, window_samples = time.perf_counter(), 0
        last_metrics = metrics
        if rank == 0:
            metrics_log.append(metrics)
            progress.metrics(metrics)
        if report_now:
            if rank == 0 and save_now:
                metrics_log.sync()  # the stored log covers every step up to this checkpoint
            state = None
            if rank == 0 and (save_now or best):
                state = training_state(
                    method, stepper.optimizer, config["recipe"],
                    stage_name=stage.name, step=step, stage_step=stage_step + 1,
                )  # fmt: skip
            stored = checkpoints.report(metrics, state, save=save_now, best=best)
            if rank == 0:
                progress.report(metrics, stored)

    # 7. End of the stage --------------------------------------------------------------
    if rank == 0:
        metrics_log.close()
    return {"stage": stage.name, "step": step_offset + stage.steps, "metrics": last_metrics}


def load_init_weights(backbone: torch.nn.Module, init_from: str) -> None:
    """Load a stage's init_from: torchvision weights by name, else a file or folder (or URL)."""
    if is_torchvision_weights(init_from):
        load_backbone_weights(backbone, init_from)  # a name, read via the torch hub cache
        return
    with storage.local_copy(init_from) as weights:
        load_backbone_weights(backbone, weights)


def _log_loaded_weights(backbone: torch.nn.Module, stage_name: str) -> None:
    """Rank 0: say what model.init_from and the stage's init_from loaded and ignored.

    The lines go to stderr: the Ray worker log, or the terminal in local mode.
    """
    for report in backbone.weights_reports:
        for line in report.lines():
            print(f"stage {stage_name}: {line}", file=sys.stderr, flush=True)


def _restored_state(
    config: dict[str, Any], stage_name: str, device: torch.device
) -> dict[str, Any] | None:
    """The state this stage resumes from, or None for a fresh start.

    That is Ray Train's latest registered checkpoint. Its snapshot
    (`<run>/<stage>/checkpoint_manager_snapshot.json`) names checkpoints by folder
    name under the stage's storage, so it still holds after the run was moved.
    Local mode has no snapshot: there it is the newest complete folder in
    `<run>/<stage>/local_checkpoints`. A run with no checkpoint of its own
    resumes from `resume_from` when the driver gives one.
    """
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        return load_ray_checkpoint(checkpoint, map_location=device)
    if config.get("local_mode"):
        latest = latest_local_checkpoint(config["run_dir"], stage_name)
        if latest is not None:
            return load_state(latest, map_location=device)
    if config.get("resume_from"):
        return load_state(config["resume_from"], map_location=device)
    return None


def _generated_data_on_this_node(recipe: Recipe, local_rank: int) -> None:
    """Generated data (`data.synthetic`) lives on each node's disk, not only the driver's.

    It is deterministic in its spec, so local rank 0 of each node builds it there
    when absent (a spec check where the driver built it already); the other
    ranks wait for it at a barrier.
    """
    if recipe.data.synthetic is None:
        return
    if local_rank == 0:
        prepare_data(recipe)
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _quiet_per_report_logs() -> None:
    """Drop Ray Train's INFO line per `ray.train.report` (the driver's progress shows them).

    Ray 2.60 logs it on a logger named after its file, outside `ray.train`, so the
    trainer's `LoggingConfig(log_level)` does not reach it; in local mode
    (`num_workers: 0`) another module logs the same line.
    """
    from ray.train.v2._internal.execution import context as train_context
    from ray.train.v2._internal.execution import train_fn_utils

    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)
    logging.getLogger(train_fn_utils.__name__).setLevel(logging.WARNING)


def _stop_non_finite(stage_name: str, step: int, logged: LoggedValues) -> dict[str, Any]:
    values = ", ".join(f"loss_{k}={v:.4g}" for k, v in logged.terms.items())
    message = (
        f"stage {stage_name}: the loss became non-finite at step {step} ({values}); lower "
        "optim.lr, set optim.grad_clip (e.g. 3.0), or resume from the last checkpoint"
    )
    return {"stage": stage_name, "step": step, "error": message}


def _batch_size(batch: dict[str, Any]) -> int:
    first = next(v for v in batch.values() if torch.is_tensor(v))
    return int(first.shape[0])


def _validate(method: StageMethod, device: torch.device) -> dict[str, float]:
    """The method's validation metrics, computed in eval mode without gradients."""
    was_training = method.training
    method.eval()
    with torch.no_grad():
        metrics = method.validation_metrics(device)
    method.train(was_training)
    return metrics


def _record_worker(run_dir: str, stage_name: str, rank: int, world_size: int) -> None:
    """Record which process is which rank in workers.jsonl (for operators and fault tests).

    Each rank appends its own line to a local (or shared) run directory; for a
    run directory at a URL rank 0 writes every rank's line.
    """
    record = {
        "stage": stage_name,
        "rank": rank,
        "world_size": world_size,
        "pid": os.getpid(),
        "host": socket.gethostname(),
    }
    if not is_url(run_dir):
        record_workers(run_dir, [record])
        return
    records = gather_objects(record)
    if rank == 0:
        record_workers(run_dir, records)
