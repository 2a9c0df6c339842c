"""A shard set's manifest: what it holds, read and written without touching a shard.

`OUT/manifest.json` records the kind, the splits with their shards and counts, the
class names and what a build left out (README.md, Data). Reading works on a local
folder or a URL through `raycseg.storage`. This module needs neither webdataset nor
torch, so checks that only read manifests (the preflight before a run) stay fast.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from raycseg import storage
from raycseg.errors import DataError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"


def write_manifest(root: storage.Location, manifest: dict) -> storage.Location:
    """Write `root/manifest.json` through a temporary file and an atomic rename.

    At a URL `root` it is one PUT (`storage.write_text`): the object appears whole or not at all.
    """
    if storage.is_url(str(root)):
        location = storage.join(root, MANIFEST)
        storage.write_text(location, json.dumps(manifest, indent=1) + "\n")
        return location
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    temp = root / f".{MANIFEST}.tmp"
    temp.write_text(json.dumps(manifest, indent=1) + "\n")
    os.replace(temp, root / MANIFEST)
    return root / MANIFEST


def read_manifest(root: Path | str) -> dict:
    """Read a shard set's manifest (`root` is a local folder or a URL).

    Raises:
        DataError: no readable manifest under `root`.
    """
    path = storage.join(root, MANIFEST)
    if not storage.is_file(path):
        raise DataError(
            f"no {MANIFEST} in {root}; build shards with `cseg shards build` or `cseg shards synthetic`"
        )
    try:
        manifest = json.loads(storage.read_text(path))
    except json.JSONDecodeError as error:
        raise DataError(f"{path} is not valid JSON ({error}); rebuild with --overwrite") from error
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise DataError(
            f"{path} has schema version {manifest.get('schema_version')}, expected {SCHEMA_VERSION}; rebuild"
        )
    return manifest


def list_shard_urls(root: Path | str, split: str) -> list[str]:
    """Shard paths (or URLs, for a shard set at a URL) of one split, in manifest order.

    Raises:
        DataError: the split does not exist in this shard set.
    """
    manifest = read_manifest(root)
    if split not in manifest["splits"]:
        raise DataError(
            f"{root} has no split {split!r} (it has {', '.join(manifest['splits'])}); choose one of those"
        )
    return [str(storage.join(root, shard["name"])) for shard in manifest["splits"][split]["shards"]]


def count_samples(root: Path | str, split: str) -> int:
    """Number of samples in one split of a shard set, from its manifest.

    Raises:
        DataError: no manifest, or no such split.
    """
    manifest = read_manifest(root)
    if split not in manifest["splits"]:
        raise DataError(
            f"{root} has no split {split!r} (it has {', '.join(manifest['splits'])}); "
            "choose one of those"
        )
    return int(manifest["splits"][split]["count"])


def inspect_shards(root: Path | str) -> dict:
    """Summarise a shard set from its manifest (no shard is read).

    Returns:
        {"root", "kind", "layout", "source", "schema_version", "classes",
        "splits": {split: {"samples", "shards", "bytes"}}, "stats", "skipped", "dropped",
        "selection"}.
    """
    manifest = read_manifest(root)
    return {
        "root": str(Path(root).resolve()),
        "kind": manifest["kind"],
        "layout": manifest.get("layout"),
        "source": manifest["source"],
        "schema_version": manifest["schema_version"],
        "classes": manifest["classes"],
        "mask_classes": manifest.get("mask_classes"),
        "splits": {
            split: {"samples": e["count"], "shards": len(e["shards"]), "bytes": e["bytes"]}
            for split, e in manifest["splits"].items()
        },
        "stats": manifest.get("stats", {}),
        "skipped": len(manifest.get("skipped", [])),
        "dropped": len(manifest.get("dropped", [])),
        "selection": manifest.get("selection"),
    }
