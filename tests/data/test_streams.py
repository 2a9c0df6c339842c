"""Splitting rules (raycseg.data.streams): by rank, then by loader worker; epochs; resume."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from raycseg.data.streams import (
    ShardStream,
    StreamSpec,
    make_parts,
    skipped_raw_samples,
    worker_quota,
)
from raycseg.errors import DataError

SHARD_SIZES = (5, 3, 1)  # uneven on purpose
TOTAL = sum(SHARD_SIZES)


class KeyDecoder:
    """Returns the key and one draw of the sample's generator; payload b"bad" is corrupt."""

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        if sample["txt"] == b"bad":
            raise ValueError("corrupt on purpose")
        return {"key": sample["__key__"], "draw": torch.tensor(rng.random())}


@pytest.fixture(scope="module")
def urls(tmp_path_factory, raw_shard_set) -> list[str]:
    root = tmp_path_factory.mktemp("streams")
    shards = [
        [(f"s{shard}_{i}", {"txt": f"{shard}-{i}".encode()}) for i in range(size)]
        for shard, size in enumerate(SHARD_SIZES)
    ]
    return raw_shard_set(root, "text", shards)


def loader(urls, *, train, rank=0, world_size=1, workers=0, batch_size=2, start_batch=0, seed=7,
           samples_per_rank=None) -> DataLoader:  # fmt: skip
    spec = StreamSpec(tuple(urls), batch_size, train, seed, rank, world_size, samples_per_rank,
                      start_batch, shuffle_buffer=4)  # fmt: skip
    return DataLoader(ShardStream(spec, KeyDecoder()), batch_size=None, num_workers=workers)


def batches(dataloader, count=None) -> list[dict]:
    return list(itertools.islice(iter(dataloader), count))


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("workers", [0, 1, 2])
def test_evaluation_sees_every_sample_exactly_once(urls, world_size, workers):
    keys = []
    for rank in range(world_size):
        for batch in batches(
            loader(urls, train=False, rank=rank, world_size=world_size, workers=workers)
        ):
            keys += batch["key"]
    assert Counter(keys) == Counter(
        f"s{s}_{i}" for s, n in enumerate(SHARD_SIZES) for i in range(n)
    )


