"""Procedural clips: class masks and frames drawn with numpy, encoded as mp4 with PyAV.

The design follows the short study behind the quickstart recipe
(docs/methods/cacl.md §6); it is what gives the quickstart's numbers room to move:

* C = 5 classes: 0 background, 1 disk + stripes, 2 square + checkerboard,
  3 triangle + dots, 4 plus sign + concentric rings. Classes differ by shape
  and texture; texture period, orientation and size are random per instance,
  and so is the two-tone colouring (random hues), so colour says nothing
  about the class.
* The background blends two random-hue colours through smooth noise and
  adds pixel noise; a camera pan (up to 1 px/frame at 64 px) shifts it.
* 2-4 objects of radius 12-20 px (at 64 px; sizes scale with `image_size`)
  translate (up to 1.5 px/frame) and rotate; texture is drawn in object
  coordinates, so it moves with the object. About 60 % of pixels are
  background.

`render_clip` draws one clip from a random generator (`render_clip_objects` also
returns each object's mask, for video object segmentation); `encode_mp4` encodes frames
byte-identically from run to run. `raycseg.data.synthetic` turns clips into shard sets.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import av
import av.logging
import numpy as np
from scipy import ndimage

SYNTHETIC_CLASSES = (
    "background",
    "disk+stripes",
    "square+checkerboard",
    "triangle+dots",
    "plus+rings",
)


@dataclass(frozen=True)
class SyntheticConfig:
    """Sizes and motion of the generated data (pixel values are at 64 px and scale)."""

    image_size: int = 64
    frames: int = 8
    fps: int = 8
    min_objects: int = 2
    max_objects: int = 4
    radius_px: tuple[float, float] = (12.0, 20.0)
    max_speed_px: float = 1.5
    max_pan_px: float = 1.0
    max_spin_rad: float = 0.15
    noise_std: float = 6.0

    @property
    def scale(self) -> float:
        """Pixel sizes are given at 64 px; this converts them to `image_size`."""
        return self.image_size / 64.0


def _hsv_to_rgb(hue: float, saturation: float, value: float) -> np.ndarray:
    """One HSV colour (all in [0, 1]) to RGB floats in [0, 255]."""
    k = (np.array([5.0, 3.0, 1.0]) + hue * 6.0) % 6.0
    rgb = value - value * saturation * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
    return rgb * 255.0


def _two_tone(rng: np.random.Generator, light: tuple, dark: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Two colours of independent random hues: one light, one dark."""
    first = _hsv_to_rgb(rng.random(), rng.uniform(0.4, 1.0), rng.uniform(*light))
    second = _hsv_to_rgb(rng.random(), rng.uniform(0.4, 1.0), rng.uniform(*dark))
    return first, second


def _background(rng: np.random.Generator, cfg: SyntheticConfig) -> np.ndarray:
    """Background frames [T, S, S, 3] (float): smooth two-colour noise, panned, plus pixel noise."""
    size, frames = cfg.image_size, cfg.frames
    pan = rng.uniform(-cfg.max_pan_px, cfg.max_pan_px, size=2) * cfg.scale
    margin = int(np.ceil(np.abs(pan).max() * (frames - 1))) + 1
    canvas = size + 2 * margin
    field = ndimage.gaussian_filter(rng.standard_normal((canvas, canvas)), sigma=size / 8)
    field = (field - field.min()) / max(np.ptp(field), 1e-9)
    colour_a, colour_b = _two_tone(rng, (0.5, 0.9), (0.2, 0.6))
    texture = colour_a * (1 - field[..., None]) + colour_b * field[..., None]
    offsets = margin + np.rint(pan[None] * np.arange(frames)[:, None]).astype(int)
    views = np.stack([texture[y : y + size, x : x + size] for y, x in offsets])
    return views + rng.normal(0.0, cfg.noise_std, size=views.shape)


def _shape_inside(cls: int, u: np.ndarray, v: np.ndarray, radius: float) -> np.ndarray:
    """Pixels inside the class's shape, in object coordinates (u, v)."""
    if cls == 1:  # disk
        return u**2 + v**2 <= radius**2
    if cls == 2:  # square
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8 * radius
    if cls == 3:  # equilateral triangle, circumradius `radius`
        normals = np.deg2rad([270.0, 30.0, 150.0])  # away from the vertices at 90/210/330 deg
        inradius = 0.6 * radius  # circumradius 1.2 r: about the area of the other shapes
        return np.all([u * np.cos(a) + v * np.sin(a) <= inradius for a in normals], axis=0)
    arm = 0.4 * radius  # plus sign
    return ((np.abs(u) <= arm) & (np.abs(v) <= radius)) | (
        (np.abs(v) <= arm) & (np.abs(u) <= radius)
    )


def _texture(cls: int, u: np.ndarray, v: np.ndarray, period: float, angle: float) -> np.ndarray:
    """The class's binary texture in object coordinates (True = second tone)."""
    a = u * np.cos(angle) + v * np.sin(angle)
    b = -u * np.sin(angle) + v * np.cos(angle)
    if cls == 1:  # stripes
        return (a / period) % 1.0 < 0.5
    if cls == 2:  # checkerboard
        return (np.floor(a / period) + np.floor(b / period)) % 2 == 0
    if cls == 3:  # dots on a square lattice
        da, db = (a / period) % 1.0 - 0.5, (b / period) % 1.0 - 0.5
        return da**2 + db**2 < 0.3**2
    return (np.hypot(u, v) / period) % 1.0 < 0.5  # concentric rings


