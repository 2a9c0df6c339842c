"""Each tracker adapter against its real library, offline, in a temporary folder; and
`RunTracking`'s rules: skip held steps, catch up from metrics.jsonl, one warning per
missing or failing tracker."""

from __future__ import annotations

import json
import sys

import pytest
from tracker_history import (
    mlflow_client,
    tensorboard_series,
    tensorboard_text_tags,
    wandb_history,
    wandb_records,
)

from raycseg.config import load_recipe
from raycseg.tracking import RunTracking
from raycseg.tracking.backends import Backend, MlflowBackend, TensorBoardBackend, WandbBackend
from raycseg.tracking.environment import describe, mlflow_uri
from raycseg.tracking.run import _eval_scores

RECIPE_YAML = "name: tiny\nstages:\n  - method: cacl\n"


def test_tensorboard_round_trip(tmp_path):
    backend = TensorBoardBackend(tmp_path)
    backend.log_recipe(RECIPE_YAML, {}, new=True)
    for step in (1, 2, 3):
        backend.log_metrics({"loss": 1.0 / step, "lr": 0.1}, step)
    backend.log_scores({"eval/kmeans/miou": 0.25}, 3)
    backend.close(failed=False)
    folder = tmp_path / "tensorboard"
    assert [step for step, _ in tensorboard_series(folder, "loss")] == [1, 2, 3]
    assert tensorboard_series(folder, "eval/kmeans/miou") == [(3, 0.25)]
    assert "recipe/text_summary" in tensorboard_text_tags(folder)


def test_mlflow_round_trip_reopens_the_same_run(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path / "..")  # the default store must not write into the cwd
    params = {f"section.key{i}": "x" * 7000 for i in range(150)}  # two batches, long values
    backend = MlflowBackend(tmp_path, "tiny", "run-a", None)
    backend.log_recipe(RECIPE_YAML, params, new=True)
    backend.log_metrics({"loss": 0.5}, 1)
    backend.close(failed=True)
    again = MlflowBackend(tmp_path, "tiny", "run-a", backend.run_id)
    again.log_recipe(RECIPE_YAML, {"section.key0": "changed"}, new=False)
    again.log_metrics({"loss": 0.25}, 2)
    again.log_scores({"eval/kmeans/miou": 0.3}, 2)
    state = tmp_path / "state.pt"
    state.write_bytes(b"weights")
    again.log_files({"checkpoint": [state], "plots": []})
    again.close(failed=False)

    client = mlflow_client(mlflow_uri(tmp_path))
    run = client.get_run(backend.run_id)
    assert again.run_id == backend.run_id and run.info.status == "FINISHED"
    assert run.info.run_name == "run-a"
    assert len(run.data.params) == 150 and run.data.params["section.key0"] == "x" * 6000
    history = client.get_metric_history(run.info.run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 0.5), (2, 0.25)]
    assert run.data.metrics["eval/kmeans/miou"] == 0.3
    listed = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert listed == {"config.yaml", "checkpoint"}
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == "tiny"
    assert experiment.artifact_location == (tmp_path.resolve() / "mlflow-artifacts").as_uri()
    assert (tmp_path / "mlflow-artifacts").is_dir() and not (tmp_path / ".." / "mlruns").exists()


def test_mlflow_local_store_is_sqlite_in_the_run_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert mlflow_uri(tmp_path) == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert mlflow_uri("s3://bucket/runs/a") is None
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://user:pw@tracking:5000")
    assert mlflow_uri(tmp_path) == "http://user:pw@tracking:5000"


def test_wandb_offline_round_trip_and_resume(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    first = WandbBackend(tmp_path, "run-a", {"name": "tiny", "seed": 3}, None)
    for step in (1, 2):
        first.log_metrics({"loss": 1.0 / step}, step)
    first.close(failed=True)
    again = WandbBackend(tmp_path, "run-a", {"name": "tiny", "seed": 3}, first.run_id)
    again.log_metrics({"loss": 1.0 / 3}, 3)
    again.log_scores({"eval/kmeans/miou": 0.3}, 3)
    state = tmp_path / "state.pt"
    state.write_bytes(b"weights")
    again.log_files({"checkpoint": [state]})
    again.close(failed=False)

    assert again.run_id == first.run_id
    rows = wandb_history(tmp_path / "wandb", first.run_id)
    assert [(row["_step"], row["loss"]) for row in rows] == [(1, 1.0), (2, 0.5), (3, 1.0 / 3)]
    records = list(wandb_records(tmp_path / "wandb", first.run_id))
    runs = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert {run.project for run in runs} == {"raycseg"} and runs[0].display_name == "run-a"
    config = {u.key: json.loads(u.value_json) for u in runs[0].config.update}
    assert config["seed"] == 3
    summary = [
        u.key for r in records if r.WhichOneof("record_type") == "summary" for u in r.summary.update
    ]
    assert "eval/kmeans/miou" in summary
    artifacts = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]
    assert [(a.name, a.type) for a in artifacts] == [("run-a-checkpoint", "model")]


