"""The Ray Data decode pool's pieces without Ray: its items, blocks and batches.

`decode_parts` is the function the pool's tasks run and `PoolCollate` what each
Train worker applies to its share; together they must give the default
loader's batch dict. The pool on local Ray is tested in
tests/train/test_pretrain_ray.py.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from raycseg.config import StageData
from raycseg.data.decode_pool import ROWS_PER_BLOCK, PoolCollate, decode_parts
from raycseg.data.loaders import (
    build_pair_loader,
    build_saliency_view_loader,
    pair_decoder,
    saliency_view_decoder,
)
from raycseg.data.streams import make_parts
from raycseg.shards.manifest import list_shard_urls
from raycseg.shards.tars import iter_shard_samples


def part_rows(urls: list[str], slots: int = 1) -> dict[str, np.ndarray]:
    """The pool's input rows: one per shard part, as map_batches hands them over."""
    parts = make_parts(tuple(urls), slots)
    return {
        "url": np.array([url for url, _, _ in parts]),
        "index": np.array([index for _, index, _ in parts]),
        "count": np.array([count for _, _, count in parts]),
    }


def pool_batch(blocks: list[dict[str, np.ndarray]], size: int) -> dict:
    """The first `size` rows of the pool's blocks, collated as a Train worker does."""
    columns = {name: np.concatenate([b[name] for b in blocks])[:size] for name in blocks[0]}
    for array in columns.values():
        array.flags.writeable = False  # Ray hands out read-only arrays
    return PoolCollate()(columns)


def assert_same_layout(pooled: dict, default: dict) -> None:
    assert pooled.keys() == default.keys()
    for name, value in default.items():
        if torch.is_tensor(value):
            assert pooled[name].dtype == value.dtype, name
            assert pooled[name].shape == value.shape, name
        else:
            assert type(pooled[name]) is type(value), name


@pytest.mark.parametrize("mode", ["video", "image"])
def test_pool_pairs_have_the_default_loaders_batch_layout(tiny_synthetic, mode):
    kind = "video" if mode == "video" else "segmentation"
    urls = list_shard_urls(tiny_synthetic / kind, "train")
    data = StageData(train="unused", batch_size=4, image_size=16, frame_gap_s=(0.25, 0.5))
    default = next(iter(build_pair_loader(urls, data, mode=mode, samples_per_rank=6)))
    blocks = list(decode_parts(part_rows(urls), pair_decoder(data, mode)))
    pooled = pool_batch(blocks, 4)
    assert_same_layout(pooled, default)
    assert pooled["skipped_corrupt"] == pooled["skipped_refused"] == 0
    assert all(isinstance(key, str) for key in pooled["key"])
    if mode == "video":
        gaps = pooled["frame_indices"][:, 1] - pooled["frame_indices"][:, 0]
        assert set(gaps.tolist()) <= {2, 3, 4}  # 0.25-0.5 s at 8 fps
    pooled["view_a"][0] += 1  # a writable copy, not Ray's read-only buffer


def test_pool_saliency_views_have_the_default_loaders_batch_layout(tiny_synthetic):
    urls = list_shard_urls(tiny_synthetic / "saliency", "train")
    data = StageData(train="unused", batch_size=3, image_size=16, min_mask_area=0.05)
    default = next(iter(build_saliency_view_loader(urls, data, samples_per_rank=6)))
    blocks = list(decode_parts(part_rows(urls), saliency_view_decoder(data)))
    assert_same_layout(pool_batch(blocks, 3), default)


def test_every_sample_of_every_part_is_decoded_once_in_small_blocks(tiny_synthetic):
    urls = list_shard_urls(tiny_synthetic / "video", "train")
    data = StageData(train="unused", batch_size=2, image_size=16)
    expected = sorted(s["__key__"] for url in urls for s in iter_shard_samples(url))
    blocks = list(decode_parts(part_rows(urls, slots=4), pair_decoder(data)))
    keys = sorted(itertools.chain.from_iterable(block["key"] for block in blocks))
    assert keys == expected
    assert all(len(block["key"]) <= ROWS_PER_BLOCK for block in blocks)


def test_corrupt_clips_are_skipped_and_counted_in_the_block_after_them(
    tiny_synthetic, tmp_path, raw_shard_set
):
    good = [(s["__key__"], {"mp4": s["mp4"]}) for u in list_shard_urls(tiny_synthetic / "video", "train")
            for s in iter_shard_samples(u)][:2]  # fmt: skip
    broken = [
        ("empty", {"mp4": b""}),
        ("noise", {"mp4": b"\x00\x00\x00\x18ftypmp42" + b"\x01" * 99}),
    ]
    urls = raw_shard_set(tmp_path, "video", [broken + good])
    data = StageData(train="unused", batch_size=2, image_size=16)
    (block,) = decode_parts(part_rows(urls), pair_decoder(data))
    assert sorted(block["key"]) == sorted(key for key, _ in good)
    assert block["skipped_corrupt"].tolist() == [2, 0]
    assert pool_batch([block], 2)["skipped_corrupt"] == 2
