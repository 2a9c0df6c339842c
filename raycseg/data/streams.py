"""Sample streams over webdataset shards, split by rank and then by loader worker.

The unit of splitting is a *shard part*: with `S = world_size x workers`
slots (workers = DataLoader workers, at least 1) and `n` shards, each shard
is read as `k = ceil(S / n)` parts, part `j` holding the samples whose index
in the shard is `j` mod `k`. So there are always at least as many parts as
slots, even for one shard, and only the kept samples are decoded. Parts are
dealt round-robin first to ranks (`parts[rank::world_size]`), then, within a
rank, to its workers (`[worker::workers]`).

Evaluation (`train=False`): every worker reads its parts once, in order; over
all ranks x workers each sample is seen exactly once. The last batch of a
worker may be short; ranks may get different numbers of batches.

Training (`train=True`): the stream is endless and organised in epochs. In
epoch `e` the parts are permuted with a generator seeded by (seed, e), the
same on every rank, then dealt as above. Each rank takes exactly
`samples_per_rank` raw samples per epoch, split over its workers as evenly as
possible (worker w takes `samples_per_rank // W` plus one if
`w < samples_per_rank % W`). A worker whose parts hold more than its quota
drops the rest for this epoch (another permutation next epoch); one whose
parts hold fewer cycles through them again, repeating samples; one whose
parts are all empty (fewer samples than slots) draws from all parts. Samples
pass through a shuffle buffer before decoding. Every rank therefore yields
the same number of batches, so DDP never waits on a rank that ran dry.

Determinism: the stream depends only on (urls, seed, rank, world_size,
workers, batch size, samples_per_rank). Each sample's augmentations use a
generator seeded by its position (epoch, index in the worker's epoch), so a
resumed stream matches the uninterrupted one.

Resuming (`start_batch=k`): the DataLoader hands out batch `i` from worker
`i mod W`, starting at worker 0, so in a resumed loader worker `w` plays the
part of worker `r = (w + k) mod W` of the uninterrupted stream and skips
that worker's first `ceil((k - r) / W)` batches, i.e. that many times
`batch_size` raw samples; whole epochs are skipped by
arithmetic and the rest are read from the tar but never decoded. This is
exact when no sample before the resume point was skipped (corrupt, or
refused by a transform such as MaskContrast's area check); each such skip
shifts the resumed stream by one sample.

Corrupt samples (a member that fails to decode, an unreadable tar) are
skipped and counted in the batch's `skipped_corrupt`; refused samples in
`skipped_refused`. Nothing is unpickled.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from raycseg.errors import DataError

from ..shards.tars import iter_shard_samples

Part = tuple[str, int, int]  # (url, part index j, parts per shard k)
DecodeFn = Callable[[dict, np.random.Generator], "dict | None"]
CollateFn = Callable[[list[dict], int, int], dict]  # (items, corrupt, refused) -> batch
MAX_CONSECUTIVE_FAILURES = 1000
_CORRUPT = "__corrupt__"


@dataclass(frozen=True)
class StreamSpec:
    """What a stream reads and how it splits (see the module docstring)."""

    urls: tuple[str, ...]
    batch_size: int
    train: bool
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    samples_per_rank: int | None = None
    start_batch: int = 0
    shuffle_buffer: int = 64


def make_parts(urls: tuple[str, ...], slots: int) -> list[Part]:
    """Read each shard as ceil(slots / len(urls)) parts, so there are >= slots parts."""
    per_shard = max(1, math.ceil(slots / max(1, len(urls))))
    return [(url, j, per_shard) for url in urls for j in range(per_shard)]


def worker_quota(samples_per_rank: int, worker: int, workers: int) -> int:
    """Raw samples worker `worker` of `workers` takes per epoch."""
    return samples_per_rank // workers + (1 if worker < samples_per_rank % workers else 0)


def skipped_raw_samples(start_batch: int, batch_size: int, worker: int, workers: int) -> int:
    """Raw samples worker `worker` skips to resume a loader at batch `start_batch`."""
    return len(range(worker, start_batch, workers)) * batch_size


def iter_part(part: Part) -> Iterator[dict]:
    """Samples of one shard part; an unreadable tar yields one corrupt marker and stops."""
    url, index, count = part
    try:
        for position, sample in enumerate(iter_shard_samples(url)):
            if position % count == index:
                yield sample
    except Exception as error:  # a damaged tar stream: count it, keep the worker alive
        yield {_CORRUPT: f"unreadable shard {url}: {error}"}


def _shuffled(samples: Iterator[dict], size: int, rng: np.random.Generator) -> Iterator[dict]:
    """A reservoir-style shuffle buffer of `size` samples."""
    if size <= 1:
        yield from samples
        return
    buffer: list[dict] = []
    for sample in samples:
        if len(buffer) < size:
            buffer.append(sample)
            continue
        index = int(rng.integers(len(buffer)))
        yield buffer[index]
        buffer[index] = sample
    order = rng.permutation(len(buffer))
    yield from (buffer[i] for i in order)


def _passes(
    parts: list[Part], fallback: list[Part], shuffle_size: int, rng: np.random.Generator
) -> Iterator[dict]:
    """Endless passes over `parts`, each shuffled on its own; `fallback` if `parts` are empty."""
    for candidate in (parts, fallback):
        while candidate:
            produced = False
            one_pass = (sample for part in candidate for sample in iter_part(part))
            for sample in _shuffled(one_pass, shuffle_size, rng):
                produced = True
                yield sample
            if not produced:
                break
    raise DataError("the shards hold no samples; check them with `cseg shards verify`")


class ShardStream(IterableDataset):
    """An IterableDataset of ready batches (dicts) over shards; see the module docstring."""

    def __init__(self, spec: StreamSpec, decode: DecodeFn, collate_fn: CollateFn | None = None):
        super().__init__()
        if not spec.urls:
            raise DataError(
                "no shard urls given; list them with raycseg.shards.manifest.list_shard_urls"
            )
        if not 0 <= spec.rank < spec.world_size:
            raise DataError(f"rank {spec.rank} is outside world size {spec.world_size}")
        if spec.train and (spec.samples_per_rank or 0) < 1:
            raise DataError("training streams need samples_per_rank >= 1")
        self.spec, self.decode = spec, decode
        self.collate_fn = collate if collate_fn is None else collate_fn

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if self.spec.train and self.spec.samples_per_rank < workers:
            raise DataError(
                f"samples_per_rank={self.spec.samples_per_rank} gives some of the "
                f"{workers} loader workers nothing; raise it or use fewer workers"
            )
        # The DataLoader takes batch i from worker i mod W and always starts at
        # worker 0, so a loader resumed at batch k lets worker w play the part
        # of worker (w + k) mod W of the uninterrupted stream.
        role = (worker + self.spec.start_batch) % workers
        raw = (
            (sample, self._sample_rng(role, workers, epoch, index))
            for sample, epoch, index in self.iter_raw(role, workers)
        )
        yield from _batches(
            raw, self.decode, self.collate_fn, self.spec.batch_size, drop_last=self.spec.train
        )

    def iter_raw(self, worker: int, workers: int) -> Iterator[tuple[dict, int, int]]:
        """Undecoded samples of one loader worker as (sample, epoch, index in epoch).

        Evaluation streams have a single epoch 0. Resuming (`start_batch`) is
        already applied.
        """
        return (self._train_raw if self.spec.train else self._eval_raw)(worker, workers)

    def _rank_worker_parts(self, parts: list[Part], worker: int, workers: int) -> list[Part]:
        return parts[self.spec.rank :: self.spec.world_size][worker::workers]

    def _sample_rng(self, worker: int, workers: int, epoch: int, index: int) -> np.random.Generator:
        spec = self.spec
        return np.random.default_rng(
            [spec.seed, spec.rank, spec.world_size, workers, worker, epoch, index]
        )

    def _eval_raw(self, worker: int, workers: int) -> Iterator[tuple[dict, int, int]]:
        spec = self.spec
        parts = make_parts(spec.urls, spec.world_size * workers)
        mine = self._rank_worker_parts(parts, worker, workers)
        samples = (s for part in mine for s in iter_part(part))
        skip = skipped_raw_samples(spec.start_batch, spec.batch_size, worker, workers)
        for index, sample in enumerate(samples):
            if index >= skip:
                yield sample, 0, index

    def _train_raw(self, worker: int, workers: int) -> Iterator[tuple[dict, int, int]]:
        spec = self.spec
        parts = make_parts(spec.urls, spec.world_size * workers)
        quota = worker_quota(spec.samples_per_rank, worker, workers)
        skip = skipped_raw_samples(spec.start_batch, spec.batch_size, worker, workers)
        epoch, offset = divmod(skip, quota)
        while True:
            order = np.random.default_rng([spec.seed, epoch]).permutation(len(parts))
            permuted = [parts[i] for i in order]
            mine = self._rank_worker_parts(permuted, worker, workers)
            fallback = (
                permuted[worker + workers * spec.rank :] + permuted[: worker + workers * spec.rank]
            )
            shuffle_rng = np.random.default_rng(
                [spec.seed, spec.rank, spec.world_size, workers, worker, epoch, 1 << 30]
            )
            stream = _passes(mine, fallback, spec.shuffle_buffer, shuffle_rng)
            for index, sample in enumerate(islice(stream, quota)):
                if index >= offset:
                    yield sample, epoch, index
            epoch, offset = epoch + 1, 0


def decode_sample(
    sample: dict, decode: DecodeFn, rng: np.random.Generator
) -> tuple[dict | None, str | None]:
    """(item, None), or (None, "corrupt") when the sample fails to decode, or (None, "refused")."""
    if _CORRUPT in sample:
        return None, "corrupt"
    try:
        decoded = decode(sample, rng)
    except (ValueError, OSError, KeyError, EOFError, RuntimeError, IndexError):
        return None, "corrupt"
    return decoded, None if decoded is not None else "refused"


def _batches(
    raw: Iterator[tuple[dict, np.random.Generator]],
    decode: DecodeFn,
    collate_fn: CollateFn,
    batch_size: int,
    *,
    drop_last: bool,
) -> Iterator[dict]:
    """Decode raw samples into batches; count corrupt and refused samples per batch."""
    items: list[dict] = []
    corrupt = refused = failures_in_a_row = 0
    for sample, rng in raw:
        decoded, outcome = decode_sample(sample, decode, rng)
        corrupt += outcome == "corrupt"
        refused += outcome == "refused"
        if decoded is None:
            failures_in_a_row += 1
            if failures_in_a_row >= MAX_CONSECUTIVE_FAILURES:
                raise DataError(
                    f"{failures_in_a_row} samples in a row failed to decode or were refused; "
                    "check the shards with `cseg shards verify` and the loader settings"
                )
            continue
        failures_in_a_row = 0
        items.append(decoded)
        if len(items) == batch_size:
            yield collate_fn(items, corrupt, refused)
            items, corrupt, refused = [], 0, 0
    if items and not drop_last:
        yield collate_fn(items, corrupt, refused)


def collate(items: list[dict], corrupt: int = 0, refused: int = 0) -> dict:
    """Stack per-sample dicts: tensors along a new batch dim, other values into lists."""
    batch: dict = {}
    for name in items[0]:
        values = [item[name] for item in items]
        batch[name] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    batch["skipped_corrupt"] = corrupt
    batch["skipped_refused"] = refused
    return batch
