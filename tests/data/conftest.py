"""Fixtures for the data-plane tests: a small generated dataset."""

from __future__ import annotations

from pathlib import Path

import pytest

from raycseg.data.synthetic import build_synthetic


@pytest.fixture(scope="session")
def tiny_synthetic(tmp_path_factory) -> Path:
    """A small synthetic dataset: 6 training clips, 3 validation clips, 32 px, 6 frames."""
    out = tmp_path_factory.mktemp("synthetic") / "data"
    return build_synthetic(
        out, seed=3, num_clips=6, val_clips=3, image_size=32, frames=6, num_procs=1
    )
