"""`tune_callbacks`: Ray Tune's own logger callbacks for `storage.loggers`, one run per trial.

- tensorboard: nothing to add. Tune's default `TBXLoggerCallback` writes each trial's
  event files into `<experiment>/<trial_id>/` (it stays on when other callbacks are
  passed; only `TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=1` turns it off).
- mlflow: `MLflowLoggerCallback`, experiment = the experiment's name, so trials group
  under it; store `MLFLOW_TRACKING_URI`, else a local store in the experiment directory;
  each trial's parameters logged once, at its end (PBT changes them while it runs).
- wandb: `WandbLoggerCallback`, project `WANDB_PROJECT` (else `raycseg`), group = the
  experiment's name, `resume="allow"` so a restored trial reopens its run (its id is
  the trial id).

Ray 2.60 traps, handled here:
- Tune pickles the callbacks into the experiment's `tuner.pkl` and `Tuner.restore`
  brings them back, so no URI from the environment is stored in them (`tracking_uri`
  stays None and MLflow reads `MLFLOW_TRACKING_URI` itself at setup).
- `WandbLoggerCallback` copies `WANDB_API_KEY` into its logging actor's runtime_env,
  which Ray's runtime-env agent writes to its log; `WandbCallback` hides the key while
  it builds the actor, which reads it from its node instead (the driver's node: a local
  Ray inherits the driver's environment; on a cluster, the head's environment or
  `wandb login`).
- Both callbacks step by `training_iteration`, which restarts at 1 after
  `Tuner.restore` (the trial's `step` metric is logged too).
- An exception in a callback ends a Tune experiment; here a tracker's first error is
  one warning line and the tracker is off (`ray_callbacks`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from .environment import (
    is_installed,
    mlflow_uri,
    no_wandb_key,
    not_installed,
    quiet_mlflow,
    wandb_key_missing,
    wandb_project,
)


def tune_callbacks(
    loggers: list[str],
    experiment_dir: Path,
    on_message: Callable[[str], None] = lambda _: None,
) -> list:
    """The Tune callbacks for `loggers` (each missing library: one warning line, no callback)."""
    callbacks = []
    for logger in dict.fromkeys(loggers):
        if logger == "tensorboard":  # Tune's own TBXLoggerCallback, on by default
            if not is_installed("tensorboardX"):
                on_message(not_installed("tensorboardX"))
        elif not is_installed(logger):
            on_message(not_installed(logger))
        elif logger == "mlflow":
            callbacks.append(_mlflow_callback(experiment_dir))
        elif wandb_key_missing():
            on_message(no_wandb_key())
        else:
            callbacks.append(_wandb_callback(experiment_dir))
    return callbacks


def _mlflow_callback(experiment_dir: Path):
    from .ray_callbacks import MlflowCallback

    quiet_mlflow()
    local = None if os.environ.get("MLFLOW_TRACKING_URI") else mlflow_uri(experiment_dir)
    return MlflowCallback(tracking_uri=local, experiment_name=experiment_dir.name)


def _wandb_callback(experiment_dir: Path):
    from .ray_callbacks import WandbCallback

    return WandbCallback(project=wandb_project(), group=experiment_dir.name, resume="allow")
