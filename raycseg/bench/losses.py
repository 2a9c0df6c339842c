"""Loss benchmarks: forward+backward wall time and peak memory of one loss at a fixed shape.

``benchmark_loss(name, threads=1, repeats=3, **shape_overrides)`` runs one case
in a fresh Python subprocess (``python -m raycseg.bench.losses``), so that neither the caller's memory nor an
earlier case's allocator state leaks into the figures:

1. the child sets ``torch.set_num_threads(threads)`` and builds the inputs
   (leaf tensors that require grad where the loss gives them a gradient);
2. it records the current RSS (the post-setup baseline), resets the kernel's
   peak-RSS mark (``/proc/self/clear_refs`` = 5) and runs forward+backward once;
   ``peak_mib`` = VmHWM - baseline, i.e. the extra resident memory the step
   needed, gradients of the inputs included. This first step is not timed.
   Where the peak mark cannot be reset (not Linux), ``ru_maxrss`` is used and
   ``peak_method`` says so;
3. it times ``repeats`` further forward+backward steps and reports the median
   and minimum wall time (``time.perf_counter``) and the median CPU time of the
   process (``time.process_time``, all threads), which is the steadier figure
   on a shared machine.

RSS includes memory that glibc keeps after a free, so the figures are an upper
bound on live tensor memory, measured the same way as the quoted reference
figures of the official implementations (peak RSS of one CPU forward+backward).

Cases and default shapes (``DEFAULT_SHAPES``):
    cacl, cacl-global, cacl-pixel, cacl-cycle
        B=8 videos, N=32x32 nodes, D=128, K=4096 pixel negatives.
    crw-walk
        A comparison baseline written here: CRW's palindrome walks over a
        T=4-frame clip (0-1-2-1-0 and 0-1-2-3-2-1-0, each product recomputed),
        -mean log P_ii per walk, edge dropout 0.1, at the same B, N, D.
    maskcontrast
        B=32, D=32, 224x224 embeddings (full resolution), K=128 queue,
        salient share 10-60 % per image, plus the saliency BCE.
    maskcontrast-feature
        The same at feature resolution: 28x28 embeddings, masks downsampled.
    reco
        B=4, D=256, 81x81, C=21 classes with 5 per image (Voronoi regions),
        5 % invalid pixels, N_q=256, N_k=512.
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from raycseg.errors import CsegError
from raycseg.losses.cacl import (
    CACLLoss,
    cycle_attention_loss,
    draw_pixel_negatives,
    global_contrast_loss,
    pixel_rematch_loss,
)
from raycseg.losses.maskcontrast import downsample_mask, maskcontrast_loss, saliency_bce_loss
from raycseg.losses.reco import reco_loss

__all__ = ["CASES", "DEFAULT_SHAPES", "REFERENCES", "benchmark_loss"]

_CACL_SHAPES = {"batch": 8, "side": 32, "dim": 128, "negatives": 4096, "seed": 0}
DEFAULT_SHAPES: dict[str, dict[str, int]] = {
    "cacl": _CACL_SHAPES,
    "cacl-global": _CACL_SHAPES,
    "cacl-pixel": _CACL_SHAPES,
    "cacl-cycle": _CACL_SHAPES,
    "crw-walk": {"batch": 8, "side": 32, "dim": 128, "frames": 4, "seed": 0},
    "maskcontrast": {"batch": 32, "dim": 32, "size": 224, "queue": 128, "seed": 0},
    "maskcontrast-feature": {"batch": 32, "dim": 32, "size": 224, "feature_size": 28, "queue": 128, "seed": 0},
    "reco": {
        "batch": 4, "dim": 256, "side": 81, "classes": 21, "classes_per_image": 5,
        "num_queries": 256, "num_negatives": 512, "seed": 0,
    },
}  # fmt: skip
CASES = tuple(DEFAULT_SHAPES)

_MIB = 2**20
_GB_IN_MIB = 1e9 / _MIB  # reference figures are quoted in (decimal) GB; the stricter reading
REFERENCES: dict[str, dict[str, object]] = {
    "cacl-cycle": {"time_s": 1.0, "peak_mib": 300.0, "what": "target of issue 3 (not an implementation)"},
    "crw-walk": {"time_s": 8.0, "peak_mib": 920.0, "what": "CRW T=4 walk (docs/benchmarks.md)"},
    "maskcontrast": {"time_s": 3.5, "peak_mib": 1.0 * _GB_IN_MIB, "what": "official loss (docs/benchmarks.md)"},
    "maskcontrast-feature": {"time_s": 3.5, "peak_mib": 1.0 * _GB_IN_MIB, "what": "official loss at full resolution"},
    "reco": {"time_s": 13.3, "peak_mib": 2.0 * _GB_IN_MIB, "what": "official loss (docs/benchmarks.md)"},
}  # fmt: skip


# ----------------------------------------------------------------- case builders
# Each builder allocates the inputs and returns step(): one forward+backward.


def _leaf(*shape: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(*shape, generator=generator).requires_grad_()


def _clear_grads(*tensors: torch.Tensor) -> None:
    for tensor in tensors:
        tensor.grad = None


def _build_cacl(
    name: str, batch: int, side: int, dim: int, negatives: int, seed: int
) -> Callable[[], None]:
    gen = torch.Generator().manual_seed(seed)
    nodes = side * side
    g, g_pos = _leaf(batch, dim, generator=gen), _leaf(batch, dim, generator=gen)
    maps = [_leaf(batch, dim, nodes, generator=gen) for _ in range(6)]
    p, p_pos, u, u_pos, c, c_pos = maps
    owners = torch.arange(batch)
    pixel_negatives = draw_pixel_negatives(p.detach(), owners, negatives, generator=gen)
    combined = CACLLoss(1.0, 1.0, 1.0)

    def step() -> None:
        _clear_grads(g, g_pos, *maps)
        if name == "cacl-global":
            loss = global_contrast_loss(g, g_pos)
        elif name == "cacl-pixel":
            loss = pixel_rematch_loss(p, p_pos, u, u_pos, pixel_negatives)
        elif name == "cacl-cycle":
            loss = cycle_attention_loss(c, c_pos)
        else:
            loss, _ = combined(g, g_pos, p, p_pos, u, u_pos, c, c_pos, pixel_negatives)
        loss.backward()

    return step


def crw_walk_loss(
    frames: torch.Tensor, temperature: float = 0.07, edge_dropout: float = 0.1
) -> torch.Tensor:
    """CRW palindrome-walk loss over a clip, the comparison baseline for the cycle loss.

    Args:
        frames: float [B, T, D, N] node embeddings of T frames.
        temperature: tau of the transition softmax.
        edge_dropout: probability of dropping each edge of each transition matrix.

    Returns:
        0-dim tensor: mean over the walks 0->...->k->...->0 (k = 2..T-1) of
        -mean_i log(P_k[i, i] + 1e-20), each P_k an explicit product of N x N matrices.
    """
    z = F.normalize(frames, dim=2)
    affinity = torch.einsum("btdn,btdm->btnm", z[:, :-1], z[:, 1:]) / temperature  # [B, T-1, N, N]

    def transitions(scores: torch.Tensor) -> torch.Tensor:
        dropped = torch.rand_like(scores) < edge_dropout
        return torch.softmax(scores.masked_fill(dropped, -1e20), dim=-1)

    forward, backward = transitions(affinity), transitions(affinity.transpose(-1, -2))
    walk_losses = []
    for length in range(2, frames.shape[1]):
        walk = forward[:, 0]
        for step in range(1, length):
            walk = walk @ forward[:, step]
        for step in reversed(range(length)):
            walk = walk @ backward[:, step]
        diagonal = torch.diagonal(walk, dim1=-2, dim2=-1)
        walk_losses.append(-torch.log(diagonal + 1e-20).mean())
    return torch.stack(walk_losses).mean()


def _build_crw(batch: int, side: int, dim: int, frames: int, seed: int) -> Callable[[], None]:
    gen = torch.Generator().manual_seed(seed)
    clip = _leaf(batch, frames, dim, side * side, generator=gen)

    def step() -> None:
        _clear_grads(clip)
        crw_walk_loss(clip).backward()

    return step


def _random_boxes(batch: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """Box masks, bool [B, size, size]: one box per image covering 10-60 % of it."""
    share = 0.1 + 0.5 * torch.rand(batch, generator=gen)
    aspect = torch.exp((torch.rand(batch, generator=gen) - 0.5) * 0.8)
    heights = (size * (share * aspect).sqrt()).clamp(1, size).long()
    widths = (size * share.div(aspect).sqrt()).clamp(1, size).long()
    tops = (torch.rand(batch, generator=gen) * (size - heights + 1)).long()
    lefts = (torch.rand(batch, generator=gen) * (size - widths + 1)).long()
    rows = torch.arange(size)
    inside_rows = (rows >= tops[:, None]) & (rows < (tops + heights)[:, None])
    inside_cols = (rows >= lefts[:, None]) & (rows < (lefts + widths)[:, None])
    return inside_rows[:, :, None] & inside_cols[:, None, :]


def _build_maskcontrast(
    batch: int, dim: int, size: int, queue: int, seed: int, feature_size: int | None = None
) -> Callable[[], None]:
    gen = torch.Generator().manual_seed(seed)
    q_mask_full, k_mask_full = _random_boxes(batch, size, gen), _random_boxes(batch, size, gen)
    grid = feature_size or size
    q = _leaf(batch, dim, grid, grid, generator=gen)
    k = torch.randn(batch, dim, grid, grid, generator=gen)
    saliency_logits = _leaf(batch, grid, grid, generator=gen)
    memory = F.normalize(torch.randn(queue, dim, generator=gen), dim=1)

    def step() -> None:
        _clear_grads(q, saliency_logits)
        q_mask, k_mask = q_mask_full, k_mask_full
        if feature_size:
            q_mask, k_mask = (
                downsample_mask(q_mask, (grid, grid)),
                downsample_mask(k_mask, (grid, grid)),
            )
        contrast, _ = maskcontrast_loss(q, q_mask, k, k_mask, memory)
        (contrast + saliency_bce_loss(saliency_logits, q_mask)).backward()

    return step


def _voronoi_labels(
    batch: int, side: int, classes: int, per_image: int, gen: torch.Generator
) -> torch.Tensor:
    """Label maps, long [B, side, side]: ``per_image`` Voronoi regions of distinct classes each."""
    seeds = torch.rand(batch, per_image, 2, generator=gen) * side
    ys, xs = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    points = torch.stack([ys, xs], -1).reshape(1, -1, 1, 2).float()
    nearest = ((points - seeds[:, None]) ** 2).sum(-1).argmin(-1)  # [B, side*side]
    image_classes = torch.argsort(torch.rand(batch, classes, generator=gen), dim=1)[:, :per_image]
    return torch.gather(image_classes, 1, nearest).reshape(batch, side, side)


def _build_reco(
    batch: int, dim: int, side: int, classes: int, classes_per_image: int,
    num_queries: int, num_negatives: int, seed: int,
) -> Callable[[], None]:  # fmt: skip
    gen = torch.Generator().manual_seed(seed)
    label = _voronoi_labels(batch, side, classes, classes_per_image, gen)
    label[torch.rand(label.shape, generator=gen) < 0.05] = -1
    mask = label >= 0
    logits = 2.0 * torch.randn(batch, classes, side, side, generator=gen)
    logits.scatter_add_(1, label.clamp_min(0)[:, None], torch.full((batch, 1, side, side), 3.0))
    prob = torch.softmax(logits, dim=1)
    rep = _leaf(batch, dim, side, side, generator=gen)
    sampler = torch.Generator().manual_seed(seed + 1)

    def step() -> None:
        _clear_grads(rep)
        reco_loss(
            rep,
            label,
            mask,
            prob,
            num_queries=num_queries,
            num_negatives=num_negatives,
            generator=sampler,
        ).backward()

    return step


def _build_case(name: str, shapes: dict[str, int]) -> Callable[[], None]:
    if name.startswith("cacl"):
        return _build_cacl(name, **shapes)
    if name == "crw-walk":
        return _build_crw(**shapes)
    if name.startswith("maskcontrast"):
        return _build_maskcontrast(**shapes)
    return _build_reco(**shapes)


# -------------------------------------------------------------- measurement (child)


def _status_mib(field: str) -> float | None:
    status = Path("/proc/self/status")
    if not status.exists():
        return None
    for line in status.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024 / _MIB
    return None


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _max_rss_mib() -> float:
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / _MIB


def _measure_case(
    name: str, threads: int, repeats: int, shapes: dict[str, int]
) -> dict[str, object]:
    torch.set_num_threads(threads)
    torch.manual_seed(shapes.get("seed", 0))
    step = _build_case(name, shapes)
    baseline = _status_mib("VmRSS")
    if baseline is not None and _reset_peak_rss():
        step()
        peak, method = _status_mib("VmHWM") - baseline, "VmHWM after reset - post-setup VmRSS"
    else:
        baseline = _max_rss_mib()
        step()
        peak, method = _max_rss_mib() - baseline, "ru_maxrss - post-setup ru_maxrss"
    times, cpu_times = [], []
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    return {
        "time_s": statistics.median(times),
        "time_s_min": min(times),
        "times_s": times,
        "cpu_s": statistics.median(cpu_times),
        "peak_mib": peak,
        "peak_method": method,
    }


# ------------------------------------------------------------------ public entry


def benchmark_loss(
    name: str, *, threads: int = 1, repeats: int = 3, **shapes: int
) -> dict[str, object]:
    """Measure forward+backward time and peak memory of one loss case in a fresh process.

    Args:
        name: one of ``CASES``.
        threads: torch intra-op threads in the child.
        repeats: timed forward+backward steps (after one untimed, memory-measured step).
        **shapes: overrides of ``DEFAULT_SHAPES[name]`` (e.g. ``batch=4``).

    Returns:
        A flat JSON-ready dict: ``case``, ``threads``, ``repeats``, ``shapes``,
        ``time_s`` (median wall), ``time_s_min``, ``times_s``, ``cpu_s`` (median
        process CPU time), ``peak_mib``,
        ``peak_method``, and, when the shapes are the defaults and a reference is
        known, ``reference`` plus ``speedup`` (reference time / our median wall
        time), ``speedup_cpu`` (reference time / our CPU time; the two agree on an
        idle machine with one thread) and ``memory_ratio`` (ours / reference peak).

    Raises:
        CsegError: unknown case or shape key, or a non-positive thread/repeat count.
    """
    if name not in DEFAULT_SHAPES:
        raise CsegError(f"unknown loss benchmark {name!r}; choose one of: {', '.join(CASES)}")
    unknown = sorted(set(shapes) - set(DEFAULT_SHAPES[name]))
    if unknown:
        raise CsegError(
            f"unknown shape key(s) {unknown} for {name!r}; known: {sorted(DEFAULT_SHAPES[name])}"
        )
    if threads < 1 or repeats < 1:
        raise CsegError("threads and repeats must be at least 1; pass e.g. --threads 1 --repeats 3")
    resolved = {**DEFAULT_SHAPES[name], **{key: int(value) for key, value in shapes.items()}}
    command = [sys.executable, "-m", __name__, json.dumps([name, threads, repeats, resolved])]
    child = subprocess.run(command, capture_output=True, text=True, check=False)
    if child.returncode != 0:
        raise RuntimeError(f"benchmark {name!r} failed in its subprocess:\n{child.stderr.strip()}")
    measured = json.loads(child.stdout.strip().splitlines()[-1])
    result: dict[str, object] = {
        "case": name,
        "threads": threads,
        "repeats": repeats,
        "shapes": resolved,
        **measured,
    }
    reference = REFERENCES.get(name)
    if reference is not None and resolved == DEFAULT_SHAPES[name]:
        result["reference"] = reference
        result["speedup"] = float(reference["time_s"]) / float(measured["time_s"])
        result["speedup_cpu"] = float(reference["time_s"]) / float(measured["cpu_s"])
        result["memory_ratio"] = float(measured["peak_mib"]) / float(reference["peak_mib"])
    return result


if __name__ == "__main__":  # the fresh child process of benchmark_loss
    case, case_threads, case_repeats, case_shapes = json.loads(sys.argv[1])
    print(json.dumps(_measure_case(case, case_threads, case_repeats, case_shapes)))
