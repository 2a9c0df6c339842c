"""Per-step schedules and the exactly-once metrics log."""

from __future__ import annotations

import json

import numpy as np
import pytest

from raycseg.config import OptimSection
from raycseg.run_directory import MetricsLog
from raycseg.train.checkpoint import load_state, save_state
from raycseg.train.schedules import build_lr_schedule


def test_warmup_then_cosine_reaches_min_lr():
    schedule = build_lr_schedule(
        OptimSection(lr=1.0, min_lr=0.1, warmup_steps=4, schedule="cosine"), 14
    )
    assert len(schedule) == 14
    np.testing.assert_allclose(schedule[:4], [0.25, 0.5, 0.75, 1.0])
    assert schedule[4] == pytest.approx(1.0)
    assert np.all(np.diff(schedule[4:]) <= 0) and schedule[-1] > 0.1 and schedule[-1] < 0.2


def test_poly_and_constant_schedules():
    poly = build_lr_schedule(OptimSection(lr=2.0, schedule="poly", poly_power=1.0), 4)
    np.testing.assert_allclose(poly, [2.0, 1.5, 1.0, 0.5])
    assert np.all(build_lr_schedule(OptimSection(lr=0.3, schedule="constant"), 5) == 0.3)


def test_metrics_log_truncation_keeps_every_step_once(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    for step in range(1, 8):
        log.append({"step": step, "loss": 1.0 / step})
    with log.path.open("a") as handle:
        handle.write('{"step": 8, "lo')  # a line cut short by a crash
    assert log.truncate_after(5) == 3
    for step in range(6, 9):
        log.append({"step": step, "loss": 0.0})
    steps = [record["step"] for record in log.read()]
    assert steps == list(range(1, 9))
    assert all(json.loads(line) for line in log.path.read_text().splitlines())


def test_state_round_trip_is_weights_only(tmp_path):
    import torch

    save_state(tmp_path, {"step": 3, "model": {"w": torch.ones(2)}, "recipe": {"name": "x"}})
    state = load_state(tmp_path)
    assert (
        state["format"] == "raycseg"
        and state["step"] == 3
        and torch.equal(state["model"]["w"], torch.ones(2))
    )
    assert not (tmp_path / "state.pt.partial").exists()
