"""Ray's W&B Tune callback without the API key in its actor's runtime_env (`raycseg.tracking.tune`).

A module-level class, so the `tuner.pkl` Tune writes refers to it by name and
`Tuner.restore` finds it again.
"""

from __future__ import annotations

import os

from ray.air.integrations.wandb import WandbLoggerCallback


class WandbCallback(WandbLoggerCallback):
    """Keeps `WANDB_API_KEY` out of the logging actor's runtime_env (and so out of Ray's logs)."""

    def _start_logging_actor(self, trial, exclude_results, **wandb_init_kwargs):
        key = os.environ.pop("WANDB_API_KEY", None)
        try:
            super()._start_logging_actor(trial, exclude_results, **wandb_init_kwargs)
        finally:
            if key is not None:
                os.environ["WANDB_API_KEY"] = key
