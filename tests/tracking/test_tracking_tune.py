"""`cseg tune`'s trackers: the Ray Tune callbacks `_build_tuner` adds (no Ray fit here)."""

from __future__ import annotations

import os
import sys

import ray.cloudpickle
from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.air.integrations.wandb import WandbLoggerCallback
from ray.tune.logger import TBXLoggerCallback
from ray.tune.utils.callback import _create_default_callbacks
from tracker_history import mlflow_client

from raycseg.tracking import tune_callbacks
from raycseg.tracking.environment import mlflow_uri
from raycseg.tracking.ray_callbacks import MlflowCallback, WandbCallback

LOGGERS = ["tensorboard", "mlflow", "wandb"]


def test_trials_group_under_the_experiment_and_tensorboard_stays_on(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    for name in ("MLFLOW_TRACKING_URI", "WANDB_PROJECT", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(name, raising=False)
    experiment = tmp_path / "quickstart-20261208"
    messages: list[str] = []
    mlflow, wandb = tune_callbacks(LOGGERS, experiment, messages.append)
    assert messages == []
    assert isinstance(mlflow, MlflowCallback) and mlflow.experiment_name == experiment.name
    assert mlflow.tracking_uri == mlflow_uri(experiment)  # a local store in the experiment
    assert isinstance(wandb, WandbCallback)
    assert (wandb.project, wandb.group, wandb.kwargs) == (
        "raycseg",
        experiment.name,
        {"resume": "allow"},
    )
    # Tune still adds its TensorBoard writer (per-trial event files) next to these
    defaults = _create_default_callbacks([mlflow, wandb])
    assert any(isinstance(callback, TBXLoggerCallback) for callback in defaults)

    mlflow.setup()  # opens the local sqlite store and the experiment
    assert mlflow_client(mlflow_uri(experiment)).get_experiment_by_name(experiment.name)


def test_no_secret_from_the_environment_is_pickled_with_the_tuner(tmp_path, monkeypatch):
    """Tune pickles its callbacks into tuner.pkl (and `Tuner.restore` reads them back)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://user:pa55word@mlflow.example")
    monkeypatch.setenv("WANDB_API_KEY", "wandb-key-0123456789")
    monkeypatch.setenv("WANDB_PROJECT", "segmentation")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    mlflow, wandb = tune_callbacks(LOGGERS, tmp_path / "exp", print)
    assert mlflow.tracking_uri is None and wandb.project == "segmentation"
    pickled = ray.cloudpickle.dumps([mlflow, wandb])
    assert b"pa55word" not in pickled and b"wandb-key-0123456789" not in pickled


def test_the_wandb_key_stays_out_of_the_logging_actors_runtime_env(monkeypatch):
    seen = []
    monkeypatch.setattr(
        WandbLoggerCallback,
        "_start_logging_actor",
        lambda self, trial, exclude, **kwargs: seen.append(os.environ.get("WANDB_API_KEY")),
    )
    monkeypatch.setenv("WANDB_API_KEY", "wandb-key-0123456789")
    WandbCallback(project="p")._start_logging_actor("trial", [])
    assert seen == [None]
    assert os.environ["WANDB_API_KEY"] == "wandb-key-0123456789"


def test_missing_libraries_are_one_line_each(tmp_path, monkeypatch):
    for module in ("tensorboardX", "mlflow", "wandb"):
        monkeypatch.setitem(sys.modules, module, None)
    messages: list[str] = []
    assert tune_callbacks(LOGGERS, tmp_path / "exp", messages.append) == []
    assert [m.split(" is not installed")[0] for m in messages] == [
        "storage.loggers: tensorboardX",
        "storage.loggers: mlflow",
        "storage.loggers: wandb",
    ]


def test_a_failing_tune_tracker_is_one_line_and_then_off(tmp_path, monkeypatch, capsys):
    """Tune ends an experiment on a callback's exception; a tracker's must not."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (mlflow,) = tune_callbacks(["mlflow"], tmp_path / "exp")
    assert mlflow.log_params_on_trial_end  # PBT changes a trial's values; MLflow refuses that
    calls = []

    def refuse(*args):
        calls.append(args)
        raise RuntimeError("Changing param values is not allowed")

    monkeypatch.setattr(MLflowLoggerCallback, "log_trial_start", refuse)
    mlflow.log_trial_start("trial_1")
    mlflow.log_trial_start("trial_2")
    assert len(calls) == 1 and mlflow.failed
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "storage.loggers: mlflow failed (trial trial_1: RuntimeError: Changing param values is "
        "not allowed); it is off for the rest of this search"
    ]
