"""`build_shards`: a source (folder, CSV or dataset tree) into webdataset shards (README.md, Data).

One build makes (OUT is a local folder or a URL such as s3://bucket/shards/k400)::

    OUT/<split>/<kind>-000000.tar, <kind>-000001.tar, ...
    OUT/manifest.json

Each shard holds at most `max_count` samples and about `max_bytes` bytes
(a sample larger than `max_bytes` gets a shard of its own). A shard is
written as `.<name>.tmp` and renamed when complete, and the manifest is
written last (also through a temporary name), so an interrupted build never
leaves a shard or manifest that looks complete, and a shard set without a
manifest counts as existing output (rebuild with `overwrite`). Samples are
written in a shuffled order fixed by `shuffle_seed`; tar members have a
fixed owner and mtime, so the same inputs give byte-identical shards. Where the
samples are prepared (this process, a process pool, Ray tasks on a cluster:
`raycseg.shards.parallel`) changes nothing in them: results are written in order.

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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from raycseg import __version__, storage
from raycseg.errors import DataError

from ..media.labels import IGNORE_INDEX
from ..media.transcode import TranscodeSettings
from .manifest import MANIFEST, SCHEMA_VERSION, write_manifest
from .parallel import ProgressFn, prepare_in_processes
from .samples import MaskRules, PreparedSample, PrepareOptions
from .sources import LeftOut, SourceItem, SourceListing, list_sources
from .split_lists import load_split_lists, select_by_stem
from .tars import ShardWriter
from .vos import list_vos_sources

if TYPE_CHECKING:
    from .parallel import Preparer

DEFAULT_MAX_COUNT = 1000
DEFAULT_MAX_BYTES = 1 << 30


@dataclass
class BuildReport:
    """What `build_shards` wrote and what it left out."""

    out: Path | str
    kind: str
    counts: dict[str, int]
    shards: dict[str, int]
    bytes: int
    skipped: list[dict] = field(default_factory=list)
    dropped: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    selection: dict | None = None


def _output_location(out: Path | str) -> Path | str:
    """`out` as an absolute path, or a URL checked to be reachable (else one line naming the fix)."""
    if not storage.is_url(str(out)):
        return Path(out).expanduser().resolve()
    scheme, _, rest = str(out).partition("://")
    try:
        if not storage.exists(f"{scheme}://{rest.split('/', 1)[0]}"):
            raise OSError("no such bucket")
        storage.list_names(out)
    except (OSError, ValueError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(
            f"cannot write shards to {out} ({reason}); use s3://BUCKET/PATH or gs://BUCKET/PATH "
            "of an existing bucket, with credentials in the environment (AWS_*, AWS_PROFILE, "
            "GOOGLE_APPLICATION_CREDENTIALS)"
        ) from None
    return str(out).rstrip("/")


def _existing_outputs(out: Path | str) -> list[Path | str]:
    """The manifest and the shards of an earlier build in `out` (a folder or a URL)."""
    names = storage.list_names(out)
    found = [storage.join(out, MANIFEST)] if MANIFEST in names else []
    for name in names:
        folder = storage.join(out, name)
        found += [storage.join(folder, n) for n in storage.list_names(folder) if n.endswith(".tar")]
    return found


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
    preparer: Preparer | None = None,
    shuffle_seed: int | None = 0,
    source_description: str | None = None,
    on_progress: ProgressFn | None = None,
) -> BuildReport:
    """Turn a source (folder, CSV or dataset tree) into shards plus a manifest.

    Args:
        kind: "video", "image", "segmentation", "saliency" or "vos".
        src: The source (see `raycseg.shards.sources` for the accepted layouts).
        out: Output folder or URL (s3://, gs://); `out/<split>/<kind>-%06d.tar` and
            `out/manifest.json`.
        layout: Segmentation layout: "voc", "cityscapes" or "ade20k"; vos: "davis".
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
        num_procs: Worker processes for decoding/probing (default: all CPUs); unused
            with a `preparer`.
        preparer: Who prepares the samples instead of local processes, such as
            `raycseg.shards.parallel.RayTasks` (Ray tasks on a cluster).
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
    src, out = Path(src).expanduser().resolve(), _output_location(out)
    masks_dir = _resolved(masks_dir)
    existing = _existing_outputs(out)
    if existing and not overwrite:
        raise DataError(
            f"{out} already holds shards ({str(existing[0]).rsplit('/', 1)[-1]}, ...); pass --overwrite to replace them"
        )
    listing = _list_selected_sources(
        kind, src, layout=layout, masks_dir=masks_dir, compute_saliency=compute_saliency,
        split_list=split_list, exclude_list=exclude_list,
    )  # fmt: skip
    if kind == "segmentation" and classes:
        listing.classes = list(classes)
    listing.mask_classes = list(mask_classes) if kind == "video" and mask_classes else None
    layout_used = layout if kind in ("segmentation", "vos") else None
    rules = _mask_rules(kind, layout_used, listing)
    options = PrepareOptions(
        kind, src, layout_used, rules, compute_saliency, masks_dir,
        tuple(resize_to) if resize_to else None, transcode,
    )  # fmt: skip
    _remove_outputs(out, existing)
    items = _ordered_items(listing.items, shuffle_seed)
    if preparer is not None:
        results = preparer(items, options, on_progress)
    else:
        results = prepare_in_processes(
            items, options, num_procs or os.cpu_count() or 1, on_progress
        )
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


def _report(out: Path | str, manifest: dict, seconds: float) -> BuildReport:
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
        if kind == "vos":
            return list_vos_sources(src, options["layout"])
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


def _remove_outputs(out: Path | str, existing: list[Path | str]) -> None:
    """Delete a previous build's manifest and shards (and local split folders left empty)."""
    for path in existing:
        storage.delete_file(path)
    local = [Path(path).parent for path in existing if not storage.is_url(str(path))]
    for directory in {folder for folder in local if folder != out}:
        if directory.is_dir() and not any(directory.iterdir()):
            directory.rmdir()


def _write_samples(
    results: Iterator[PreparedSample | LeftOut],
    out: Path | str,
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
                storage.join(out, result.split), kind, max_count=max_count, max_bytes=max_bytes
            )
        files = {
            ext: data.read_bytes() if isinstance(data, Path) else data
            for ext, data in result.files.items()
        }
        writers[result.split].write(result.key, files)
        metas.setdefault(result.split, []).append(result.meta)
        left_out += result.left_out
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
    numeric = ("width", "height", "num_frames", "fps", "duration_s", "num_objects")
    for name in numeric:
        values = [m[name] for m in metas if name in m]
        if values:
            stats[name] = _summary(values)
    return stats
