"""Video shard builds that transcode: the stored clips, their masks and the manifest."""

from __future__ import annotations

import json

import numpy as np
import pytest

from raycseg.data.synthetic_clips import encode_mp4
from raycseg.errors import DataError
from raycseg.media.images import decode_mask, encode_mask_png
from raycseg.media.transcode import TranscodeSettings
from raycseg.media.video import probe_video
from raycseg.shards.build import build_shards
from raycseg.shards.manifest import list_shard_urls, read_manifest
from raycseg.shards.tars import iter_shard_samples
from raycseg.shards.verify import verify_shards

FRAMES, HEIGHT, WIDTH = 6, 64, 128


def clip_with_masks(folder, masks, stem: str, seed: int) -> np.ndarray:
    """Write `<stem>.mp4` and its mask strip `<stem>.png`; return the masks [T, H, W]."""
    rng = np.random.default_rng(seed)
    frames = np.repeat(rng.integers(0, 255, (1, HEIGHT, WIDTH, 3), np.uint8), FRAMES, axis=0)
    labels = np.zeros((FRAMES, HEIGHT, WIDTH), np.uint8)
    for t in range(FRAMES):
        labels[t, 16:48, 20 + 8 * t : 60 + 8 * t] = 1 + seed % 2
    (folder / f"{stem}.mp4").write_bytes(encode_mp4(frames, fps=8))
    (masks / f"{stem}.png").write_bytes(encode_mask_png(labels.reshape(-1, WIDTH)))
    return labels


def test_transcoded_clips_are_mp4_with_masks_resized_and_the_settings_recorded(tmp_path):
    folder, masks = tmp_path / "clips", tmp_path / "masks"
    folder.mkdir(), masks.mkdir()
    labels = {f"c{i}": clip_with_masks(folder, masks, f"c{i}", i) for i in range(2)}
    settings = TranscodeSettings(short_side=32, gop=2)
    report = build_shards("video", folder, tmp_path / "out", masks_dir=masks,
                          mask_classes=["bg", "a", "b"], transcode=settings, num_procs=1)  # fmt: skip
    assert report.counts == {"all": 2} and not report.skipped
    assert read_manifest(tmp_path / "out")["transcode"] == settings.record()
    for url in list_shard_urls(tmp_path / "out", "all"):
        for sample in iter_shard_samples(url):
            assert set(sample) >= {"mp4", "masks.png", "json"}
            meta, info = json.loads(sample["json"]), probe_video(sample["mp4"])
            assert (info.width, info.height, info.num_frames) == (64, 32, FRAMES)
            assert (meta["width"], meta["height"]) == (64, 32)
            assert (meta["source_width"], meta["source_height"]) == (WIDTH, HEIGHT)
            strip = decode_mask(sample["masks.png"]).reshape(FRAMES, 32, 64)
            expected = labels[sample["__key__"]][:, ::2, ::2]  # nearest, halved
            assert (strip == expected).mean() > 0.95
    assert verify_shards(tmp_path / "out").ok


def test_untranscoded_builds_record_no_settings_and_keep_the_bytes(tmp_path):
    folder = tmp_path / "clips"
    folder.mkdir()
    clip_with_masks(folder, tmp_path, "c0", 0)
    build_shards("video", folder, tmp_path / "out", num_procs=1)
    assert read_manifest(tmp_path / "out")["transcode"] is None
    (sample,) = [s for u in list_shard_urls(tmp_path / "out", "all") for s in iter_shard_samples(u)]
    assert sample["mp4"] == (folder / "c0.mp4").read_bytes()


def test_transcoding_other_kinds_is_refused(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match="video only"):
        build_shards("image", tmp_path / "images", tmp_path / "out", transcode=TranscodeSettings())


def test_a_transcoded_build_is_byte_identical_whatever_the_process_count(tmp_path):
    folder = tmp_path / "clips"
    folder.mkdir()
    for i in range(3):
        clip_with_masks(folder, tmp_path, f"c{i}", i)
    settings = TranscodeSettings(short_side=32, gop=2)
    for procs in (1, 2):
        build_shards("video", folder, tmp_path / f"p{procs}", transcode=settings, num_procs=procs)
    one, two = (read_manifest(tmp_path / f"p{procs}")["splits"] for procs in (1, 2))
    assert one == two  # the same shards, sample order and sha256 of every shard
