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

from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import DataLoader

from ..config.schema import StageData
from ..errors import DataError
from ..shards.manifest import read_manifest
from ..shards.tars import iter_shard_samples
from .decoders import (
    EvalCollate,
    ImagePairDecoder,
    SaliencyViewDecoder,
    SegmentationDecoder,
    SegmentationEvalDecoder,
    VideoPairDecoder,
)
from .streams import ShardStream, StreamSpec
from .transforms import (
    ColorJitter,
    MaskContrastViews,
    PairViewTransform,
    SegmentationTrainTransform,
)

__all__ = [
    "StreamShare",
    "build_pair_loader",
    "build_saliency_view_loader",
    "build_segmentation_eval_loader",
    "build_segmentation_loader",
    "pair_decoder",
    "saliency_view_decoder",
]


@dataclass(frozen=True)
class StreamShare:
    """This process's share of an endless training stream (see `raycseg.data.streams`).

    Attributes:
        rank: This training worker's rank; shards are split by rank first.
        world_size: Number of ranks.
        num_workers: DataLoader worker processes (0: decode in this process); each
            rank's shards are split between them.
        seed: Stream seed: the shuffle and the augmentations (with the three above).
        start_batch: Resume at this batch without decoding the skipped samples.
        shuffle_buffer: Raw samples held for shuffling, per loader worker.
        pin_memory: Batches in page-locked memory (for non-blocking copies to a GPU).
    """

    rank: int = 0
    world_size: int = 1
    num_workers: int = 0
    seed: int = 0
    start_batch: int = 0
    shuffle_buffer: int = 64
    pin_memory: bool = False

    def spec(self, urls: list[str], batch_size: int, samples_per_rank: int) -> StreamSpec:
        """The stream of `urls` this share reads, `samples_per_rank` raw samples per epoch."""
        return StreamSpec(tuple(urls), batch_size, True, self.seed, self.rank, self.world_size,
                          samples_per_rank, self.start_batch, self.shuffle_buffer)  # fmt: skip


def _loader(
    spec: StreamSpec, decode, num_workers: int, collate_fn=None, pin_memory: bool = False
) -> DataLoader:
    return DataLoader(
        ShardStream(spec, decode, collate_fn),
        batch_size=None,
        num_workers=num_workers,
        persistent_workers=False,
        pin_memory=pin_memory,
    )


def build_pair_loader(
    urls: list[str],
    data: StageData,
    share: StreamShare = StreamShare(),
    *,
    mode: str = "video",
    samples_per_rank: int,
) -> DataLoader:
    """Endless loader of positive pairs for CACL.

    Batches: {"view_a": uint8 [B, 3, S, S], "view_b": uint8 [B, 3, S, S],
    "key": list[str], "skipped_corrupt": int, "skipped_refused": int}, plus
    "frame_indices": long [B, 2] in video mode.

    Args:
        urls: Shard paths (video shards for mode="video"; image,
            segmentation or saliency shards for mode="image").
        data: The stage's data section: `batch_size` pairs of `image_size` squared
            views, `frame_gap_s` seconds apart (video mode), augmented with
            `crop_scale`, `color_jitter` (p = 0.8; `hue_full_range` rotates hue by
            any amount), `grayscale_p` and `blur_p` (sigma 0.1-2 px, kernel about
            10 % of the view).
        share: This process's share of the stream.
        mode: "video" (two frames of one clip) or "image" (two augmentations).
        samples_per_rank: Raw samples per rank per epoch.
    """
    decode = pair_decoder(data, mode)
    spec = share.spec(urls, data.batch_size, samples_per_rank)
    return _loader(spec, decode, share.num_workers, pin_memory=share.pin_memory)


def build_saliency_view_loader(
    urls: list[str],
    data: StageData,
    share: StreamShare = StreamShare(),
    *,
    samples_per_rank: int,
) -> DataLoader:
    """Endless loader of MaskContrast views from saliency shards.

    Batches: {"query": uint8 [B, 3, S, S], "query_mask": bool [B, S, S],
    "key": uint8 [B, 3, S, S], "key_mask": bool [B, S, S],
    "skipped_corrupt": int, "skipped_refused": int}. An image whose views
    fail the area check in 3 tries is refused and the next image is used.

    Args: as `build_pair_loader`; the views use `data.crop_scale`,
    `color_jitter` and `grayscale_p`, and the salient share of each view must
    fall in the open interval (`min_mask_area`, `max_mask_area`).
    """
    spec = share.spec(urls, data.batch_size, samples_per_rank)
    return _loader(
        spec, saliency_view_decoder(data), share.num_workers, pin_memory=share.pin_memory
    )


def pair_decoder(data: StageData, mode: str = "video") -> VideoPairDecoder | ImagePairDecoder:
    """The decoder of `build_pair_loader`'s samples (also the decode pool's)."""
    if mode not in ("video", "image"):
        raise DataError(f"unknown pair mode {mode!r}; choose video or image")
    transform = PairViewTransform(
        data.image_size,
        data.crop_scale,
        data.color_jitter,
        hue_full_range=data.hue_full_range,
        grayscale_p=data.grayscale_p,
        blur_p=data.blur_p,
    )
    if mode == "video":
        return VideoPairDecoder(transform, data.frame_gap_s)
    return ImagePairDecoder(transform)


def saliency_view_decoder(data: StageData) -> SaliencyViewDecoder:
    """The decoder of `build_saliency_view_loader`'s samples (also the decode pool's)."""
    views = MaskContrastViews(
        data.image_size, data.crop_scale, data.min_mask_area, data.max_mask_area,
        ColorJitter(*data.color_jitter), grayscale_p=data.grayscale_p,
    )  # fmt: skip
    return SaliencyViewDecoder(views)


def build_segmentation_loader(
    urls: list[str],
    share: StreamShare = StreamShare(),
    *,
    batch_size: int,
    crop_size: int,
    scale_range: tuple[float, float] = (0.5, 1.5),
    photometric: bool = True,
    crop_only: bool = False,
    transform=None,
    samples_per_rank: int | None = None,
) -> DataLoader:
    """Endless, shuffled loader of augmented images and labels from segmentation shards.

    Batches: {"image": uint8 [B, 3, C, C], "label": long [B, C, C] (255 =
    ignore), "key": list[str], "skipped_corrupt": int, "skipped_refused": int}.

    Args:
        urls: Segmentation shard paths.
        share: This process's share of the stream.
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
        samples_per_rank: Samples per rank per epoch; default: the number of
            samples in `urls` (counted from the shards) divided by world_size,
            rounded down, at least 1.
    """
    if samples_per_rank is None:
        samples_per_rank = max(1, _count_in_shards(urls) // share.world_size)
    if transform is None:
        transform = _segmentation_transform(crop_size, scale_range, photometric, crop_only)
    spec = share.spec(urls, batch_size, samples_per_rank)
    return _loader(
        spec, SegmentationDecoder(transform), share.num_workers, pin_memory=share.pin_memory
    )


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
