"""Video decoding with decord from in-memory bytes, and frame-index samplers.

Decoding never touches the filesystem: shard members arrive as bytes and are
wrapped in `io.BytesIO`. Each reader decodes on one thread (`num_threads=1`),
so throughput scales with DataLoader workers, one per CPU core.

decord's native code writes to the process's stderr: its bundled ffmpeg logs
("[h264 @ 0x...] Invalid NAL unit size", "moov atom not found"), silenced here
for the whole process, and its own "[hh:mm:ss] video_reader.cc:83: ERROR
opening: ..." lines when a clip cannot be opened, which `open_video` catches
and folds into the error it raises. A clip that fails says why in that error
(and so in the manifest, `cseg shards verify` or the loader's skip count),
not in a stray line on the terminal.

Samplers take a `numpy.random.Generator` so that a worker's stream is
deterministic from its seed:

* `sample_pair_indices`: two frames of one clip whose gap is drawn uniformly
  from a range in **seconds**, converted with the clip's frame rate and
  clamped to the clip (CACL's positive pair);
* `sample_clip_indices`: T frames with a fixed stride, the last frame
  repeated when the clip is too short.
"""

from __future__ import annotations

import io
import os
import re
import sys
import tempfile
import threading
from dataclasses import dataclass

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF

_DECORD_PREFIX = re.compile(r"\[\d\d:\d\d:\d\d\] \S+:\d+: ")
_DECORD_OPEN_ERROR = re.compile(r"ERROR opening: .*, (?P<reason>[^,]+)$")
_native_stderr = threading.Lock()  # one file descriptor 2 per process
_sink: dict = {"pid": None, "file": None}  # one catch file per process (forked loaders too)


def _decord():
    """Decord, imported on first use, with its ffmpeg logging silenced.

    What never opens a clip (`cseg bench train`) runs without it. decord raises on
    every real failure; ffmpeg's log lines only repeat them, per clip.
    """
    import decord.logging

    decord.logging.set_level(decord.logging.QUIET)
    return decord


@dataclass(frozen=True)
class VideoInfo:
    """What a probe learns about a clip."""

    num_frames: int
    fps: float
    width: int
    height: int

    @property
    def duration_s(self) -> float:
        """Clip length in seconds (frames / fps)."""
        return self.num_frames / self.fps if self.fps > 0 else 0.0


