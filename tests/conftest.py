"""Shared test fixtures: fast Ray settings, the real-media folder, a shared local Ray, and a
local S3-compatible server (moto) on 127.0.0.1 for the cloud-storage tests.

The S3 fixture starts the server, points the standard AWS variables at it (dummy
credentials, `AWS_ENDPOINT_URL`) for the module, makes a bucket with a fresh name, and
stops the server afterwards. The secret key is random, so a test can search files and
logs for it.

The environment variables below must be set before Ray starts; Ray Train copies
them to its controller and workers.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.update(
    RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.2",
    # Not the 60 s default: on a loaded 2-core box with a fresh venv (cold imports) a
    # worker group can take longer to start, and an elastic run would then fall back to
    # fewer workers than the test arranged. Not much more either: after a node is lost,
    # an elastic restart waits this long for the full worker count before taking fewer.
    RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S="120",
    RAY_TRAIN_ENABLE_PREEMPTION_WATCHER="0",
    RAY_TRAIN_METRICS_ENABLED="0",
    RAY_TRAIN_ENABLE_PRINT_PATCH="0",
    RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS="0",
    RAY_USAGE_STATS_ENABLED="0",
    RAY_ENABLE_UV_RUN_RUNTIME_ENV="0",
    RAY_DEDUP_LOGS="1",
)
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = (REPO.parent / "shared" / "data" / "real").resolve()


@pytest.fixture(scope="session")
def tiny_synthetic(tmp_path_factory) -> Path:
    """A small synthetic dataset: 6 training clips, 3 validation clips, 32 px, 6 frames."""
    from raycseg.data.synthetic import build_synthetic

    out = tmp_path_factory.mktemp("synthetic") / "data"
    return build_synthetic(
        out, seed=3, num_clips=6, val_clips=3, image_size=32, frames=6, num_procs=1
    )


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The real media of ../shared/data/real (skips when absent)."""
    if not (REAL_DATA / "SOURCES.md").exists():
        pytest.skip(f"real media not found at {REAL_DATA} (../shared is absent in this checkout)")
    return REAL_DATA


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
    from moto.server import ThreadedMotoServer  # a dev dependency: scripts/setup.sh installs it

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


@pytest.fixture(scope="session")
def raw_shard_set():
    """`write_raw_shard_set(root, kind, shards, ...)`: write unvalidated shards plus a manifest."""
    from shard_sets import write_raw_shard_set

    return write_raw_shard_set


@pytest.fixture(scope="session")
def real_video_shards(real_data, tmp_path_factory) -> Path:
    """The real clips (a flat folder) built into video shards, two samples per shard."""
    from raycseg.shards.build import build_shards

    out = tmp_path_factory.mktemp("real") / "videos"
    build_shards("video", real_data / "videos", out, max_count=2, num_procs=2)
    return out
