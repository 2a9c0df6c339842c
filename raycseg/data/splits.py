"""Label-scarce splits of a segmentation shard set (../shared/docs/methods/reco.md §6).

Two benchmark modes, as in ReCo's official code:

- **Partial Dataset, Full Labels** (`num_labels=N`): the seeded class-balanced
  sampler. The image list is shuffled with the seed and popped from the end.
  An image is accepted iff it has at least `min_classes` distinct non-void
  classes and (after the first acceptance) contains one of the classes seen in
  the fewest accepted images so far; rejected images are deferred and recycled
  when the list runs out. It stops at N images; every other image is unlabelled.
  One deliberate refinement: classes that no remaining candidate contains are
  left out of the least-seen set. The official sampler loops forever there;
  everywhere else both choose the same images.
- **Partial Labels, Full Dataset** (`partial="p0" | "p1" | "p5" | "p25"`): every
  image keeps a sparse subset of its labels. Per class c present: one seed pixel
  drawn uniformly from c's pixels. `p0` keeps exactly that pixel. Otherwise the
  seed square is dilated by a 5×5 all-ones kernel until it holds at least
  T = ⌊p·|c|⌋ pixels of c; the kept pixels are c's pixels inside the final
  (4k+1)×(4k+1) window (which may overshoot T). After k dilations the square is
  the set of pixels at Chebyshev distance ≤ 2k from the seed (clipped at the
  border), so k is read off the T-th smallest distance instead of dilating.

Outputs (`build_label_split`), written under a temporary name and renamed::

    OUT/labelled/      a shard set (split `train`): the labelled images
    OUT/unlabelled/    a shard set (split `train`): the other images (num_labels mode only;
                       in the partial modes every image is in `labelled`, so point the
                       unlabelled stream at OUT/labelled too)
    OUT/split.json     mode, seed, source, the keys chosen and per-class image counts
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from raycseg import __version__
from raycseg.errors import DataError

from .images import decode_mask, encode_mask_png
from .labels import IGNORE_INDEX
from .shards import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_COUNT,
    ShardWriter,
    iter_shard_samples,
    list_shard_urls,
    read_manifest,
    summarise_metas,
    write_manifest,
)

PARTIAL_FRACTIONS = {"p0": 0.0, "p1": 0.01, "p5": 0.05, "p25": 0.25}
DEFAULT_MIN_CLASSES = {"voc": 3, "cityscapes": 12}
SPLIT_FILE = "split.json"
OUTPUT_SPLIT = "train"
DILATION_KERNEL = 5
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


# ----------------------------------------------------------------------------- the two samplers


def select_labelled_images(
    presence: np.ndarray, num_labels: int, *, min_classes: int, seed: int
) -> list[int]:
    """The class-balanced sampler of the Partial Dataset, Full Labels mode.

    Args:
        presence: bool [N, C]; presence[i, c] says image i contains class c (void excluded).
        num_labels: how many images to choose.
        min_classes: an image needs at least this many distinct classes to be chosen.
        seed: shuffles the image order.

    Returns:
        The chosen image indices, in the order they were accepted.

    Raises:
        DataError: fewer than `num_labels` images have `min_classes` classes.
    """
    presence = np.asarray(presence, dtype=bool)
    eligible = presence.sum(axis=1) >= max(min_classes, 1)
    if num_labels < 1 or int(eligible.sum()) < num_labels:
        raise DataError(
            f"only {int(eligible.sum())} of {len(presence)} images have at least {min_classes} "
            f"classes, so {num_labels} labelled images cannot be chosen; lower --num-labels "
            "or --min-classes"
        )
    pending = np.random.default_rng(seed).permutation(len(presence)).tolist()
    deferred: list[int] = []
    chosen: list[int] = []
    counts = np.zeros(presence.shape[1], dtype=np.int64)
    remaining = presence[eligible].sum(axis=0)  # unchosen candidates containing each class
    least_seen = remaining > 0
    while len(chosen) < num_labels:
        if not pending:
            pending, deferred = deferred, []
        index = pending.pop()
        if not eligible[index]:
            continue  # can never be chosen: drop it instead of recycling it
        if not (presence[index] & least_seen).any():
            deferred.append(index)
            continue
        chosen.append(index)
        counts += presence[index]
        remaining -= presence[index]
        reachable = remaining > 0
        if reachable.any():
            least_seen = reachable & (counts == counts[reachable].min())
    return chosen


def sparsify_mask(
    mask: np.ndarray, mode: str, rng: np.random.Generator, *, ignore_index: int = IGNORE_INDEX
) -> np.ndarray:
    """The Partial Labels, Full Dataset mode on one mask.

    Args:
        mask: uint8 [H, W] class ids; `ignore_index` is void.
        mode: `p0` (one pixel per class) or `p1`, `p5`, `p25` (a grown square per class).
        rng: draws one seed pixel per class, in ascending class order.
        ignore_index: the void id, also written everywhere that loses its label.

    Returns:
        uint8 [H, W]: the kept labels, `ignore_index` elsewhere.
    """
    if mode not in PARTIAL_FRACTIONS:
        raise DataError(f"unknown partial mode {mode!r}; use one of {', '.join(PARTIAL_FRACTIONS)}")
    fraction = PARTIAL_FRACTIONS[mode]
    sparse = np.full_like(mask, ignore_index)
    for class_id in present_classes(mask, ignore_index):
        rows, cols = np.nonzero(mask == class_id)
        seed = int(rng.integers(rows.size))
        target = math.floor(fraction * rows.size)
        distance = np.maximum(np.abs(rows - rows[seed]), np.abs(cols - cols[seed]))
        radius = 0
        if mode != "p0" and target > 1:
            # the square after k dilations holds the pixels at distance <= 2k: the smallest
            # k that reaches `target` pixels covers the target-th smallest distance
            kth = int(np.partition(distance, target - 1)[target - 1])
            radius = (DILATION_KERNEL - 1) // 2 * math.ceil(kth / 2)
        keep = distance <= radius
        sparse[rows[keep], cols[keep]] = class_id
    return sparse


def present_classes(mask: np.ndarray, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Sorted class ids that occur in a uint8 mask, void excluded."""
    counts = np.bincount(mask.ravel(), minlength=256)
    counts[ignore_index] = 0
    return np.flatnonzero(counts)


