"""Decode throughput of video shard sets: pairs per CPU-second, and against raw decord.

`benchmark_decoding` answers: how many training pairs does the loader make per
CPU-second from a shard set (and from a second one, say the same clips stored
as they came versus transcoded), and how does it compare with calling decord
directly on the same clips?

1. **Pipeline.** The real loader (`ShardStream` + `VideoPairDecoder`, as in
   `build_pair_loader`): tar streaming, shuffle buffer, decord from in-memory
   bytes, frame-pair sampling by seconds, resize + centre crop to
   `image_size` (or the full training augmentation with `augment=True`),
   collation and the hand-over from the loader worker processes. The first
   batch (worker start-up) is not timed. Every clip's key and frame indices
   are recorded.
2. **Raw decord.** The same clips' bytes, read from the shards beforehand,
   then `decord.VideoReader(BytesIO(bytes), num_threads=1).get_batch(indices)`
   on exactly the recorded frame indices, in the same order, in this process;
   each reader is freed as soon as its frames are out, as the pipeline's are
   (a live reader's thread goes on decoding the packets it read ahead).

Rates are given per CPU core in two ways. By wall time: the pipeline
decodes on `num_workers` cores, raw decord on one. By CPU time (Linux, from
/proc): clips per CPU-second spent by the loader's main process and its
workers, against clips per CPU-second of the raw loop; this one is not
disturbed by other programs sharing the cores. With `rounds > 1` the two
phases alternate and the reported ratios are medians.
"""

from __future__ import annotations

import io
import os
import statistics
import time
from pathlib import Path

import decord
import numpy as np
import torch
from torch.utils.data import DataLoader

from raycseg.data.decoders import VideoPairDecoder, video_member
from raycseg.data.streams import ShardStream, StreamSpec
from raycseg.data.transforms import PairViewTransform
from raycseg.errors import DataError
from raycseg.media.video import resize_and_crop
from raycseg.shards.manifest import list_shard_urls, read_manifest
from raycseg.shards.tars import iter_shard_samples


