"""`verify_shards`: check a shard set against its manifest and decode every sample.

Each shard is checked for presence, sha256 and sample count, then every
sample is decoded the way `samples.check_stored_sample` does it (videos
frame by frame to the end, images, masks with their id rules). Shards are
checked in a process pool. The manifest's `skipped` inputs are passed on so
the CLI can list them too.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ..media.labels import IGNORE_INDEX
from .manifest import read_manifest
from .samples import MaskRules, check_stored_sample
from .tars import file_sha256, iter_shard_samples

ProgressFn = Callable[[int, int], None]


@dataclass
class VerifyReport:
    """What `verify_shards` checked and found."""

    root: Path
    samples: int = 0
    shards: int = 0
    corrupt: list[dict] = field(default_factory=list)
    checksum_mismatches: list[str] = field(default_factory=list)
    missing_shards: list[str] = field(default_factory=list)
    count_mismatches: list[str] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every stored shard and sample checked out."""
        problems = (
            self.corrupt,
            self.checksum_mismatches,
            self.missing_shards,
            self.count_mismatches,
        )
        return not any(problems)


def mask_rules_for(manifest: dict) -> MaskRules | None:
    """The mask id rules a manifest's samples were validated against."""
    if manifest["kind"] == "video":
        classes = manifest.get("mask_classes")
        return MaskRules(len(classes), IGNORE_INDEX) if classes else None
    if manifest["kind"] in ("segmentation", "saliency"):
        return MaskRules(len(manifest["classes"]), manifest.get("ignore_index"))
    return None


def _verify_one_shard(root: str, record: dict, kind: str, rules: MaskRules | None) -> dict:
    """Check one shard: presence, checksum, count, and every sample decoded."""
    path = Path(root) / record["name"]
    result = {
        "name": record["name"],
        "missing": False,
        "checksum_ok": True,
        "count": 0,
        "corrupt": [],
    }
    if not path.is_file():
        result["missing"] = True
        return result
    result["checksum_ok"] = file_sha256(path) == record["sha256"]
    try:
        for sample in iter_shard_samples(str(path)):
            result["count"] += 1
            try:
                check_stored_sample(kind, sample, rules)
            except (ValueError, KeyError, OSError) as error:
                result["corrupt"].append(
                    {"shard": record["name"], "key": sample["__key__"], "reason": str(error)}
                )
    except Exception as error:  # a damaged tar stream
        result["corrupt"].append(
            {"shard": record["name"], "key": None, "reason": f"unreadable tar: {error}"}
        )
    return result


def verify_shards(
    root: Path | str, on_progress: ProgressFn | None = None, *, num_procs: int | None = None
) -> VerifyReport:
    """Check checksums against the manifest and decode every stored sample.

    Args:
        root: The shard set (folder holding manifest.json).
        on_progress: Called as `on_progress(samples_done, samples_total)` per shard.
        num_procs: Worker processes (default: all CPUs).

    Returns:
        The report; `report.ok` is False when anything stored is wrong. The
        manifest's `skipped` inputs are listed in `report.skipped`.
    """
    root = Path(root).resolve()
    manifest = read_manifest(root)
    rules = mask_rules_for(manifest)
    records = [r for e in manifest["splits"].values() for r in e["shards"]]
    total = sum(r["count"] for r in records)
    report = VerifyReport(root, shards=len(records), skipped=list(manifest.get("skipped", [])))
    procs = min(num_procs or os.cpu_count() or 1, len(records))
    with ProcessPoolExecutor(max_workers=procs) if procs > 1 else _Inline() as pool:
        results = pool.map(
            _verify_one_shard,
            [str(root)] * len(records),
            records,
            [manifest["kind"]] * len(records),
            [rules] * len(records),
        )
        done = 0
        for record, result in zip(records, results, strict=True):
            report.samples += result["count"]
            report.corrupt += result["corrupt"]
            if result["missing"]:
                report.missing_shards.append(record["name"])
            elif not result["checksum_ok"]:
                report.checksum_mismatches.append(record["name"])
            if not result["missing"] and result["count"] != record["count"]:
                report.count_mismatches.append(
                    f"{record['name']}: {result['count']} samples, manifest says {record['count']}"
                )
            done += record["count"]
            if on_progress is not None:
                on_progress(done, total)
    return report


class _Inline:
    """A stand-in for a process pool that maps in this process."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    @staticmethod
    def map(fn, *iterables):
        return map(fn, *iterables)
