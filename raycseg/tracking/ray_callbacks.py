"""Ray's MLflow and W&B Tune callbacks, made safe for a search (`raycseg.tracking.tune`).

- A tracker that fails never stops the search: its first error is one warning line
  on stderr, and the callback is off from then on (Tune would otherwise end the
  experiment on a callback's exception).
- MLflow logs each trial's parameters once, at its end: PBT restarts a trial with new
  values, and MLflow refuses to change a logged parameter.
- W&B keeps `WANDB_API_KEY` out of its logging actor's runtime_env (and so out of Ray's logs).

Module-level classes, so the `tuner.pkl` Tune writes refers to them by name and
`Tuner.restore` finds them again.
"""

from __future__ import annotations

import os
import sys

from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.air.integrations.wandb import WandbLoggerCallback

from .environment import describe


class _NeverFails:
    """Mixin for a Tune logger callback: its first error is one warning line, then it is off."""

    tracker = "tracker"
    failed = False

    def _guarded(self, what: str, call, *args, **kwargs) -> None:
        if self.failed:
            return
        try:
            call(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 (a tracker must never stop the search)
            self.failed = True
            print(
                f"storage.loggers: {self.tracker} failed ({what}: {describe(error)}); "
                "it is off for the rest of this search",
                file=sys.stderr,
                flush=True,
            )

    def setup(self, *args, **kwargs):
        """Set the tracker up (an error: one line, and the tracker is off)."""
        self._guarded("setup", super().setup, *args, **kwargs)

    def log_trial_start(self, trial):
        """Open the trial's run."""
        self._guarded(f"trial {trial}", super().log_trial_start, trial)

    def log_trial_result(self, iteration, trial, result):
        """Log one report of the trial."""
        self._guarded(f"trial {trial}", super().log_trial_result, iteration, trial, result)

    def log_trial_end(self, trial, failed=False):
        """Close the trial's run."""
        self._guarded(f"trial {trial}", super().log_trial_end, trial, failed)


class MlflowCallback(_NeverFails, MLflowLoggerCallback):
    """One MLflow run per trial; its parameters logged once, at its end (PBT changes them)."""

    tracker = "mlflow"

    def __init__(self, **kwargs):
        super().__init__(log_params_on_trial_end=True, **kwargs)


class WandbCallback(_NeverFails, WandbLoggerCallback):
    """Keeps `WANDB_API_KEY` out of the logging actor's runtime_env (and so out of Ray's logs)."""

    tracker = "wandb"

    def _start_logging_actor(self, trial, exclude_results, **wandb_init_kwargs):
        key = os.environ.pop("WANDB_API_KEY", None)
        try:
            super()._start_logging_actor(trial, exclude_results, **wandb_init_kwargs)
        finally:
            if key is not None:
                os.environ["WANDB_API_KEY"] = key
