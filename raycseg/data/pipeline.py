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
* `build_segmentation_loader`: images and labels (255 = ignore), augmented
  jointly for training (ReCo's streams, or the linear probe's augmentation).
* `build_segmentation_eval_loader`: each sample once, with its *original*
  label and the input its protocol names (`resize` to S x S, or `pad`: the
  image at its own size, reflect-padded); see `raycseg.eval.scoring`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from raycseg.errors import DataError

from .images import decode_image, decode_mask
from .labels import IGNORE_INDEX
from .samples import VIDEO_MEMBERS
from .storage import count_samples, iter_shard_samples, read_manifest
from .streams import ShardStream, StreamSpec, collate
from .transforms import (
    ColorJitter,
    MaskContrastViews,
    PairViewTransform,
    SegmentationTrainTransform,
    reflect_pad_bottom_right,
    resize_image,
)
from .video import decode_frames, open_video, sample_pair_indices

__all__ = [
    "INPUT_POLICIES",
    "build_pair_loader",
    "build_saliency_view_loader",
    "build_segmentation_eval_loader",
    "build_segmentation_loader",
    "count_samples",
]

INPUT_POLICIES = ("resize", "pad")


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
    """Image + label, augmented jointly for training."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        image, label = decode_image_and_label(sample)
        image, label = self.transform(image, label, rng)
        return {"image": image, "label": label.long(), "key": sample["__key__"]}


def decode_image_and_label(sample: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 image [3, H, W] and uint8 label [H, W] of a segmentation sample.

    An image sample (no mask: ReCo's unlabelled stream may read image shards) gets a
    label of 255 (ignore) everywhere.
    """
    image = image_tensor(decode_image(sample["jpg"]))
    if "png" not in sample:
        return image, torch.full(image.shape[-2:], IGNORE_INDEX, dtype=torch.uint8)
    label = torch.from_numpy(decode_mask(sample["png"]))
    if label.shape != image.shape[-2:]:
        raise ValueError("mask and image sizes differ")
    return image, label


class SegmentationEvalDecoder:
    """The protocol's input and the original label of a segmentation sample."""

    def __init__(self, input_policy: str, input_size: int | None):
        if input_policy not in INPUT_POLICIES:
            raise DataError(f"unknown input policy {input_policy!r}; use resize or pad")
        if input_policy == "resize" and not input_size:
            raise DataError("the resize input policy needs an input size")
        self.input_policy, self.input_size = input_policy, input_size

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        image, label = decode_image_and_label(sample)
        if self.input_policy == "resize":
            image = resize_image(image, self.input_size)
        return {"image": image, "label": label.long(), "key": sample["__key__"]}


class EvalCollate:
    """Batch evaluation samples whose labels (and, with `pad`, images) differ in size.

    Labels are padded with 255 at the bottom/right to the largest of the batch;
    `label_size` keeps each one's own (H, W). With the `pad` policy the images are
    reflect-padded at the bottom/right to the largest of the batch, and at least to
    `pad_to` on each side, and `input_region` is each image's own (H, W); with
    `resize` it is the whole input (raycseg.eval.scoring).
    """

    def __init__(self, input_policy: str, pad_to: int | None = None):
        self.input_policy, self.pad_to = input_policy, pad_to

    def __call__(self, items: list[dict], corrupt: int = 0, refused: int = 0) -> dict:
        sizes = torch.tensor([list(item["label"].shape) for item in items])
        height, width = sizes.max(dim=0).values.tolist()
        labels = [
            torch.nn.functional.pad(
                item["label"], (0, width - item["label"].shape[1], 0, height - item["label"].shape[0]),
                value=IGNORE_INDEX,
            )
            for item in items
        ]  # fmt: skip
        if self.input_policy == "pad":
            target = (max(height, self.pad_to or 0), max(width, self.pad_to or 0))
            images = [reflect_pad_bottom_right(item["image"], target) for item in items]
            regions = sizes
        else:
            images = [item["image"] for item in items]
            regions = torch.tensor(list(images[0].shape[-2:])).repeat(len(items), 1)
        batch = collate([{"key": item["key"]} for item in items], corrupt, refused)
        return {
            **batch,
            "image": torch.stack(images),
            "label": torch.stack(labels),
            "label_size": sizes,
            "input_region": regions,
        }


