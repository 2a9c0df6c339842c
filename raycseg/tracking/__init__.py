"""Experiment trackers (`storage.loggers`): TensorBoard, MLflow and W&B, besides metrics.jsonl.

`cseg pretrain` logs in its driver (`RunTracking`, fed by the progress stream of
rank 0's records, so Ray workers never import a tracker library); `cseg tune`
hands Tune Ray's own logger callbacks (`tune_callbacks`). The libraries are the
optional extra `raycseg[tracking]`; a tracker that is missing, unreachable or
failing is turned off with one warning line, and training goes on.
"""

from __future__ import annotations

from .run import TRACKING_FILE, RunTracking
from .tune import tune_callbacks

__all__ = ["TRACKING_FILE", "RunTracking", "tune_callbacks"]
