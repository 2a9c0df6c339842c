"""Run a function on gloo ranks in fresh processes; a failing rank's traceback fails the test.

Ranks are spawned, not forked: the pytest process has run Ray (gRPC threads) and
torch's thread pools by then, and a fork copies their locks in whatever state they
are in. They meet through a file store in the test's folder, so no TCP port is
picked in advance (another process could take it between the pick and the bind).
"""

from __future__ import annotations

import multiprocessing
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

RankWork = Callable[[int, int], dict]


def _rank_main(work: RankWork, rank: int, world_size: int, out_dir: Path) -> None:
    try:
        dist.init_process_group(
            "gloo",
            init_method=f"file://{out_dir / 'rendezvous'}",
            rank=rank,
            world_size=world_size,
        )
        saved = work(rank, world_size)
        dist.destroy_process_group()
        torch.save(saved, out_dir / f"rank{rank}.pt")
    except BaseException:
        (out_dir / f"rank{rank}.error").write_text(traceback.format_exc())
        raise


def run_gloo_ranks(
    work: RankWork, out_dir: Path, world_size: int = 2, timeout_s: float = 180.0
) -> list[dict]:
    """Run `work(rank, world_size)` on `world_size` gloo ranks; return the dict each returned.

    `work` is a top-level function of a test module (spawned ranks import it by name);
    the process group is up when it runs and torn down after.
    """
    context = multiprocessing.get_context("spawn")
    ranks = [
        context.Process(target=_rank_main, args=(work, rank, world_size, out_dir))
        for rank in range(world_size)
    ]
    for process in ranks:
        process.start()
    deadline = time.monotonic() + timeout_s
    try:
        for process in ranks:
            process.join(timeout=max(0.0, deadline - time.monotonic()))
    finally:
        for process in ranks:  # a failed rank leaves its peer waiting in a collective
            if process.is_alive():
                process.kill()
                process.join()
    errors = [
        (out_dir / f"rank{rank}.error").read_text()
        for rank in range(world_size)
        if (out_dir / f"rank{rank}.error").exists()
    ]
    if errors:
        pytest.fail("a rank failed:\n" + "\n".join(errors), pytrace=False)
    exit_codes = [process.exitcode for process in ranks]
    if exit_codes != [0] * world_size:
        pytest.fail(f"rank exit codes {exit_codes} (-9: still running after {timeout_s:.0f} s)")
    return [torch.load(out_dir / f"rank{rank}.pt", weights_only=True) for rank in range(world_size)]
