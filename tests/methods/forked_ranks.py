"""Run a function on 2 gloo ranks forked from the test process (no torch re-import: ~1 s)."""

from __future__ import annotations

import multiprocessing
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
import torch


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_forked_ranks(
    target: Callable[[int, int, int, Path], None], out_dir: Path, world_size: int = 2
) -> list[dict]:
    """Run `target(rank, world_size, port, out_dir)` on forked ranks; return what each saved.

    `target` must `init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", ...)`
    and `torch.save` a dict to `out_dir / f"rank{rank}.pt"`.
    """
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("needs the fork start method (the ranks reuse this process's imports)")
    context = multiprocessing.get_context("fork")
    port = free_port()
    ranks = [
        context.Process(target=target, args=(rank, world_size, port, out_dir))
        for rank in range(world_size)
    ]
    for process in ranks:
        process.start()
    try:
        for process in ranks:
            process.join(timeout=120)
            assert process.exitcode == 0, "a rank failed; its traceback is in the captured stderr"
    finally:
        for process in ranks:  # a failed rank leaves its peer waiting in a collective
            if process.is_alive():
                process.kill()
                process.join()
    return [torch.load(out_dir / f"rank{rank}.pt", weights_only=True) for rank in range(world_size)]
