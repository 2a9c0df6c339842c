"""Files at a local path or a URL (s3://, gs://): one small layer over `pyarrow.fs`.

Shards, run directories and checkpoints may live in an object store. Code
that reads or writes them calls these functions with a *location*, a local
path or a URL, instead of branching on the kind itself. URLs go through
`pyarrow.fs.FileSystem.from_uri`, the filesystem Ray Train uses for its own
`storage_path`, so both see the same buckets with the same settings.

Credentials come only from the environment or the provider's default chain
(for S3: `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, `AWS_PROFILE`, instance
roles; `AWS_ENDPOINT_URL` points at an S3-compatible server; for GCS:
application-default credentials). Nothing here accepts, stores or logs a
secret, and URLs are used as given (no credentials in them).

Object stores have no folders and no appends: `make_dirs` does nothing there,
and a write replaces the whole object in one PUT (it appears whole or not at
all, like the local write-then-rename).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO

Location = str | Path
SCHEMES = {"s3": "s3", "gcs": "gs"}  # pyarrow filesystem type name -> URL scheme


def is_url(path: str) -> bool:
    """True for remote locations such as s3://bucket/key or gs://bucket/key."""
    return "://" in path


def join(base: Location, *parts: str) -> Location:
    """`base/part/...`: a Path for a local base, a URL string for a URL base."""
    if is_url(str(base)):
        return "/".join([str(base).rstrip("/"), *(part.strip("/") for part in parts)])
    return Path(base).joinpath(*parts)


def filesystem(location: Location) -> tuple[object, str]:
    """The `pyarrow.fs` filesystem of `location` and the path on it."""
    import pyarrow.fs as pafs

    if not is_url(str(location)):
        return pafs.LocalFileSystem(), str(Path(location).expanduser().resolve())
    scheme, _, rest = str(location).partition("://")
    bucket = rest.split("/", 1)[0]
    return _remote_filesystem(os.getpid(), scheme, bucket), rest.rstrip("/")


@lru_cache(maxsize=16)
def _remote_filesystem(pid: int, scheme: str, bucket: str):
    """One filesystem per (process, bucket): clients are not shared across a fork."""
    import pyarrow.fs as pafs

    filesystem, _ = pafs.FileSystem.from_uri(f"{scheme}://{bucket}")
    return filesystem


def url_of(filesystem, path: str) -> str:
    """The location of `path` on `filesystem` (as Ray reports checkpoint paths): a URL or a path."""
    scheme = SCHEMES.get(filesystem.type_name)
    return f"{scheme}://{path.lstrip('/')}" if scheme else path


def exists(location: Location) -> bool:
    """True when a file or a folder (an object or a key prefix) is at `location`."""
    import pyarrow.fs as pafs

    if not is_url(str(location)):
        return Path(location).exists()
    fs, path = filesystem(location)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_file(location: Location) -> bool:
    """True when a file (an object) is at `location`."""
    import pyarrow.fs as pafs

    if not is_url(str(location)):
        return Path(location).is_file()
    fs, path = filesystem(location)
    return fs.get_file_info(path).type == pafs.FileType.File


def modified_time(location: Location) -> float:
    """Last modification time of a file, in seconds since the epoch."""
    if not is_url(str(location)):
        return Path(location).stat().st_mtime
    fs, path = filesystem(location)
    return fs.get_file_info(path).mtime.timestamp()


def list_names(location: Location) -> list[str]:
    """Names of the entries directly under a folder (empty when it does not exist)."""
    import pyarrow.fs as pafs

    if not is_url(str(location)):
        folder = Path(location)
        return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    fs, path = filesystem(location)
    selector = pafs.FileSelector(path, allow_not_found=True, recursive=False)
    return sorted(info.base_name for info in fs.get_file_info(selector))


def make_dirs(location: Location) -> None:
    """Create a local folder and its parents; nothing to do in an object store."""
    if not is_url(str(location)):
        Path(location).mkdir(parents=True, exist_ok=True)


def open_input(location: Location) -> BinaryIO:
    """Open a file for streaming reads (the caller closes it)."""
    if not is_url(str(location)):
        return open(location, "rb")  # noqa: SIM115 (the caller closes it)
    fs, path = filesystem(location)
    return fs.open_input_stream(path)


def read_bytes(location: Location) -> bytes:
    """The whole content of a file."""
    with open_input(location) as stream:
        return stream.read()


def read_text(location: Location) -> str:
    """The whole content of a UTF-8 text file."""
    return read_bytes(location).decode("utf-8")


def write_bytes(location: Location, data: bytes) -> None:
    """Replace a file's content atomically: write-then-rename locally, one PUT remotely."""
    if not is_url(str(location)):
        target = Path(location)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        partial.write_bytes(data)
        os.replace(partial, target)
        return
    fs, path = filesystem(location)
    with fs.open_output_stream(path) as stream:
        stream.write(data)


def write_text(location: Location, text: str) -> None:
    """Replace a text file's content atomically (see `write_bytes`)."""
    write_bytes(location, text.encode("utf-8"))


def upload_file(local: Path, location: Location) -> None:
    """Copy a local file to `location`, streamed; it appears whole or not at all.

    Locally through a `.partial` name and a rename; in an object store one (multipart)
    upload that the store makes visible when it completes.
    """
    if not is_url(str(location)):
        target = Path(location)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        shutil.copyfile(local, partial)
        os.replace(partial, target)
        return
    fs, path = filesystem(location)
    with open(local, "rb") as source, fs.open_output_stream(path) as stream:
        shutil.copyfileobj(source, stream, 8 << 20)


def delete_file(location: Location) -> None:
    """Remove a file (an object); nothing to do when it is not there."""
    if not is_url(str(location)):
        Path(location).unlink(missing_ok=True)
        return
    fs, path = filesystem(location)
    if is_file(location):
        fs.delete_file(path)


@contextlib.contextmanager
def local_copy(location: Location) -> Iterator[Path]:
    """A local path holding the file or folder at `location` (downloaded if remote).

    A local location is yielded as it is; a remote one is copied into a
    temporary folder that is removed on exit.
    """
    import pyarrow.fs as pafs

    if not is_url(str(location)):
        yield Path(location)
        return
    fs, path = filesystem(location)
    scratch = Path(tempfile.mkdtemp(prefix="raycseg-download-"))
    try:
        target = scratch / path.rstrip("/").rsplit("/", 1)[-1]
        if fs.get_file_info(path).type == pafs.FileType.Directory:
            target.mkdir()
        pafs.copy_files(path, str(target), source_filesystem=fs)
        yield target
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
