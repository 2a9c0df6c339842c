"""Fixtures for the loss tests: a two-process gloo runner (no Ray)."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.multiprocessing


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def run_two_gloo_ranks(tmp_path: Path) -> Callable[[Callable[..., None]], list[dict]]:
    """Spawn ``worker(rank, world_size, port, out_dir)`` on 2 processes; return what each rank saved.

    The worker (a top-level function of the test module, so that spawn can import
    it) must call ``dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", ...)``
    and save a dict of tensors to ``out_dir / f"rank{rank}.pt"``.
    """

    def run(worker: Callable[..., None]) -> list[dict]:
        torch.multiprocessing.spawn(
            worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True
        )
        return [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(2)]

    return run
