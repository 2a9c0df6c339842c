"""`build_shards`: a source (folder, CSV or dataset tree) into webdataset shards (README.md, Data).

On disk, one build makes::

    OUT/<split>/<kind>-000000.tar, <kind>-000001.tar, ...
    OUT/manifest.json

Each shard holds at most `max_count` samples and about `max_bytes` bytes
(a sample larger than `max_bytes` gets a shard of its own). A shard is
written as `.<name>.tmp` and renamed when complete, and the manifest is
written last (also through a temporary name), so an interrupted build never
leaves a shard or manifest that looks complete, and a shard set without a
manifest counts as existing output (rebuild with `overwrite`). Samples are
written in a shuffled order fixed by `shuffle_seed`; tar members have a
fixed owner and mtime, so the same inputs give byte-identical shards.

The manifest records, per split, every shard's name, sample count, byte
size and sha256; the class list; the source; the schema version; summary
statistics; `skipped` (broken inputs, with reasons: build exits 1),
`dropped` (inputs left out by design, such as images without a salient
object or outside the split list) and, for saliency, `selection` (which
split and exclude lists chose the images: see `raycseg.shards.split_lists`;
null for other kinds) and `transcode` (video: codec, short side, GOP, B-frames and
CRF of the re-encoded clips; null when they are stored as they came). Shard files
are written through `raycseg.shards.tars` and the manifest through
`raycseg.shards.manifest`; checking a built set is `raycseg.shards.verify`.
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from raycseg import __version__
from raycseg.errors import DataError

from ..media.labels import IGNORE_INDEX
from ..media.transcode import TranscodeSettings
from .manifest import MANIFEST, SCHEMA_VERSION, write_manifest
from .samples import MaskRules, PreparedSample, PrepareOptions, prepare_sample
from .sources import LeftOut, SourceItem, SourceListing, list_sources
from .split_lists import load_split_lists, select_by_stem
from .tars import ShardWriter

DEFAULT_MAX_COUNT = 1000
DEFAULT_MAX_BYTES = 1 << 30
ProgressFn = Callable[[int, int], None]


@dataclass
class BuildReport:
    """What `build_shards` wrote and what it left out."""

    out: Path
    kind: str
    counts: dict[str, int]
    shards: dict[str, int]
    bytes: int
    skipped: list[dict] = field(default_factory=list)
    dropped: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    selection: dict | None = None


def _existing_outputs(out: Path) -> list[Path]:
    if not out.is_dir():
        return []
    found = [out / MANIFEST] if (out / MANIFEST).exists() else []
    return found + sorted(p for p in out.glob("*/*.tar") if p.is_file())


def _prepare_all(
    items: list[SourceItem], options: PrepareOptions, num_procs: int, on_progress: ProgressFn | None
) -> Iterator[PreparedSample | LeftOut]:
    """Prepare items in order, in a process pool when num_procs > 1."""
    total = len(items)
    if num_procs <= 1 or total < 2:
        results = (prepare_sample(item, options) for item in items)
        pool = None
    else:
        pool = ProcessPoolExecutor(max_workers=min(num_procs, total))
        chunk = max(1, min(16, total // (num_procs * 4)))
        results = pool.map(prepare_sample, items, [options] * total, chunksize=chunk)
    try:
        for done, result in enumerate(results, start=1):
            if on_progress is not None:
                on_progress(done, total)
            yield result
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def build_shards(
    kind: str,
    src: Path | str,
    out: Path | str,
    *,
    layout: str = "voc",
    masks_dir: Path | str | None = None,
    classes: list[str] | None = None,
    mask_classes: list[str] | None = None,
    compute_saliency: bool = False,
    split_list: Path | str | None = None,
    exclude_list: Path | str | None = None,
    resize_to: tuple[int, int] | None = None,
    transcode: TranscodeSettings | None = None,
    max_count: int = DEFAULT_MAX_COUNT,
    max_bytes: int = DEFAULT_MAX_BYTES,
    overwrite: bool = False,
    num_procs: int | None = None,
    shuffle_seed: int | None = 0,
    source_description: str | None = None,
    on_progress: ProgressFn | None = None,
) -> BuildReport:
    """Turn a source (folder, CSV or dataset tree) into shards plus a manifest.

    Args:
        kind: "video", "image", "segmentation" or "saliency".
        src: The source (see `raycseg.shards.sources` for the accepted layouts).
        out: Output folder; `out/<split>/<kind>-%06d.tar` and `out/manifest.json`.
        layout: Segmentation layout: "voc", "cityscapes" or "ade20k".
        masks_dir: Saliency masks (paired by stem) or, for videos, per-frame
            mask strips `<stem>.png`.
        classes: Segmentation class names replacing the layout's own (a
            VOC-format tree of another dataset); masks are checked against them.
        mask_classes: Class names of video mask strips (their ids are checked).
        compute_saliency: Derive saliency masks with the classical detector.
        split_list: Saliency: the image stems to keep, one per line. When
            neither list is given and `src` is a VOC tree's JPEGImages, its
            train_aug.txt (else trainaug.txt, else train.txt) is used.
        exclude_list: Saliency: image stems to leave out (wins over `split_list`).
        resize_to: Segmentation: store every image (bicubic) and mask (nearest) at this
            (height, width), a one-time resize such as ReCo's Cityscapes 512 x 1024.
        transcode: Video: re-encode every clip once (`raycseg.media.transcode`); None
            stores the original bytes. `cseg shards build` passes the defaults.
        max_count: Most samples per shard.
        max_bytes: Largest shard size in bytes (approximately, tar padding included).
        overwrite: Replace shards and manifest already in `out`.
        num_procs: Worker processes for decoding/probing (default: all CPUs).
        shuffle_seed: Order of samples within a split (None keeps the sorted order).
        source_description: What to record as the source (default: the path).
        on_progress: Called as `on_progress(done, total)` after each input.

    Returns:
        The report; `report.skipped` lists broken inputs (the CLI exits 1),
        `report.selection` what the split lists kept (saliency).

    Raises:
        DataError: a missing or empty source, no valid input, existing
            shards in `out` without `overwrite`, or a split list that is
            missing, empty or names no image.
    """
    started = time.perf_counter()
    if resize_to is not None and kind != "segmentation":
        raise DataError("--resize-to applies to --kind segmentation only; drop it")
    if transcode is not None and kind != "video":
        raise DataError("transcoding applies to --kind video only; drop it")
    src, out = Path(src).expanduser().resolve(), Path(out).expanduser().resolve()
    masks_dir = _resolved(masks_dir)
    existing = _existing_outputs(out)
    if existing and not overwrite:
        raise DataError(
            f"{out} already holds shards ({existing[0].name}, ...); pass --overwrite to replace them"
        )
    listing = _list_selected_sources(
        kind, src, layout=layout, masks_dir=masks_dir, compute_saliency=compute_saliency,
        split_list=split_list, exclude_list=exclude_list,
    )  # fmt: skip
    if kind == "segmentation" and classes:
        listing.classes = list(classes)
    listing.mask_classes = list(mask_classes) if kind == "video" and mask_classes else None
    layout_used = layout if kind == "segmentation" else None
    rules = _mask_rules(kind, layout_used, listing)
    options = PrepareOptions(
        kind, src, layout_used, rules, compute_saliency, masks_dir,
        tuple(resize_to) if resize_to else None, transcode,
    )  # fmt: skip
    _remove_outputs(out, existing)
    results = _prepare_all(
        _ordered_items(listing.items, shuffle_seed), options, num_procs or os.cpu_count() or 1,
        on_progress,
    )  # fmt: skip
    records, metas, left_out = _write_samples(results, out, kind, max_count, max_bytes)
    skipped, dropped = _left_out_entries(list(listing.left_out) + left_out)
    if not records:
        first = f" (first: {skipped[0]['path']}: {skipped[0]['reason']})" if skipped else ""
        raise DataError(
            f"no valid {kind} input in {src}: {len(skipped) + len(dropped)} left out{first}; "
            "fix or replace the inputs"
        )
    build = {
        "max_count": max_count,
        "max_bytes": max_bytes,
        "shuffle_seed": shuffle_seed,
        "resize_to": list(resize_to) if resize_to else None,
    }
    source = source_description or str(src)
    manifest = _manifest(listing, options, records, metas, skipped, dropped, source, build)
    write_manifest(out, manifest)
    return _report(out, manifest, time.perf_counter() - started)


def _left_out_entries(left_out: list[LeftOut]) -> tuple[list[dict], list[dict]]:
    """The manifest's `skipped` (broken inputs) and `dropped` (left out by design), by path."""
    left_out = sorted(left_out, key=lambda x: x.path)
    skipped = [{"path": x.path, "reason": x.reason} for x in left_out if x.broken]
    dropped = [{"path": x.path, "reason": x.reason} for x in left_out if not x.broken]
    return skipped, dropped


