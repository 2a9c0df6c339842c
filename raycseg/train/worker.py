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
    progress_queue  a `ray.util.queue.Queue` that streams metrics to the driver, or None
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from ray.exceptions import RayError

from .. import remote
from ..config import OptimSection, Recipe, is_torchvision_weights, is_url
from ..data.synthetic import prepare_data
from ..methods import build_method, build_stage_loader
from ..models import load_backbone_weights
from .checkpoint import (
    LOCAL_CHECKPOINTS,
    STATE_FILE,
    MetricsLog,
    latest_local_checkpoint,
    load_ray_checkpoint,
    load_state,
    new_checkpoint_dir,
    save_state,
)
from .schedules import build_lr_schedule

METRICS_FILE = "metrics.jsonl"
WORKERS_FILE = "workers.jsonl"


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any]:
    """Train one stage of a recipe on this worker. Returns rank 0's summary."""
    # 1. Context and seed -------------------------------------------------------------
    recipe = Recipe.model_validate(config["recipe"])
    stage = recipe.stages[config["stage_index"]]
    step_offset = config["step_offset"]
    run_dir = config["run_dir"]
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    use_amp = device.type == "cuda" and recipe.scaling.mixed_precision
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
    if use_amp:
        method = method.to(memory_format=torch.channels_last)
    model = ray.train.torch.prepare_model(
        method,
        parallel_strategy="ddp" if world_size > 1 else None,
        parallel_strategy_kwargs={
            "find_unused_parameters": getattr(method, "find_unused_parameters", False)
        },
    )

    # 3. Optimizer and per-step schedules ------------------------------------------------
    optim = recipe.optim_for(stage)
    optimizer = build_optimizer(method, optim)
    lr_schedule = build_lr_schedule(optim, stage.steps)

    # 4. Resume from the latest registered checkpoint ------------------------------------
    start_step = 0
    state = _restored_state(config, stage.name, device)
    if state is not None:
        method.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_step = state["stage_step"]
    metrics_log = MetricsLog(remote.join(run_dir, METRICS_FILE))
    if rank == 0:
        metrics_log.truncate_after(step_offset + start_step)  # every step exactly once
    torch.manual_seed(recipe.seed + 7919 * rank + start_step)  # per-rank sampling noise

    # 5. Data: split by rank, then by loader worker --------------------------------------
    loader = build_stage_loader(
        stage,
        recipe.data,
        seed=recipe.seed,
        rank=rank,
        world_size=world_size,
        start_batch=start_step,
    )
    batches = iter(loader)
    if rank == 0:
        _phase(config, "waiting for the first batch")

    # 6. The loop ------------------------------------------------------------------------
    model.train()
    skipped_corrupt = 0
    window_start, window_samples = time.perf_counter(), 0
    last_metrics: dict[str, Any] = {}
    for stage_step in range(start_step, stage.steps):
        batch = {
            k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v
            for k, v in next(batches).items()
        }
        if rank == 0 and stage_step == start_step:
            _phase(config, "running the first step")
        skipped_corrupt += int(batch.pop("skipped_corrupt", 0))
        for group in optimizer.param_groups:
            group["lr"] = float(lr_schedule[stage_step])
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            output = model(batch)
        loss, terms = output["loss"], output["terms"]
        if not _all_finite(loss, device):
            if rank == 0:
                metrics_log.close()
            return _stop_non_finite(stage.name, step_offset + stage_step + 1, terms, rank)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(method.parameters(), optim.grad_clip)
        optimizer.step()
        if hasattr(method, "after_step"):
            method.after_step(stage_step)
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
        values = _mean_over_ranks([loss.detach(), *[t.detach() for t in terms.values()]], device)
        metrics = {
            "stage": stage.name,
            "step": step,
            "loss": values[0],
            **{f"loss_{name}": value for name, value in zip(terms, values[1:], strict=True)},
            "lr": float(lr_schedule[stage_step]),
            "samples_per_s": window_samples * world_size / max(elapsed, 1e-9),
            "skipped_corrupt": int(_sum_over_ranks(skipped_corrupt, device)),
        }
        if validate_now:
            metrics.update(_validate(method, stage, recipe, device, rank))
        window_start, window_samples = time.perf_counter(), 0
        last_metrics = metrics
        if rank == 0:
            _log(metrics, metrics_log, config)
        if report_now:
            _report(
                metrics,
                method,
                optimizer,
                recipe,
                stage.name,
                stage_step + 1,
                rank,
                save_now,
                metrics_log,
                config,
            )

    # 7. End of the stage --------------------------------------------------------------
    if rank == 0:
        metrics_log.close()
    return {"stage": stage.name, "step": step_offset + stage.steps, "metrics": last_metrics}


