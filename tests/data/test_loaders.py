"""The stage loaders end to end on shards: shapes, dtypes, splits, corrupt samples."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from raycseg.config import StageData
from raycseg.data.loaders import (
    StreamShare,
    build_pair_loader,
    build_saliency_view_loader,
    build_segmentation_eval_loader,
    build_segmentation_loader,
)
from raycseg.shards.manifest import count_samples, list_shard_urls
from raycseg.shards.tars import iter_shard_samples

FRAMES, SIZE = 6, 32  # the tiny synthetic dataset


def views(**settings) -> StageData:
    """A stage's data section with these augmentation settings."""
    return StageData(train="unused", **settings)


def first(loader, count=1):
    return list(itertools.islice(iter(loader), count))


def test_video_pairs_are_gap_seconds_apart(tiny_synthetic):
    urls = list_shard_urls(tiny_synthetic / "video", "train")
    data = views(batch_size=4, image_size=16, frame_gap_s=(0.25, 0.5))
    loader = build_pair_loader(urls, data, StreamShare(num_workers=1, seed=3), samples_per_rank=6)
    for batch in first(loader, 3):
        assert batch["view_a"].shape == batch["view_b"].shape == (4, 3, 16, 16)
        assert batch["view_a"].dtype == torch.uint8 and batch["skipped_corrupt"] == 0
        gaps = batch["frame_indices"][:, 1] - batch["frame_indices"][:, 0]
        assert set(gaps.tolist()) <= {2, 3, 4}  # 0.25-0.5 s at 8 fps
        assert batch["frame_indices"].max() < FRAMES


def test_image_pairs_from_segmentation_shards(tiny_synthetic):
    urls = list_shard_urls(tiny_synthetic / "segmentation", "train")
    (batch,) = first(
        build_pair_loader(
            urls, views(batch_size=5, image_size=20), mode="image", samples_per_rank=12
        )
    )
    assert batch["view_a"].shape == (5, 3, 20, 20) and "frame_indices" not in batch
    assert not torch.equal(batch["view_a"], batch["view_b"])


def test_saliency_views_carry_masks_within_the_area_range(tiny_synthetic):
    urls = list_shard_urls(tiny_synthetic / "saliency", "train")
    data = views(batch_size=4, image_size=16, min_mask_area=0.05, max_mask_area=0.95)
    loader = build_saliency_view_loader(urls, data, StreamShare(num_workers=2), samples_per_rank=12)
    for batch in first(loader, 2):
        assert batch["query"].shape == batch["key"].shape == (4, 3, 16, 16)
        assert batch["query_mask"].dtype == torch.bool and batch["query_mask"].shape == (4, 16, 16)
        for masks in (batch["query_mask"], batch["key_mask"]):
            area = masks.float().mean(dim=(1, 2))
            assert ((area > 0.05) & (area < 0.95)).all()


def test_segmentation_training_pads_with_ignore(tiny_synthetic):
    urls = list_shard_urls(tiny_synthetic / "segmentation", "train")
    loader = build_segmentation_loader(urls, batch_size=3, crop_size=48, scale_range=(0.5, 0.75))
    (batch,) = first(loader)
    assert batch["image"].shape == (3, 3, 48, 48) and batch["image"].dtype == torch.uint8
    assert batch["label"].dtype == torch.long and (batch["label"] == 255).any()
    assert set(batch["label"].unique().tolist()) <= {0, 1, 2, 3, 4, 255}


@pytest.mark.parametrize("workers", [0, 2])
def test_segmentation_evaluation_covers_val_once_across_ranks(tiny_synthetic, workers):
    root = tiny_synthetic / "segmentation"
    urls = list_shard_urls(root, "val")
    keys = []
    for rank in range(2):
        loader = build_segmentation_eval_loader(urls, input_policy="resize", input_size=24,
                                                batch_size=2, rank=rank, world_size=2,
                                                num_workers=workers)  # fmt: skip
        for batch in loader:
            assert batch["image"].shape[1:] == (3, 24, 24)
            assert batch["label"].shape[1:] == (32, 32)  # the masks keep their own size
            assert batch["label_size"].tolist() == [[32, 32]] * len(batch["key"])
            keys += batch["key"]
    assert sorted(keys) == sorted(s["__key__"] for u in urls for s in iter_shard_samples(u))
    assert len(keys) == count_samples(root, "val") == 3


def test_default_samples_per_rank_comes_from_the_shards(tiny_synthetic):
    urls = list_shard_urls(tiny_synthetic / "segmentation", "train")
    loader = build_segmentation_loader(urls, StreamShare(world_size=3), batch_size=2, crop_size=16)
    assert loader.dataset.spec.samples_per_rank == 12 // 3


def test_corrupt_clips_are_skipped_and_counted(tiny_synthetic, tmp_path, raw_shard_set):
    good = [(s["__key__"], {"mp4": s["mp4"]}) for u in list_shard_urls(tiny_synthetic / "video", "train")
            for s in iter_shard_samples(u)][:2]  # fmt: skip
    broken = [
        ("empty", {"mp4": b""}),
        ("noise", {"mp4": b"\x00\x00\x00\x18ftypmp42" + b"\x01" * 500}),
    ]
    urls = raw_shard_set(tmp_path, "video", [good + broken])
    loader = build_pair_loader(
        urls, views(batch_size=2, image_size=16), StreamShare(shuffle_buffer=0), samples_per_rank=4
    )
    batches = first(loader, 3)
    assert all(set(b["key"]) <= {k for k, _ in good} for b in batches)
    assert sum(b["skipped_corrupt"] for b in batches) >= 2  # one pass over the shard skips both


