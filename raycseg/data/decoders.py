"""Decoders: one shard sample to one training or evaluation item, and the eval collate.

A decoder is called as decoder(sample, rng) inside a `raycseg.data.streams.ShardStream`
with the sample's raw members (bytes by extension, plus "__key__"); it returns the
item's tensors (uint8 images), or None when its transform refuses the sample. A decoder
that raises marks the sample corrupt: the stream skips and counts it.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import DataError
from ..media.images import decode_image, decode_mask
from ..media.labels import IGNORE_INDEX
from ..media.video import decode_frames, open_video, sample_pair_indices
from ..shards.samples import VIDEO_MEMBERS
from .streams import collate
from .transforms import MaskContrastViews, PairViewTransform, reflect_pad_bottom_right, resize_image

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


def frame_view(rgb: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] array -> uint8 [3, H, W] view of the same memory (channels-last strides)."""
    return torch.from_numpy(rgb).permute(2, 0, 1)


class VideoPairDecoder:
    """Decode two frames `gap` seconds apart from a clip sample and augment each.

    One reader per sample; decord decodes both frames in one `get_batch` call (each
    from the keyframe before it, or onwards from the first frame when both share a
    group of pictures). The reader is closed before the frames are augmented: decord's
    decoding thread keeps decoding the packets its reader queued ahead of the last
    frame asked for until the reader is freed, and that work is wasted (measured on
    the real clips, 2 CPU cores: 28.4 -> 21.5 ms of CPU per transcoded pair, 63.9 ->
    60.0 ms per original one). The transform receives each frame as a uint8 [3, H, W] view
    of decord's [H, W, 3] array (`frame_view`, no copy), so it should crop before
    anything that touches every pixel, as `PairViewTransform` does.
    """

    def __init__(self, transform: PairViewTransform, frame_gap_s: tuple[float, float]):
        self.transform, self.frame_gap_s = transform, tuple(frame_gap_s)

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        """Two augmented frames of the clip and their indices."""
        reader = open_video(video_member(sample))
        first, second = sample_pair_indices(
            len(reader), reader.get_avg_fps(), self.frame_gap_s, rng
        )
        frames = decode_frames(reader, [first, second])
        del reader  # stop decord's decoding thread before augmenting (see the class docstring)
        return {
            "view_a": self.transform(frame_view(frames[0]), rng),
            "view_b": self.transform(frame_view(frames[1]), rng),
            "frame_indices": torch.tensor([first, second]),
            "key": sample["__key__"],
        }


class ImagePairDecoder:
    """Two augmentations of one image."""

    def __init__(self, transform: PairViewTransform):
        self.transform = transform

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        """Two augmentations of the sample's image."""
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
        """Query and key views with their masks, or None when the area check refuses them."""
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
        """The image and its label, augmented together."""
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
        """The protocol's input image (resized, or as is for `pad`) and the original label."""
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
        """One batch of `items`, counting the corrupt and refused samples skipped for it."""
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
