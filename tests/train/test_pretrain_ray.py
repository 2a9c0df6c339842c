"""`cseg pretrain` end to end on Ray Train with 2 workers, one of them killed mid-run.

This is the one kill-a-worker test of the suite; the fake-cluster tests cover
node loss and driver loss. It trains from the Ray Data decode pool
(`data.loader: ray_data`) with the recipe's shipped scaling (2 workers of 1 CPU) on
this 2-core machine, so it also shows the driver leaves the pool CPUs of its own
and that a restarted worker group reads the pool again; the default loader's exact
resume is tested by the fake-cluster driver test and tests/data/test_streams.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from live_jsonl import read_live_jsonl

pytestmark = [pytest.mark.ray, pytest.mark.integration]

STEPS = 36


def test_pretrain_survives_a_killed_worker_and_logs_every_step_once(tmp_path):
    run_dir = tmp_path / "runs" / "kill"
    command = [
        sys.executable, "-c", "from cseg.main import run; run()",
        "pretrain", "cacl/debug",
        f"data.root={tmp_path / 'data'}", f"storage.path={tmp_path / 'runs'}", "storage.name=kill",
        f"stages.cacl.steps={STEPS}", "stages.cacl.val_every=0", "storage.checkpoint_every=5",
        "storage.max_failures=1", "eval.linear_probe.epochs=1",
        "stages.cacl.data.loader=ray_data",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = None
    deadline = time.monotonic() + 400
    while process.poll() is None and time.monotonic() < deadline:
        steps = [r["step"] for r in read_live_jsonl(run_dir / "metrics.jsonl")]
        if killed is None and steps and max(steps) >= 12:
            rank1 = [w for w in read_live_jsonl(run_dir / "workers.jsonl") if w["rank"] == 1]
            killed = rank1[-1]["pid"]
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.2)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr[-3000:]
    assert killed is not None, "the run finished before a worker could be killed"

    assert stdout.strip().splitlines()[-1].endswith(str(run_dir.resolve()))
    # Ray Data reports each finished pass: the batches came from the decode pool
    assert stderr.count("execution finished") >= STEPS // 3, stderr[-3000:]  # 3 batches a pass
    steps = [r["step"] for r in read_live_jsonl(run_dir / "metrics.jsonl")]
    assert steps == list(range(1, STEPS + 1)), "every step exactly once, in order"
    workers = read_live_jsonl(run_dir / "workers.jsonl")
    assert sum(w["rank"] == 1 for w in workers) == 2, "rank 1 was restarted once"
    assert all(w["world_size"] == 2 for w in workers)
    stages = json.loads((run_dir / "stages.json").read_text())
    assert stages["cacl"]["last_step"] == STEPS
    assert (run_dir / stages["cacl"]["checkpoint"]).exists()  # stored relative to the run
    assert "kmeans" in json.loads((run_dir / "eval.json").read_text())
