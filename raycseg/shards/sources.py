"""Find the inputs of `cseg shards build`: one `SourceItem` per sample to be.

Accepted sources (README.md, Data):

* video: class folders (`SRC/<class>/<clip>`), a flat folder (label -1), a
  `path,label` CSV (paths relative to the CSV), or Kinetics annotation CSVs
  (`label,youtube_id,time_start,time_end,split`; clips named
  `<youtube_id>_<start:06d>_<end:06d>.<ext>` anywhere under the CSV's folder);
* image: class folders (ImageNet style) or a flat folder;
* segmentation: `--layout voc` (JPEGImages + SegmentationClass +
  ImageSets/Segmentation/{train,val}.txt), `cityscapes` (leftImg8bit + gtFine
  train/val) or `ade20k` (images/ + annotations/, optionally with
  training/validation subfolders);
* saliency: an image folder plus a mask folder paired by file stem, or an
  image folder alone when masks are computed; `raycseg.shards.split_lists`
  then keeps the stems of a split list (by default a VOC tree's train list).

For folder sources, top-level `train/`, `val/` (or `validation/`) and `test/`
subfolders become splits; otherwise the split is `all`. Inputs that cannot be
paired (a listed id without its image, an image without its mask) are
returned as `LeftOut` entries; `DataError` means there is nothing to build.
Keys come from the relative path (without extension), with `/` turned into
`__` and any other character outside `[A-Za-z0-9_-]` into `_`, so webdataset
never splits a key at a dot.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from raycseg.errors import DataError

from ..media.labels import ADE20K_CLASSES, CITYSCAPES_CLASSES, SALIENCY_CLASSES, VOC_CLASSES

KINDS = ("video", "image", "segmentation", "saliency", "vos")
LAYOUTS = ("voc", "cityscapes", "ade20k")
VIDEO_EXTENSIONS = {".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".ogv"}
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
_SPLIT_DIRS = {"train": "train", "val": "val", "validation": "val", "test": "test"}


@dataclass(frozen=True)
class SourceItem:
    """One input: its files, split, label and any extra metadata."""

    key: str
    split: str
    path: Path
    mask_path: Path | None = None
    label: int = -1
    class_name: str | None = None
    extra: tuple[tuple[str, object], ...] = ()


@dataclass(frozen=True)
class LeftOut:
    """An input that was not stored, with the reason. `broken` inputs make build exit 1."""

    path: str
    reason: str
    broken: bool = True


@dataclass
class SourceListing:
    """Everything discovery found."""

    items: list[SourceItem]
    classes: list[str]
    left_out: list[LeftOut] = field(default_factory=list)
    mask_classes: list[str] | None = None
    selection: dict | None = None  # saliency only: what the split lists kept (split_lists.py)


def make_key(relative: Path | str) -> str:
    """Turn a path relative to the source root into a webdataset-safe key."""
    stem = str(Path(relative).with_suffix("")).replace("\\", "/")
    return re.sub(r"[^A-Za-z0-9_\-]", "_", stem.replace("/", "__"))


def _files(root: Path, extensions: set[str], *, recursive: bool = True) -> list[Path]:
    pattern = root.rglob("*") if recursive else root.iterdir()
    return sorted(p for p in pattern if p.is_file() and p.suffix.lower() in extensions)


def split_roots(src: Path) -> list[tuple[str, Path]]:
    """Top-level train/val/test folders as splits, else the whole source as `all`."""
    subdirs = [p for p in sorted(src.iterdir()) if p.is_dir()]
    named = [(_SPLIT_DIRS[p.name.lower()], p) for p in subdirs if p.name.lower() in _SPLIT_DIRS]
    return named if named and len(named) == len(subdirs) else [("all", src)]


def require_source(src: Path, what: str) -> Path:
    """Raise DataError unless `src` exists."""
    if not src.exists():
        raise DataError(
            f"source {src} does not exist; pass the folder (or CSV) that holds the {what}"
        )
    return src


def _folder_items(src: Path, extensions: set[str], what: str) -> tuple[list[SourceItem], list[str]]:
    """Class folders or a flat folder, per split root."""
    items: list[SourceItem] = []
    classes: set[str] = set()
    entries = []
    for split, root in split_roots(src):
        top = _files(root, extensions, recursive=False)
        class_dirs = [d for d in sorted(root.iterdir()) if d.is_dir() and _files(d, extensions)]
        if top and class_dirs:
            raise DataError(
                f"{root} mixes {what} files and class folders; "
                "put every file in a class folder, or none"
            )
        for directory in class_dirs:
            classes.add(directory.name)
            entries += [(split, path, directory.name) for path in _files(directory, extensions)]
        entries += [(split, path, None) for path in top]
    class_list = sorted(classes)
    for split, path, class_name in entries:
        label = class_list.index(class_name) if class_name is not None else -1
        key = make_key(path.relative_to(src))
        items.append(SourceItem(key, split, path, label=label, class_name=class_name))
    return items, class_list


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        return []
    header = [cell.strip().lower() for cell in rows[0]]
    if "youtube_id" in header or header[:2] == ["path", "label"]:
        return [
            dict(zip(header, (c.strip() for c in row), strict=False)) for row in rows[1:] if row
        ]
    return [{"path": row[0].strip(), "label": row[1].strip()} for row in rows if len(row) >= 2]


def _video_csv_items(csv_path: Path) -> SourceListing:
    """A `path,label` CSV or Kinetics annotation CSV."""
    rows = _csv_rows(csv_path)
    base = csv_path.parent
    left_out: list[LeftOut] = []
    entries: list[tuple[str, Path, str, tuple]] = []
    if rows and "youtube_id" in rows[0]:
        on_disk = {p.stem: p for p in _files(base, VIDEO_EXTENSIONS)}
        for row in rows:
            name = f"{row['youtube_id']}_{int(float(row['time_start'])):06d}_{int(float(row['time_end'])):06d}"
            split = _SPLIT_DIRS.get(row.get("split", "").lower(), "all")
            extra = (("youtube_id", row["youtube_id"]), ("time_start", row["time_start"]),
                     ("time_end", row["time_end"]))  # fmt: skip
            if name not in on_disk:
                left_out.append(
                    LeftOut(name, f"clip listed in {csv_path.name} not found under {base}")
                )
                continue
            entries.append((split, on_disk[name], row["label"], extra))
    else:
        for row in rows:
            path = Path(os.path.abspath(base / row["path"]))
            if not path.is_file():
                left_out.append(LeftOut(str(path), f"listed in {csv_path.name} but missing"))
                continue
            entries.append(("all", path, row["label"], ()))
    names = sorted({label for _, _, label, _ in entries})
    numeric = bool(names) and all(re.fullmatch(r"-?\d+", name) for name in names)
    classes = [str(i) for i in range(max(int(n) for n in names) + 1)] if numeric else names
    items = []
    for split, path, label, extra in entries:
        label_id = int(label) if numeric else names.index(label)
        relative = path.relative_to(base) if path.is_relative_to(base) else Path(path.name)
        class_name = None if label_id < 0 else classes[label_id]
        items.append(SourceItem(make_key(relative), split, path, label=label_id,
                                class_name=class_name, extra=extra))  # fmt: skip
    return SourceListing(items, classes, left_out)


def _attach_video_masks(items: list[SourceItem], masks_dir: Path) -> list[SourceItem]:
    """Pair each clip with `masks_dir/<stem>.png` (per-frame masks stacked vertically)."""
    masks = {p.stem: p for p in _files(require_source(masks_dir, "mask strips"), {".png"})}
    return [replace(item, mask_path=masks.get(item.path.stem)) for item in items]


def list_video_sources(src: Path, masks_dir: Path | None = None) -> SourceListing:
    """Discover clips (see the module docstring for the accepted layouts)."""
    require_source(src, "clips")
    if src.is_file() and src.suffix.lower() == ".csv":
        listing = _video_csv_items(src)
    elif src.is_dir():
        items, classes = _folder_items(src, VIDEO_EXTENSIONS, "video")
        listing = SourceListing(items, classes)
    else:
        raise DataError(
            f"{src} is neither a folder of clips nor a CSV; pass a folder or a .csv file"
        )
    if masks_dir is not None:
        listing.items = _attach_video_masks(listing.items, masks_dir)
    return listing


def list_image_sources(src: Path) -> SourceListing:
    """Discover images in class folders or a flat folder."""
    require_source(src, "images")
    if not src.is_dir():
        raise DataError(f"{src} is not a folder; pass a folder of images (or of class folders)")
    items, classes = _folder_items(src, IMAGE_EXTENSIONS, "image")
    return SourceListing(items, classes)


def _voc_root(src: Path) -> Path:
    for candidate in (src, src / "VOC2012", src / "VOCdevkit" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir() and (candidate / "SegmentationClass").is_dir():
            return candidate
    raise DataError(
        f"{src} is not a PASCAL VOC tree (no JPEGImages/ and SegmentationClass/); "
        "pass the VOC2012 folder, or choose --layout cityscapes|ade20k"
    )


def _list_voc(src: Path) -> SourceListing:
    root = _voc_root(src)
    lists = root / "ImageSets" / "Segmentation"
    split_ids = {
        split: [
            line.strip() for line in (lists / f"{split}.txt").read_text().split() if line.strip()
        ]
        for split in ("train", "val")
        if (lists / f"{split}.txt").is_file()
    }
    if not split_ids:
        split_ids = {"all": sorted(p.stem for p in _files(root / "SegmentationClass", {".png"}))}
    items, left_out = [], []
    for split, ids in split_ids.items():
        for image_id in ids:
            image = root / "JPEGImages" / f"{image_id}.jpg"
            mask = root / "SegmentationClass" / f"{image_id}.png"
            missing = [p.name for p in (image, mask) if not p.is_file()]
            if missing:
                left_out.append(
                    LeftOut(image_id, f"listed in {split}.txt but {missing[0]} is missing")
                )
                continue
            items.append(SourceItem(make_key(image_id), split, image, mask))
    return SourceListing(items, list(VOC_CLASSES), left_out)


def _list_cityscapes(src: Path) -> SourceListing:
    images_root, labels_root = src / "leftImg8bit", src / "gtFine"
    if not images_root.is_dir() or not labels_root.is_dir():
        raise DataError(
            f"{src} is not a Cityscapes tree (no leftImg8bit/ and gtFine/); check --layout"
        )
    items, left_out = [], []
    for split in ("train", "val"):  # test annotations are placeholders
        for image in (
            _files(images_root / split, {".png"}) if (images_root / split).is_dir() else []
        ):
            prefix = image.name.removesuffix("_leftImg8bit.png")
            city_dir = labels_root / split / image.parent.name
            train_ids = city_dir / f"{prefix}_gtFine_labelTrainIds.png"
            label_ids = city_dir / f"{prefix}_gtFine_labelIds.png"
            mask = train_ids if train_ids.is_file() else label_ids if label_ids.is_file() else None
            if mask is None:
                left_out.append(LeftOut(str(image), "no gtFine labelTrainIds/labelIds mask"))
                continue
            key = make_key(image.relative_to(images_root))
            mapping = "label_ids" if mask == label_ids else "train_ids"
            items.append(SourceItem(key, split, image, mask, extra=(("cityscapes_mask", mapping),)))
    return SourceListing(items, list(CITYSCAPES_CLASSES), left_out)


def _paired_by_stem(
    images_dir: Path, masks_dir: Path, split: str, mask_extensions: set[str]
) -> tuple[list[SourceItem], list[LeftOut]]:
    masks = {
        p.relative_to(masks_dir).with_suffix(""): p for p in _files(masks_dir, mask_extensions)
    }
    by_stem = {p.stem: p for p in masks.values()}
    items, left_out = [], []
    for image in _files(images_dir, IMAGE_EXTENSIONS):
        relative = image.relative_to(images_dir).with_suffix("")
        mask = masks.get(relative) or by_stem.get(image.stem)
        if mask is None:
            left_out.append(LeftOut(str(image), f"no mask named {image.stem}.png in {masks_dir}"))
            continue
        items.append(SourceItem(make_key(relative), split, image, mask))
    return items, left_out


def _list_ade20k(src: Path) -> SourceListing:
    images_root, masks_root = src / "images", src / "annotations"
    if not images_root.is_dir() or not masks_root.is_dir():
        raise DataError(
            f"{src} is not an ADE20K tree (no images/ and annotations/); check --layout"
        )
    subsets = {"training": "train", "validation": "val"}
    pairs = [
        (subsets[d.name], d, masks_root / d.name)
        for d in sorted(images_root.iterdir())
        if d.is_dir() and d.name in subsets
    ] or [("all", images_root, masks_root)]
    items, left_out = [], []
    for split, images_dir, masks_dir in pairs:
        found, missing = _paired_by_stem(images_dir, masks_dir, split, {".png"})
        items += found
        left_out += missing
    return SourceListing(items, list(ADE20K_CLASSES), left_out)


def list_segmentation_sources(src: Path, layout: str) -> SourceListing:
    """Discover image/mask pairs of a segmentation dataset in the given layout."""
    require_source(src, "segmentation dataset")
    listers = {"voc": _list_voc, "cityscapes": _list_cityscapes, "ade20k": _list_ade20k}
    if layout not in listers:
        raise DataError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    return listers[layout](src)


def list_saliency_sources(src: Path, masks_dir: Path | None, compute: bool) -> SourceListing:
    """Discover images paired with saliency masks by stem (or alone, with `compute`)."""
    require_source(src, "images")
    if masks_dir is None and not compute:
        raise DataError("saliency shards need masks: pass --masks DIR, or --compute to derive them")
    items, left_out = [], []
    for split, root in split_roots(src):
        if compute:
            items += [
                SourceItem(make_key(p.relative_to(root)), split, p)
                for p in _files(root, IMAGE_EXTENSIONS)
            ]
            continue
        split_masks = masks_dir / root.relative_to(src)
        found, missing = _paired_by_stem(root, split_masks if split_masks.is_dir() else masks_dir,
                                         split, IMAGE_EXTENSIONS)  # fmt: skip
        items += found
        left_out += missing
    return SourceListing(items, list(SALIENCY_CLASSES), left_out)


def list_sources(
    kind: str,
    src: Path,
    *,
    layout: str = "voc",
    masks_dir: Path | None = None,
    compute_saliency: bool = False,
) -> SourceListing:
    """Discover the inputs of one build.

    Raises:
        DataError: unknown kind/layout, a missing source, or no input at all.
    """
    if kind == "video":
        listing = list_video_sources(src, masks_dir)
    elif kind == "image":
        listing = list_image_sources(src)
    elif kind == "segmentation":
        listing = list_segmentation_sources(src, layout)
    elif kind == "saliency":
        listing = list_saliency_sources(src, masks_dir, compute_saliency)
    else:
        raise DataError(f"unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
    if not listing.items:
        hint = (
            f" ({len(listing.left_out)} unusable: {listing.left_out[0].reason})"
            if listing.left_out
            else ""
        )
        raise DataError(
            f"no {kind} inputs found in {src}{hint}; check the path and --kind/--layout"
        )
    return _with_unique_keys(listing)


def _with_unique_keys(listing: SourceListing) -> SourceListing:
    """Append -2, -3, ... to keys that two inputs would share."""
    seen: dict[str, int] = {}
    unique = []
    for item in listing.items:
        count = seen.get(item.key, 0) + 1
        seen[item.key] = count
        key = item.key if count == 1 else f"{item.key}-{count}"
        unique.append(replace(item, key=key))
    listing.items = unique
    return listing
