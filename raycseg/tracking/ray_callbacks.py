"""Ray's MLflow and W&B Tune callbacks, with two fixes (see `raycseg.tracking.tune`).

Module-level classes, so the `tuner.pkl` Tune writes refers to them by name and
`Tuner.restore` finds them again.
"""

from __future__ import annotations

import os

from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.air.integrations.wandb import WandbLoggerCallback

from .environment import file_store_allowed


class MlflowCallback(MLflowLoggerCallback):
    """Opens a local file store with MLflow's opt-out (mlflow-skinny has no SQL store)."""

    def setup(self, *args, **kwargs):
        """Set up MLflow; the local store's opt-out holds only while it opens."""
        uri = self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        with file_store_allowed(uri):
            super().setup(*args, **kwargs)


class WandbCallback(WandbLoggerCallback):
    """Keeps `WANDB_API_KEY` out of the logging actor's runtime_env (and so out of Ray's logs)."""

    def _start_logging_actor(self, trial, exclude_results, **wandb_init_kwargs):
        key = os.environ.pop("WANDB_API_KEY", None)
        try:
            super()._start_logging_actor(trial, exclude_results, **wandb_init_kwargs)
        finally:
            if key is not None:
                os.environ["WANDB_API_KEY"] = key
