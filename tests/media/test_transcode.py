"""Transcoding clips for training: frames kept, pictures close, short GOPs, same bytes."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest
from PIL import Image

from raycseg.data.synthetic_clips import encode_mp4
from raycseg.media.transcode import TranscodeSettings, output_size, transcode_clip
from raycseg.media.video import decode_frames, open_video, probe_video


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two uint8 images, in dB."""
    error = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if error == 0 else 10 * np.log10(255.0**2 / error)


def downscaled(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The original frame [H, W, 3] resized to (width, height) with Pillow's bicubic."""
    return np.asarray(Image.fromarray(frame).resize(size, Image.BICUBIC))


def packets(clip: bytes) -> list:
    """The video packets of a clip in decode order."""
    with av.open(io.BytesIO(clip)) as container:
        return [p for p in container.demux(container.streams.video[0]) if p.size]


def smooth_clip(frames: int = 30, height: int = 64, width: int = 128) -> np.ndarray:
    """Frames of smooth gradients panning right: easy for a lossy codec to keep."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    clip = [
        np.stack([40 + 150 * x / width + t, 40 + 150 * y / height,
                  120 + 60 * np.sin(2 * np.pi * (x + 2 * t) / width)], axis=-1)
        for t in range(frames)
    ]  # fmt: skip
    return np.asarray(clip).round().astype(np.uint8)


def test_output_size_scales_the_short_side_down_never_up_and_keeps_both_sides_even():
    assert output_size(1280, 720, 256) == (456, 256)
    assert output_size(641, 361, 256) == (454, 256)
    assert output_size(320, 240, 256) == (320, 240)
    assert output_size(240, 320, 128) == (128, 170)


def test_a_clip_keeps_its_frames_and_rate_with_short_gops_and_no_b_frames():
    frames = smooth_clip()
    original = encode_mp4(frames, fps=10)  # x264's default GOP: one keyframe
    clip = transcode_clip(original, TranscodeSettings(short_side=32, gop=4))
    info = probe_video(clip)
    assert (info.num_frames, info.width, info.height) == (30, 64, 32)
    assert info.fps == pytest.approx(10, rel=0.05)
    stored = packets(clip)
    keyframes = [i for i, packet in enumerate(stored) if packet.is_keyframe]
    assert keyframes[0] == 0 and max(np.diff([*keyframes, len(stored)])) <= 4
    assert len(keyframes) < len(stored)  # not all-intra: GOPs of up to 4
    presentation = [packet.pts for packet in stored]
    assert presentation == sorted(presentation)  # no B-frames: decode order is display order
    reader = open_video(clip)
    for index in (0, 15, 29):
        (decoded,) = decode_frames(reader, [index])
        assert psnr(decoded, downscaled(frames[index], (64, 32))) > 32


def test_the_same_clip_and_settings_give_the_same_bytes():
    original = encode_mp4(smooth_clip(frames=12), fps=8)
    settings = TranscodeSettings(short_side=32, gop=3, crf=30)
    assert transcode_clip(original, settings) == transcode_clip(original, settings)
    assert settings.record() == {"codec": "h264", "short_side": 32, "gop": 3, "crf": 30,
                                 "bframes": 0, "fast_decode": True}  # fmt: skip


def test_bad_settings_and_bytes_that_are_no_video_raise_value_errors():
    with pytest.raises(ValueError, match="GOP"):
        TranscodeSettings(gop=0)
    with pytest.raises(ValueError, match="short side"):
        TranscodeSettings(short_side=8)
    with pytest.raises(ValueError, match="cannot transcode"):
        transcode_clip(b"\x00\x00\x00\x18ftypmp42" + b"\x01" * 300, TranscodeSettings())


@pytest.mark.real_data
@pytest.mark.integration
def test_real_clips_keep_their_frame_count_and_look_the_same(real_data):
    for path in sorted((real_data / "videos").iterdir()):
        original = path.read_bytes()
        source = probe_video(original)
        clip = transcode_clip(original, TranscodeSettings())
        stored = probe_video(clip)
        assert abs(stored.num_frames - source.num_frames) <= 1, path.name
        assert (stored.width, stored.height) == output_size(source.width, source.height, 256)
        middle = source.num_frames // 2
        (before,) = decode_frames(open_video(original), [middle])
        (after,) = decode_frames(open_video(clip), [middle])
        assert psnr(after, downscaled(before, (stored.width, stored.height))) > 30, path.name


def test_fast_decode_turns_off_cabac_and_deblocking_and_can_be_turned_off():
    original = encode_mp4(smooth_clip(frames=12), fps=8)
    fast = transcode_clip(original, TranscodeSettings(short_side=32, gop=3))
    plain = transcode_clip(original, TranscodeSettings(short_side=32, gop=3, fast_decode=False))
    # x264 writes its options into the stream (an SEI message): the tune is visible there
    assert b"cabac=0" in fast and b"deblock=0" in fast
    assert b"cabac=1" in plain and b"deblock=1" in plain