def _loader(spec: StreamSpec, decode, num_workers: int, collate_fn=None) -> DataLoader:
    return DataLoader(
        ShardStream(spec, decode, collate_fn),
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
    blur_p: float = 0.5,
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
        blur_p: Probability of a Gaussian blur of a view (sigma 0.1-2 px, kernel
            about 10 % of the view; 0: none, the views of a loader without blur).
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
        image_size,
        crop_scale,
        color_jitter,
        hue_full_range=hue_full_range,
        grayscale_p=grayscale_p,
        blur_p=blur_p,
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
    photometric: bool = True,
    crop_only: bool = False,
    transform=None,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    samples_per_rank: int | None = None,
    start_batch: int = 0,
    shuffle_buffer: int = 64,
) -> DataLoader:
    """Endless, shuffled loader of augmented images and labels from segmentation shards.

    Batches: {"image": uint8 [B, 3, C, C], "label": long [B, C, C] (255 =
    ignore), "key": list[str], "skipped_corrupt": int, "skipped_refused": int}.

    Args:
        urls: Segmentation shard paths.
        batch_size: Images per batch.
        crop_size: Side of the training crop.
        scale_range: Random scale range.
        photometric: Colour-jitter training images in the loader (False when the
            method does it on its device, as ReCo does).
        crop_only: The augmentation is a random crop alone: no rescale, colour
            jitter or flip (ReCo's unlabelled stream, which the teacher sees raw
            and the method augments after pseudo-labelling).
        transform: Another joint augmentation, called as transform(image, label,
            rng) (the linear probe's); it replaces the three options above.
        seed: Stream seed.
        rank: This worker's rank.
        world_size: Number of ranks.
        num_workers: DataLoader worker processes.
        samples_per_rank: Samples per rank per epoch; default: the number of
            samples in `urls` (counted from the shards) divided by world_size,
            rounded down, at least 1.
        start_batch: Resume at this batch.
        shuffle_buffer: Raw samples held for shuffling.
    """
    if samples_per_rank is None:
        samples_per_rank = max(1, _count_in_shards(urls) // world_size)
    if transform is None:
        transform = _segmentation_transform(crop_size, scale_range, photometric, crop_only)
    spec = StreamSpec(tuple(urls), batch_size, True, seed, rank, world_size, samples_per_rank,
                      start_batch, shuffle_buffer)  # fmt: skip
    return _loader(spec, SegmentationDecoder(transform), num_workers)


def _segmentation_transform(
    crop_size: int, scale_range: tuple[float, float], photometric: bool, crop_only: bool
) -> SegmentationTrainTransform:
    no_jitter = ColorJitter(p=0.0)
    if crop_only:
        return SegmentationTrainTransform(crop_size, (1.0, 1.0), color_jitter=no_jitter, flip_p=0.0)
    jitter = None if photometric else no_jitter
    return SegmentationTrainTransform(crop_size, scale_range, color_jitter=jitter)


def build_segmentation_eval_loader(
    urls: list[str],
    *,
    input_policy: str,
    input_size: int | None,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
) -> DataLoader:
    """One pass over segmentation shards for scoring, each sample exactly once.

    Batches: {"image": uint8 [B, 3, h, w], "label": long [B, H, W] (the original
    masks, 255-padded), "label_size": long [B, 2], "input_region": long [B, 2],
    "key", "skipped_corrupt", "skipped_refused"} (see `raycseg.eval.scoring`).

    Args:
        urls: Segmentation shard paths.
        input_policy: ``resize`` (every image resized to input_size x input_size,
            bicubic) or ``pad`` (every image at its own size, reflect-padded at the
            bottom/right to the batch's largest, and to at least input_size).
        input_size: S (``resize``), or the least padded side (``pad``; None: none).
        batch_size: Images per batch (the last one may be short).
        rank: This worker's rank.
        world_size: Number of ranks.
        num_workers: DataLoader worker processes.
    """
    decode = SegmentationEvalDecoder(input_policy, input_size)
    spec = StreamSpec(tuple(urls), batch_size, False, 0, rank, world_size, None, 0, 0)
    return _loader(spec, decode, num_workers, EvalCollate(input_policy, input_size))


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
