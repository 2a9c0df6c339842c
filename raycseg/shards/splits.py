"""Label-scarce splits of a segmentation shard set (docs/methods/reco.md §6).

Two benchmark modes, as in ReCo's official code (the samplers and the sparse masks
are `raycseg.shards.label_sampling`):

- **Partial Dataset, Full Labels** (`num_labels=N`): N images chosen by a seeded
  sampler keep their masks; every other image is unlabelled.
- **Partial Labels, Full Dataset** (`partial="p0" | "p1" | "p5" | "p25"`): every
  image keeps a sparse subset of its labels.

Outputs (`build_label_split`), written under a temporary name and renamed::

    OUT/labelled/      a shard set (split `train`): the labelled images
    OUT/unlabelled/    a shard set (split `train`): the other images (num_labels mode only;
                       in the partial modes every image is in `labelled`, so point the
                       unlabelled stream at OUT/labelled too, with ReCo's mode: partial)
    OUT/split.json     mode, seed, source, the keys chosen and per-class image counts
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from raycseg import __version__
from raycseg.errors import DataError

from ..media.images import decode_mask, encode_mask_png
from ..media.labels import IGNORE_INDEX
from .build import DEFAULT_MAX_BYTES, DEFAULT_MAX_COUNT, summarise_metas
from .label_sampling import (
    PARTIAL_FRACTIONS,
    image_rng,
    present_classes,
    select_by_rarest_class,
    select_labelled_images,
    sparsify_mask,
)
from .manifest import list_shard_urls, read_manifest, write_manifest
from .tars import ShardWriter, iter_shard_samples

DEFAULT_MIN_CLASSES = {"voc": 3, "cityscapes": 12}
SAMPLERS = ("class-balanced", "rarest-class")
SPLIT_FILE = "split.json"
OUTPUT_SPLIT = "train"
ProgressFn = Callable[[int, int], None]


@dataclass
class SplitReport:
    """What `build_label_split` wrote."""

    out: Path
    mode: str
    seed: int
    labelled: Path
    unlabelled: Path | None
    num_labelled: int
    num_unlabelled: int
    labelled_images_per_class: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


# ----------------------------------------------------------------------------- shard sets


@dataclass(frozen=True)
class _Source:
    """The split of the source shard set that is being divided."""

    root: Path
    split: str
    manifest: dict
    ignore_index: int
    class_names: list[str]

    def samples(self) -> Iterator[dict]:
        for url in list_shard_urls(self.root, self.split):
            yield from iter_shard_samples(url)


def build_label_split(
    src: Path | str,
    out: Path | str,
    *,
    num_labels: int | None = None,
    partial: str | None = None,
    min_classes: int | None = None,
    sampler: str = "class-balanced",
    seed: int = 0,
    split: str | None = None,
    overwrite: bool = False,
    max_count: int = DEFAULT_MAX_COUNT,
    on_progress: ProgressFn | None = None,
) -> SplitReport:
    """Write a label-scarce split of a segmentation shard set.

    Args:
        src: a segmentation shard set (`cseg shards build --kind segmentation`).
        out: the output folder (see the module docstring for its layout).
        num_labels: Partial Dataset mode: how many fully labelled images.
        partial: Partial Labels mode: `p0`, `p1`, `p5` or `p25`.
        min_classes: classes an image needs to be chosen (num_labels mode, class-balanced
            sampler); default 3 for VOC, 12 for Cityscapes, 1 otherwise.
        sampler: num_labels mode: `class-balanced` (VOC, Cityscapes: `select_labelled_images`)
            or `rarest-class` (SUN RGB-D: `select_by_rarest_class`).
        seed: the sampler's seed (and the seed pixels').
        split: the source split to draw from; default `train`, else `all`.
        overwrite: replace an existing output folder.
        max_count: most samples per output shard.
        on_progress: called as `on_progress(done, total)` while samples are written.

    Returns:
        The report of what was written.

    Raises:
        DataError: not exactly one mode, a bad source, or an existing output without overwrite.
    """
    started = time.perf_counter()
    src, out = Path(src).expanduser().resolve(), Path(out).expanduser().resolve()
    source = _checked_source(src, out, num_labels, partial, sampler, split, overwrite)
    temp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(temp, ignore_errors=True)
    try:
        if num_labels is not None:
            if min_classes is None:
                min_classes = DEFAULT_MIN_CLASSES.get(source.manifest.get("layout") or "", 1)
            record, per_class, route = _plan_images(source, num_labels, min_classes, sampler, seed)
        else:
            record, per_class, route = _plan_pixels(source, partial, seed)
        counts = _write_sets(temp, source, route, seed, max_count, on_progress)
        per_class_dict = dict(zip(source.class_names, map(int, per_class), strict=False))
        record = (
            {"mode": partial or "num_labels", "seed": seed, "source": str(src)}
            | {"source_split": source.split}
            | record
            | {"labelled_images_per_class": per_class_dict, "created_by": f"raycseg {__version__}"}
        )
        _write_json(temp / SPLIT_FILE, record)
        _replace_dir(temp, out)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return SplitReport(
        out=out,
        mode=record["mode"],
        seed=seed,
        labelled=out / "labelled",
        unlabelled=out / "unlabelled" if num_labels is not None else None,
        num_labelled=counts.get("labelled", 0),
        num_unlabelled=counts.get("unlabelled", 0),
        labelled_images_per_class=per_class_dict,
        seconds=time.perf_counter() - started,
    )


def _checked_source(src, out, num_labels, partial, sampler, split, overwrite) -> _Source:
    """Refuse a bad request before anything is written."""
    if (num_labels is None) == (partial is None):
        raise DataError("give exactly one of --num-labels N or --partial p0|p1|p5|p25")
    if sampler not in SAMPLERS:
        raise DataError(f"unknown --sampler {sampler!r}; use one of {', '.join(SAMPLERS)}")
    if partial is not None and partial not in PARTIAL_FRACTIONS:
        raise DataError(f"unknown --partial {partial!r}; use one of {', '.join(PARTIAL_FRACTIONS)}")
    manifest = read_manifest(src)
    if manifest.get("kind") != "segmentation":
        raise DataError(
            f"{src} holds {manifest.get('kind')} shards; split a segmentation shard set "
            "(`cseg shards build --kind segmentation`)"
        )
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise DataError(f"{out} already exists; pass --overwrite to replace it")
    if split is None:
        split = next((name for name in ("train", "all") if name in manifest["splits"]), None)
    if split not in manifest["splits"]:
        raise DataError(
            f"{src} has no split {split!r}; pass --split with one of {list(manifest['splits'])}"
        )
    ignore_index = manifest.get("ignore_index")
    ignore_index = IGNORE_INDEX if ignore_index is None else int(ignore_index)
    names = list(manifest.get("classes") or [str(c) for c in range(256)])
    return _Source(src, split, manifest, ignore_index, names)


def _plan_images(source: _Source, num_labels: int, min_classes: int, sampler: str, seed: int):
    """Partial Dataset mode: choose images; every sample goes, unchanged, to its set."""
    keys, presence = _scan_classes(source)
    if sampler == "rarest-class":
        chosen = select_by_rarest_class(presence, num_labels, seed=seed)
        record = {"num_labels": num_labels, "sampler": sampler}
    else:
        chosen = select_labelled_images(presence, num_labels, min_classes=min_classes, seed=seed)
        record = {"num_labels": num_labels, "sampler": sampler, "min_classes": min_classes}
    labelled = {keys[i] for i in chosen}
    record |= {"labelled": [keys[i] for i in chosen]}
    record |= {"unlabelled": [k for k in keys if k not in labelled]}

    def route(sample: dict) -> tuple[str, None]:
        return ("labelled" if sample["__key__"] in labelled else "unlabelled"), None

    return record, presence[chosen].sum(axis=0), route


def _plan_pixels(source: _Source, mode: str, seed: int):
    """Partial Labels mode: every sample goes to `labelled` with its mask made sparse."""
    per_class = np.zeros(len(source.class_names), dtype=np.int64)  # filled while writing
    keys: list[str] = []

    def route(sample: dict) -> tuple[str, np.ndarray]:
        key = sample["__key__"]
        rng = image_rng(seed, key)
        mask = sparsify_mask(
            _decode_stored_mask(sample), mode, rng, ignore_index=source.ignore_index
        )
        classes = present_classes(mask, source.ignore_index)
        per_class[classes[classes < per_class.size]] += 1
        keys.append(key)
        return "labelled", mask

    return {"labelled": keys, "unlabelled": None}, per_class, route


def _write_sets(temp, source: _Source, route, seed, max_count, on_progress) -> dict[str, int]:
    """Stream the source once; `route(sample) -> (set, new mask or None)` places each sample."""
    writers: dict[str, ShardWriter] = {}
    metas: dict[str, list[dict]] = {}
    total = int(source.manifest["splits"][source.split]["count"])
    for done, sample in enumerate(source.samples(), start=1):
        name, mask = route(sample)
        members = {ext: data for ext, data in sample.items() if not ext.startswith("__")}
        meta = _meta(sample)
        if mask is not None:
            meta |= {"class_ids": [int(c) for c in np.unique(mask)], "partial": True}
            members["png"] = encode_mask_png(mask)
            if "json" in members:
                members["json"] = json.dumps(meta, sort_keys=True).encode()
        if name not in writers:
            folder = temp / name / OUTPUT_SPLIT
            writers[name] = ShardWriter(
                folder, "segmentation", max_count=max_count, max_bytes=DEFAULT_MAX_BYTES
            )
            metas[name] = []
        writers[name].write(sample["__key__"], members)
        metas[name].append(meta)
        if on_progress is not None:
            on_progress(done, total)
    for name, writer in writers.items():
        _write_set_manifest(temp / name, source, writer.close(), metas[name], seed)
    return {name: len(items) for name, items in metas.items()}


def _write_set_manifest(root: Path, source: _Source, shards: list, metas: list, seed: int):
    """The source's manifest with this set's split, statistics and provenance."""
    entry = {
        "count": sum(r["count"] for r in shards),
        "bytes": sum(r["bytes"] for r in shards),
        "shards": shards,
    }
    stats = summarise_metas("segmentation", [m for m in metas if "class_ids" in m])
    derived = {
        "source": str(source.root),
        "splits": {OUTPUT_SPLIT: entry},
        "stats": {OUTPUT_SPLIT: stats},
        "skipped": [],
        "dropped": [],
        "label_split": {"file": f"../{SPLIT_FILE}", "seed": seed},
    }
    write_manifest(root, source.manifest | derived)


def _decode_stored_mask(sample: dict) -> np.ndarray:
    if "png" not in sample:
        raise DataError(
            f"sample {sample['__key__']} has no png mask; split a segmentation shard set"
        )
    try:
        return decode_mask(sample["png"])
    except ValueError as error:
        raise DataError(
            f"sample {sample['__key__']}: {error}; run `cseg shards verify` and rebuild the shards"
        ) from error


def _scan_classes(source: _Source) -> tuple[list[str], np.ndarray]:
    """Keys in stored order and the bool [N, C] class presence of their masks."""
    keys, rows = [], []
    num_classes = len(source.class_names)
    for sample in source.samples():
        classes = present_classes(_decode_stored_mask(sample), source.ignore_index)
        row = np.zeros(num_classes, dtype=bool)
        row[classes[classes < num_classes]] = True
        keys.append(sample["__key__"])
        rows.append(row)
    if not keys:
        raise DataError("the source split holds no samples; rebuild the shards")
    return keys, np.stack(rows)


def _meta(sample: dict) -> dict:
    try:
        return json.loads(sample["json"]) if "json" in sample else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}


def _write_json(path: Path, data: dict) -> None:
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(temp, path)


def _replace_dir(temp: Path, out: Path) -> None:
    """Move the finished `temp` folder to `out`, replacing what was there."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(temp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