@pytest.mark.real_data
def test_real_clips_stream_through_two_workers(real_video_shards):
    urls = list_shard_urls(real_video_shards, "all")
    lengths = {
        s["__key__"]: json.loads(s["json"])["num_frames"]
        for u in urls
        for s in iter_shard_samples(u)
    }
    loader = build_pair_loader(
        urls, views(batch_size=4, image_size=32), StreamShare(num_workers=2), samples_per_rank=8
    )
    seen = set()
    for batch in first(loader, 2):
        assert batch["view_a"].shape == (4, 3, 32, 32) and batch["skipped_corrupt"] == 0
        for key, (a, b) in zip(batch["key"], batch["frame_indices"].tolist(), strict=True):
            assert 0 <= a <= b < lengths[key]
            seen.add(key)
    assert len(seen) >= 5


@pytest.mark.parametrize("stream", ["crop_only", "no_photometric"])
def test_unjittered_training_yields_untouched_windows_of_the_originals(tiny_synthetic, stream):
    """ReCo's streams: the unlabelled one only cropped; the labelled one jittered on device."""
    from raycseg.media.images import decode_image, decode_mask

    urls = list_shard_urls(tiny_synthetic / "segmentation", "train")
    originals = {
        s["__key__"]: (torch.from_numpy(decode_image(s["jpg"])).permute(2, 0, 1),
                       torch.from_numpy(decode_mask(s["png"])).long())
        for u in urls for s in iter_shard_samples(u)
    }  # fmt: skip
    crop, flipped = 20, 0
    options = {"crop_only": True} if stream == "crop_only" else {"photometric": False}
    loader = build_segmentation_loader(
        urls, batch_size=4, crop_size=crop, scale_range=(1, 1), **options
    )
    for batch in first(loader, 3):
        for image, label, key in zip(batch["image"], batch["label"], batch["key"], strict=True):
            full_image, full_label = originals[key]
            window = _window_of(full_image, image, crop)
            if window is None and stream == "no_photometric":
                image, label, flipped = image.flip(-1), label.flip(-1), flipped + 1
                window = _window_of(full_image, image, crop)
            assert window is not None, f"{key}: not an untouched crop of the original"
            top, left = window
            assert torch.equal(full_label[top : top + crop, left : left + crop], label)
    assert flipped > 0 if stream == "no_photometric" else flipped == 0


def _window_of(full: torch.Tensor, part: torch.Tensor, crop: int) -> tuple[int, int] | None:
    """Where `part` stands in `full` as a crop x crop window, pixel for pixel (or None)."""
    height, width = full.shape[-2:]
    for top in range(height - crop + 1):
        for left in range(width - crop + 1):
            if torch.equal(full[:, top : top + crop, left : left + crop], part):
                return top, left
    return None


def test_image_shards_stream_as_unlabelled_images_with_no_label(tmp_path):
    """ReCo's unlabelled stream may read image shards: every pixel is 255, nothing is corrupt."""
    from raycseg.media.images import encode_jpeg
    from raycseg.shards.build import build_shards

    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(3):
        (folder / f"{index}.jpg").write_bytes(
            encode_jpeg(np.full((20, 24, 3), 50 * index, np.uint8))
        )
    build_shards("image", folder, tmp_path / "shards", num_procs=1)
    urls = list_shard_urls(tmp_path / "shards", "all")
    loader = build_segmentation_loader(urls, batch_size=3, crop_size=16, crop_only=True)
    (batch,) = first(loader)
    assert batch["image"].shape == (3, 3, 16, 16) and batch["skipped_corrupt"] == 0
    assert bool((batch["label"] == 255).all())


def resident_mib() -> float:
    """This process's resident memory, in MiB (Linux /proc)."""
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    pytest.skip("no /proc/self/status on this system")


@pytest.mark.real_data
@pytest.mark.integration
def test_a_long_stream_of_transcoded_real_clips_stops_growing_in_memory(real_data, tmp_path):
    """decord is known to leak; thousands of pairs after warm-up stay within 50 MiB."""
    from raycseg.media.transcode import TranscodeSettings
    from raycseg.shards.build import build_shards

    build_shards("video", real_data / "videos", tmp_path / "clips", num_procs=2,
                 transcode=TranscodeSettings(short_side=128))  # fmt: skip
    urls = list_shard_urls(tmp_path / "clips", "all")
    loader = build_pair_loader(urls, views(batch_size=8, image_size=32), samples_per_rank=8)
    batches = iter(loader)
    for _ in range(40):  # warm-up: 320 pairs
        next(batches)
    start = resident_mib()
    pairs = sum(len(next(batches)["key"]) for _ in range(250))  # 2000 pairs
    assert pairs == 2000 and resident_mib() - start < 50