def render_clip(rng: np.random.Generator, cfg: SyntheticConfig) -> tuple[np.ndarray, np.ndarray]:
    """Render one clip.

    Returns:
        frames uint8 [T, S, S, 3] and class masks uint8 [T, S, S].
    """
    frames, masks, _ = render_clip_objects(rng, cfg)
    return frames, masks


def render_clip_objects(
    rng: np.random.Generator, cfg: SyntheticConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one clip, with each object's own mask.

    Returns:
        frames uint8 [T, S, S, 3], class masks uint8 [T, S, S] and object ids uint8
        [T, S, S] (0 = background, k = the k-th object drawn; later ones occlude earlier).
    """
    size, frames, scale = cfg.image_size, cfg.frames, cfg.scale
    video = _background(rng, cfg)
    masks = np.zeros((frames, size, size), dtype=np.uint8)
    objects = np.zeros_like(masks)
    grid_y, grid_x = np.mgrid[0:size, 0:size] + 0.5
    time = np.arange(frames, dtype=np.float64)[:, None, None]
    for index in range(1, rng.integers(cfg.min_objects, cfg.max_objects + 1) + 1):
        cls = int(rng.integers(1, len(SYNTHETIC_CLASSES)))
        radius = rng.uniform(*cfg.radius_px) * scale
        centre = rng.uniform(0.15 * size, 0.85 * size, size=2)
        velocity = rng.uniform(-cfg.max_speed_px, cfg.max_speed_px, size=2) * scale
        angle0, spin = rng.uniform(0, 2 * np.pi), rng.uniform(-cfg.max_spin_rad, cfg.max_spin_rad)
        period = rng.uniform(0.25, 0.5) * radius
        texture_angle = rng.uniform(0, np.pi)
        light, dark = _two_tone(rng, (0.75, 1.0), (0.15, 0.45))
        dy, dx = (
            grid_y - (centre[0] + velocity[0] * time),
            grid_x - (centre[1] + velocity[1] * time),
        )
        theta = angle0 + spin * time
        u = dx * np.cos(theta) + dy * np.sin(theta)
        v = -dx * np.sin(theta) + dy * np.cos(theta)
        inside = _shape_inside(cls, u, v, radius)
        second_tone = _texture(cls, u, v, period, texture_angle)
        colour = np.where(second_tone[..., None], dark, light)
        video = np.where(inside[..., None], colour, video)
        masks[inside] = cls
        objects[inside] = index
    return np.clip(np.rint(video), 0, 255).astype(np.uint8), masks, objects


def rgb_to_yuv420p(frame: np.ndarray) -> np.ndarray:
    """BT.601 limited-range YUV 4:2:0 planes of an RGB frame [H, W, 3] (H, W even).

    Returns:
        uint8 [H * 3 / 2, W]: the Y plane, then the U and V planes (each
        [H/2, W/2]) laid out row after row, as PyAV's "yuv420p" ndarray expects.
    """
    rgb = frame.astype(np.float64)
    height, width = frame.shape[:2]
    y = 16.0 + rgb @ np.array([65.481, 128.553, 24.966]) / 255.0
    u = 128.0 + rgb @ np.array([-37.797, -74.203, 112.0]) / 255.0
    v = 128.0 + rgb @ np.array([112.0, -93.786, -18.214]) / 255.0
    half = (height // 2, 2, width // 2, 2)
    u, v = (plane.reshape(half).mean(axis=(1, 3)) for plane in (u, v))
    planes = [y.ravel(), u.ravel(), v.ravel()]
    return np.clip(np.rint(np.concatenate(planes)), 0, 255).astype(np.uint8).reshape(-1, width)


def encode_mp4(frames: np.ndarray, fps: int) -> bytes:
    """Encode uint8 frames [T, H, W, 3] as mp4/h264 (yuv420p, CRF 18, one thread).

    Two settings keep the bytes (and so the shards) identical from run to
    run: x264's macroblock tree is off (with it, small frames encoded
    differently between runs in one process), and the colour conversion is
    done here in numpy rather than by swscale. ffmpeg's log lines (x264's
    settings, and its statistics when the encoder is freed) are caught and
    dropped, also where something in the process has turned PyAV's logging on.
    """
    buffer = io.BytesIO()
    with av.logging.Capture():
        _encode_into(buffer, frames, fps)  # returns once the encoder is freed
    return buffer.getvalue()


def _encode_into(buffer: io.BytesIO, frames: np.ndarray, fps: int) -> None:
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18", "preset": "fast", "x264-params": "mbtree=0"}
        stream.codec_context.thread_count = 1
        for frame in frames:
            yuv = av.VideoFrame.from_ndarray(rgb_to_yuv420p(frame), format="yuv420p")
            container.mux(stream.encode(yuv))
        container.mux(stream.encode(None))
