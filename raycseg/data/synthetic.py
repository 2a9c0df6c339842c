"""Procedural videos, images, class masks and saliency masks (no downloads).

The generator follows the quickstart feasibility study
(docs/quickstart-study.md), which is what makes the quickstart's numbers
work:

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

`build_synthetic` writes three shard sets under OUT, each through
`build_shards` so the real build path is exercised:

* `OUT/video`: mp4/h264 clips (PyAV, yuv420p), split `train`, each sample
  with its per-frame class masks (`masks.png`, frames stacked vertically);
* `OUT/segmentation`: a VOC-format tree (JPEG frames, palette PNG masks),
  split `train` (frames of the training clips) and `val` (one frame from
  each of `val_clips` clips drawn from a different seed);
* `OUT/saliency`: the training frames with their foreground masks.

Everything is deterministic from `seed`: each clip has its own random
generator seeded by (seed, split, clip index), and the encoder runs on one
thread.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import av
import av.logging
import numpy as np
from scipy import ndimage

from raycseg.config import Recipe, is_url, synthetic_dir
from raycseg.errors import DataError, RecipeError

from .images import encode_jpeg, encode_mask_png, voc_palette
from .shards import build_shards
from .video import probe_video

SYNTHETIC_CLASSES = (
    "background",
    "disk+stripes",
    "square+checkerboard",
    "triangle+dots",
    "plus+rings",
)
_TRAIN, _VAL = 0, 1  # seed-stream ids


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
    size, frames, scale = cfg.image_size, cfg.frames, cfg.scale
    video = _background(rng, cfg)
    masks = np.zeros((frames, size, size), dtype=np.uint8)
    grid_y, grid_x = np.mgrid[0:size, 0:size] + 0.5
    time = np.arange(frames, dtype=np.float64)[:, None, None]
    for _ in range(rng.integers(cfg.min_objects, cfg.max_objects + 1)):
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
    return np.clip(np.rint(video), 0, 255).astype(np.uint8), masks


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


def _write_train_clip(args: tuple[int, int, SyntheticConfig, Path, int]) -> None:
    """Render training clip `index`, write its mp4, mask strip and chosen VOC frames."""
    seed, index, cfg, tree, frames_per_clip = args
    rng = np.random.default_rng([seed, _TRAIN, index])
    frames, masks = render_clip(rng, cfg)
    name = f"clip_{index:06d}"
    (tree / "videos" / "train" / f"{name}.mp4").write_bytes(encode_mp4(frames, cfg.fps))
    strip = masks.reshape(-1, masks.shape[-1])
    (tree / "video_masks" / f"{name}.png").write_bytes(encode_mask_png(strip))
    chosen = rng.choice(cfg.frames, size=min(frames_per_clip, cfg.frames), replace=False)
    for t in sorted(chosen):
        _write_still(tree, f"{name}_f{t:02d}", frames[t], masks[t], saliency=True)


def _write_val_clip(args: tuple[int, int, SyntheticConfig, Path, int]) -> None:
    """Render validation clip `index` (another seed stream) and keep one random frame."""
    seed, index, cfg, tree, _ = args
    rng = np.random.default_rng([seed, _VAL, index])
    frames, masks = render_clip(rng, cfg)
    t = int(rng.integers(cfg.frames))
    _write_still(tree, f"val_{index:06d}_f{t:02d}", frames[t], masks[t], saliency=False)


def _write_still(
    tree: Path, name: str, rgb: np.ndarray, mask: np.ndarray, *, saliency: bool
) -> None:
    jpeg = encode_jpeg(rgb)
    (tree / "voc" / "JPEGImages" / f"{name}.jpg").write_bytes(jpeg)
    palette_png = encode_mask_png(mask, palette=voc_palette())
    (tree / "voc" / "SegmentationClass" / f"{name}.png").write_bytes(palette_png)
    if saliency:
        (tree / "saliency" / "images" / "train" / f"{name}.jpg").write_bytes(jpeg)
        foreground = encode_mask_png((mask > 0).astype(np.uint8) * 255)
        (tree / "saliency" / "masks" / "train" / f"{name}.png").write_bytes(foreground)


def _render_tree(
    tree: Path, seed: int, cfg: SyntheticConfig, num_clips: int, val_clips: int,
    frames_per_clip: int, num_procs: int, on_progress: Callable[[int, int], None] | None,
) -> None:  # fmt: skip
    """Write the source tree the three builds read."""
    for folder in ("videos/train", "video_masks", "voc/JPEGImages", "voc/SegmentationClass",
                   "voc/ImageSets/Segmentation", "saliency/images/train", "saliency/masks/train"):  # fmt: skip
        (tree / folder).mkdir(parents=True, exist_ok=True)
    jobs = [(_write_train_clip, (seed, i, cfg, tree, frames_per_clip)) for i in range(num_clips)]
    jobs += [(_write_val_clip, (seed, i, cfg, tree, 0)) for i in range(val_clips)]
    with ProcessPoolExecutor(max_workers=num_procs) if num_procs > 1 else _Serial() as pool:
        chunk = max(1, len(jobs) // (num_procs * 8))
        for done, _ in enumerate(pool.map(_run_job, jobs, chunksize=chunk), start=1):
            if on_progress is not None:
                on_progress(done, len(jobs))
    lists = tree / "voc" / "ImageSets" / "Segmentation"
    for split, prefix in (("train", "clip_"), ("val", "val_")):
        ids = sorted(p.stem for p in (tree / "voc" / "JPEGImages").glob(f"{prefix}*.jpg"))
        (lists / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))


class _Serial:
    """Stands in for a process pool: maps in this process."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    @staticmethod
    def map(function, iterable, chunksize=1):
        return map(function, iterable)