def image_rng(seed: int, key: str) -> np.random.Generator:
    """A generator per (seed, sample key): the same draws whatever the reading order."""
    return np.random.default_rng([seed, zlib.crc32(key.encode())])


# ----------------------------------------------------------------------------- shard sets


def build_label_split(
    src: Path | str,
    out: Path | str,
    *,
    num_labels: int | None = None,
    partial: str | None = None,
    min_classes: int | None = None,
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
        min_classes: classes an image needs to be chosen (num_labels mode); default
            3 for VOC, 12 for Cityscapes, 1 otherwise.
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
    if (num_labels is None) == (partial is None):
        raise DataError("give exactly one of --num-labels N or --partial p0|p1|p5|p25")
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
    split = split or _default_split(manifest, src)
    urls = list_shard_urls(src, split)
    ignore_index = manifest.get("ignore_index")
    ignore_index = IGNORE_INDEX if ignore_index is None else int(ignore_index)
    num_classes = len(manifest.get("classes") or []) or 256
    total = int(manifest["splits"][split]["count"])

    temp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(temp, ignore_errors=True)
    header = {"source": str(src), "source_split": split, "seed": seed}
    try:
        if num_labels is not None:
            classes = min_classes if min_classes is not None else _default_min_classes(manifest)
            keys, presence = _scan_classes(urls, num_classes, ignore_index)
            chosen = select_labelled_images(presence, num_labels, min_classes=classes, seed=seed)
            labelled_keys = {keys[i] for i in chosen}
            record = header | {
                "mode": "num_labels",
                "num_labels": num_labels,
                "min_classes": classes,
            }
            record |= {"labelled": [keys[i] for i in chosen]}
            record |= {"unlabelled": [k for k in keys if k not in labelled_keys]}
            counts = _write_partition(
                urls, temp, manifest, labelled_keys, max_count, on_progress, total, record
            )
            per_class = presence[chosen].sum(axis=0)
        else:
            record = header | {"mode": partial}
            keys, per_class = _write_sparse(
                urls, temp, manifest, partial, seed, ignore_index, max_count, on_progress, total
            )
            counts = {"labelled": len(keys)}
            record |= {"labelled": keys, "unlabelled": None}
        names = manifest.get("classes") or [str(c) for c in range(num_classes)]
        per_class_dict = {names[c]: int(n) for c, n in enumerate(per_class[: len(names)])}
        record |= {
            "labelled_images_per_class": per_class_dict,
            "created_by": f"raycseg {__version__}",
        }
        _write_json(temp / SPLIT_FILE, record)
        _replace_dir(temp, out)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    unlabelled = out / "unlabelled" if num_labels is not None else None
    return SplitReport(
        out=out,
        mode=record["mode"],
        seed=seed,
        labelled=out / "labelled",
        unlabelled=unlabelled,
        num_labelled=counts["labelled"],
        num_unlabelled=counts.get("unlabelled", 0),
        labelled_images_per_class=per_class_dict,
        seconds=time.perf_counter() - started,
    )


def _default_split(manifest: dict, src: Path) -> str:
    for name in ("train", "all"):
        if name in manifest["splits"]:
            return name
    raise DataError(
        f"{src} has no train or all split; pass --split with one of {list(manifest['splits'])}"
    )


def _default_min_classes(manifest: dict) -> int:
    return DEFAULT_MIN_CLASSES.get(manifest.get("layout") or "", 1)


def _samples(urls: Sequence[str]) -> Iterator[dict]:
    for url in urls:
        yield from iter_shard_samples(url)


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


def _scan_classes(
    urls: Sequence[str], num_classes: int, ignore_index: int
) -> tuple[list[str], np.ndarray]:
    """Keys in stored order and the bool [N, C] class presence of their masks."""
    keys, rows = [], []
    for sample in _samples(urls):
        classes = present_classes(_decode_stored_mask(sample), ignore_index)
        row = np.zeros(num_classes, dtype=bool)
        row[classes[classes < num_classes]] = True
        keys.append(sample["__key__"])
        rows.append(row)
    if not keys:
        raise DataError("the source split holds no samples; rebuild the shards")
    return keys, np.stack(rows)


def _members(sample: dict) -> dict[str, bytes]:
    return {ext: data for ext, data in sample.items() if not ext.startswith("__")}


def _meta(sample: dict) -> dict:
    try:
        return json.loads(sample["json"]) if "json" in sample else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}


