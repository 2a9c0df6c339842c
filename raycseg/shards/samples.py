"""Turn one input into one shard sample, and check a stored sample again.

`prepare_sample` runs in the build's process pool: it decodes (images, masks)
or probes (videos, with decord: open, first/middle/last frame) every input,
and re-encodes clips when the build transcodes them (`raycseg.media.transcode`),
so a broken input becomes a `LeftOut` with a reason instead of a crash or a
bad sample. `check_stored_sample` is what `verify` runs on every stored
sample; it decodes videos frame by frame to the end.

Sample members (README.md, Data): the clip under its container's extension
(`mp4`, `avi`, `webm`, `mkv`, ...; always `mp4` when transcoded), `jpg` (image),
`png` (class-id mask, or the binary saliency mask with 0 = background and 1 = foreground),
`masks.png` (a clip's per-frame class masks stacked vertically, T*H x W),
`cls` (label, -1 when unlabelled) and `json` (metadata). A vos sample is one whole
sequence (`raycseg.shards.vos`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..media.images import (
    decode_image,
    decode_mask,
    encode_jpeg,
    encode_mask_png,
    peek_image,
    read_saliency_mask,
)
from ..media.labels import (
    CITYSCAPES_LABEL_TO_TRAIN,
    CITYSCAPES_MAX_LABEL_ID,
    IGNORE_INDEX,
    valid_mask_ids,
)
from ..media.saliency import compute_saliency_mask
from ..media.transcode import TranscodeSettings, transcode_clip
from ..media.video import VideoInfo, decode_every_frame, probe_video
from .sources import VIDEO_EXTENSIONS, LeftOut, SourceItem
from .vos import check_stored_sequence, prepare_sequence

VIDEO_MEMBERS = tuple(sorted(ext.lstrip(".") for ext in VIDEO_EXTENSIONS))
MASK_STRIP = "masks.png"


@dataclass(frozen=True)
class MaskRules:
    """Which ids a stored mask may hold: 0..num_classes-1, plus ignore_index if set."""

    num_classes: int
    ignore_index: int | None = IGNORE_INDEX

    def check(self, mask: np.ndarray) -> None:
        """Raise ValueError naming the ids a mask must not hold."""
        present = np.unique(mask)
        bad = present[~valid_mask_ids(self.num_classes, ignore_index=self.ignore_index)[present]]
        if bad.size:
            allowed = f"0..{self.num_classes - 1}"
            if self.ignore_index is not None:
                allowed += f" and {self.ignore_index}"
            raise ValueError(f"mask has class ids outside {allowed}: {', '.join(map(str, bad))}")


@dataclass(frozen=True)
class PrepareOptions:
    """What every input of one build shares."""

    kind: str
    source_root: Path
    layout: str | None = None
    mask_rules: MaskRules | None = None
    compute_saliency: bool = False
    masks_root: Path | None = None
    resize_to: tuple[int, int] | None = None  # segmentation: (height, width) of every sample
    transcode: TranscodeSettings | None = None  # video: re-encode each clip (None: as is)


@dataclass
class PreparedSample:
    """A validated sample: members (bytes, or a path read when writing) and metadata."""

    key: str
    split: str
    files: dict[str, bytes | Path]
    meta: dict = field(default_factory=dict)
    left_out: list[LeftOut] = field(default_factory=list)  # vos: frames left out of a sequence


def prepare_sample(item: SourceItem, options: PrepareOptions) -> PreparedSample | LeftOut:
    """Validate one input and build its sample; never raises for bad input."""
    preparers = {
        "video": _prepare_video,
        "image": _prepare_image,
        "segmentation": _prepare_segmentation,
        "saliency": _prepare_saliency,
        "vos": _prepare_vos,
    }
    try:
        return preparers[options.kind](item, options)
    except (ValueError, OSError) as error:
        return LeftOut(_display(item.path, options.source_root), str(error))
    except _NoSalientObject as error:
        return LeftOut(_display(item.path, options.source_root), str(error), broken=False)


class _NoSalientObject(Exception):
    """The computed saliency mask was dropped by post-processing."""


def _display(path: Path, root: Path) -> str:
    base = root if root.is_dir() else root.parent
    return str(path.relative_to(base)) if path.is_relative_to(base) else str(path)


def _base_meta(item: SourceItem, options: PrepareOptions) -> dict:
    meta = {"source": _display(item.path, options.source_root), "label": item.label}
    if item.class_name is not None:
        meta["class_name"] = item.class_name
    meta.update(dict(item.extra))
    return meta


def _finish(item: SourceItem, files: dict, meta: dict) -> PreparedSample:
    files["cls"] = str(meta["label"]).encode()
    files["json"] = json.dumps(meta, sort_keys=True).encode()
    return PreparedSample(item.key, item.split, files, meta)


def _prepare_video(item: SourceItem, options: PrepareOptions) -> PreparedSample:
    original = item.path.read_bytes()
    source = probe_video(original)
    if options.transcode is None:
        info, files = source, {item.path.suffix.lower().lstrip("."): item.path}
    else:
        clip = transcode_clip(original, options.transcode)
        info, files = probe_video(clip), {"mp4": clip}
        if abs(info.num_frames - source.num_frames) > 1:
            raise ValueError(
                f"transcoding changed the frame count from {source.num_frames} to "
                f"{info.num_frames}; build with --transcode none"
            )
    meta = _base_meta(item, options) | {
        "num_frames": info.num_frames,
        "fps": round(info.fps, 4),
        "width": info.width,
        "height": info.height,
        "duration_s": round(info.duration_s, 4),
    }
    if options.transcode is not None:
        meta |= {"source_width": source.width, "source_height": source.height}
    if item.mask_path is not None:
        files[MASK_STRIP] = _mask_strip(item, source, info, options.mask_rules)
    return _finish(item, files, meta)


def _mask_strip(
    item: SourceItem, source: VideoInfo, stored: VideoInfo, rules: MaskRules | None
) -> bytes:
    """The clip's mask strip, checked against the source clip, resized (nearest) to the stored one."""
    strip_bytes = item.mask_path.read_bytes()
    strip = decode_mask(strip_bytes)
    check_mask_strip(strip, source.num_frames, source.height, source.width, rules)
    if stored.num_frames != source.num_frames:
        raise ValueError(
            f"transcoding changed the frame count of a clip with masks ({source.num_frames} to "
            f"{stored.num_frames}); build with --transcode none"
        )
    if (stored.width, stored.height) == (source.width, source.height):
        return strip_bytes
    frames = strip.reshape(source.num_frames, source.height, source.width)
    size = (stored.width, stored.height)
    resized = [np.asarray(Image.fromarray(frame).resize(size, Image.NEAREST)) for frame in frames]
    return encode_mask_png(np.concatenate(resized))


