"""decord decoding from bytes and the frame-index samplers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raycseg.media.video import (
    decode_every_frame,
    decode_frames,
    open_video,
    probe_video,
    resize_and_crop,
    sample_clip_indices,
    sample_pair_indices,
)

# (frames, fps, width, height) from ../shared/data/real/SOURCES.md
REAL_CLIPS = {
    "k400_arm_wrestling_demo.mp4": (280, 28.0, 340, 256),
    "ucf101_style_applyeyemakeup.avi": (164, 25.0, 320, 240),
    "flipping_a_pancake.mkv": (310, 30.0, 426, 240),
    "big_buck_bunny_432_433_vp8.webm": (24, 24.0, 1280, 720),
    "nasa_13013_two_video_streams.mp4": (390, 29.97, 480, 270),
}
BROKEN_CLIPS = [
    "empty.mp4",
    "found_decord_corrupted.mp4",
    "found_moviepy_no_duration_vp9.webm",
    "truncated_half_faststart.mp4",
    "truncated_half_moov_at_end.mp4",
]


@pytest.mark.real_data
@pytest.mark.parametrize("name", sorted(REAL_CLIPS))
def test_probe_reads_real_clips_from_bytes(real_data, name):
    info = probe_video((real_data / "videos" / name).read_bytes())
    frames, fps, width, height = REAL_CLIPS[name]
    assert (info.num_frames, info.width, info.height) == (frames, width, height)
    assert info.fps == pytest.approx(fps, abs=0.01)
    assert info.duration_s == info.num_frames / info.fps


@pytest.mark.real_data
@pytest.mark.parametrize("name", BROKEN_CLIPS)
def test_broken_clips_fail_the_probe_with_a_reason(real_data, name):
    with pytest.raises(ValueError) as error:
        probe_video((real_data / "broken" / name).read_bytes())
    assert str(error.value) and "/github/workspace" not in str(error.value)


@pytest.mark.real_data
def test_corrupt_stream_fails_part_way_through_full_decoding(real_data):
    data = (real_data / "broken" / "found_decord_corrupted.mp4").read_bytes()
    assert len(open_video(data)) == 50  # opens fine; frames 28+ are broken
    with pytest.raises(ValueError, match="cannot decode frames"):
        decode_every_frame(data)


@pytest.mark.real_data
def test_decoded_frames_follow_the_requested_indices(real_data):
    reader = open_video((real_data / "videos" / "k400_style_cleaning_pool_32f.mp4").read_bytes())
    both = decode_frames(reader, [3, 20])
    single = decode_frames(reader, [20])
    assert both.shape == (2, 256, 340, 3) and both.dtype == np.uint8
    np.testing.assert_array_equal(both[1], single[0])
    assert not np.array_equal(both[0], both[1])


def test_pair_gap_is_drawn_in_seconds():
    rng = np.random.default_rng(0)
    gaps = []
    for _ in range(500):
        first, second = sample_pair_indices(300, 30.0, (0.5, 1.0), rng)
        assert 0 <= first <= second < 300
        gaps.append(second - first)
    assert min(gaps) >= 15 and max(gaps) <= 30  # 0.5-1.0 s at 30 fps
    assert len(set(gaps)) > 10


def test_pair_gap_is_clamped_to_short_clips():
    rng = np.random.default_rng(1)
    assert sample_pair_indices(10, 30.0, (2.0, 3.0), rng) == (0, 9)
    assert sample_pair_indices(1, 30.0, (0.25, 2.0), rng) == (0, 0)


def test_clip_indices_have_the_stride_and_repeat_the_last_frame_when_short():
    rng = np.random.default_rng(2)
    for _ in range(50):
        indices = sample_clip_indices(100, 8, 3, rng)
        assert indices.shape == (8,) and np.all(np.diff(indices) == 3) and indices[-1] < 100
    assert sample_clip_indices(5, 4, 2, rng).tolist() == [0, 2, 4, 4]


def test_resize_and_crop_keeps_the_short_side_and_centres():
    frames = torch.zeros(2, 3, 40, 80, dtype=torch.uint8)
    frames[..., 10:70] = 255  # white except 10 px at each side
    centred = resize_and_crop(frames, 20)
    assert centred.shape == (2, 3, 20, 20) and centred.dtype == torch.uint8
    assert centred.min() == 255
    random_crops = [resize_and_crop(frames, 20, np.random.default_rng(s)) for s in range(20)]
    assert any(crop.min() == 0 for crop in random_crops)
