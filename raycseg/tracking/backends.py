"""One adapter per tracker, all with the same five calls (`Backend`).

Each adapter is built at the start of a run (`open_backend`): the library's import
and the connection happen there, so a missing or unreachable tracker is known before
training starts. `RunTracking` guards every later call.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

from ..storage import is_url
from .environment import mlflow_uri, quiet_mlflow, wandb_project

MLFLOW_PARAM_CHARS = 6000  # MLflow's limit on a param value
MLFLOW_PARAMS_PER_BATCH = 100  # and on params per log_batch
MLFLOW_ARTIFACTS = "mlflow-artifacts"  # <run>/mlflow-artifacts/: the local store's artefacts
TENSORBOARD_DIR = "tensorboard"


class Backend:
    """A tracker's run: what `RunTracking` calls.

    Attributes:
        name: the `storage.loggers` entry.
        run_id: the tracker's id of the run, kept in tracking.json (None: nothing to reopen).
    """

    name = ""
    run_id: str | None = None

    def log_recipe(self, recipe_yaml: str, params: dict[str, str], *, new: bool) -> None:
        """The resolved recipe: as YAML, and as flat `section.key` parameters."""

    def log_metrics(self, values: dict[str, float], step: int) -> None:
        """One metrics.jsonl record's numbers at its step."""

    def log_scores(self, scores: dict[str, float], step: int) -> None:
        """eval.json's numbers (`eval/<protocol>/<score>`), at the run's last step."""

    def log_files(self, files: dict[str, list[Path]]) -> None:
        """Artefacts by group (`plots`, `checkpoint`), where the tracker keeps files."""

    def flush(self) -> None:
        """Write out what is buffered."""

    def close(self, *, failed: bool) -> None:
        """End the tracker's run."""


class TensorBoardBackend(Backend):
    """One `SummaryWriter` in `<run>/tensorboard/` (a resumed run adds an event file there).

    TensorBoard has no artefact store: plots and checkpoints stay in the run directory.
    """

    name = "tensorboard"

    def __init__(self, run_dir: Path):
        import tensorboard  # noqa: F401 (torch's writer needs it; ImportError: not installed)
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / TENSORBOARD_DIR))

    def log_recipe(self, recipe_yaml, params, *, new):
        """Log the recipe."""
        block = "\n".join("    " + line for line in recipe_yaml.splitlines())
        self.writer.add_text("recipe", block, 0)

    def log_metrics(self, values, step):
        """Log one record's numbers."""
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def log_scores(self, scores, step):
        """Log the eval scores."""
        self.log_metrics(scores, step)

    def flush(self):
        """Flush the writer."""
        self.writer.flush()

    def close(self, *, failed):
        """End the run."""
        self.writer.close()


class MlflowBackend(Backend):
    """One MLflow run per `cseg pretrain` run (no nested runs), through `MlflowClient`.

    Store: `MLFLOW_TRACKING_URI`, else a local store in the run directory
    (`environment.mlflow_uri`). Experiment: `MLFLOW_EXPERIMENT_NAME`, else the recipe's name.
    """

    name = "mlflow"

    def __init__(self, run_dir: Path | str, experiment: str, run_name: str, run_id: str | None):
        from mlflow.tracking import MlflowClient

        quiet_mlflow()
        uri = mlflow_uri(run_dir)
        self.client = MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(experiment)
        if found is not None:
            experiment_id = found.experiment_id
        else:  # the default sqlite store would put artefacts in ./mlruns of the current folder
            local = not os.environ.get("MLFLOW_TRACKING_URI")
            artifacts = (Path(run_dir).resolve() / MLFLOW_ARTIFACTS).as_uri() if local else None
            experiment_id = self.client.create_experiment(experiment, artifact_location=artifacts)
        if run_id is not None:
            self.client.update_run(run_id, status="RUNNING")  # the same run, reopened
            self.run_id = run_id
        else:
            self.run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id

    def log_recipe(self, recipe_yaml, params, *, new):
        """Log the recipe."""
        from mlflow.entities import Param

        self.client.log_text(self.run_id, recipe_yaml, "config.yaml")
        if not new:
            return  # MLflow refuses to change a logged param; the resumed run keeps its first
        items = [Param(k, v[:MLFLOW_PARAM_CHARS]) for k, v in params.items()]
        for start in range(0, len(items), MLFLOW_PARAMS_PER_BATCH):
            self.client.log_batch(
                self.run_id, params=items[start : start + MLFLOW_PARAMS_PER_BATCH]
            )

    def log_metrics(self, values, step):
        """Log one record's numbers."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, step) for key, value in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def log_scores(self, scores, step):
        """Log the eval scores."""
        self.log_metrics(scores, step)

    def log_files(self, files):
        """Log the artefacts."""
        for group, paths in files.items():
            for path in paths:
                self.client.log_artifact(self.run_id, str(path), artifact_path=group)

    def close(self, *, failed):
        """End the run."""
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")


class WandbBackend(Backend):
    """One W&B run (`WANDB_PROJECT`, else `raycseg`), files under `<run>/wandb/`.

    A resumed run reopens it (`id=..., resume="allow"`); offline runs sync later
    with `wandb sync <run>/wandb/offline-run-*`.
    """

    name = "wandb"

    def __init__(self, run_dir: Path | str, run_name: str, config: dict, run_id: str | None):
        import wandb

        self.wandb = wandb
        options: dict[str, Any] = {"id": run_id, "resume": "allow"} if run_id else {}
        self.run = wandb.init(
            project=wandb_project(),
            name=run_name,
            config=config,
            allow_val_change=True,
            dir=None if is_url(str(run_dir)) else str(run_dir),
            reinit="create_new",
            settings=wandb.Settings(console="off", silent=True, init_timeout=60),
            **options,
        )
        self.run_id = self.run.id
        self.run_name = re.sub(r"[^A-Za-z0-9_.-]", "-", run_name)

    def log_metrics(self, values, step):
        """Log one record's numbers."""
        self.run.log(values, step=step)

    def log_scores(self, scores, step):
        """Log the eval scores."""
        self.run.summary.update(scores)

    def log_files(self, files):
        """Log the artefacts."""
        kinds = {"checkpoint": "model", "plots": "report"}
        for group, paths in files.items():
            if not paths:
                continue
            artifact = self.wandb.Artifact(f"{self.run_name}-{group}", type=kinds.get(group, group))
            for path in paths:
                artifact.add_file(str(path))
            self.run.log_artifact(artifact)

    def close(self, *, failed):
        """End the run."""
        self.run.finish(exit_code=1 if failed else 0)


def open_backend(
    logger: str, run_dir: Path | str, recipe_name: str, config: dict, run_id: str | None
) -> Backend:
    """Open one tracker's run (ImportError: its library is missing; anything else: unreachable)."""
    run_name = Path(str(run_dir).rstrip("/")).name
    if logger == "tensorboard":
        return TensorBoardBackend(Path(run_dir))
    if logger == "mlflow":
        experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME") or recipe_name
        return MlflowBackend(run_dir, experiment, run_name, run_id)
    return WandbBackend(run_dir, run_name, config, run_id)