def check_mask_strip(
    strip: np.ndarray, num_frames: int, height: int, width: int, rules: MaskRules | None
) -> None:
    """Raise ValueError unless a mask strip is num_frames masks of height x width."""
    if strip.shape != (num_frames * height, width):
        raise ValueError(
            f"mask strip is {strip.shape[1]}x{strip.shape[0]}; expected {width}x{num_frames * height} "
            f"({num_frames} frames of {width}x{height} stacked vertically)"
        )
    if rules is not None:
        rules.check(strip)


def _image_member(data: bytes) -> tuple[bytes, np.ndarray, dict]:
    """Validate an image; JPEG is stored as is, anything else re-encoded as JPEG q95."""
    rgb = decode_image(data)
    source_format, _ = peek_image(data)
    meta = {"width": int(rgb.shape[1]), "height": int(rgb.shape[0])}
    if source_format == "JPEG":
        return data, rgb, meta
    return encode_jpeg(rgb), rgb, meta | {"transcoded_from": source_format}


def _prepare_image(item: SourceItem, options: PrepareOptions) -> PreparedSample:
    jpg, _, image_meta = _image_member(item.path.read_bytes())
    return _finish(item, {"jpg": jpg}, _base_meta(item, options) | image_meta)


def _prepare_segmentation(item: SourceItem, options: PrepareOptions) -> PreparedSample:
    jpg, rgb, image_meta = _image_member(item.path.read_bytes())
    mask_bytes = item.mask_path.read_bytes()
    mask = decode_mask(mask_bytes)
    reencode = peek_image(mask_bytes) not in (("PNG", "P"), ("PNG", "L"))
    if dict(item.extra).get("cityscapes_mask") == "label_ids":
        if mask.max(initial=0) > CITYSCAPES_MAX_LABEL_ID:
            raise ValueError(f"labelIds mask has ids above {CITYSCAPES_MAX_LABEL_ID}")
        mask, reencode = CITYSCAPES_LABEL_TO_TRAIN[mask], True
    if mask.shape != rgb.shape[:2]:
        raise ValueError(
            f"mask is {mask.shape[1]}x{mask.shape[0]} but image is {rgb.shape[1]}x{rgb.shape[0]}"
        )
    options.mask_rules.check(mask)
    meta = _base_meta(item, options) | image_meta
    if options.resize_to is not None:
        rgb, mask = resize_image_and_mask(rgb, mask, options.resize_to)
        jpg, reencode = encode_jpeg(rgb), True
        meta |= {"resized_from": [image_meta["height"], image_meta["width"]],
                 "height": int(rgb.shape[0]), "width": int(rgb.shape[1])}  # fmt: skip
    meta |= {"mask_source": _display(item.mask_path, options.source_root),
             "class_ids": [int(v) for v in np.unique(mask)]}  # fmt: skip
    png = encode_mask_png(mask) if reencode else mask_bytes
    return _finish(item, {"jpg": jpg, "png": png}, meta)


