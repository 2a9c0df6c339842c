"""DataLoaders of dict batches for each stage, streamed from webdataset shards.

Every builder returns a `torch.utils.data.DataLoader` whose batches are
dicts of uint8/bool/long tensors plus `skipped_corrupt` (corrupt samples
skipped while making the batch) and `skipped_refused` (samples a transform
refused, e.g. MaskContrast's area check). Images stay uint8; normalise on
the device (`raycseg.models.normalize_images`).

Splitting, epochs, determinism and resuming are described in
`raycseg.data.streams`. In short: shards are split first by `rank` /
`world_size` (passed in, never read from the environment), then by
DataLoader worker; evaluation sees every sample exactly once across all
ranks x workers; training gives each rank exactly `samples_per_rank` samples
per epoch in an endless stream (surplus samples of a rank's share are
dropped for that epoch, a short share is repeated); `start_batch=k` resumes
at batch k without decoding the skipped samples.

* `build_pair_loader`: CACL pairs. mode="video": two frames of one clip,
  `frame_gap_s` seconds apart (clamped to the clip), each augmented on its
  own; mode="image": two augmentations of one image (image, segmentation
  or saliency shards).
* `build_saliency_view_loader`: MaskContrast query/key views with masks.
* `build_segmentation_loader`: images and labels (255 = ignore); training
  augments jointly, evaluation only resizes to `crop_size` x `crop_size`
  (bilinear image, nearest label, aspect ratio not kept).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from raycseg.errors import DataError

from .images import decode_image, decode_mask
from .samples import VIDEO_MEMBERS
from .storage import count_samples, iter_shard_samples, read_manifest
from .streams import ShardStream, StreamSpec
from .transforms import (
    ColorJitter,
    MaskContrastViews,
    PairViewTransform,
    SegmentationTrainTransform,
    resize_for_eval,
)
from .video import decode_frames, open_video, sample_pair_indices

__all__ = [
    "build_pair_loader",
    "build_saliency_view_loader",
    "build_segmentation_loader",
    "count_samples",
]


def image_tensor(rgb: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] array -> uint8 [3, H, W] tensor."""
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).contiguous()


def video_member(sample: dict) -> bytes:
    """The clip bytes of a video sample, whatever its container extension."""
    for ext in VIDEO_MEMBERS:
        if ext in sample:
            return sample[ext]
    raise KeyError("sample has no video member")


class VideoPairDecoder:
    """Decode two frames `gap` seconds apart from a clip sample and augment each."""

    def __init__(self, transform: PairViewTransform, frame_gap_s: tuple[float, float]):
        self.transform, self.frame_gap_s = transform, tuple(frame_gap_s)

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        reader = open_video(video_member(sample))
        first, second = sample_pair_indices(
            len(reader), reader.get_avg_fps(), self.frame_gap_s, rng
        )
        frames = decode_frames(reader, [first, second])
        return {
            "view_a": self.transform(image_tensor(frames[0]), rng),
            "view_b": self.transform(image_tensor(frames[1]), rng),
            "frame_indices": torch.tensor([first, second]),
            "key": sample["__key__"],
        }


class ImagePairDecoder:
    """Two augmentations of one image."""

    def __init__(self, transform: PairViewTransform):
        self.transform = transform

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        image = image_tensor(decode_image(sample["jpg"]))
        return {
            "view_a": self.transform(image, rng),
            "view_b": self.transform(image, rng),
            "key": sample["__key__"],
        }


class SaliencyViewDecoder:
    """MaskContrast views of an image and its saliency mask (None when refused)."""

    def __init__(self, views: MaskContrastViews):
        self.views = views

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict | None:
        image = image_tensor(decode_image(sample["jpg"]))
        mask = torch.from_numpy(decode_mask(sample["png"]))
        if mask.shape != image.shape[-2:]:
            raise ValueError("mask and image sizes differ")
        views = self.views(image, mask, rng)
        if views is None:
            return None
        query, query_mask, key, key_mask = views
        return {"query": query, "query_mask": query_mask, "key": key, "key_mask": key_mask}