def load_init_weights(backbone: torch.nn.Module, init_from: str) -> None:
    """Load a stage's init_from: torchvision weights by name, else a file or folder (or URL)."""
    if is_torchvision_weights(init_from):
        load_backbone_weights(backbone, init_from)  # a name, read via the torch hub cache
        return
    with remote.local_copy(init_from) as weights:
        load_backbone_weights(backbone, weights)


def _log_loaded_weights(backbone: torch.nn.Module, stage_name: str) -> None:
    """Rank 0: say on stderr (the Ray worker log; the terminal in local mode) what
    model.init_from and the stage's init_from loaded and ignored."""
    for report in backbone.weights_reports:
        for line in report.lines():
            print(f"stage {stage_name}: {line}", file=sys.stderr, flush=True)


def build_optimizer(module: torch.nn.Module, optim: OptimSection) -> torch.optim.Optimizer:
    """SGD (with momentum, optional Nesterov), Adam or AdamW over the trainable parameters."""
    params = [p for p in module.parameters() if p.requires_grad]
    if optim.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=optim.lr,
            momentum=optim.momentum,
            nesterov=optim.nesterov,
            weight_decay=optim.weight_decay,
        )
    kind = torch.optim.Adam if optim.optimizer == "adam" else torch.optim.AdamW
    return kind(params, lr=optim.lr, weight_decay=optim.weight_decay)


def _report(
    metrics, method, optimizer, recipe, stage_name, stage_step, rank, save_now, metrics_log, config
) -> None:
    """Every rank reports (a barrier); rank 0 writes the checkpoint when one is due.

    Ray uploads a reported checkpoint to the stage's storage and then deletes the
    staged copy. Local mode (num_workers=0) uploads nothing and keeps the reported
    path, so there the staged copies live in the run directory and only the
    latest `num_to_keep` are kept.
    """
    local_mode = config.get("local_mode", False)
    staging = Path(config["run_dir"]) / stage_name / LOCAL_CHECKPOINTS if local_mode else None
    checkpoint = None
    is_best = (
        metrics.get("best_val_miou") is not None
        and metrics.get("val_miou") == metrics["best_val_miou"]
    )
    if rank == 0 and (save_now or is_best):
        state = {
            "backbone": method.backbone.state_dict(),
            "model": method.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": metrics["step"],
            "stage": stage_name,
            "stage_step": stage_step,
            "data_position": stage_step,
            "recipe": recipe.model_dump(mode="json"),
        }
    if rank == 0 and is_best:  # the best validation so far: <run>/<stage>/best/state.pt
        best = new_checkpoint_dir()
        save_state(best, {**state, "val_miou": metrics["val_miou"]})
        remote.write_bytes(
            remote.join(config["run_dir"], stage_name, "best", STATE_FILE),
            (best / STATE_FILE).read_bytes(),
        )
        shutil.rmtree(best, ignore_errors=True)
    if rank == 0 and save_now:
        directory = new_checkpoint_dir(staging, name=f"checkpoint_{metrics['step']:06d}")
        save_state(directory, state)
        checkpoint = ray.train.Checkpoint.from_directory(str(directory))
        metrics_log.sync()  # the stored log covers every step up to this checkpoint
    ray.train.report(
        metrics, checkpoint=checkpoint, delete_local_checkpoint_after_upload=not local_mode
    )
    if staging is not None and checkpoint is not None:
        for stale in sorted(staging.iterdir())[: -recipe.storage.num_to_keep]:
            shutil.rmtree(stale, ignore_errors=True)


