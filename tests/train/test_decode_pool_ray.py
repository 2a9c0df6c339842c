"""`data.loader: ray_data`: the debug CACL stage trained from a Ray Data decode pool.

The recipe's shipped scaling (2 workers of 1 CPU) on this 2-core machine: the
driver must leave the pool CPUs of its own, or Ray Data waits for ever.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from live_jsonl import read_live_jsonl

pytestmark = [pytest.mark.ray, pytest.mark.integration]

STEPS = 10
PAIRS_PER_PASS = 24 // 2 // 4  # 24 clips, split between 2 ranks, 4 pairs a batch


def test_the_debug_stage_trains_from_the_decode_pool_with_every_step_logged_once(tmp_path):
    run_dir = tmp_path / "runs" / "pool"
    command = [
        sys.executable, "-c", "from cseg.main import run; run()",
        "pretrain", "cacl/debug",
        f"data.root={tmp_path / 'data'}", f"storage.path={tmp_path / 'runs'}", "storage.name=pool",
        "stages.cacl.data.loader=ray_data", f"stages.cacl.steps={STEPS}",
        "stages.cacl.val_every=0", "eval=null",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=420)
    assert done.returncode == 0, done.stderr[-3000:]

    steps = [r["step"] for r in read_live_jsonl(run_dir / "metrics.jsonl")]
    assert steps == list(range(1, STEPS + 1)), "every step exactly once, in order"
    workers = read_live_jsonl(run_dir / "workers.jsonl")
    assert sorted(w["rank"] for w in workers) == [0, 1]
    stages = json.loads((run_dir / "stages.json").read_text())
    assert stages["cacl"]["last_step"] == STEPS
    # Ray Data reports each finished pass: the batches came from the pool, pass after pass.
    passes = done.stderr.count("execution finished")
    assert passes >= STEPS // PAIRS_PER_PASS, done.stderr[-3000:]
