"""Shard files: the only code that reads or writes the tars of a shard set.

Everything else in raycseg goes through these functions (`open_shard`,
`iter_shard_samples`, `ShardWriter`) and the manifest's (`raycseg.shards.manifest`:
`read_manifest`, `list_shard_urls`, `count_samples`, `write_manifest`). Reading works on a local folder or a URL
(s3://bucket/shards, gs://...) through `raycseg.storage`: the manifest is read
whole and shards are streamed, so training and evaluation read shard sets in
an object store directly. `ShardWriter` writes to a local folder or a URL: a
shard bound for a bucket is written to a local temporary file, then uploaded
whole (`storage.upload_file`) and the temporary file removed.

Shards are plain webdataset tars. Members of one sample are `<key>.<ext>`;
tar headers carry a fixed owner and mtime, so the same samples give
byte-identical shards. A shard is written as `.<name>.tmp` and renamed when
complete; the manifest is written through a temporary name too.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from webdataset import TarWriter
from webdataset.tariterators import group_by_keys, tar_file_iterator

from raycseg import storage


class ShardWriter:
    """Write samples into rolling tar shards `<directory>/<prefix>-%06d.tar`.

    `directory` is a local folder or a URL (s3://bucket/shards/train); for a URL
    the shard being written lives in a local temporary folder until it is uploaded.
    """

    def __init__(self, directory: storage.Location, prefix: str, *, max_count: int, max_bytes: int):
        self.directory, self.prefix = directory, prefix
        self._remote = storage.is_url(str(directory))
        self._scratch = Path(tempfile.mkdtemp(prefix="raycseg-shard-")) if self._remote else None
        self.max_count, self.max_bytes = max_count, max_bytes
        self.records: list[dict] = []
        self._tar: TarWriter | None = None
        self._stream: BinaryIO | None = None
        self._count = self._bytes = 0

    def write(self, key: str, files: dict[str, bytes]) -> None:
        """Append one sample; start a new shard when this one is full."""
        size = sum(512 + -(-len(data) // 512) * 512 for data in files.values())
        if self._tar is not None and (
            self._count >= self.max_count or self._bytes + size > self.max_bytes
        ):
            self._finish_shard()
        if self._tar is None:
            if not self._remote:
                Path(self.directory).mkdir(parents=True, exist_ok=True)
            self._stream = self._temp_path(len(self.records)).open("wb")
            self._tar = TarWriter(
                self._stream, encoder=False, mtime=0, user="raycseg", group="raycseg"
            )
        self._tar.write({"__key__": key, **files})
        self._count += 1
        self._bytes += size

    def close(self) -> list[dict]:
        """Finish the open shard; return one record per shard written."""
        if self._tar is not None:
            self._finish_shard()
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
        return self.records

    def _name(self, index: int) -> str:
        return f"{self.prefix}-{index:06d}.tar"

    def _temp_path(self, index: int) -> Path:
        return (self._scratch or Path(self.directory)) / f".{self._name(index)}.tmp"

    def _finish_shard(self) -> None:
        index = len(self.records)
        self._tar.close()
        self._stream.close()
        temp, name = self._temp_path(index), self._name(index)
        size, sha256 = temp.stat().st_size, file_sha256(temp)
        if self._remote:
            storage.upload_file(temp, storage.join(self.directory, name))
            temp.unlink()
        else:
            os.replace(temp, Path(self.directory) / name)
        split = str(self.directory).rstrip("/").rsplit("/", 1)[-1]
        self.records.append({"name": f"{split}/{name}", "count": self._count, "bytes": size,
                             "sha256": sha256})  # fmt: skip
        self._tar = self._stream = None
        self._count = self._bytes = 0


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def open_shard(url: str) -> BinaryIO:
    """Open a shard (a local path or a URL) for streaming reads."""
    return storage.open_input(url)


def iter_shard_samples(url: str) -> Iterator[dict]:
    """Yield the samples of one shard as {"__key__", ext: bytes, ...} in stored order."""
    with open_shard(url) as stream:
        files = ({**f, "__url__": url} for f in tar_file_iterator(stream))
        yield from group_by_keys(files)
