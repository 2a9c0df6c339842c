"""A local S3-compatible server (moto) on 127.0.0.1 for the cloud-storage tests.

The fixture starts the server, points the standard AWS variables at it
(dummy credentials, `AWS_ENDPOINT_URL`) for the module, makes a bucket with
a fresh name, and stops the server afterwards. The secret key is random, so
a test can search files and logs for it.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

AWS_VARIABLES = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
    "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
    "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_EC2_METADATA_DISABLED",
)  # fmt: skip


@dataclass
class S3Bucket:
    """A bucket on the local server, and the environment that reaches it."""

    name: str
    endpoint: str
    env: dict[str, str]

    @property
    def url(self) -> str:
        return f"s3://{self.name}"

    @property
    def secret(self) -> str:
        return self.env["AWS_SECRET_ACCESS_KEY"]

    def upload_folder(self, local: Path, url: str) -> None:
        """Copy a local folder to `url` (s3://bucket/prefix), recursively."""
        import pyarrow.fs as pafs

        filesystem, path = pafs.FileSystem.from_uri(url)
        pafs.copy_files(str(local), path, destination_filesystem=filesystem)

    def keys(self) -> list[str]:
        """Every object key in the bucket."""
        import pyarrow.fs as pafs

        filesystem, _ = pafs.FileSystem.from_uri(self.url)
        selector = pafs.FileSelector(self.name, recursive=True)
        return sorted(
            info.path.removeprefix(f"{self.name}/")
            for info in filesystem.get_file_info(selector)
            if info.type == pafs.FileType.File
        )

    def read(self, key: str) -> bytes:
        import pyarrow.fs as pafs

        filesystem, path = pafs.FileSystem.from_uri(f"{self.url}/{key}")
        with filesystem.open_input_stream(path) as stream:
            return stream.read()


@pytest.fixture(scope="module")
def s3_bucket() -> Iterator[S3Bucket]:
    """A moto S3 server on 127.0.0.1 with one empty bucket; AWS variables point at it."""
    pytest.importorskip("moto", reason="moto is a dev dependency (uv sync --group dev)")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ACCESS_KEY_ID": f"CSEGTEST{secrets.token_hex(6).upper()}",
        "AWS_SECRET_ACCESS_KEY": f"cseg-secret-{secrets.token_hex(16)}",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    bucket = S3Bucket(f"cseg-{secrets.token_hex(4)}", env["AWS_ENDPOINT_URL"], env)
    with pytest.MonkeyPatch.context() as patch:
        for name in AWS_VARIABLES:
            patch.delenv(name, raising=False)
        for name, value in env.items():
            patch.setenv(name, value)
        import pyarrow.fs as pafs

        creator, _ = pafs.FileSystem.from_uri(f"{bucket.url}?allow_bucket_creation=true")
        creator.create_dir(bucket.name)
        try:
            yield bucket
        finally:
            server.stop()
