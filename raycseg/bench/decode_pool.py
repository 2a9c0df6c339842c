"""In-worker loader vs the Ray Data decode pool: training pairs per second from the same shards.

`benchmark_decode_pool` decodes a video shard set with the full training
augmentation twice, with the same number of decode processes: once through the
default loader (`ShardStream` in `processes` DataLoader workers, as a Train
worker runs it) and once through the Ray Data pool (`processes` Ray tasks on a
local Ray of that many CPUs, read with `iter_batches` as a Train worker reads
its share). Each path is timed for `seconds` after its start-up (the loader's
first batch; the pool's first pass, in which its tasks start). A pass over a small shard set is short, so the
pool reads the shard list `repeat` times per pass, enough for a few hundred
pairs; Ray Data's per-pass start is then a small part of the time, as it is on
real datasets.

Both rates are per wall-second on this machine, so run it on quiet cores; the
pool's figure includes moving decoded pairs through the object store, which the
in-worker loader does through shared memory.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path

from raycseg.config import StageData
from raycseg.config.schema import DecodePoolSection
from raycseg.data.decode_pool import decode_pool_dataset
from raycseg.data.loaders import StreamShare, build_pair_loader, pair_decoder
from raycseg.methods.common import training_urls
from raycseg.train.ray_start import start_ray

PAIRS_PER_PASS = 256
BATCH_SIZE = 8


def benchmark_decode_pool(
    shards: str | Path,
    *,
    processes: int = 2,
    seconds: float = 20.0,
    image_size: int = 224,
    seed: int = 0,
) -> dict:
    """Pairs per second of the in-worker loader and of the decode pool on `shards` (train or all).

    Returns:
        {"in_worker": {...}, "ray_data": {...}, "ratio": ray_data over in_worker}, each
        path with `pairs`, `seconds`, `pairs_per_s` and `pairs_per_s_per_process`.
    """
    data = StageData(train=str(shards), image_size=image_size, batch_size=BATCH_SIZE)
    urls, samples = training_urls(data, 1)  # the train split, else all
    decode = pair_decoder(data)
    share = StreamShare(num_workers=processes, seed=seed)
    loader = build_pair_loader(urls, data, share, samples_per_rank=samples)
    in_worker = _timed(iter(loader), seconds, processes, warmup_batches=1)

    start_ray(None, cpus_needed=processes, quiet=True)
    repeat = max(1, math.ceil(PAIRS_PER_PASS / samples))
    dataset = decode_pool_dataset(urls * repeat, decode, DecodePoolSection(tasks=processes))
    first_pass = repeat * samples // BATCH_SIZE  # the tasks start (and import torch) in it
    ray_data = _timed(_endless(dataset), seconds, processes, warmup_batches=first_pass)
    return {
        "shards": str(shards),
        "processes": processes,
        "image_size": image_size,
        "in_worker": in_worker,
        "ray_data": ray_data,
        "ratio": ray_data["pairs_per_s"] / in_worker["pairs_per_s"],
    }


def _endless(dataset) -> Iterator[dict]:
    """The pool's batches, pass after pass."""
    while True:
        yield from dataset.iter_batches(batch_size=BATCH_SIZE, drop_last=True)


def _timed(batches: Iterator[dict], seconds: float, processes: int, warmup_batches: int) -> dict:
    """Pairs per wall-second of `batches` for `seconds` after the first `warmup_batches`."""
    for _ in range(warmup_batches):
        next(batches)
    pairs, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        pairs += len(next(batches)["view_a"])
    rate = pairs / elapsed
    return {
        "pairs": pairs,
        "seconds": elapsed,
        "pairs_per_s": rate,
        "pairs_per_s_per_process": rate / processes,
    }