def _prepare_vos(item: SourceItem, options: PrepareOptions) -> PreparedSample:
    files, meta, skipped = prepare_sequence(item)
    meta["source"] = _display(item.path, options.source_root)
    left_out = [
        LeftOut(_display(item.path / f"{name}.jpg", options.source_root), reason)
        for name, reason in skipped.items()
    ]
    return PreparedSample(item.key, item.split, files, meta, left_out)


def resize_image_and_mask(
    rgb: np.ndarray, mask: np.ndarray, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Resize an RGB image [H, W, 3] (bicubic) and its class mask [H, W] (nearest).

    To `size` = (height, width), once, at build time, as ReCo's Cityscapes
    preprocessing does.
    """
    height, width = size
    image = Image.fromarray(rgb).resize((width, height), Image.Resampling.BICUBIC)
    resized = Image.fromarray(mask).resize((width, height), Image.Resampling.NEAREST)
    return np.asarray(image), np.asarray(resized)


def _prepare_saliency(item: SourceItem, options: PrepareOptions) -> PreparedSample:
    jpg, rgb, image_meta = _image_member(item.path.read_bytes())
    meta = _base_meta(item, options) | image_meta
    if options.compute_saliency:
        mask = compute_saliency_mask(rgb)
        if mask is None:
            raise _NoSalientObject("no salient object (foreground < 1 % after post-processing)")
        meta["mask_source"] = "computed: boolean map saliency + MaskContrast post-processing"
    else:
        mask = read_saliency_mask(item.mask_path.read_bytes())
        meta["mask_source"] = _display(item.mask_path, options.masks_root or options.source_root)
        if mask.shape != rgb.shape[:2]:
            raise ValueError(
                f"mask is {mask.shape[1]}x{mask.shape[0]} but image is {rgb.shape[1]}x{rgb.shape[0]}"
            )
    meta["foreground"] = round(float(mask.mean()), 4)
    return _finish(item, {"jpg": jpg, "png": encode_mask_png(mask.astype(np.uint8))}, meta)


def check_stored_sample(kind: str, sample: dict[str, bytes], rules: MaskRules | None) -> None:
    """Decode every member of a stored sample; raise ValueError with the first problem.

    Args:
        kind: The shard kind from the manifest.
        sample: Members by extension (webdataset grouping), metadata keys ignored.
        rules: The manifest's mask rules (segmentation, saliency, video masks).
    """
    try:
        meta = json.loads(sample["json"]) if "json" in sample else {}
        int(sample["cls"]) if "cls" in sample else None
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"bad json/cls member: {error}") from error
    if kind == "vos":
        check_stored_sequence(sample)
        return
    if kind == "video":
        members = [ext for ext in VIDEO_MEMBERS if ext in sample]
        if not members:
            raise ValueError("sample has no video member")
        num_frames = decode_every_frame(sample[members[0]])
        if MASK_STRIP in sample:
            check_mask_strip(decode_mask(sample[MASK_STRIP]), num_frames, meta["height"],
                             meta["width"], rules)  # fmt: skip
        return
    if "jpg" not in sample:
        raise ValueError("sample has no jpg member")
    rgb = decode_image(sample["jpg"])
    if kind in ("segmentation", "saliency"):
        if "png" not in sample:
            raise ValueError("sample has no png (mask) member")
        mask = decode_mask(sample["png"])
        if mask.shape != rgb.shape[:2]:
            raise ValueError("mask and image sizes differ")
        if rules is not None:
            rules.check(mask)