def _run_job(job: tuple[Callable, tuple]) -> None:
    function, args = job
    function(args)


def build_synthetic(
    out: Path | str,
    *,
    seed: int = 0,
    num_clips: int = 300,
    val_clips: int = 100,
    image_size: int = 64,
    frames: int = 8,
    fps: int = 8,
    min_objects: int = 2,
    max_objects: int = 4,
    frames_per_clip: int = 2,
    overwrite: bool = False,
    num_procs: int | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> Path:
    """Generate the synthetic dataset and shard it into OUT/{video,segmentation,saliency}.

    Args:
        out: Output folder.
        seed: Everything is deterministic from it.
        num_clips: Training clips (video shards; `frames_per_clip` frames of
            each go to the segmentation and saliency train splits).
        val_clips: Validation clips, from another seed stream; one frame each.
        image_size: Frame side in pixels.
        frames: Frames per clip.
        fps: Frame rate written into the mp4s.
        min_objects: Fewest objects per clip.
        max_objects: Most objects per clip.
        frames_per_clip: Frames of each training clip kept as still images.
        overwrite: Replace an existing dataset in `out`.
        num_procs: Processes for rendering and building (default: all CPUs).
        on_progress: Called as `on_progress(stage, done, total)`.

    Returns:
        `out`, resolved.

    Raises:
        DataError: `out` already holds the dataset and `overwrite` is False,
            or the options are inconsistent.
    """
    out = Path(out).expanduser().resolve()
    if num_clips < 1 or val_clips < 1 or frames < 1 or not 1 <= min_objects <= max_objects:
        raise DataError(
            "synthetic sizes must be positive and min_objects <= max_objects; fix the options"
        )
    sets = ("video", "segmentation", "saliency")
    if any((out / name / "manifest.json").exists() for name in sets) and not overwrite:
        raise DataError(f"{out} already holds a synthetic dataset; pass --overwrite to replace it")
    cfg = SyntheticConfig(image_size, frames, fps, min_objects, max_objects)
    _check_decodable(cfg)
    procs = num_procs or os.cpu_count() or 1
    tree = out / ".source-tmp"
    shutil.rmtree(tree, ignore_errors=True)
    try:
        _render_tree(tree, seed, cfg, num_clips, val_clips, frames_per_clip, procs,
                     _stage(on_progress, "render"))  # fmt: skip
        description = f"synthetic (seed={seed}, {asdict(cfg)})"
        common = {"overwrite": overwrite, "num_procs": procs, "source_description": description}
        build_shards("video", tree / "videos", out / "video", masks_dir=tree / "video_masks",
                     mask_classes=list(SYNTHETIC_CLASSES), on_progress=_stage(on_progress, "video"),
                     **common)  # fmt: skip
        build_shards("segmentation", tree / "voc", out / "segmentation", layout="voc",
                     classes=list(SYNTHETIC_CLASSES), on_progress=_stage(on_progress, "segmentation"),
                     **common)  # fmt: skip
        build_shards("saliency", tree / "saliency" / "images", out / "saliency",
                     masks_dir=tree / "saliency" / "masks", on_progress=_stage(on_progress, "saliency"),
                     **common)  # fmt: skip
    finally:
        shutil.rmtree(tree, ignore_errors=True)
    info = {"seed": seed, "num_clips": num_clips, "val_clips": val_clips,
            "frames_per_clip": frames_per_clip, "classes": list(SYNTHETIC_CLASSES), **asdict(cfg)}  # fmt: skip
    (out / "synthetic.json").write_text(json.dumps(info, indent=1) + "\n")
    return out


def _check_decodable(cfg: SyntheticConfig) -> None:
    """Refuse frame sizes decord cannot decode (it fails on a few small sizes, e.g. 24 and 48)."""
    frames = np.zeros((2, cfg.image_size, cfg.image_size, 3), dtype=np.uint8)
    try:
        probe_video(encode_mp4(frames, cfg.fps))
    except ValueError as error:
        raise DataError(
            f"decord cannot decode {cfg.image_size}x{cfg.image_size} mp4 frames ({error}); "
            "choose another --image-size, e.g. 32, 64 or 96"
        ) from error


def _stage(on_progress: Callable[[str, int, int], None] | None, stage: str):
    if on_progress is None:
        return None
    return lambda done, total: on_progress(stage, done, total)


# ----------------------------------------------------------------------------- a recipe's data

SPEC_FILE = "spec.json"


def prepare_data(recipe: Recipe, on_message: Callable[[str], None] = lambda _: None) -> None:
    """Build the recipe's generated shards where they are absent or were built to another spec.

    The data is deterministic in its spec, so every node of a cluster can build
    its own copy. Concurrent builders on one node are safe: each builds in a
    private folder next to the target and renames it into place; the first
    finished build wins and the others are dropped.

    Raises:
        RecipeError: `data.root` is a URL (generated data is built on local disks).
    """
    target = synthetic_dir(recipe)
    if target is None:
        return
    if is_url(target):
        raise RecipeError(
            f"generated data is built on this machine, not at {target}; set data.root to a "
            "local folder, or build shards and copy them to the bucket"
        )
    spec = recipe.data.synthetic.model_dump(exclude={"name"})
    target = Path(target)
    if _built_with(target, spec):
        return
    on_message(f"building generated data in {target} (once; cached)")
    started = time.perf_counter()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-building-", dir=target.parent))
    try:
        build_synthetic(staging, overwrite=True, **spec)
        (staging / SPEC_FILE).write_text(json.dumps(spec))
        _move_into_place(staging, target, spec)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    on_message(f"generated data ready in {time.perf_counter() - started:.0f} s")


def _built_with(folder: Path, spec: dict) -> bool:
    spec_file = folder / SPEC_FILE
    return spec_file.exists() and json.loads(spec_file.read_text()) == spec


def _move_into_place(staging: Path, target: Path, spec: dict) -> None:
    """Rename a finished build to `target`, unless another builder's build got there first."""
    if _built_with(target, spec):
        return
    if target.exists():  # built to another spec: set it aside, then remove it
        stale = Path(tempfile.mkdtemp(prefix=f".{target.name}-stale-", dir=target.parent))
        os.replace(target, stale / target.name)
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.rename(staging, target)
    except OSError:
        if not _built_with(target, spec):  # not a builder that won the race: a real error
            raise