def test_one_shard_is_split_into_parts_for_every_slot(tmp_path, raw_shard_set):
    urls = raw_shard_set(tmp_path, "text", [[(f"k{i}", {"txt": b"x"}) for i in range(7)]])
    keys = []
    for rank in range(3):
        rank_keys = [k for b in batches(loader(urls, train=False, rank=rank, world_size=3, workers=2))
                     for k in b["key"]]  # fmt: skip
        assert rank_keys, "a rank got nothing although the shard has more samples than slots"
        keys += rank_keys
    assert sorted(keys) == sorted(f"k{i}" for i in range(7))
    assert len(make_parts(tuple(urls), 6)) == 6


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("workers", [0, 1, 2])
def test_training_gives_every_rank_samples_per_rank_each_epoch(urls, world_size, workers):
    samples_per_rank = 4
    slots = max(workers, 1)
    for rank in range(world_size):
        stream = ShardStream(
            StreamSpec(tuple(urls), 2, True, 7, rank, world_size, samples_per_rank), KeyDecoder()
        )
        per_epoch = Counter()
        for worker in range(slots):
            quota = worker_quota(samples_per_rank, worker, slots)
            raw = itertools.islice(stream.iter_raw(worker, slots), 3 * quota)
            epochs = [epoch for _, epoch, _ in raw]
            assert epochs == [e for e in range(3) for _ in range(quota)]
            per_epoch.update(epochs)
        assert per_epoch == {0: samples_per_rank, 1: samples_per_rank, 2: samples_per_rank}


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("workers", [0, 2])
def test_training_batches_are_full_and_never_run_dry(urls, world_size, workers):
    for rank in range(world_size):
        got = batches(loader(urls, train=True, rank=rank, world_size=world_size, workers=workers,
                             samples_per_rank=TOTAL // world_size), 7)  # fmt: skip
        assert len(got) == 7 and all(len(b["key"]) == 2 for b in got)


def test_training_without_surplus_has_no_repeat_within_an_epoch(urls):
    stream = ShardStream(StreamSpec(tuple(urls), 3, True, 1, 0, 1, TOTAL), KeyDecoder())
    first_epochs = [
        s["__key__"] for s, epoch, _ in itertools.islice(stream.iter_raw(0, 1), 2 * TOTAL)
    ]
    assert sorted(first_epochs[:TOTAL]) == sorted(first_epochs[TOTAL:])
    assert len(set(first_epochs[:TOTAL])) == TOTAL
    assert first_epochs[:TOTAL] != first_epochs[TOTAL:], "every epoch should have its own order"


def test_streams_are_deterministic_and_depend_on_rank(urls):
    def draws(rank):
        got = batches(
            loader(urls, train=True, rank=rank, world_size=2, workers=2, samples_per_rank=4), 4
        )
        return [(b["key"], b["draw"].tolist()) for b in got]

    assert draws(0) == draws(0)
    assert draws(0) != draws(1)


@pytest.mark.parametrize("workers", [0, 1, 2])
@pytest.mark.parametrize("train", [True, False])
def test_start_batch_resumes_the_uninterrupted_stream(urls, workers, train):
    kwargs = {"train": train, "rank": 1, "world_size": 2, "workers": workers, "samples_per_rank": 3}
    if not train:
        kwargs.update(rank=0, world_size=1)
    full = batches(loader(urls, **kwargs), 8)
    for start in (1, 3):
        resumed = batches(loader(urls, start_batch=start, **kwargs), 8 - start)
        assert [(b["key"], b["draw"].tolist()) for b in resumed] == [
            (b["key"], b["draw"].tolist()) for b in full[start : start + len(resumed)]
        ]
        assert len(resumed) == len(full) - start


def test_skipped_raw_samples_follows_round_robin_batches():
    # batches 0..4 with 2 workers: worker 0 made 0, 2, 4 and worker 1 made 1, 3
    assert skipped_raw_samples(5, batch_size=3, worker=0, workers=2) == 9
    assert skipped_raw_samples(5, batch_size=3, worker=1, workers=2) == 6
    assert sum(worker_quota(10, w, 3) for w in range(3)) == 10


def test_corrupt_samples_are_skipped_and_counted(tmp_path, raw_shard_set):
    samples = [(f"k{i}", {"txt": b"bad" if i in (1, 4) else b"ok"}) for i in range(6)]
    urls = raw_shard_set(tmp_path, "text", [samples])
    got = batches(loader(urls, train=False, batch_size=2, workers=1))
    assert sorted(k for b in got for k in b["key"]) == ["k0", "k2", "k3", "k5"]
    assert sum(b["skipped_corrupt"] for b in got) == 2


def test_unreadable_shard_is_counted_not_fatal(tmp_path, urls):
    broken = tmp_path / "broken.tar"
    broken.write_bytes(b"\x00" * 100 + b"not a tar file" * 50)
    got = batches(loader([str(broken), *urls], train=False, batch_size=4))
    assert sum(len(b["key"]) for b in got) == TOTAL
    assert sum(b["skipped_corrupt"] for b in got) == 1


def test_all_corrupt_training_stream_stops_with_a_clear_error(tmp_path, raw_shard_set):
    urls = raw_shard_set(tmp_path, "text", [[("k0", {"txt": b"bad"})]])
    with pytest.raises(DataError, match="shards verify"):
        batches(loader(urls, train=True, samples_per_rank=1), 1)


def test_bad_arguments_are_data_errors(urls):
    with pytest.raises(DataError, match="rank"):
        loader(urls, train=False, rank=2, world_size=2)
    with pytest.raises(DataError, match="samples_per_rank"):
        loader(urls, train=True, samples_per_rank=0)
    with pytest.raises(DataError, match="loader workers"):
        batches(loader(urls, train=True, samples_per_rank=1, workers=2), 1)