class SegmentationDecoder:
    """Image + label, augmented jointly (training) or resized (evaluation)."""

    def __init__(self, train_transform: SegmentationTrainTransform | None, eval_size: int):
        self.train_transform, self.eval_size = train_transform, eval_size

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        image = image_tensor(decode_image(sample["jpg"]))
        label = torch.from_numpy(decode_mask(sample["png"]))
        if label.shape != image.shape[-2:]:
            raise ValueError("mask and image sizes differ")
        if self.train_transform is not None:
            image, label = self.train_transform(image, label, rng)
        else:
            image, label = resize_for_eval(image, label, self.eval_size)
        return {"image": image, "label": label.long(), "key": sample["__key__"]}


def _loader(spec: StreamSpec, decode, num_workers: int) -> DataLoader:
    return DataLoader(
        ShardStream(spec, decode),
        batch_size=None,
        num_workers=num_workers,
        persistent_workers=False,
    )


def build_pair_loader(
    urls: list[str],
    *,
    mode: str = "video",
    batch_size: int,
    image_size: int,
    frame_gap_s: tuple[float, float] = (0.25, 2.0),
    crop_scale: tuple[float, float] = (0.3, 1.0),
    color_jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1),
    hue_full_range: bool = False,
    grayscale_p: float = 0.2,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    samples_per_rank: int,
    start_batch: int = 0,
    shuffle_buffer: int = 64,
) -> DataLoader:
    """Endless loader of positive pairs for CACL.

    Batches: {"view_a": uint8 [B, 3, S, S], "view_b": uint8 [B, 3, S, S],
    "key": list[str], "skipped_corrupt": int, "skipped_refused": int}, plus
    "frame_indices": long [B, 2] in video mode.

    Args:
        urls: Shard paths (video shards for mode="video"; image,
            segmentation or saliency shards for mode="image").
        mode: "video" (two frames of one clip) or "image" (two augmentations).
        batch_size: Pairs per batch.
        image_size: Side of each square view.
        frame_gap_s: Range of the time gap between the two frames, in seconds.
        crop_scale: RandomResizedCrop area range.
        color_jitter: Brightness, contrast, saturation, hue strengths (p = 0.8).
        hue_full_range: Rotate hue by any amount instead of +-hue.
        grayscale_p: Probability of converting a view to grayscale.
        seed: Stream seed (with rank, world_size and num_workers).
        rank: This worker's rank.
        world_size: Number of ranks.
        num_workers: DataLoader worker processes (0: decode in this process).
        samples_per_rank: Raw samples per rank per epoch.
        start_batch: Resume at this batch.
        shuffle_buffer: Raw samples held for shuffling, per loader worker.
    """
    if mode not in ("video", "image"):
        raise DataError(f"unknown pair mode {mode!r}; choose video or image")
    transform = PairViewTransform(
        image_size, crop_scale, color_jitter, hue_full_range=hue_full_range, grayscale_p=grayscale_p
    )
    decode = (
        VideoPairDecoder(transform, frame_gap_s) if mode == "video" else ImagePairDecoder(transform)
    )
    spec = StreamSpec(tuple(urls), batch_size, True, seed, rank, world_size, samples_per_rank,
                      start_batch, shuffle_buffer)  # fmt: skip
    return _loader(spec, decode, num_workers)


