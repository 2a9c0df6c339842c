"""Procedural videos, images, class masks and saliency masks (no downloads).

The clips are drawn by `raycseg.data.synthetic_clips` (the design of the quickstart
study, docs/methods/cacl.md §6): 5 classes (background and four shape + texture
classes), moving and rotating objects on a panned background.

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

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np

from raycseg.config import Recipe, synthetic_dir
from raycseg.errors import DataError, RecipeError
from raycseg.shards.build import build_shards
from raycseg.shards.manifest import MANIFEST

from ..media.images import encode_jpeg, encode_mask_png, voc_palette
from ..media.video import probe_video
from ..storage import is_url
from .synthetic_clips import SYNTHETIC_CLASSES, SyntheticConfig, encode_mp4, render_clip

_TRAIN, _VAL = 0, 1  # seed-stream ids


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
    if any((out / name / MANIFEST).exists() for name in sets) and not overwrite:
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
