"""Checkpoint state files, and the writer that reports a stage's checkpoints to Ray Train.

A checkpoint is a folder holding `state.pt` (`raycseg.run_directory.STATE_FILE`),
a plain dict saved with `torch.save` and read back with `weights_only=True`:

    format        "raycseg"
    backbone      backbone state_dict (what `init_from` and `cseg eval` read)
    model         the whole method's state_dict (backbone + heads + EMA copies)
    optimizer     optimizer state_dict
    step          global step of the last finished optimizer step (counts on across stages)
    stage         stage name
    stage_step    steps finished within the stage
    data_position batches the rank-0 loader had produced
    recipe        the resolved recipe (plain dict)
    val_miou      (best checkpoints only) the validation score that made it the best
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray.train
import torch

from .. import storage
from ..errors import CsegError
from ..models.weights import read_tensor_file
from ..run_directory import BEST_CHECKPOINT, LOCAL_CHECKPOINTS, STATE_FILE

CHECKPOINT_FORMAT = "raycseg"


def save_state(directory: str | Path, state: dict[str, Any]) -> Path:
    """Write `state` to `directory/state.pt` via a temporary name and a rename."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / STATE_FILE
    partial = directory / (STATE_FILE + ".partial")
    torch.save({"format": CHECKPOINT_FORMAT, **state}, partial)
    os.replace(partial, target)
    return target


def load_state(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint's state (a directory holding state.pt, or the file itself; or a URL).

    Raises:
        CsegError: there is no state.pt there, or it is not a tensor-only torch file.
    """
    with storage.local_copy(path) as local:
        file = local / STATE_FILE if local.is_dir() else local
        if not file.is_file():
            raise CsegError(
                f"no {STATE_FILE} at {path}; pass a run directory or a checkpoint (state.pt "
                "or its folder)"
            )
        return read_tensor_file(
            file,
            map_location=map_location,
            what="a raycseg checkpoint",
            fix=f"pass a {STATE_FILE} that raycseg wrote",
        )


def load_ray_checkpoint(checkpoint, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read the state out of a `ray.train.Checkpoint` (local or remote storage)."""
    with checkpoint.as_directory() as directory:
        return load_state(directory, map_location)


def new_checkpoint_dir(parent: Path | None = None, name: str | None = None) -> Path:
    """A fresh directory for rank 0 to fill before reporting it to Ray.

    With `parent` and `name` it is `parent/name` (emptied first); otherwise a new
    temporary directory.
    """
    if parent is None or name is None:
        return Path(tempfile.mkdtemp(prefix="raycseg-ckpt-"))
    directory = Path(parent) / name
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    return directory


def training_state(
    method: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    recipe: dict[str, Any],
    *,
    stage_name: str,
    step: int,
    stage_step: int,
) -> dict[str, Any]:
    """What a checkpoint of a stage holds (see the module docstring)."""
    return {
        "backbone": method.backbone.state_dict(),
        "model": method.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "stage": stage_name,
        "stage_step": stage_step,
        "data_position": stage_step,
        "recipe": recipe,
    }


@dataclass
class StageCheckpoints:
    """Where one stage's checkpoints go, and how they reach Ray Train.

    Every rank calls `report` (Ray's report is a barrier); rank 0 passes the
    state, and writes a checkpoint when one is due. Ray uploads a reported
    checkpoint to the stage's storage and then deletes the staged copy. Local
    mode (`scaling.num_workers: 0`) uploads nothing and keeps the reported
    path, so there the staged copies live in the run directory
    (`<run>/<stage>/local_checkpoints`) and only the latest `num_to_keep` stay.
    """

    run_dir: str
    stage_name: str
    local_mode: bool
    num_to_keep: int

    def report(
        self,
        metrics: dict[str, Any],
        state: dict[str, Any] | None,
        *,
        save: bool,
        best: bool,
    ) -> str | None:
        """Report `metrics`; with `save` a checkpoint, with `best` also `<stage>/best/state.pt`.

        Rank 0 passes the checkpoint's state (`training_state`) when `save` or
        `best`; the other ranks pass None.

        Returns:
            Rank 0: where the reported checkpoint folder is stored, `<stage>/checkpoint_<step>`
            (or `<stage>/local_checkpoints/checkpoint_<step>` in local mode); else None.
        """
        checkpoint = name = None
        if state is not None:
            if best:
                self._save_best({**state, "val_miou": metrics["val_miou"]})
            if save:
                name = f"checkpoint_{metrics['step']:06d}"
                directory = new_checkpoint_dir(self._staging(), name=name)
                save_state(directory, state)
                checkpoint = ray.train.Checkpoint.from_directory(str(directory))
        ray.train.report(
            metrics,
            checkpoint=checkpoint,
            checkpoint_dir_name=None if self.local_mode else name,
            delete_local_checkpoint_after_upload=not self.local_mode,
        )
        if checkpoint is None:
            return None
        if self.local_mode:
            for stale in sorted(self._staging().iterdir())[: -self.num_to_keep]:
                shutil.rmtree(stale, ignore_errors=True)
            return checkpoint.path
        return str(storage.join(self.run_dir, self.stage_name, name))

    def _staging(self) -> Path | None:
        """Local mode: the folder the reported checkpoints stay in; else None (a temporary one)."""
        return Path(self.run_dir) / self.stage_name / LOCAL_CHECKPOINTS if self.local_mode else None

    def _save_best(self, state: dict[str, Any]) -> None:
        """Write `<run>/<stage>/best/state.pt` (also to a run directory at a URL)."""
        staged = new_checkpoint_dir()
        save_state(staged, state)
        storage.write_bytes(
            storage.join(self.run_dir, self.stage_name, BEST_CHECKPOINT, STATE_FILE),
            (staged / STATE_FILE).read_bytes(),
        )
        shutil.rmtree(staged, ignore_errors=True)