class Recording(Backend):
    """A tracker that keeps what it is given."""

    name = "recording"

    def __init__(self):
        self.steps: list[int] = []

    def log_metrics(self, values, step):
        assert "stage" not in values and "note" not in values
        self.steps.append(step)


class Failing(Backend):
    name = "failing"

    def log_metrics(self, values, step):
        raise ConnectionError("tracking server at https://user:hunter22@host gone")


def records(*steps, stage="cacl"):
    return [{"stage": stage, "step": s, "loss": 1.0 / s, "lr": 0.1, "note": "x"} for s in steps]


def test_held_steps_are_skipped_and_missed_lines_are_caught_up(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in records(1, 2, 3, 4) + records(5, 6, stage="b"))
    )
    recording = Recording()
    tracking = RunTracking(tmp_path, [recording], {"logged_through": 2}, print)
    tracking.record(records(4)[0])  # a new stage (to the tracker): lines 3 first
    tracking.record(records(3)[0])  # held already: a redone step keeps its first value
    tracking.record(records(6, stage="b")[0])  # the stream missed 5: caught up before 6
    tracking.catch_up()
    assert recording.steps == [3, 4, 5, 6]
    assert json.loads((tmp_path / "tracking.json").read_text())["logged_through"] == 6


def test_a_failing_tracker_warns_once_and_is_off(tmp_path):
    messages: list[str] = []
    recording, failing = Recording(), Failing()
    tracking = RunTracking(tmp_path, [failing, recording], {}, messages.append)
    display: list[int] = []
    on_metrics = tracking.wrap(lambda record: display.append(record["step"]))
    for record in records(1, 2, 3):
        on_metrics(record)
    tracking.close(failed=False)
    assert display == recording.steps == [1, 2, 3]
    assert len(messages) == 1 and "failing failed (step 1: ConnectionError" in messages[0]
    assert "hunter22" not in messages[0] and "https://***@host" in messages[0]


def test_missing_trackers_give_one_line_each_and_the_run_goes_on(tmp_path, monkeypatch):
    for module in ("tensorboard", "mlflow", "wandb"):
        monkeypatch.setitem(sys.modules, module, None)  # import fails: not installed
    recipe = load_recipe(
        "cacl/debug",
        [f"storage.path={tmp_path}", "storage.loggers=[tensorboard,mlflow,wandb]"],
    )
    messages: list[str] = []
    tracking = RunTracking.open(recipe, tmp_path / "run", messages.append)
    assert tracking.wrap(None) is None  # nothing to feed: the stream stays as it was
    tracking.finish(None)
    assert len(messages) == 3
    for logger, message in zip(("tensorboard", "mlflow", "wandb"), messages, strict=True):
        assert message.startswith(f"storage.loggers: {logger} is not installed")
        assert "pip install 'raycseg[tracking]'" in message and "\n" not in message


def test_wandb_without_a_key_online_is_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))
    recipe = load_recipe("cacl/debug", [f"storage.path={tmp_path}", "storage.loggers=[wandb]"])
    messages: list[str] = []
    RunTracking.open(recipe, tmp_path / "run", messages.append).close(failed=False)
    assert len(messages) == 1 and "wandb has no API key" in messages[0]


def test_eval_scores_are_flat_numbers(tmp_path):
    scores = {
        "linear_probe": {"miou": 0.4, "per_class_iou": [0.1, None], "protocol": {"epochs": 2}},
        "kmeans": {"miou": 0.3, "miou_std": 0.01, "pixels_scored": 100},
        "baseline_random": {"kmeans": {"miou": 0.1}},
        "data": {"images": 4},
    }
    (tmp_path / "eval.json").write_text(json.dumps(scores))
    assert _eval_scores(tmp_path) == {
        "eval/linear_probe/miou": 0.4,
        "eval/kmeans/miou": 0.3,
        "eval/kmeans/miou_std": 0.01,
        "eval/kmeans/pixels_scored": 100.0,
        "eval/baseline_random/kmeans/miou": 0.1,
    }


def test_errors_are_told_without_secrets(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "0123456789abcdef")
    error = RuntimeError("bad key 0123456789abcdef for s3://AKIA:secret@bucket\nsecond line")
    assert describe(error) == "RuntimeError: bad key *** for s3://***@bucket"


@pytest.fixture(autouse=True)
def _quiet_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
