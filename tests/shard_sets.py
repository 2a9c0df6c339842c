"""Shard sets written as given, without validation: broken samples for verify and the loaders."""

from __future__ import annotations

from pathlib import Path

from raycseg.shards.manifest import SCHEMA_VERSION, write_manifest
from raycseg.shards.tars import ShardWriter


def write_raw_shard_set(
    root: Path,
    kind: str,
    shards: list[list[tuple[str, dict[str, bytes]]]],
    *,
    split: str = "all",
    classes: list[str] | None = None,
    ignore_index: int | None = None,
) -> list[str]:
    """Write samples as given (no validation) into one shard per inner list, plus a manifest.

    Returns:
        The shard paths, in order.
    """
    records = []
    for index, samples in enumerate(shards):
        writer = ShardWriter(root / split, f"{kind}{index}", max_count=10**6, max_bytes=1 << 40)
        for key, files in samples:
            writer.write(key, files)
        records += writer.close()
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "layout": None,
        "source": "written by the tests",
        "classes": classes or [],
        "mask_classes": None,
        "ignore_index": ignore_index,
        "splits": {
            split: {
                "count": sum(r["count"] for r in records),
                "bytes": sum(r["bytes"] for r in records),
                "shards": records,
            }
        },
        "stats": {},
        "skipped": [],
        "dropped": [],
    }
    write_manifest(root, manifest)
    return [str(root / r["name"]) for r in records]
