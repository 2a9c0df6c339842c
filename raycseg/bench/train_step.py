"""`cseg bench train`: one stage's training steps, timed and taken apart, in one process.

No Ray: the method, the optimizer and the step code (`raycseg.train.step.StageStep`)
are the worker's, run here on one device. With `synthetic`, batches are random
tensors of the stage's shapes (weights random, `init_from` ignored, no data read),
so the path imports neither Ray, decord nor PyAV; else they come from the stage's
shards through its own loader.

Per step, after `warmup` steps (the figures are those of the median step):

    data_wait_s   next batch from the loader and its copy to the device
    forward_s     learning rate, autocast forward and the loss
    backward_s    the backward
    optimizer_s   clipping, the optimizer step and the method's after_step (EMA, ...)
    step_s        the four together

On a GPU the three compute phases are timed with CUDA events, the step ends with
one synchronisation (the worker has none), and data_wait_s is the rest of the step's
wall time (the batch, and any time the device waited for the host). `overhead_ratio` is step_s over the step of
a baseline with the same network passes (`NETWORK_PASSES`: the student with
gradient, the momentum encoder or teacher without), the backward of the sum of the
student's outputs and the optimizer step, timed interleaved with the method's
steps. `flops_per_step` is counted by `torch.utils.flop_counter` on one eager step,
`host_syncs_per_step` by `HostSyncCounter` on one step that does not log.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..config import Recipe, StageBase
from ..data.loaders import StreamShare
from ..errors import CsegError
from ..methods import StageMethod, build_method
from ..models import normalize_images
from ..train.step import StageStep, compile_networks
from .host_syncs import HostSyncCounter

# Dense bf16 peak of the devices we know, TFLOP/s (SXM parts; no sparsity).
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0}
SYNTHETIC_BATCHES = 4  # distinct random batches, cycled
ASSUMED_NUM_CLASSES = 21  # a reco stage without num_classes, on random data (VOC's count)


def benchmark_training_step(
    recipe: Recipe,
    *,
    stage_name: str | None = None,
    steps: int = 10,
    warmup: int = 2,
    synthetic: bool = False,
    device: str | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Time `steps` training steps of one stage (default: the first); see the module docstring."""
    say = on_progress or (lambda _: None)
    where = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    recipe, stage, notes = _stage_to_time(recipe, stage_name, synthetic)
    torch.manual_seed(recipe.seed)
    method = build_method(stage, recipe.model).to(where)
    if where.type == "cuda" and recipe.scaling.mixed_precision:
        method = method.to(memory_format=torch.channels_last)
    method.train()
    step = StageStep(
        method, method, recipe.optim_for(stage), warmup + steps + 2, recipe.scaling, where
    )
    batches = _batches(recipe, stage, method, synthetic, where)

    say("counting FLOPs and host syncs")
    batch, _ = step.to_device(next(batches))
    with FlopCounterMode(display=False) as flops:
        step.run(batch, 0)
    with HostSyncCounter() as syncs:
        step.run(batch, 1)
    if recipe.scaling.compile:
        say("compiling the networks")
        compile_networks(method)

    say(f"timing {warmup} + {steps} steps, each beside a baseline step")
    clock = _PhaseClock(where)
    _reset_peaks(where)
    timed, baseline = [], []
    for index in range(warmup + steps):
        phases = _timed_step(step, batches, index + 2, clock)
        base = _timed_baseline(step, method, stage.method, batches, clock)
        if index >= warmup:
            timed.append(phases)
            baseline.append(base)
    split = sorted(timed, key=lambda phases: phases["step_s"])[len(timed) // 2]  # the median step
    return {
        "recipe": recipe.name,
        "stage": stage.name,
        "method": stage.method,
        "synthetic": synthetic,
        "batch_size": stage.data.batch_size,
        "image_size": stage.data.image_size,
        "steps": steps,
        "threads": torch.get_num_threads(),
        "compile": recipe.scaling.compile,
        **split,
        **_rates_and_memory(split["step_s"], stage.data.batch_size, flops.get_total_flops(), where),
        "host_syncs_per_step": syncs.count,
        "host_syncs_by_op": dict(syncs.by_op),
        "baseline_step_s": statistics.median(baseline),
        "overhead_ratio": split["step_s"] / statistics.median(baseline),
        "notes": notes,
    }


def _rates_and_memory(
    step_s: float, batch_size: int, flops: int, device: torch.device
) -> dict[str, Any]:
    tflops = flops / step_s / 1e12 if step_s > 0 else None
    peak = _peak_tflops(device)
    return {
        "device": _device_name(device),
        "samples_per_s": batch_size / step_s if step_s > 0 else None,
        "peak_host_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_device_mib": (
            torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        ),
        "flops_per_step": flops,
        "tflops": tflops,
        "mfu": tflops / peak if tflops is not None and peak else None,
    }


# ----------------------------------------------------------------------------- the steps


def _timed_step(
    step: StageStep, batches: Iterator[dict], stage_step: int, clock: _PhaseClock
) -> dict[str, float]:
    started = time.perf_counter()
    batch, _ = step.to_device(next(batches))
    marks = [clock.mark()]
    output = step.forward(batch, stage_step)
    marks.append(clock.mark())
    step.backward(output)
    marks.append(clock.mark())
    step.update(stage_step)
    marks.append(clock.mark())
    clock.wait()
    step_s = time.perf_counter() - started
    forward_s, backward_s, optimizer_s = clock.between(marks)
    data_wait_s = max(step_s - forward_s - backward_s - optimizer_s, 0.0)
    return {
        "step_s": step_s,
        "data_wait_s": data_wait_s,
        "forward_s": forward_s,
        "backward_s": backward_s,
        "optimizer_s": optimizer_s,
    }


def _timed_baseline(
    step: StageStep, method: StageMethod, kind: str, batches: Iterator[dict], clock: _PhaseClock
) -> float:
    """One baseline step: the method's network passes, sum(student outputs).backward(), step."""
    started = time.perf_counter()
    batch, _ = step.to_device(next(batches))
    with torch.autocast(step.device.type, dtype=torch.bfloat16, enabled=step.use_amp):
        trivial = NETWORK_PASSES[kind](method, batch)
    step.optimizer.zero_grad(set_to_none=True)
    trivial.backward()
    step.optimizer.step()
    clock.wait()
    return time.perf_counter() - started


def _cacl_passes(method, batch) -> torch.Tensor:
    features = method.backbone(normalize_images(torch.cat([batch["view_a"], batch["view_b"]])))
    heads = [method.global_head, method.pixel_head, method.cycle_head]
    return sum(head(features).sum() for head in heads if head is not None)


def _maskcontrast_passes(method, batch) -> torch.Tensor:
    embeddings, saliency = method.query_encoder(normalize_images(batch["query"]))
    with torch.no_grad():
        method.key_encoder(normalize_images(batch["key"]))
    return embeddings.sum() + saliency.sum()


def _reco_passes(method, batch) -> torch.Tensor:
    outputs = list(method.student(normalize_images(batch["image"])))
    if method.semi:
        with torch.no_grad():
            method.teacher(normalize_images(batch["unlabelled_image"]))
        outputs += method.student(normalize_images(batch["unlabelled_image"]))
    return sum(output.sum() for output in outputs)


# The forward passes of each method's networks, without its losses, sampling or mixing.
NETWORK_PASSES: dict[str, Callable[[Any, dict], torch.Tensor]] = {
    "cacl": _cacl_passes,
    "maskcontrast": _maskcontrast_passes,
    "reco": _reco_passes,
}


class _PhaseClock:
    """Marks between phases: CUDA events on a GPU (no sync until `wait`), else wall time."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def mark(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def wait(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def between(self, marks: list) -> list[float]:
        pairs = zip(marks, marks[1:], strict=False)
        if self.cuda:
            return [start.elapsed_time(end) / 1000 for start, end in pairs]
        return [end - start for start, end in pairs]


# ----------------------------------------------------------------------------- the data


def _pick_stage(recipe: Recipe, stage_name: str | None) -> StageBase:
    if stage_name is None:
        return recipe.stages[0]
    for stage in recipe.stages:
        if stage.name == stage_name:
            return stage
    names = ", ".join(stage.name for stage in recipe.stages)
    raise CsegError(f"recipe {recipe.name} has no stage {stage_name!r}; use one of: {names}")


def _stage_to_time(
    recipe: Recipe, stage_name: str | None, synthetic: bool
) -> tuple[Recipe, StageBase, list[str]]:
    """The recipe and stage to time: random weights and shapes, or completed from the data."""
    stage = _pick_stage(recipe, stage_name)
    if synthetic:
        return _random_weights_and_shapes(recipe, stage)
    _complete_from_the_data(recipe)
    return recipe, stage, []


def _batches(
    recipe: Recipe, stage: StageBase, method: StageMethod, synthetic: bool, device: torch.device
) -> Iterator[dict]:
    if synthetic:
        return _synthetic_batches(stage, device)
    share = StreamShare(
        num_workers=recipe.data.loader_workers, seed=recipe.seed, pin_memory=device.type == "cuda"
    )
    return iter(method.training_loader(share))


def _random_weights_and_shapes(
    recipe: Recipe, stage: StageBase
) -> tuple[Recipe, StageBase, list[str]]:
    """The recipe without init_from (random weights), and a class count where none is set."""
    notes = []
    if recipe.model.init_from or stage.init_from:
        notes.append("random weights: init_from ignored (--synthetic)")
    stage = stage.model_copy(update={"init_from": None})
    if stage.method == "reco" and stage.num_classes is None:
        stage = stage.model_copy(update={"num_classes": ASSUMED_NUM_CLASSES})
        notes.append(
            f"num_classes {ASSUMED_NUM_CLASSES} assumed (set stages.{stage.name}.num_classes)"
        )
    model = recipe.model.model_copy(update={"init_from": None})
    return recipe.model_copy(update={"model": model}), stage, notes


def _synthetic_batches(stage: StageBase, device: torch.device) -> Iterator[dict]:
    """Cycle through a few random batches of the stage's shapes (pinned for a GPU)."""
    generator = torch.Generator().manual_seed(0)
    made = [_random_batch(stage, generator) for _ in range(SYNTHETIC_BATCHES)]
    if device.type == "cuda":
        made = [{k: v.pin_memory() for k, v in batch.items()} for batch in made]
    while True:
        for batch in made:
            yield dict(batch)


def _random_batch(stage: StageBase, generator: torch.Generator) -> dict[str, torch.Tensor]:
    size, side = stage.data.batch_size, stage.data.image_size

    def images() -> torch.Tensor:
        return torch.randint(0, 256, (size, 3, side, side), dtype=torch.uint8, generator=generator)

    def regions(classes: int) -> torch.Tensor:
        """Blocky label maps: a random class for each cell of a 4×4 grid."""
        cells = torch.randint(0, classes, (size, 1, 4, 4), generator=generator).float()
        return torch.nn.functional.interpolate(cells, size=(side, side), mode="nearest")[:, 0]

    if stage.method == "cacl":
        return {"view_a": images(), "view_b": images()}
    if stage.method == "maskcontrast":
        return {
            "query": images(),
            "key": images(),
            "query_mask": regions(2).bool(),
            "key_mask": regions(2).bool(),
        }
    batch = {"image": images(), "label": regions(stage.num_classes).long()}
    if stage.mode != "supervised":
        sparse = regions(stage.num_classes).long()
        keep = torch.rand(sparse.shape, generator=generator) < 0.01  # a few labelled pixels
        batch |= {
            "unlabelled_image": images(),
            "unlabelled_label": torch.where(keep, sparse, 255),
        }
    return batch


def _complete_from_the_data(recipe: Recipe) -> None:
    """Build generated data if absent and fill the class counts from the manifests, as a run does."""
    from ..data.synthetic import prepare_data
    from ..train.preflight import check_run_data

    if recipe.data.synthetic is not None:
        prepare_data(recipe)
    check_run_data(recipe)


def _reset_peaks(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads, {sys.platform})"


def _peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in name), None)