class _ResizeCropView:
    """The decode-only view: resize the short side to `size`, centre crop."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        return resize_and_crop(image[None], self.size)[0]


def _cpu_seconds(pids: list[int]) -> float | None:
    """User + system CPU seconds of live processes, from /proc (None where unavailable)."""
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


def _run_pipeline(
    urls: list[str], decoder: VideoPairDecoder, *, num_workers: int, batch_size: int,
    seconds: float, seed: int, samples_per_rank: int,
) -> tuple[list[tuple[str, list[int]]], float, float | None]:  # fmt: skip
    """Stream for `seconds` after the first batch; return (key, indices) per clip, wall and CPU time."""
    spec = StreamSpec(tuple(urls), batch_size, True, seed, 0, 1, samples_per_rank)
    loader = DataLoader(ShardStream(spec, decoder), batch_size=None, num_workers=num_workers)
    clips: list[tuple[str, list[int]]] = []
    iterator = iter(loader)
    next(iterator)  # start-up: not timed
    # the loader's own processes: this one and its workers (a private attribute, read-only)
    pids = [os.getpid()] + [worker.pid for worker in getattr(iterator, "_workers", [])]
    cpu_start, started = _cpu_seconds(pids), time.perf_counter()
    while time.perf_counter() - started < seconds:
        batch = next(iterator)
        clips += list(zip(batch["key"], batch["frame_indices"].tolist(), strict=True))
    elapsed, cpu_end = time.perf_counter() - started, _cpu_seconds(pids)
    del iterator
    cpu = cpu_end - cpu_start if cpu_start is not None and cpu_end is not None else None
    return clips, elapsed, cpu


def _run_raw(clips: list[tuple[str, list[int]]], data: dict[str, bytes]) -> tuple[float, float]:
    """Decode the recorded frame indices with decord alone; return wall and CPU time."""
    started, cpu_start = time.perf_counter(), time.process_time()
    for key, indices in clips:
        reader = decord.VideoReader(io.BytesIO(data[key]), ctx=decord.cpu(0), num_threads=1)
        reader.get_batch(indices).asnumpy()
        del reader  # now: while it lives, its thread decodes the packets it read ahead
    return time.perf_counter() - started, time.process_time() - cpu_start


def _rates(clips: int, frames_per_clip: int, seconds: float, cores: int, cpu: float | None) -> dict:
    clips_per_s = clips / seconds
    per_cpu_s = clips / cpu if cpu else None
    return {
        "cpu_seconds": round(cpu, 3) if cpu is not None else None,
        "clips_per_cpu_s": round(per_cpu_s, 3) if per_cpu_s else None,
        "frames_per_cpu_s": round(per_cpu_s * frames_per_clip, 3) if per_cpu_s else None,
        "clips": clips,
        "seconds": round(seconds, 3),
        "cores": cores,
        "clips_per_s": round(clips_per_s, 3),
        "frames_per_s": round(clips_per_s * frames_per_clip, 3),
        "clips_per_s_per_core": round(clips_per_s / cores, 3),
        "frames_per_s_per_core": round(clips_per_s * frames_per_clip / cores, 3),
    }


def benchmark_decoding(
    roots: list[str | Path],
    *,
    split: str | None = None,
    num_workers: int = 1,
    seconds: float = 20.0,
    rounds: int = 1,
    batch_size: int = 8,
    image_size: int = 224,
    frame_gap_s: tuple[float, float] = (0.25, 2.0),
    augment: bool = False,
    seed: int = 0,
    pairs_per_s: float | None = None,
) -> dict:
    """Training pairs per CPU-second of each video shard set, and each against raw decord.

    Args:
        roots: One or two video shard sets (folders with manifest.json); with two,
            `ratio` compares the first with the second.
        split: Which split (default: the first in each manifest).
        num_workers: Loader worker processes (at least 1).
        seconds: Timed streaming per shard set and round.
        rounds: Rounds; each times every shard set in turn, and the figures are medians.
        batch_size: Pairs per batch.
        image_size: Output side of each frame.
        frame_gap_s: Gap between the two frames of a pair, in seconds.
        augment: Use the training augmentation instead of resize + centre crop.
        seed: Stream seed.
        pairs_per_s: A GPU's consumption rate; each set then reports the decode cores
            one GPU needs at it (`decode_cores_per_gpu`).

    Returns:
        A JSON-ready dict: the settings, `paths` (per shard set: `pairs_per_cpu_s`,
        `pairs_per_s`, `pairs_per_s_per_worker`, the manifest's `transcode`, and
        `vs_raw_decord`: per-round pipeline and raw-decord rates on the same clips with
        their median `ratio` (wall time per core) and `cpu_ratio` (raw / pipeline CPU
        time)), and with two sets `ratio` = first / second in pairs per CPU-second.
    """
    if not 1 <= len(roots) <= 2:
        raise DataError("benchmark one shard set, or two to compare (--vs)")
    num_workers = max(1, num_workers)
    view = PairViewTransform(image_size) if augment else _ResizeCropView(image_size)
    decoder = VideoPairDecoder(view, frame_gap_s)
    sets = [_VideoShards(root, split) for root in roots]
    measured: dict[str, list[dict]] = {shards.root: [] for shards in sets}
    for round_index in range(rounds):
        for shards in sets:
            measured[shards.root].append(
                _measure(shards, decoder, num_workers, batch_size, seconds, seed + round_index)
            )  # fmt: skip
    paths = {
        shards.root: _summary(shards, measured[shards.root], num_workers, pairs_per_s)
        for shards in sets
    }
    report = {
        "num_workers": num_workers,
        "cpu_count": os.cpu_count(),
        "batch_size": batch_size,
        "image_size": image_size,
        "augment": augment,
        "seconds": seconds,
        "rounds": rounds,
        "paths": paths,
    }
    if len(sets) == 2:
        first, second = (paths[shards.root]["pairs_per_cpu_s"] for shards in sets)
        report["ratio"] = round(first / second, 3) if first and second else None
    return report


class _VideoShards:
    """A video shard set's split, its shard URLs and every clip's bytes (for raw decord)."""

    def __init__(self, root: str | Path, split: str | None):
        manifest = read_manifest(root)
        if manifest["kind"] != "video":
            raise DataError(f"{root} holds {manifest['kind']} shards; benchmark a video shard set")
        self.root = str(Path(root).resolve())
        self.split = split or next(iter(manifest["splits"]))
        self.count = manifest["splits"][self.split]["count"]
        self.transcode = manifest.get("transcode")
        self.urls = list_shard_urls(root, self.split)
        self.clips = {
            s["__key__"]: video_member(s) for url in self.urls for s in iter_shard_samples(url)
        }


def _measure(
    shards: _VideoShards, decoder: VideoPairDecoder, num_workers: int, batch_size: int,
    seconds: float, seed: int,
) -> dict:  # fmt: skip
    """One round: the streaming path for `seconds`, then raw decord on the same clips."""
    clips, pipeline_s, pipeline_cpu = _run_pipeline(
        shards.urls, decoder, num_workers=num_workers, batch_size=batch_size, seconds=seconds,
        seed=seed, samples_per_rank=shards.count,
    )  # fmt: skip
    raw_s, raw_cpu = _run_raw(clips, shards.clips)
    pipeline = _rates(len(clips), 2, pipeline_s, num_workers, pipeline_cpu)
    raw = _rates(len(clips), 2, raw_s, 1, raw_cpu)
    cpu_ratio = raw_cpu / pipeline_cpu if pipeline_cpu and raw_cpu else None
    return {
        "pipeline": pipeline,
        "raw_decord": raw,
        "ratio": round(pipeline["frames_per_s_per_core"] / raw["frames_per_s_per_core"], 3),
        "cpu_ratio": round(cpu_ratio, 3) if cpu_ratio else None,
    }


def _summary(
    shards: _VideoShards, rounds: list[dict], num_workers: int, pairs_per_s: float | None
) -> dict:
    """A shard set's medians over rounds (a pair is one clip's two frames)."""
    per_cpu = [r["pipeline"]["clips_per_cpu_s"] for r in rounds if r["pipeline"]["clips_per_cpu_s"]]
    pairs_per_cpu_s = statistics.median(per_cpu) if per_cpu else None
    wall = statistics.median(r["pipeline"]["clips_per_s"] for r in rounds)
    cpu_ratios = [r["cpu_ratio"] for r in rounds if r["cpu_ratio"] is not None]
    summary = {
        "split": shards.split,
        "transcode": shards.transcode,
        "pairs_per_cpu_s": round(pairs_per_cpu_s, 3) if pairs_per_cpu_s else None,
        "pairs_per_s": round(wall, 3),
        "pairs_per_s_per_worker": round(wall / num_workers, 3),
        "vs_raw_decord": {
            "ratio": round(statistics.median(r["ratio"] for r in rounds), 3),
            "cpu_ratio": round(statistics.median(cpu_ratios), 3) if cpu_ratios else None,
            "rounds": rounds,
        },
    }
    if pairs_per_s and pairs_per_cpu_s:
        summary["decode_cores_per_gpu"] = round(pairs_per_s / pairs_per_cpu_s, 1)
    return summary
