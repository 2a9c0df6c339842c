"""`cseg pretrain` with `storage.loggers: [tensorboard, mlflow, wandb]` in Ray Train's local
mode, offline (W&B offline, MLflow's local store in the run directory).

The run is stopped after metrics.jsonl holds step 5 but before the live stream carries it
(its checkpoint is step 4), then resumed by the CLI (in process) with `--quiet`: each tracker holds
every step of metrics.jsonl exactly once, in the same MLflow run and W&B run.
"""

from __future__ import annotations

import json
import sys

import pytest
from cseg.main import app
from tracker_history import mlflow_client, tensorboard_series, wandb_history, wandb_records
from typer.testing import CliRunner

from raycseg.config import load_recipe
from raycseg.run_directory import MetricsLog
from raycseg.tracking.environment import mlflow_uri
from raycseg.train.launch import run_pretrain

pytestmark = pytest.mark.integration


class Interrupted(Exception):
    """Stands in for a killed driver."""


def overrides(data_root, runs, name, steps=6):
    return [
        f"data.root={data_root}",
        f"storage.path={runs}",
        f"storage.name={name}",
        "scaling.num_workers=0",
        f"stages.cacl.steps={steps}",
        "stages.cacl.val_every=3",
        "storage.checkpoint_every=2",
        "eval=null",
        "storage.loggers=[tensorboard,mlflow,wandb]",
    ]


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "WANDB_PROJECT"):
        monkeypatch.delenv(name, raising=False)


def test_every_step_once_in_each_tracker_across_a_resume(tmp_path, monkeypatch, offline):
    recipe = load_recipe("cacl/debug", overrides(tmp_path / "data", tmp_path / "runs", "t"))
    append = MetricsLog.append

    def append_then_stop(self, record):
        append(self, record)
        if record["step"] == 5:  # written to metrics.jsonl, not yet streamed to the driver
            raise Interrupted

    with monkeypatch.context() as patched, pytest.raises(Interrupted):
        patched.setattr(MetricsLog, "append", append_then_stop)
        run_pretrain(recipe)
    run = tmp_path / "runs" / "t"
    first = json.loads((run / "tracking.json").read_text())
    assert first["logged_through"] == 5  # the stream's missed step 5, from metrics.jsonl
    first_losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").open()]

    resumed = CliRunner().invoke(  # in process: a second torch import would double the time
        app, ["pretrain", "cacl/debug", *overrides(tmp_path / "data", tmp_path / "runs", "t"), "-q"]
    )
    assert resumed.exit_code == 0, resumed.output
    assert resumed.stdout == f"{run}\n" and resumed.stderr == ""

    lines = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    steps = [line["step"] for line in lines]
    assert steps == [1, 2, 3, 4, 5, 6]
    state = json.loads((run / "tracking.json").read_text())
    assert state == {"logged_through": 6, "run_ids": first["run_ids"]}  # the same runs
    # step 5 was redone after the resume: the trackers keep its first value
    expected = [*first_losses[:5], lines[5]["loss"]]

    tensorboard = tensorboard_series(run / "tensorboard", "loss")
    assert [s for s, _ in tensorboard] == steps
    assert [v for _, v in tensorboard] == pytest.approx(expected)
    assert [s for s, _ in tensorboard_series(run / "tensorboard", "val_miou")] == [3, 6]

    client = mlflow_client(mlflow_uri(run))
    mlflow_run = client.get_run(state["run_ids"]["mlflow"])
    history = sorted(
        (m.step, m.value) for m in client.get_metric_history(mlflow_run.info.run_id, "loss")
    )
    assert [s for s, _ in history] == steps and [v for _, v in history] == pytest.approx(expected)
    assert mlflow_run.info.status == "FINISHED" and mlflow_run.info.run_name == "t"
    assert mlflow_run.data.params["stages"].startswith("[{")
    assert mlflow_run.data.params["storage.checkpoint_every"] == "2"
    assert {"loss_global", "loss_pixel", "loss_cycle", "lr", "samples_per_s"} <= set(
        mlflow_run.data.metrics
    )
    artefacts = {a.path for a in client.list_artifacts(mlflow_run.info.run_id)}
    assert artefacts == {"config.yaml", "plots", "checkpoint"}
    plots = {a.path for a in client.list_artifacts(mlflow_run.info.run_id, "plots")}
    assert {"plots/loss.png", "plots/lr_throughput.png", "plots/validation.png"} <= plots
    assert [a.path for a in client.list_artifacts(mlflow_run.info.run_id, "checkpoint")] == [
        "checkpoint/state.pt"
    ]

    run_id = state["run_ids"]["wandb"]
    rows = [row for row in wandb_history(run / "wandb", run_id) if "loss" in row]
    assert [row["_step"] for row in rows] == steps
    assert [row["loss"] for row in rows] == pytest.approx(expected)
    records = list(wandb_records(run / "wandb", run_id))
    config = next(r.run.config for r in records if r.WhichOneof("record_type") == "run")
    assert json.loads(next(u.value_json for u in config.update if u.key == "name")) == "cacl-debug"
    kinds = sorted(r.artifact.type for r in records if r.WhichOneof("record_type") == "artifact")
    assert kinds == ["model", "report"]


def test_a_run_with_no_tracker_installed_finishes_with_one_line_each(
    tmp_path, monkeypatch, offline
):
    for module in ("tensorboard", "mlflow", "wandb"):
        monkeypatch.setitem(sys.modules, module, None)
    recipe = load_recipe("cacl/debug", overrides(tmp_path / "data", tmp_path / "runs", "n", 2))
    messages: list[str] = []
    result = run_pretrain(recipe, on_message=messages.append)
    warnings = [m for m in messages if m.startswith("storage.loggers:")]
    assert len(warnings) == 3 and all("is not installed" in m for m in warnings)
    assert result.checkpoints["cacl"].endswith("state.pt")
    assert len((result.run_dir / "metrics.jsonl").read_text().splitlines()) == 2
    assert not (result.run_dir / "tracking.json").exists()
