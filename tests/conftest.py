"""Shared test fixtures: fast Ray settings, the real-media folder, a shared local Ray.

The environment variables below must be set before Ray starts; Ray Train copies
them to its controller and workers (RAY.md §4).
"""

from __future__ import annotations

import os
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
def real_data() -> Path:
    """The real media of ../shared/data/real (skips when absent)."""
    if not (REAL_DATA / "SOURCES.md").exists():
        pytest.skip(f"real media not found at {REAL_DATA} (../shared is absent in this checkout)")
    return REAL_DATA


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the in-process Ray tests of the session (RAY.md §4)."""
    import ray

    ray.init(
        address="local",
        num_cpus=4,
        include_dashboard=False,
        logging_config=ray.LoggingConfig(log_level="ERROR"),
    )
    yield
    ray.shutdown()
