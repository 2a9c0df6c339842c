"""Split lists of a saliency build: which image stems go into the shards.

MaskContrast pretrains on VOC trainaug only, so saliency shards must never
hold the evaluation images. A build keeps the images whose file stem is in
the *split list* (`--split-list FILE`) and not in the *exclude list*
(`--exclude FILE`); with both, exclude wins. When neither is given and the
images folder is `<root>/JPEGImages` next to `<root>/ImageSets/Segmentation/`
(a VOC tree), the split list defaults to `train_aug.txt`, else
`trainaug.txt`, else `train.txt` there; the val list is never a default.
Outside a VOC tree, and without lists, every pair is kept.

A list file holds one stem per line; blank lines and surrounding whitespace
are ignored. Only a line's first column counts, and of it only the file
stem, so DeepLab's `/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png`
lines read as `<id>` (a stem cannot contain whitespace).

Images outside the split list or in the exclude list are left out by design
(the manifest's `dropped`, build exits 0). Listed stems without an
image/mask pair are counted, not treated as broken. The manifest's
`selection` entry records it all:

* `split_list`: the keep list's path, or null when every image was kept;
* `split_list_default`: true when that list was picked from the VOC tree;
* `exclude_list`: the exclude list's path, or null;
* `kept`: inputs selected for the build (samples written can be fewer:
  see `skipped` and `dropped`);
* `excluded`: images left out because the exclude list names them;
* `not_in_list`: images left out because the split list does not name them;
* `listed_without_pair`: listed (and not excluded) stems with no image, or
  with an image but no mask; `listed_without_pair_examples`: the first few.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from raycseg.errors import DataError

from .sources import IMAGE_EXTENSIONS, LeftOut, SourceListing

VOC_DEFAULT_LISTS = ("train_aug.txt", "trainaug.txt", "train.txt")
EXAMPLES_SHOWN = 5


@dataclass(frozen=True)
class SplitLists:
    """The stems to keep (`keep`; None keeps all) and to drop (`exclude`), with their files."""

    keep: frozenset[str] | None = None
    exclude: frozenset[str] = frozenset()
    keep_path: Path | None = None
    exclude_path: Path | None = None
    keep_is_default: bool = False


def read_stem_list(path: Path, what: str) -> frozenset[str]:
    """Read a list file: one image stem per line (see the module docstring).

    Args:
        path: The list file.
        what: How the error names it, e.g. "--split-list".

    Raises:
        DataError: the file does not exist or lists no stem.
    """
    if not path.is_file():
        raise DataError(
            f"{what} {path} does not exist; pass a text file with one image stem per line"
        )
    stems = frozenset(_line_stem(line) for line in path.read_text().splitlines() if line.strip())
    if not stems:
        raise DataError(f"{what} {path} is empty; put one image stem per line in it")
    return stems


def _line_stem(line: str) -> str:
    name = line.split(maxsplit=1)[0].replace("\\", "/").rsplit("/", 1)[-1]
    suffix = Path(name).suffix
    return name[: -len(suffix)] if suffix.lower() in IMAGE_EXTENSIONS else name


def default_split_list(images_dir: Path) -> Path | None:
    """The keep list of a VOC tree's `JPEGImages` folder; None outside a VOC tree.

    Raises:
        DataError: a VOC tree with none of `VOC_DEFAULT_LISTS`.
    """
    lists = images_dir.parent / "ImageSets" / "Segmentation"
    if images_dir.name != "JPEGImages" or not lists.is_dir():
        return None
    for name in VOC_DEFAULT_LISTS:
        if (lists / name).is_file():
            return lists / name
    raise DataError(
        f"{images_dir} is in a VOC tree but {lists} has no {', '.join(VOC_DEFAULT_LISTS)}; "
        "pass --split-list FILE (the stems to keep) or --exclude FILE (e.g. its val.txt)"
    )


def load_split_lists(
    images_dir: Path, split_list: Path | None = None, exclude_list: Path | None = None
) -> SplitLists:
    """Read the given lists, or find the VOC default when neither is given.

    Raises:
        DataError: a list file is missing or empty, or a VOC tree has no train list.
    """
    keep_path, is_default = split_list, False
    if split_list is None and exclude_list is None:
        keep_path = default_split_list(images_dir)
        is_default = keep_path is not None
    keep_what = "the default split list" if is_default else "--split-list"
    return SplitLists(
        keep=read_stem_list(keep_path, keep_what) if keep_path else None,
        exclude=read_stem_list(exclude_list, "--exclude") if exclude_list else frozenset(),
        keep_path=keep_path,
        exclude_path=exclude_list,
        keep_is_default=is_default,
    )


def _reason_left_out(stem: str, lists: SplitLists) -> str | None:
    """Why the lists leave this stem out, or None when it is kept."""
    if stem in lists.exclude:
        return f"excluded by {lists.exclude_path.name}"
    if lists.keep is not None and stem not in lists.keep:
        return f"not in {lists.keep_path.name}"
    return None


def select_by_stem(listing: SourceListing, lists: SplitLists, src: Path) -> SourceListing:
    """Keep the inputs the lists allow; record the rest (see the module docstring).

    Args:
        listing: Saliency inputs; its `left_out` are images without a mask.
        lists: The split and exclude lists.
        src: The images folder (left-out paths are shown relative to it).

    Returns:
        A new listing with the kept items, the by-design omissions added to
        `left_out` (`broken=False`) and the manifest record in `selection`.

    Raises:
        DataError: the split list names no image, or nothing is left to build.
    """
    unpaired = [Path(x.path) for x in listing.left_out]
    images = [item.path for item in listing.items] + unpaired
    if lists.keep is not None and not lists.keep & {path.stem for path in images}:
        raise DataError(
            f"none of the {len(lists.keep)} stems in {lists.keep_path} names an image in {src}; "
            "pass the split list of these images with --split-list FILE"
        )
    items = [item for item in listing.items if _reason_left_out(item.path.stem, lists) is None]
    without_pair = sorted((lists.keep or set()) - lists.exclude - {i.path.stem for i in items})
    if not items:
        raise DataError(
            f"no image in {src} is left after the split lists ({len(without_pair)} listed stems "
            "have no image/mask pair); check --split-list, --exclude and --masks"
        )
    left_out_by_design = [
        LeftOut(_shown(path, src), reason, broken=False)
        for path in images
        if (reason := _reason_left_out(path.stem, lists))
    ]
    unpaired_broken = [
        x for x in listing.left_out if lists.keep is None and Path(x.path).stem not in lists.exclude
    ]
    excluded = sum(path.stem in lists.exclude for path in images)
    record = {
        "split_list": str(lists.keep_path) if lists.keep_path else None,
        "split_list_default": lists.keep_is_default,
        "exclude_list": str(lists.exclude_path) if lists.exclude_path else None,
        "kept": len(items),
        "excluded": excluded,
        "not_in_list": len(left_out_by_design) - excluded,
        "listed_without_pair": len(without_pair),
        "listed_without_pair_examples": without_pair[:EXAMPLES_SHOWN],
    }
    left_out = unpaired_broken + left_out_by_design
    return replace(listing, items=items, left_out=left_out, selection=record)


def _shown(path: Path, src: Path) -> str:
    return str(path.relative_to(src)) if path.is_relative_to(src) else str(path)