def build_saliency_view_loader(
    urls: list[str],
    *,
    batch_size: int,
    image_size: int,
    crop_scale: tuple[float, float] = (0.2, 1.0),
    min_mask_area: float = 0.01,
    max_mask_area: float = 0.99,
    color_jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1),
    grayscale_p: float = 0.2,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    samples_per_rank: int,
    start_batch: int = 0,
    shuffle_buffer: int = 64,
) -> DataLoader:
    """Endless loader of MaskContrast views from saliency shards.

    Batches: {"query": uint8 [B, 3, S, S], "query_mask": bool [B, S, S],
    "key": uint8 [B, 3, S, S], "key_mask": bool [B, S, S],
    "skipped_corrupt": int, "skipped_refused": int}. An image whose views
    fail the area check in 3 tries is refused and the next image is used.

    Args: as `build_pair_loader`, plus `min_mask_area` / `max_mask_area`, the
    open interval the salient share of each view must fall in.
    """
    views = MaskContrastViews(
        image_size, crop_scale, min_mask_area, max_mask_area,
        ColorJitter(*color_jitter), grayscale_p=grayscale_p,
    )  # fmt: skip
    spec = StreamSpec(tuple(urls), batch_size, True, seed, rank, world_size, samples_per_rank,
                      start_batch, shuffle_buffer)  # fmt: skip
    return _loader(spec, SaliencyViewDecoder(views), num_workers)


def build_segmentation_loader(
    urls: list[str],
    *,
    batch_size: int,
    crop_size: int,
    scale_range: tuple[float, float] = (0.5, 1.5),
    train: bool,
    photometric: bool = True,
    crop_only: bool = False,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    samples_per_rank: int | None = None,
    start_batch: int = 0,
    shuffle_buffer: int = 64,
) -> DataLoader:
    """Loader of images and labels from segmentation shards.

    Batches: {"image": uint8 [B, 3, C, C], "label": long [B, C, C] (255 =
    ignore), "key": list[str], "skipped_corrupt": int, "skipped_refused": int}.

    Args:
        urls: Segmentation shard paths.
        batch_size: Images per batch (evaluation keeps a short last batch).
        crop_size: Side of the training crop / evaluation resize.
        scale_range: Random scale range for training.
        train: Endless, augmented and shuffled (True), or one pass with a
            deterministic resize to crop_size x crop_size (False).
        photometric: Colour-jitter training images in the loader (False when the
            method does it on its device, as ReCo does).
        crop_only: Training augmentation is a random crop alone: no rescale,
            colour jitter or flip (ReCo's unlabelled stream, which the teacher
            sees raw and the method augments after pseudo-labelling).
        seed: Stream seed.
        rank: This worker's rank.
        world_size: Number of ranks.
        num_workers: DataLoader worker processes.
        samples_per_rank: Training samples per rank per epoch; default: the
            number of samples in `urls` (counted from the shards) divided by
            world_size, rounded down, at least 1.
        start_batch: Resume at this batch.
        shuffle_buffer: Raw samples held for shuffling (training only).
    """
    if train and samples_per_rank is None:
        samples_per_rank = max(1, _count_in_shards(urls) // world_size)
    no_jitter = ColorJitter(p=0.0)
    if not train:
        transform = None
    elif crop_only:
        transform = SegmentationTrainTransform(
            crop_size, (1.0, 1.0), color_jitter=no_jitter, flip_p=0.0
        )
    else:
        jitter = None if photometric else no_jitter
        transform = SegmentationTrainTransform(crop_size, scale_range, color_jitter=jitter)
    spec = StreamSpec(tuple(urls), batch_size, train, seed, rank, world_size, samples_per_rank,
                      start_batch, shuffle_buffer if train else 0)  # fmt: skip
    return _loader(spec, SegmentationDecoder(transform, crop_size), num_workers)


def _count_in_shards(urls: list[str]) -> int:
    """Samples in the given shards: from the manifest next to them, else by reading the tars."""
    roots = {Path(url).parent.parent for url in urls}
    try:
        counts = {}
        for root in roots:
            for entry in read_manifest(root)["splits"].values():
                counts |= {str(root / shard["name"]): shard["count"] for shard in entry["shards"]}
        return sum(counts[str(Path(url))] for url in urls)
    except (DataError, KeyError):
        return sum(1 for url in urls for _ in iter_shard_samples(url))
