"""Fixture directories for report tests, written file by file so that no test needs Ray.

The Tune layout mirrors what Ray 2.60 wrote for a throwaway probe (not kept):
a plain function trainable, `ray.init(address="local", num_cpus=2,
include_dashboard=False)` with `RAY_ENABLE_UV_RUN_RUNTIME_ENV=0`, 6 trials of
`tune.report({"step": s, "val_miou": v, "loss": 1 - v})`, params
`lr: tune.loguniform(1e-2, 1.0)`, `arch: tune.choice(["a", "b", "c"])`,
`steps: tune.choice([6, 8])`, `ASHAScheduler(time_attr="step", max_t=8,
grace_period=2, reduction_factor=2)`, arch "c" raising at step 3. Observed
(trimmed; `...` marks cut fields):

    probe/
      experiment_state-2026-11-20_23-20-32.json
      basic-variant-state-2026-11-20_23-20-32.json   (a pickle)
      tuner.pkl                                       (a pickle)
      trainable_f933e_00000_0_arch=a,lr=0.0148,steps=6_2026-11-20_23-20-32/
        params.json  params.pkl  progress.csv  result.json  events.out.tfevents.*
        error.txt  error.pkl                          (ERROR trials only)

    experiment_state-*.json:
      {"trial_data": [["<trial json string>", "<run json string>"], ...],
       "runner_data": {"_metric": "val_miou", "_session_str": "2026-11-20_23-20-32", ...},
       "stats": {"start_time": 1795216832.2}}
    trial json:  {"trial_id": "f933e_00000", "status": "TERMINATED",
                  "relative_logdir": "trainable_f933e_00000_0_arch=a,lr=0.0148,steps=6_...",
                  "config": {...}, "evaluated_params": {"lr": 0.0148, "arch": "a", "steps": 6},
                  "experiment_tag": "0_arch=a,lr=0.0148,steps=6", ...}
    run json:    {"start_time": ..., "num_failures": 0, "error_filename": null,
                  "last_result": {... "done": true ...}, "metric_analysis": {...}, ...}
    params.json: {"arch": "a", "lr": 0.014835368361121181, "steps": 6}
    result.json: one object per report:
      {"step": 2, "val_miou": 0.0851, "loss": 0.9148, "timestamp": 1795216843,
       "checkpoint_dir_name": null, "done": true, "training_iteration": 2,
       "trial_id": "f933e_00000", "date": "2026-11-20_23-20-43", "time_this_iter_s": 0.30,
       "time_total_s": 0.602, "pid": 6521, "hostname": "vm", "node_ip": "192.0.2.2",
       "config": {"lr": 0.0148, "arch": "a", "steps": 6}, "time_since_restore": 0.602,
       "iterations_since_restore": 2}
    progress.csv: the same without "config", header
      step,val_miou,loss,timestamp,checkpoint_dir_name,done,training_iteration,trial_id,...

Observed `done` on the last *logged* report: true when ASHA stopped the trial
(early, or at max_t), false when the function returned by itself; the state
file's `last_result.done` is true for every TERMINATED trial.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

SESSION = "2026-11-20_23-20-32"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PROGRESS_COLUMNS = [
    "step", "val_miou", "loss", "timestamp", "checkpoint_dir_name", "done",
    "training_iteration", "trial_id", "date", "time_this_iter_s", "time_total_s",
]  # fmt: skip


def section(markdown: str, heading: str) -> str:
    """The Markdown text under `## heading`, up to the next level-2 heading."""
    start = markdown.index(f"## {heading}\n")
    end = markdown.find("\n## ", start + 1)
    return markdown[start : end if end != -1 else None]


@dataclass
class FakeTrial:
    """One trial to write: its sampled params, (step, metric) reports and how it ended.

    `ending` is "returned" (the trainable finished), "scheduler" (ASHA said STOP,
    so the last logged report has done=true) or "error".
    """

    index: int
    params: dict
    reports: list[tuple[int, float]]
    ending: str

    @property
    def trial_id(self) -> str:
        return f"f933e_{self.index:05d}"

    @property
    def directory(self) -> str:
        tag = ",".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in sorted(self.params.items()))  # fmt: skip
        return f"trainable_{self.trial_id}_{self.index}_{tag}_{SESSION}"

    @property
    def status(self) -> str:
        return "ERROR" if self.ending == "error" else "TERMINATED"


# Best final val_miou among TERMINATED trials: trial 4. Trial 1 errored; 0, 2, 5 were
# stopped by ASHA at step 2; 3 and 4 returned at step 6; 6 ran to ASHA's max_t = 8.
STANDARD_TRIALS = [
    FakeTrial(0, {"lr": 0.0148, "arch": "a", "steps": 6}, [(1, 0.044), (2, 0.085)], "scheduler"),
    FakeTrial(1, {"lr": 0.4005, "arch": "c", "steps": 8}, [(1, 0.42), (2, 0.546)], "error"),
    FakeTrial(2, {"lr": 0.0154, "arch": "a", "steps": 6}, [(1, 0.046), (2, 0.088)], "scheduler"),
    FakeTrial(3, {"lr": 0.0908, "arch": "a", "steps": 6},
              [(s, 0.2 + 0.1 * s) for s in range(1, 7)], "returned"),
    FakeTrial(4, {"lr": 0.2945, "arch": "a", "steps": 6},
              [(s, 0.55 + 0.07 * s) for s in range(1, 7)], "returned"),
    FakeTrial(5, {"lr": 0.0606, "arch": "c", "steps": 8}, [(1, 0.1), (2, 0.183)], "scheduler"),
    FakeTrial(6, {"lr": 0.0312, "arch": "b", "steps": 8},
              [(s, 0.05 * s) for s in range(1, 9)], "scheduler"),
]  # fmt: skip


def _result_rows(trial: FakeTrial) -> list[dict]:
    rows = []
    for iteration, (step, value) in enumerate(trial.reports, start=1):
        last = iteration == len(trial.reports)
        rows.append(
            {
                "step": step,
                "val_miou": value,
                "loss": 1 - value,
                "timestamp": 1795216843 + iteration,
                "checkpoint_dir_name": None,
                "done": last and trial.ending == "scheduler",
                "training_iteration": iteration,
                "trial_id": trial.trial_id,
                "date": "2026-11-20_23-20-43",
                "time_this_iter_s": 0.3,
                "time_total_s": 0.3 * iteration,
                "config": dict(trial.params),
            }
        )
    return rows


def write_trial_files(root: Path, trial: FakeTrial, *, with_result_json: bool = True) -> None:
    """Write params.json, result.json, progress.csv (and error.txt) as Tune does."""
    directory = root / trial.directory
    directory.mkdir(parents=True)
    (directory / "params.json").write_text(json.dumps(trial.params, indent=2))
    rows = _result_rows(trial)
    if with_result_json:
        (directory / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with (directory / "progress.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, PROGRESS_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({**r, "checkpoint_dir_name": ""} for r in rows)
    if trial.ending == "error":
        (directory / "error.txt").write_text(
            "Failure # 1 (occurred at 2026-11-20_23-20-43)\n"
            "Traceback (most recent call last):\n"
            '  File "/tmp/probe.py", line 13, in trainable\n'
            "RuntimeError: boom\n"
        )
        (directory / "error.pkl").write_bytes(b"\x80\x05 not a pickle to read")


def state_entry(trial: FakeTrial, status: str | None = None) -> list[str]:
    """One `trial_data` entry: [trial json string, run json string], as Tune writes it."""
    rows = _result_rows(trial)
    last_result = {**rows[-1], "done": trial.ending != "error"}
    meta = {
        "stub": False,
        "trainable_name": "trainable",
        "trial_id": trial.trial_id,
        "config": dict(trial.params),
        "evaluated_params": dict(trial.params),
        "experiment_tag": f"{trial.index}_" + trial.directory.split("_", 4)[-1],
        "status": status or trial.status,
        "relative_logdir": trial.directory,
        "results": "80054e2e",
    }
    run = {
        "start_time": 1795216842.7,
        "num_failures": 1 if trial.ending == "error" else 0,
        "error_filename": "error.txt" if trial.ending == "error" else None,
        "pickled_error_filename": "error.pkl" if trial.ending == "error" else None,
        "last_result": last_result,
    }
    return [json.dumps(meta, indent=2), json.dumps(run, indent=2)]


def write_experiment(root: Path, trials: list[FakeTrial], *, metric: str = "val_miou") -> Path:
    """Write a whole Tune experiment directory; pickles are junk, so unpickling would fail."""
    root.mkdir(parents=True, exist_ok=True)
    for trial in trials:
        write_trial_files(root, trial)
    state = {
        "trial_data": [state_entry(trial) for trial in trials],
        "runner_data": {"_metric": metric, "_session_str": SESSION, "_iteration": 275},
        "stats": {"start_time": 1795216832.2},
    }
    (root / f"experiment_state-{SESSION}.json").write_text(json.dumps(state, indent=2))
    (root / f"basic-variant-state-{SESSION}.json").write_bytes(b"\x80\x05 junk pickle")
    (root / "tuner.pkl").write_bytes(b"\x80\x05 junk pickle")
    (root / ".validate_storage_marker").write_text("")
    return root


@pytest.fixture
def experiment_dir(tmp_path: Path) -> Path:
    """A Tune experiment directory with TERMINATED, early-stopped and ERROR trials."""
    return write_experiment(tmp_path / "probe", STANDARD_TRIALS)


def write_run(root: Path, *, with_eval: bool = True, steps_per_stage: int = 40) -> Path:
    """A two-stage pretrain run directory (its files: raycseg.run_directory)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text(
        "name: fixture-run\nstages:\n- name: cacl\n  method: cacl\n- name: reco\n  method: reco\n"
    )
    lines = []
    for step in range(1, 2 * steps_per_stage + 1):
        stage = "cacl" if step <= steps_per_stage else "reco"
        decay = 1.0 / (1.0 + 0.05 * step)
        record = {"stage": stage, "step": step, "lr": 0.1 * decay, "samples_per_s": 120.0 + step}
        if stage == "cacl":
            terms = {
                "loss_global": 2.0 * decay,
                "loss_pixel": 1.0 * decay,
                "loss_cycle": 0.5 * decay,
            }
        else:
            terms = {"loss_supervised": 1.5 * decay, "loss_reco": 0.8 * decay}
        stage_step = step if stage == "cacl" else step - steps_per_stage
        skipped = stage_step // (13 if stage == "cacl" else 5)  # a counter per stage
        record.update(terms, loss=sum(terms.values()), skipped_corrupt=skipped)
        if step % 10 == 0:
            record["val_miou"] = 0.1 + step / 400
        lines.append(json.dumps(record))
    (root / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    if with_eval:
        scores = {
            "linear_probe": {"miou": 0.41, "per_class_iou": [0.9, None, 0.2, 0.13]},
            "kmeans": {"miou": 0.33, "per_class_iou": [0.7, None, 0.2, 0.09], "seed": 0},
            "baseline_random": {
                "linear_probe": {"miou": 0.12, "per_class_iou": [0.3, None, 0.05, 0.01]},
                "kmeans": {"miou": 0.08, "per_class_iou": [0.2, None, 0.03, 0.01]},
            },
        }
        (root / "eval.json").write_text(json.dumps(scores, indent=2))
    return root


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A two-stage run directory with eval.json."""
    return write_run(tmp_path / "run")
