"""Video object segmentation (VOS) shards: one sample per annotated sequence.

`cseg shards build --kind vos --layout davis SRC OUT` reads the DAVIS-2017 layout::

    SRC/JPEGImages/480p/<seq>/NNNNN.jpg
    SRC/Annotations/480p/<seq>/NNNNN.png    palette PNGs: 0 = background, 1..N = objects,
                                            255 = void
    SRC/ImageSets/2017/<split>.txt          sequence names, one per line

Sample members (one sample = one sequence, its key the sequence name)::

    NNNNN.jpg    every frame, as stored
    NNNNN.png    every frame's mask that exists, as stored (frame 0's is required)
    json         {"sequence", "frames": [names in order], "annotated": [names],
                  "num_objects": N, "height", "width", "skipped_frames": [...]}

N is the largest object id of the first frame's mask, as the official DAVIS code takes
it; a later mask may hold 0..N and 255. A frame whose JPEG or mask does not decode, has
the wrong size or holds another id is left out of its sequence and listed in the
manifest's `skipped` with the reason (the build then exits 1, as for the other kinds); a
sequence whose first frame or first mask is unusable is left out whole.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from raycseg.errors import DataError

from ..media.images import decode_image, decode_mask, peek_image
from ..media.labels import IGNORE_INDEX
from .sources import LeftOut, SourceItem, SourceListing, make_key, require_source

VOS_LAYOUTS = ("davis",)
RESOLUTION = "480p"


def list_vos_sources(src: Path, layout: str) -> SourceListing:
    """The sequences of a VOS dataset tree in `layout` (davis).

    Raises:
        DataError: another layout, a missing source or no sequence at all.
    """
    require_source(src, "video object segmentation dataset")
    if layout not in VOS_LAYOUTS:
        raise DataError(f"--kind vos reads --layout {' or '.join(VOS_LAYOUTS)}, not {layout!r}")
    listing = list_davis_sources(src)
    if not listing.items:
        raise DataError(f"no sequence with frames in {src}; check the path and --layout")
    return listing


def list_davis_sources(src: Path) -> SourceListing:
    """One item per sequence named in `ImageSets/2017/<split>.txt` (or every sequence, as `all`)."""
    images, masks = src / "JPEGImages" / RESOLUTION, src / "Annotations" / RESOLUTION
    if not images.is_dir() or not masks.is_dir():
        raise DataError(
            f"{src} is not a DAVIS tree (no JPEGImages/{RESOLUTION}/ and Annotations/{RESOLUTION}/); "
            "pass the DAVIS folder that holds them"
        )
    lists = sorted((src / "ImageSets" / "2017").glob("*.txt"))
    by_split = {path.stem: path.read_text().split() for path in lists}
    if not by_split:
        by_split = {"all": sorted(p.name for p in images.iterdir() if p.is_dir())}
    items, left_out = [], []
    for split, sequences in sorted(by_split.items()):
        for sequence in sequences:
            frames = images / sequence
            if not frames.is_dir() or not any(frames.glob("*.jpg")):
                left_out.append(LeftOut(sequence, f"listed in {split}.txt but has no frames"))
                continue
            items.append(SourceItem(make_key(sequence), split, frames, masks / sequence))
    return SourceListing(items, ["background", "object"], left_out)


def prepare_sequence(item: SourceItem) -> tuple[dict[str, bytes], dict, dict[str, str]]:
    """A sequence's members, metadata and the frames left out ({frame name: reason}).

    Raises:
        ValueError: the first frame or its mask is unusable (the sequence is left out).
    """
    names = sorted(path.stem for path in item.path.glob("*.jpg"))
    files: dict[str, bytes] = {}
    skipped: dict[str, str] = {}
    kept, annotated, size, num_objects = [], [], None, None
    for name in names:
        image_path, mask_path = item.path / f"{name}.jpg", item.mask_path / f"{name}.png"
        try:
            jpg = image_path.read_bytes()
            height, width = decode_image(jpg).shape[:2]
            if size is not None and (height, width) != size:
                raise ValueError(f"frame is {width}x{height}, the sequence's first is "
                                 f"{size[1]}x{size[0]}")  # fmt: skip
            png = mask_path.read_bytes() if mask_path.is_file() else None
            if png is None and not kept:
                raise ValueError(f"the first frame has no mask {mask_path.name}")
            if png is not None:
                mask = _check_mask(png, (height, width), num_objects)
        except (ValueError, OSError) as error:
            if not kept:
                raise ValueError(f"{image_path.parent.name}/{name}: {error}") from None
            skipped[name] = str(error)
            continue
        if size is None:
            size, num_objects = (height, width), int(mask[mask != IGNORE_INDEX].max(initial=0))
            if num_objects == 0:
                raise ValueError(f"{item.key}/{name}: the first mask holds no object (ids 1..N)")
        kept.append(name)
        files[f"{name}.jpg"] = jpg
        if png is not None:
            annotated.append(name)
            files[f"{name}.png"] = png
    meta = {
        "sequence": item.key, "frames": kept, "annotated": annotated, "num_objects": num_objects,
        "height": size[0], "width": size[1], "num_frames": len(kept), "label": -1,
        "skipped_frames": list(skipped),
    }  # fmt: skip
    files["json"] = json.dumps(meta, sort_keys=True).encode()
    files["cls"] = b"-1"
    return files, meta, skipped


def _check_mask(png: bytes, size: tuple[int, int], num_objects: int | None) -> np.ndarray:
    """Decode a DAVIS mask; raise ValueError unless it is a PNG of `size` with ids 0..N or 255."""
    if peek_image(png)[0] != "PNG":
        raise ValueError("mask is not a PNG")
    mask = decode_mask(png)
    if mask.shape != size:
        raise ValueError(
            f"mask is {mask.shape[1]}x{mask.shape[0]} but the frame is {size[1]}x{size[0]}"
        )
    if num_objects is not None:
        ids = np.unique(mask)
        bad = ids[(ids > num_objects) & (ids != IGNORE_INDEX)]
        if bad.size:
            raise ValueError(
                f"mask has object ids {', '.join(map(str, bad))}; the first frame has 1..{num_objects}"
            )
    return mask


def check_stored_sequence(sample: dict[str, bytes]) -> None:
    """Decode every frame and mask of a stored sequence; raise ValueError with the first problem."""
    meta = json.loads(sample["json"])
    size = (meta["height"], meta["width"])
    for name in meta["frames"]:
        if f"{name}.jpg" not in sample:
            raise ValueError(f"frame {name} is listed but not stored")
        if decode_image(sample[f"{name}.jpg"]).shape[:2] != size:
            raise ValueError(f"frame {name} is not {size[1]}x{size[0]}")
    for name in meta["annotated"]:
        _check_mask(sample[f"{name}.png"], size, meta["num_objects"])