def _write_partition(
    urls, temp, manifest, labelled_keys, max_count, on_progress, total, record
) -> dict[str, int]:
    """Copy every sample, unchanged, into the labelled or the unlabelled shard set."""
    writers = {
        name: ShardWriter(temp / name / OUTPUT_SPLIT, "segmentation", max_count=max_count,
                          max_bytes=DEFAULT_MAX_BYTES)
        for name in ("labelled", "unlabelled")
    }  # fmt: skip
    metas: dict[str, list[dict]] = {"labelled": [], "unlabelled": []}
    for done, sample in enumerate(_samples(urls), start=1):
        name = "labelled" if sample["__key__"] in labelled_keys else "unlabelled"
        writers[name].write(sample["__key__"], _members(sample))
        metas[name].append(_meta(sample))
        if on_progress is not None:
            on_progress(done, total)
    for name, writer in writers.items():
        _finish_set(temp / name, writer.close(), metas[name], manifest, record)
    return {name: len(items) for name, items in metas.items()}


def _write_sparse(urls, temp, manifest, mode, seed, ignore_index, max_count, on_progress, total):
    """Write every sample with its mask made sparse; return the keys and images per class."""
    writer = ShardWriter(
        temp / "labelled" / OUTPUT_SPLIT, "segmentation", max_count=max_count,
        max_bytes=DEFAULT_MAX_BYTES,
    )  # fmt: skip
    num_classes = len(manifest.get("classes") or []) or 256
    per_class = np.zeros(num_classes, dtype=np.int64)
    metas, keys = [], []
    for done, sample in enumerate(_samples(urls), start=1):
        key = sample["__key__"]
        sparse = sparsify_mask(
            _decode_stored_mask(sample), mode, image_rng(seed, key), ignore_index=ignore_index
        )
        classes = present_classes(sparse, ignore_index)
        per_class[classes[classes < num_classes]] += 1
        meta = _meta(sample) | {"class_ids": [int(c) for c in np.unique(sparse)], "partial": mode}
        members = _members(sample) | {"png": encode_mask_png(sparse)}
        if "json" in members:
            members["json"] = json.dumps(meta, sort_keys=True).encode()
        writer.write(key, members)
        metas.append(meta)
        keys.append(key)
        if on_progress is not None:
            on_progress(done, total)
    record = {"mode": mode, "seed": seed}
    _finish_set(temp / "labelled", writer.close(), metas, manifest, record)
    return keys, per_class


def _finish_set(root: Path, records: list[dict], metas: list[dict], manifest: dict, record: dict):
    """Write the manifest of one output shard set (the source's, with new splits)."""
    root.mkdir(parents=True, exist_ok=True)
    entry = {
        "count": sum(r["count"] for r in records),
        "bytes": sum(r["bytes"] for r in records),
        "shards": records,
    }
    stats = summarise_metas("segmentation", [m for m in metas if "class_ids" in m]) if metas else {}
    derived = {
        "source": record.get("source", manifest.get("source")),
        "splits": {OUTPUT_SPLIT: entry} if records else {},
        "stats": {OUTPUT_SPLIT: stats} if records else {},
        "skipped": [],
        "dropped": [],
        "label_split": {k: record[k] for k in ("mode", "seed") if k in record},
    }
    write_manifest(root, manifest | derived)


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