def decord_reason(error: BaseException) -> str:
    """Turn a decord exception into a one-line reason without source paths."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return _DECORD_PREFIX.sub("", text)[:200]


def open_video(data: bytes, *, num_threads: int = 1) -> decord.VideoReader:  # noqa: F821 (imported on first use)
    """Open a clip held in memory.

    Args:
        data: The whole container file (mp4, avi, webm, mkv, ...).
        num_threads: decord decoding threads (1: scale with loader workers).

    Raises:
        ValueError: decord cannot open it (empty, truncated, broken metadata).
    """
    if not data:
        raise ValueError("empty video (0 bytes)")
    with _NativeStderr() as native:
        try:
            decord = _decord()
            reader = decord.VideoReader(
                io.BytesIO(data), ctx=decord.cpu(0), num_threads=num_threads
            )
        except Exception as error:  # decord raises DECORDError, RuntimeError, ...
            failure = error
        else:
            failure = None
    if failure is not None:
        reason = decord_reason(failure)
        detail = native.open_error()
        if detail and detail not in reason:
            reason = f"{reason} ({detail})"
        raise ValueError(f"cannot open video: {reason}") from failure
    if len(reader) == 0:
        raise ValueError("video has no frames")
    return reader


class _NativeStderr:
    """Catch what native code writes to file descriptor 2 meanwhile.

    On leaving, decord's own log lines are kept (`open_error`) and anything
    else (another thread's output, say) is written back to descriptor 2. Where
    the descriptor cannot be swapped, nothing is caught.
    """

    def __init__(self):
        self.decord_lines: list[str] = []
        self.saved = None

    def __enter__(self):
        _native_stderr.acquire()
        try:
            sys.stderr.flush()
            if _sink["pid"] != os.getpid():
                _sink.update(pid=os.getpid(), file=tempfile.TemporaryFile())
            self.sink = _sink["file"]
            self.sink.seek(0)
            self.sink.truncate()
            self.saved = os.dup(2)
            os.dup2(self.sink.fileno(), 2)
        except (OSError, ValueError, AttributeError):
            self._close()
        return self

    def __exit__(self, *exc):
        try:
            if self.saved is not None:
                os.dup2(self.saved, 2)
                self.sink.seek(0)
                text = self.sink.read().decode("utf-8", errors="replace")
                others = []
                for line in text.splitlines(keepends=True):
                    kept = self.decord_lines if _DECORD_PREFIX.match(line) else others
                    kept.append(line)
                if others:
                    os.write(2, "".join(others).encode())
        finally:
            self._close()
            _native_stderr.release()
        return False

    def _close(self):
        if self.saved is not None:
            os.close(self.saved)
        self.saved = None

    def open_error(self) -> str | None:
        """Ffmpeg's reason from decord's "ERROR opening: <name>, <reason>" line, if any."""
        for line in self.decord_lines:
            match = _DECORD_OPEN_ERROR.search(_DECORD_PREFIX.sub("", line.strip()))
            if match:
                return match.group("reason").strip()
        return None


def decode_frames(
    reader: decord.VideoReader,  # noqa: F821 (imported on first use)
    indices: list[int] | np.ndarray,
) -> np.ndarray:
    """Decode the given frame indices.

    Returns:
        uint8 array [T, H, W, 3] (RGB), in the order of `indices`.

    Raises:
        ValueError: a frame fails to decode (corrupt stream).
    """
    try:
        return reader.get_batch([int(i) for i in indices]).asnumpy()
    except Exception as error:
        raise ValueError(f"cannot decode frames: {decord_reason(error)}") from error


def probe_video(data: bytes) -> VideoInfo:
    """Open a clip and decode its first, middle and last frames.

    Reading the last frame decodes through the final group of pictures, which
    catches streams that break part-way (a header alone would not).

    Raises:
        ValueError: with the reason, when the clip cannot be used.
    """
    reader = open_video(data)
    num_frames = len(reader)
    frame = decode_frames(reader, [0])
    decode_frames(reader, sorted({num_frames // 2, num_frames - 1}))
    fps = float(reader.get_avg_fps())
    if not np.isfinite(fps) or fps <= 0:
        raise ValueError(f"video reports an unusable frame rate ({fps})")
    return VideoInfo(num_frames, fps, width=frame.shape[2], height=frame.shape[1])


def decode_every_frame(data: bytes, *, chunk: int = 32) -> int:
    """Decode a clip from first to last frame, in order; return the frame count.

    Raises:
        ValueError: the clip cannot be opened or a frame fails to decode.
    """
    reader = open_video(data)
    num_frames = len(reader)
    for start in range(0, num_frames, chunk):
        decode_frames(reader, list(range(start, min(num_frames, start + chunk))))
    return num_frames


def sample_pair_indices(
    num_frames: int, fps: float, gap_range_s: tuple[float, float], rng: np.random.Generator
) -> tuple[int, int]:
    """Draw two frame indices of one clip, `gap` seconds apart.

    The gap is uniform in `gap_range_s`, converted to frames with `fps` and
    rounded, then clamped to [0, num_frames - 1] (a clip shorter than the
    gap gives its first and last frames; a one-frame clip gives (0, 0)).
    The first frame is uniform among those that leave room for the gap.

    Returns:
        (first, second) with second - first = the clamped gap in frames.
    """
    low, high = gap_range_s
    gap_s = rng.uniform(low, high) if high > low else low
    gap = int(np.clip(round(gap_s * fps), 0, max(num_frames - 1, 0)))
    first = int(rng.integers(0, num_frames - gap))
    return first, first + gap


def sample_clip_indices(
    num_frames: int, clip_len: int, stride: int, rng: np.random.Generator
) -> np.ndarray:
    """Draw `clip_len` frame indices `stride` apart from a random start.

    When the clip is shorter than the span, the start is 0 and indices past
    the end repeat the last frame.

    Returns:
        int64 array [clip_len], non-decreasing.
    """
    span = (clip_len - 1) * stride + 1
    start = int(rng.integers(0, num_frames - span + 1)) if num_frames >= span else 0
    return np.minimum(start + stride * np.arange(clip_len), num_frames - 1).astype(np.int64)


def resize_and_crop(
    frames: torch.Tensor, size: int, rng: np.random.Generator | None = None
) -> torch.Tensor:
    """Resize a clip so its short side is `size`, then crop `size` x `size`.

    Done as one crop-then-resize of the square that maps onto the output
    (uint8 throughout, antialiased bilinear), which costs far less than
    resizing whole frames. The same crop applies to every frame. With `rng`
    the crop position is random, otherwise centred.

    Args:
        frames: uint8 [T, 3, H, W].
        size: Output side length.
        rng: Generator for the crop position, or None for a centre crop.

    Returns:
        uint8 [T, 3, size, size].
    """
    height, width = frames.shape[-2:]
    side = min(height, width)
    if rng is None:
        top, left = (height - side) // 2, (width - side) // 2
    else:
        top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
    return TF.resized_crop(frames, top, left, side, side, [size, size], antialias=True)
