"""Decode throughput of the video streaming path against raw decord.

`benchmark_decoding` answers: how fast does the loader turn shards into
frame pairs, per CPU core, compared with calling decord directly?

1. **Pipeline.** The real loader (`ShardStream` + `VideoPairDecoder`, as in
   `build_pair_loader`): tar streaming, shuffle buffer, decord from in-memory
   bytes, frame-pair sampling by seconds, resize + centre crop to
   `image_size` (or the full training augmentation with `augment=True`),
   collation and the hand-over from the loader worker processes. The first
   batch (worker start-up) is not timed. Every clip's key and frame indices
   are recorded.
2. **Raw decord.** The same clips' bytes, read from the shards beforehand,
   then `decord.VideoReader(BytesIO(bytes), num_threads=1).get_batch(indices)`
   on exactly the recorded frame indices, in the same order, in this process.

Rates are given per CPU core: the pipeline decodes on `num_workers` cores,
raw decord on one. With `rounds > 1` the two phases alternate and the
reported ratio is the median, which damps noise from other load.
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

from raycseg.data.pipeline import VideoPairDecoder, video_member
from raycseg.data.storage import iter_shard_samples, list_shard_urls, read_manifest
from raycseg.data.streams import ShardStream, StreamSpec
from raycseg.data.transforms import PairViewTransform
from raycseg.data.video import resize_and_crop
from raycseg.errors import DataError


class _ResizeCropView:
    """The decode-only view: resize the short side to `size`, centre crop."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        return resize_and_crop(image[None], self.size)[0]


def _run_pipeline(
    urls: list[str], decoder: VideoPairDecoder, *, num_workers: int, batch_size: int,
    seconds: float, seed: int, samples_per_rank: int,
) -> tuple[list[tuple[str, list[int]]], float]:  # fmt: skip
    """Stream for `seconds` after the first batch; return (key, indices) per clip and the time."""
    spec = StreamSpec(tuple(urls), batch_size, True, seed, 0, 1, samples_per_rank)
    loader = DataLoader(ShardStream(spec, decoder), batch_size=None, num_workers=num_workers)
    clips: list[tuple[str, list[int]]] = []
    iterator = iter(loader)
    next(iterator)  # start-up: not timed
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        batch = next(iterator)
        clips += list(zip(batch["key"], batch["frame_indices"].tolist(), strict=True))
    elapsed = time.perf_counter() - started
    del iterator
    return clips, elapsed


def _run_raw(clips: list[tuple[str, list[int]]], data: dict[str, bytes]) -> float:
    """Decode the recorded frame indices with decord alone; return the time taken."""
    started = time.perf_counter()
    for key, indices in clips:
        reader = decord.VideoReader(io.BytesIO(data[key]), ctx=decord.cpu(0), num_threads=1)
        reader.get_batch(indices).asnumpy()
    return time.perf_counter() - started


def _rates(clips: int, frames_per_clip: int, seconds: float, cores: int) -> dict:
    clips_per_s = clips / seconds
    return {
        "clips": clips,
        "seconds": round(seconds, 3),
        "cores": cores,
        "clips_per_s": round(clips_per_s, 3),
        "frames_per_s": round(clips_per_s * frames_per_clip, 3),
        "clips_per_s_per_core": round(clips_per_s / cores, 3),
        "frames_per_s_per_core": round(clips_per_s * frames_per_clip / cores, 3),
    }


def benchmark_decoding(
    root: str | Path,
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
) -> dict:
    """Measure clips/s and frames/s of the streaming path and of raw decord.

    Args:
        root: A video shard set (folder with manifest.json).
        split: Which split (default: the first in the manifest).
        num_workers: Loader worker processes (at least 1).
        seconds: Timed streaming per round.
        rounds: Alternating pipeline/raw rounds; the ratio is their median.
        batch_size: Clips per batch.
        image_size: Output side of each frame.
        frame_gap_s: Gap between the two frames of a pair, in seconds.
        augment: Use the training augmentation instead of resize + centre crop.
        seed: Stream seed.

    Returns:
        A JSON-ready dict: settings, per-round "pipeline" and "raw_decord"
        rates (clips/s, frames/s, and both per core), and "ratio" = median
        pipeline / raw frames per second per core.
    """
    manifest = read_manifest(root)
    if manifest["kind"] != "video":
        raise DataError(f"{root} holds {manifest['kind']} shards; benchmark a video shard set")
    split = split or next(iter(manifest["splits"]))
    urls = list_shard_urls(root, split)
    num_workers = max(1, num_workers)
    view = PairViewTransform(image_size) if augment else _ResizeCropView(image_size)
    decoder = VideoPairDecoder(view, frame_gap_s)
    data = {s["__key__"]: video_member(s) for url in urls for s in iter_shard_samples(url)}
    results = []
    for round_index in range(rounds):
        clips, pipeline_s = _run_pipeline(
            urls, decoder, num_workers=num_workers, batch_size=batch_size, seconds=seconds,
            seed=seed + round_index, samples_per_rank=manifest["splits"][split]["count"],
        )  # fmt: skip
        raw_s = _run_raw(clips, data)
        pipeline = _rates(len(clips), 2, pipeline_s, num_workers)
        raw = _rates(len(clips), 2, raw_s, 1)
        ratio = pipeline["frames_per_s_per_core"] / raw["frames_per_s_per_core"]
        results.append({"pipeline": pipeline, "raw_decord": raw, "ratio": round(ratio, 3)})
    return {
        "root": str(Path(root).resolve()),
        "split": split,
        "num_workers": num_workers,
        "cpu_count": os.cpu_count(),
        "batch_size": batch_size,
        "image_size": image_size,
        "augment": augment,
        "frames_per_clip": 2,
        "rounds": results,
        "ratio": round(statistics.median(r["ratio"] for r in results), 3),
    }