def _restored_state(
    config: dict[str, Any], stage_name: str, device: torch.device
) -> dict[str, Any] | None:
    """The state this stage resumes from, or None for a fresh start.

    That is Ray Train's latest registered checkpoint. Its snapshot
    (`<run>/<stage>/checkpoint_manager_snapshot.json`) names checkpoints by folder
    name under the stage's storage, so it still holds after the run was moved.
    Local mode has no snapshot: there it is the newest complete folder in
    `<run>/<stage>/local_checkpoints`.
    """
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        return load_ray_checkpoint(checkpoint, map_location=device)
    if config.get("local_mode"):
        latest = latest_local_checkpoint(config["run_dir"], stage_name)
        if latest is not None:
            return load_state(latest, map_location=device)
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


def _log(metrics: dict[str, Any], metrics_log: MetricsLog, config: dict[str, Any]) -> None:
    """Rank 0: append the record to metrics.jsonl and stream it to the driver.

    The stream is progress display only: if its queue is gone (its node or the
    driver died), training goes on without it.
    """
    metrics_log.append(metrics)
    queue = config.get("progress_queue")
    if queue is None:
        return
    try:
        queue.put_nowait(metrics)
    except RayError:
        config["progress_queue"] = None


def _phase(config: dict[str, Any], phase: str) -> None:
    """Rank 0: tell the driver's progress display what the stage waits on before its first step."""
    queue = config.get("progress_queue")
    if queue is not None:
        try:
            queue.put_nowait({"phase": phase})
        except RayError:
            config["progress_queue"] = None


def _validate(method, stage, recipe, device, rank) -> dict[str, float]:
    """The stage's periodic validation metric (rank 0 computes; others wait at the report)."""
    if rank != 0 or stage.data.val is None:
        return {}
    from .evaluation import validation_miou  # noqa: PLC0415 (eval is heavy; only when asked)

    was_training = method.training
    method.eval()
    with torch.no_grad():
        metrics = validation_miou(method, stage, recipe, device)
    method.train(was_training)
    return metrics


def _all_finite(loss: torch.Tensor, device: torch.device) -> bool:
    """True when the loss is finite on every rank (so all ranks stop together)."""
    flag = torch.tensor([float(torch.isfinite(loss.detach()).all())], device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def _stop_non_finite(
    stage_name: str, step: int, terms: dict[str, torch.Tensor], rank: int
) -> dict[str, Any]:
    values = ", ".join(f"loss_{k}={float(v.detach()):.4g}" for k, v in terms.items())
    message = (
        f"stage {stage_name}: the loss became non-finite at step {step} ({values}); "
        "lower optim.lr, set optim.grad_clip (e.g. 3.0), or resume from the last checkpoint"
    )
    return {"stage": stage_name, "step": step, "error": message}


def _mean_over_ranks(values: list[torch.Tensor], device: torch.device) -> list[float]:
    stacked = torch.stack([v.float() for v in values]).to(device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(stacked)
        stacked /= dist.get_world_size()
    return stacked.tolist()


def _sum_over_ranks(value: int, device: torch.device) -> int:
    total = torch.tensor([value], dtype=torch.long, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(total)
    return int(total.item())


def _batch_size(batch: dict[str, Any]) -> int:
    first = next(v for v in batch.values() if torch.is_tensor(v))
    return int(first.shape[0])


def _record_worker(run_dir: str, stage_name: str, rank: int, world_size: int) -> None:
    """Append which process is which rank (for operators, and for the fault-injection tests).

    Every rank appends its own line to a local (or shared) run directory. An
    object in a bucket cannot be appended to, so there rank 0 gathers every
    rank's line and rewrites the file.
    """
    record = {
        "stage": stage_name,
        "rank": rank,
        "world_size": world_size,
        "pid": os.getpid(),
        "host": socket.gethostname(),
    }
    if not is_url(run_dir):
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        with (Path(run_dir) / WORKERS_FILE).open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        return
    records = [record]
    if dist.is_available() and dist.is_initialized():
        records = [None] * world_size
        dist.all_gather_object(records, record)
    if rank == 0:
        location = remote.join(run_dir, WORKERS_FILE)
        earlier = remote.read_text(location) if remote.is_file(location) else ""
        remote.write_text(location, earlier + "".join(json.dumps(r) + "\n" for r in records))