def _manifest(
    listing: SourceListing,
    options: PrepareOptions,
    records: dict[str, list[dict]],
    metas: dict[str, list[dict]],
    skipped: list[dict],
    dropped: list[dict],
    source: str,
    build: dict,
) -> dict:
    """The manifest of a finished build."""
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": options.kind,
        "layout": options.layout,
        "source": source,
        "created_by": f"raycseg {__version__}",
        "classes": listing.classes,
        "mask_classes": listing.mask_classes,
        "ignore_index": options.mask_rules.ignore_index if options.mask_rules else None,
        "splits": {split: _split_entry(recs) for split, recs in sorted(records.items())},
        "stats": {split: summarise_metas(options.kind, metas[split]) for split in sorted(metas)},
        "skipped": skipped,
        "dropped": dropped,
        "selection": listing.selection,
        "transcode": options.transcode.record() if options.transcode else None,
        "build": build,
    }


def _report(out: Path, manifest: dict, seconds: float) -> BuildReport:
    splits = manifest["splits"]
    return BuildReport(
        out, manifest["kind"],
        counts={split: entry["count"] for split, entry in splits.items()},
        shards={split: len(entry["shards"]) for split, entry in splits.items()},
        bytes=sum(entry["bytes"] for entry in splits.values()),
        skipped=manifest["skipped"], dropped=manifest["dropped"], seconds=seconds,
        selection=manifest["selection"],
    )  # fmt: skip


