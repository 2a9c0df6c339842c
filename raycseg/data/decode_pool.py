"""A Ray Data decode pool: shards decoded and augmented by CPU tasks, fed to Train workers.

`data.loader: ray_data` on a cacl or maskcontrast stage. The default loader
(`raycseg.data.loaders`) decodes in each training worker's DataLoader, on the
GPU node's own cores. The pool instead decodes in Ray tasks that ask for their
own resources (`data.decode_pool`: `tasks` at once, `cpus_per_task`, custom
`resources` to place them on a CPU node group), so a GPU node with few CPUs, or
a cluster with autoscaled CPU nodes, can still feed its GPUs.

How it runs: the shards are cut into parts (`streams.make_parts`), one row per
part. Each epoch the parts go in a random order to `tasks` concurrent tasks;
a task reads its part with the project's own tar reader (nothing unpickled)
and yields decoded items in small blocks through the same decoder and the same
corrupt/refused rules as the default loader (`streams.decode_sample`). Ray
Train hands each worker its share with `get_dataset_shard` (an equal split of
every epoch), and `pool_batches` turns the share into the default loader's
batch dicts: the same keys, dtypes and shapes.

Its semantics are weaker than the default loader's, on purpose:

* An epoch is one pass over every sample, split equally between the ranks by
  Ray Train; the remainder of a pass is dropped. `samples_per_epoch` is not used.
* Order and augmentations are not reproducible: tasks finish in any order and
  draw their augmentations from fresh entropy.
* A resumed stage starts a new pass. It neither skips nor repeats exactly what the
  interrupted run saw (the default loader resumes at the very sample).
* Corrupt and refused samples are skipped and counted in the batch that follows
  them within their part; a part that yields no item at all loses its count.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

import numpy as np
import torch
from ray.data.collate_fn import NumpyBatchCollateFn

from ..config.schema import DecodePoolSection
from ..errors import DataError
from .streams import DecodeFn, decode_sample, iter_part, make_parts

ROWS_PER_BLOCK = 8
PARTS_PER_TASK = 4
COUNT_COLUMNS = ("skipped_corrupt", "skipped_refused")


def decode_pool_dataset(urls: list[str], decode: DecodeFn, pool: DecodePoolSection):
    """A `ray.data.Dataset` of decoded items of every sample in `urls`, decoded by `pool`'s tasks.

    Columns: the decoder's item keys (tensors as numpy arrays, `key` as strings)
    plus the per-row counts `skipped_corrupt` and `skipped_refused`.
    """
    import ray.data

    parts = make_parts(tuple(urls), pool.tasks * PARTS_PER_TASK)
    rows = [{"url": url, "index": index, "count": count} for url, index, count in parts]
    dataset = (
        ray.data.from_items(rows, override_num_blocks=len(rows))
        .randomize_block_order()
        .map_batches(
            partial(decode_parts, decode=decode),
            batch_size=1,
            num_cpus=pool.cpus_per_task,
            compute=ray.data.TaskPoolStrategy(size=pool.tasks),
            resources=pool.resources or None,
        )
    )
    # One pass per epoch would print a progress bar and two lines; the run has its own progress.
    dataset.context.enable_progress_bars = False
    dataset.context.print_on_execution_start = False
    return dataset


def decode_parts(parts: dict[str, np.ndarray], decode: DecodeFn) -> Iterator[dict[str, np.ndarray]]:
    """Decode every sample of the given shard parts; yield blocks of `ROWS_PER_BLOCK` items."""
    rng = np.random.default_rng()
    for url, index, count in zip(parts["url"], parts["index"], parts["count"], strict=True):
        items, counts = [], {"corrupt": 0, "refused": 0}
        for sample in iter_part((str(url), int(index), int(count))):
            item, outcome = decode_sample(sample, decode, rng)
            if item is None:
                counts[outcome] += 1
                continue
            items.append(item)
            if len(items) == ROWS_PER_BLOCK:
                yield _block(items, counts)
                items, counts = [], {"corrupt": 0, "refused": 0}
        if items:
            yield _block(items, counts)


def _block(items: list[dict], counts: dict[str, int]) -> dict[str, np.ndarray]:
    """Items as columns; the first row carries the samples skipped before this block."""
    block = {name: np.stack([np.asarray(item[name]) for item in items]) for name in items[0]}
    for column, outcome in zip(COUNT_COLUMNS, ("corrupt", "refused"), strict=True):
        block[column] = np.zeros(len(items), dtype=np.int64)
        block[column][0] = counts[outcome]
    return block


class PoolCollate(NumpyBatchCollateFn):
    """Pool rows as the default loader's batch dict (tensors, the `key` list, the counts)."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict:
        """One training batch of `batch`'s rows."""
        collated: dict = {}
        for name, values in batch.items():
            if name in COUNT_COLUMNS:
                collated[name] = int(values.sum())
            elif values.dtype.kind in "biuf":
                collated[name] = torch.from_numpy(values.copy())  # Ray's arrays are read-only
            else:
                collated[name] = [str(value) for value in values]
        return collated


def pool_batches(shard, batch_size: int, shuffle_buffer: int = 0) -> Iterator[dict]:
    """Endless batches of this worker's `ray.train.get_dataset_shard` share, pass after pass."""
    while True:
        produced = False
        for batch in shard.iter_torch_batches(
            batch_size=batch_size,
            collate_fn=PoolCollate(),
            drop_last=True,
            local_shuffle_buffer_size=shuffle_buffer or None,
            prefetch_batches=2,
        ):
            produced = True
            yield batch
        if not produced:
            raise DataError(
                "the decode pool gave this worker no full batch in a whole pass; check the "
                "shards with `cseg shards verify`, or lower batch_size"
            )
