"""`raycseg.bench.data.benchmark_decoding`: the report's shape (never its timings)."""

from __future__ import annotations

import json

import pytest

from raycseg.bench.data import benchmark_decoding
from raycseg.errors import DataError


def test_benchmark_compares_the_same_clips(tiny_synthetic):
    report = benchmark_decoding(tiny_synthetic / "video", seconds=0.3, batch_size=2, image_size=16)
    json.dumps(report)  # ready to write as JSON
    (round_,) = report["rounds"]
    pipeline, raw = round_["pipeline"], round_["raw_decord"]
    assert pipeline["clips_per_s"] > 0 and raw["clips_per_s"] > 0
    assert pipeline["clips"] == raw["clips"] > 0  # the same clips, decoded twice
    assert pipeline["frames_per_s"] == pytest.approx(2 * pipeline["clips_per_s"], rel=1e-3)
    assert report["ratio"] == round_["ratio"] > 0 and report["split"] == "train"


def test_benchmark_refuses_non_video_shards(tiny_synthetic):
    with pytest.raises(DataError, match="video"):
        benchmark_decoding(tiny_synthetic / "segmentation", seconds=0.1)
