"""Builds prepared by Ray tasks and builds written to a bucket (raycseg.shards.parallel, tars).

The Ray test starts one local Ray with 2 CPUs and builds generated clips once in
this process and once as Ray tasks: the shards must be the same byte for byte.
The bucket tests run against the moto server of tests/conftest.py, without Ray.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from raycseg.data.synthetic_clips import encode_mp4
from raycseg.errors import DataError
from raycseg.media.images import encode_mask_png
from raycseg.media.transcode import TranscodeSettings
from raycseg.shards.build import build_shards
from raycseg.shards.manifest import list_shard_urls, read_manifest
from raycseg.shards.parallel import RayTasks
from raycseg.shards.samples import PrepareOptions
from raycseg.shards.sources import SourceItem
from raycseg.shards.tars import iter_shard_samples

SETTINGS = TranscodeSettings(short_side=32, gop=2)


def write_clips(tmp_path: Path, count: int) -> tuple[Path, Path]:
    """`count` 6-frame 64x128 clips of moving noise, with per-frame mask strips."""
    clips, masks = tmp_path / "clips", tmp_path / "masks"
    clips.mkdir(), masks.mkdir()
    for i in range(count):
        rng = np.random.default_rng(i)
        frames = np.stack(
            [np.roll(rng.integers(0, 255, (64, 128, 3), np.uint8), t, 1) for t in range(6)]
        )
        labels = np.zeros((6, 64, 128), np.uint8)
        labels[:, 10:40, 20 + i : 60 + i] = 1
        (clips / f"c{i}.mp4").write_bytes(encode_mp4(frames, fps=8))
        (masks / f"c{i}.png").write_bytes(encode_mask_png(labels.reshape(-1, 128)))
    return clips, masks


def tar_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.glob("*/*.tar"))}


@pytest.mark.integration
def test_a_build_on_local_ray_is_byte_identical_to_one_process(tmp_path):
    import ray

    clips, masks = write_clips(tmp_path, 4)
    common = dict(masks_dir=masks, mask_classes=["bg", "fg"], transcode=SETTINGS, max_count=3)
    build_shards("video", clips, tmp_path / "one", num_procs=1, **common)
    joined, progress = [], []
    environment = dict(os.environ)  # ray.init sets RAY_AUTH_MODE=token in this process
    ray.init(address="local", num_cpus=2, include_dashboard=False,
             logging_config=ray.LoggingConfig(log_level="ERROR"))  # fmt: skip
    try:
        tasks = RayTasks(lambda: joined.append(True), max_in_flight=2)  # refills the window
        build_shards("video", clips, tmp_path / "ray", preparer=tasks,
                     on_progress=lambda done, total: progress.append((done, total)), **common)  # fmt: skip
        gone = SourceItem("gone", "all", tmp_path / "gone.mp4")
        options = PrepareOptions("video", clips, transcode=SETTINGS)
        with pytest.raises(DataError, match="gone.mp4 is not readable on Ray node"):
            list(tasks([gone], options, None))
    finally:
        ray.shutdown()
        # Left set, it would reach the clusters later tests start (the fake cluster's head
        # and its drivers), whose actors then never run.
        os.environ.clear()
        os.environ.update(environment)
    assert not joined and progress == [(i, 4) for i in range(1, 5)]  # Ray was already up
    one, on_ray = tar_bytes(tmp_path / "one"), tar_bytes(tmp_path / "ray")
    assert list(one) == ["all/video-000000.tar", "all/video-000001.tar"]
    assert on_ray == one
    assert read_manifest(tmp_path / "ray") == read_manifest(tmp_path / "one")


def test_a_build_to_a_bucket_equals_the_local_build(tmp_path, s3_bucket):
    clips, _ = write_clips(tmp_path, 3)
    url = f"{s3_bucket.url}/shards/clips"
    build_shards("video", clips, tmp_path / "local", transcode=SETTINGS, max_count=2, num_procs=1)
    report = build_shards("video", clips, url, transcode=SETTINGS, max_count=2, num_procs=1)
    assert report.out == url and report.counts == {"all": 3} and report.shards == {"all": 2}
    local = tar_bytes(tmp_path / "local")
    assert sorted(s3_bucket.keys()) == sorted(
        f"shards/clips/{n}" for n in [*local, "manifest.json"]
    )
    assert {n: s3_bucket.read(f"shards/clips/{n}") for n in local} == local
    manifest = read_manifest(url)
    assert manifest == read_manifest(tmp_path / "local")
    samples = [s for u in list_shard_urls(url, "all") for s in iter_shard_samples(u)]
    assert sorted(s["__key__"] for s in samples) == ["c0", "c1", "c2"]
    assert json.loads(samples[0]["json"])["height"] == 32

    with pytest.raises(DataError, match="--overwrite"):
        build_shards("video", clips, url, num_procs=1)
    build_shards("video", clips, url, max_count=1, overwrite=True, num_procs=1)  # 3 shards now
    assert len([k for k in s3_bucket.keys() if k.endswith(".tar")]) == 3
    assert read_manifest(url)["transcode"] is None


@pytest.mark.parametrize("url", ["ftp://host/shards", "s3://no-such-bucket-cseg/shards"])
def test_an_unusable_output_url_is_one_line_naming_the_fix(tmp_path, s3_bucket, url):
    clips, _ = write_clips(tmp_path, 1)
    with pytest.raises(
        DataError, match=r"cannot write shards to .*; use s3://BUCKET/PATH"
    ) as error:
        build_shards("video", clips, url, num_procs=1)
    assert "\n" not in str(error.value)