def _list_selected_sources(
    kind: str,
    src: Path,
    *,
    split_list: Path | str | None,
    exclude_list: Path | str | None,
    **options,
) -> SourceListing:
    """`list_sources`, then (saliency) the split and exclude lists."""
    if kind != "saliency":
        if split_list is not None or exclude_list is not None:
            raise DataError("--split-list and --exclude apply to --kind saliency only; drop them")
        return list_sources(kind, src, **options)
    lists = load_split_lists(src, _resolved(split_list), _resolved(exclude_list))
    return select_by_stem(list_sources(kind, src, **options), lists, src)


def _resolved(path: Path | str | None) -> Path | None:
    return Path(path).expanduser().resolve() if path is not None else None


def _mask_rules(kind: str, layout: str | None, listing) -> MaskRules | None:
    """Which mask ids this build accepts: the class list, plus the layout's ignore id."""
    if kind == "segmentation":
        ignore = None if layout == "ade20k" else IGNORE_INDEX
        return MaskRules(len(listing.classes), ignore)
    if kind == "saliency":
        return MaskRules(2, None)
    if kind == "video" and listing.mask_classes:
        return MaskRules(len(listing.mask_classes), IGNORE_INDEX)
    return None


def _remove_outputs(out: Path, existing: list[Path]) -> None:
    """Delete a previous build's manifest and shards (and split folders left empty)."""
    for path in existing:
        path.unlink()
    for directory in {path.parent for path in existing if path.parent != out}:
        if directory.is_dir() and not any(directory.iterdir()):
            directory.rmdir()


def _write_samples(
    results: Iterator[PreparedSample | LeftOut],
    out: Path,
    kind: str,
    max_count: int,
    max_bytes: int,
) -> tuple[dict[str, list[dict]], dict[str, list[dict]], list[LeftOut]]:
    """Write prepared samples into per-split shard writers; collect what was left out."""
    writers: dict[str, ShardWriter] = {}
    metas: dict[str, list[dict]] = {}
    left_out: list[LeftOut] = []
    for result in results:
        if isinstance(result, LeftOut):
            left_out.append(result)
            continue
        if result.split not in writers:
            writers[result.split] = ShardWriter(
                out / result.split, kind, max_count=max_count, max_bytes=max_bytes
            )
        files = {
            ext: data.read_bytes() if isinstance(data, Path) else data
            for ext, data in result.files.items()
        }
        writers[result.split].write(result.key, files)
        metas.setdefault(result.split, []).append(result.meta)
    return {split: writer.close() for split, writer in writers.items()}, metas, left_out


def _ordered_items(items: list[SourceItem], seed: int | None) -> list[SourceItem]:
    if seed is None:
        return list(items)
    shuffled = list(items)
    random.Random(seed).shuffle(shuffled)
    return shuffled


def _split_entry(records: list[dict]) -> dict:
    return {
        "count": sum(r["count"] for r in records),
        "bytes": sum(r["bytes"] for r in records),
        "shards": records,
    }


def _summary(values: list[float]) -> dict:
    return {"min": min(values), "mean": round(sum(values) / len(values), 4), "max": max(values)}


def summarise_metas(kind: str, metas: list[dict]) -> dict:
    """Per-split statistics for the manifest: class counts and size/duration ranges."""
    stats: dict = {}
    if kind in ("video", "image"):
        stats["class_counts"] = dict(
            sorted(Counter(m.get("class_name", "(unlabelled)") for m in metas).items())
        )
    if kind == "segmentation":
        counts = Counter(i for m in metas for i in m["class_ids"])
        stats["images_per_class_id"] = {str(k): v for k, v in sorted(counts.items())}
    if kind == "saliency":
        stats["foreground"] = _summary([m["foreground"] for m in metas])
    numeric = ("width", "height", "num_frames", "fps", "duration_s")
    for name in numeric:
        values = [m[name] for m in metas if name in m]
        if values:
            stats[name] = _summary(values)
    return stats
