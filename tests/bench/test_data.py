"""`raycseg.bench.data.benchmark_decoding`: the report's shape (never its timings)."""

from __future__ import annotations

import json
import shutil

import pytest

from raycseg.bench.data import benchmark_decoding
from raycseg.errors import DataError


def test_one_set_reports_pairs_per_cpu_second_and_the_same_clips_through_raw_decord(
    tiny_synthetic,
):
    root = tiny_synthetic / "video"
    report = benchmark_decoding([root], seconds=0.3, batch_size=2, image_size=16,
                                pairs_per_s=1000)  # fmt: skip
    json.dumps(report)  # ready to write as JSON
    (summary,) = report["paths"].values()
    assert summary["split"] == "train" and summary["transcode"] is None
    (round_,) = summary["vs_raw_decord"]["rounds"]
    pipeline, raw = round_["pipeline"], round_["raw_decord"]
    assert pipeline["clips"] == raw["clips"] > 0  # the same clips, decoded twice
    assert pipeline["frames_per_s"] == pytest.approx(2 * pipeline["clips_per_s"], rel=1e-3)
    assert summary["pairs_per_s"] == pipeline["clips_per_s"] == summary["pairs_per_s_per_worker"]
    assert summary["pairs_per_cpu_s"] == pipeline["clips_per_cpu_s"] > 0
    assert summary["decode_cores_per_gpu"] == round(1000 / summary["pairs_per_cpu_s"], 1)
    assert summary["vs_raw_decord"]["ratio"] == round_["ratio"] > 0 and "ratio" not in report


def test_two_sets_are_compared_in_pairs_per_cpu_second(tiny_synthetic, tmp_path):
    first = tiny_synthetic / "video"
    second = shutil.copytree(first, tmp_path / "copy")
    report = benchmark_decoding([first, second], seconds=0.2, batch_size=2, image_size=16)
    rates = [report["paths"][str(path.resolve())]["pairs_per_cpu_s"] for path in (first, second)]
    assert report["ratio"] == round(rates[0] / rates[1], 3) > 0


def test_benchmark_refuses_non_video_shards(tiny_synthetic):
    with pytest.raises(DataError, match="video"):
        benchmark_decoding([tiny_synthetic / "segmentation"], seconds=0.1)
