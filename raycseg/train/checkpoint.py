"""Checkpoint files and the run's `metrics.jsonl` (CONTRACTS.md §2).

A checkpoint is a directory holding `state.pt`, a plain dict saved with
`torch.save` and read back with `weights_only=True`:

    format        "raycseg"
    backbone      backbone state_dict (what `init_from` and `cseg eval` read)
    model         the whole method's state_dict (backbone + heads + EMA copies)
    optimizer     optimizer state_dict
    step          global step of the last finished optimizer step (counts on across stages)
    stage         stage name
    stage_step    steps finished within the stage
    data_position batches the rank-0 loader had produced
    recipe        the resolved recipe (plain dict)

Paths a run directory stores into itself (the stages' final checkpoints in
`stages.json`) are relative to it (CONTRACTS.md §2), so a run copied or moved,
also from a bucket to a disk, still evaluates, exports and resumes:
`path_in_run` makes a location relative for storing, `resolve_in_run` turns a
stored one into a location under the run's current directory (older runs stored
absolute paths and URLs: they are kept where they still exist, else found again
inside the run by their trailing `<stage>/...` part).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from .. import remote
from ..config import is_url
from ..errors import CsegError

STATE_FILE = "state.pt"
STAGES_FILE = "stages.json"  # in a run directory: each finished stage and its final checkpoint
LOCAL_CHECKPOINTS = "local_checkpoints"  # local mode: <run>/<stage>/local_checkpoints/checkpoint_*
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
    with remote.local_copy(path) as local:
        file = local / STATE_FILE if local.is_dir() else local
        if not file.is_file():
            raise CsegError(
                f"no {STATE_FILE} at {path}; pass a run directory or a checkpoint (state.pt "
                "or its folder)"
            )
        try:
            return torch.load(file, map_location=map_location, weights_only=True)
        except Exception as error:  # torch raises several types for a bad file
            raise CsegError(
                f"cannot read {path} as a raycseg checkpoint ({type(error).__name__}); "
                "pass a state.pt that raycseg wrote"
            ) from error


def load_ray_checkpoint(checkpoint, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read the state out of a `ray.train.Checkpoint` (local or remote storage)."""
    with checkpoint.as_directory() as directory:
        return load_state(directory, map_location)


def read_stages(run_dir: str | Path) -> dict[str, dict[str, Any]]:
    """`run_dir/stages.json` as stored: stage name -> {"checkpoint", "last_step"} (empty if none).

    Each "checkpoint" is relative to the run directory; pass it to `resolve_in_run`.
    """
    path = remote.join(run_dir, STAGES_FILE)
    return json.loads(remote.read_text(path)) if remote.is_file(path) else {}


def write_stages(run_dir: str | Path, finished: dict[str, dict[str, Any]]) -> None:
    """Replace `run_dir/stages.json` (atomically); checkpoints are stored relative to the run."""
    stored = {
        name: {**entry, "checkpoint": path_in_run(run_dir, entry["checkpoint"])}
        for name, entry in finished.items()
    }
    remote.write_text(remote.join(run_dir, STAGES_FILE), json.dumps(stored, indent=2))


def path_in_run(run_dir: str | Path, location: str | Path) -> str:
    """`location` relative to `run_dir` (a POSIX path), or unchanged when it lies outside it.

    Both may be local paths or URLs (a run in a bucket stores its checkpoints'
    keys relative to the run's prefix).
    """
    base, location = str(run_dir), str(location)
    if not (is_url(location) or Path(location).is_absolute()):
        return location  # relative already
    if is_url(base) or is_url(location):
        prefix = base.rstrip("/") + "/"
        return location[len(prefix) :] if location.startswith(prefix) else location
    try:
        return Path(location).resolve().relative_to(Path(base).resolve()).as_posix()
    except ValueError:
        return location


def resolve_in_run(run_dir: str | Path, stored: str, what: str) -> str | Path:
    """Where a location stored in a run directory is now.

    A relative location (what runs store) is joined to `run_dir`. An absolute
    path or a URL (older runs) is kept when it exists; otherwise, for a run
    copied or moved since (also from a bucket to a disk), the same file is found
    inside `run_dir` by its trailing part (`<stage>/.../state.pt`).

    Args:
        run_dir: the run directory where it is now (a local path or a URL).
        stored: the location as stored.
        what: what it is, for the error (e.g. "stage cacl's checkpoint").

    Raises:
        CsegError: it is in neither place; the message names the fix.
    """
    relative = path_in_run(run_dir, stored)
    if not (is_url(relative) or Path(relative).is_absolute()):
        location = remote.join(run_dir, *PurePosixPath(relative).parts)
        if remote.exists(location):
            return location
    elif not is_url(stored) and Path(stored).exists():
        return stored
    else:
        found = _find_inside_run(run_dir, stored)
        if found is not None:
            return found
        if is_url(stored) and _exists_quietly(stored):
            return stored
    raise CsegError(
        f"{what} ({stored}) is not in the run directory {run_dir}; copy or move the whole "
        f"run directory (its stage folders hold the checkpoints), or drop the stage from "
        f"{STAGES_FILE} to train it again"
    )


def _find_inside_run(run_dir: str | Path, stored: str) -> str | Path | None:
    """The longest trailing part of `stored` (at least `<stage>/<folder>/<file>`) under `run_dir`."""
    path = stored.partition("://")[2] if is_url(stored) else stored
    parts = [part for part in PurePosixPath(path).parts if part != "/"]
    for start in range(1, len(parts) - 2):
        candidate = remote.join(run_dir, *parts[start:])
        if remote.exists(candidate):
            return candidate
    return None


def _exists_quietly(location: str) -> bool:
    """`remote.exists`, False where the store cannot be reached (no credentials, offline)."""
    try:
        return remote.exists(location)
    except OSError:
        return False


def latest_local_checkpoint(run_dir: str | Path, stage_name: str) -> Path | None:
    """Local mode's newest complete checkpoint folder of a stage, or None.

    Ray Train keeps no snapshot in local mode (`scaling.num_workers=0`), so an
    interrupted stage resumes from `<run>/<stage>/local_checkpoints/checkpoint_<step>`.
    """
    folder = Path(run_dir) / stage_name / LOCAL_CHECKPOINTS
    if is_url(str(run_dir)) or not folder.is_dir():
        return None
    steps = {}
    for checkpoint in folder.iterdir():
        step = checkpoint.name.removeprefix("checkpoint_")
        if step.isdigit() and (checkpoint / STATE_FILE).is_file():  # a complete save
            steps[checkpoint] = int(step)
    return max(steps, key=steps.__getitem__) if steps else None


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


class MetricsLog:
    """The run's `metrics.jsonl`: one JSON object per logged optimizer step.

    Only rank 0 writes it. On resume, `truncate_after(step)` first drops the
    lines past the restored checkpoint, so that every step appears exactly once.

    In an object store (a URL location) a file cannot be appended to, so the
    log lives in a local staging file: `truncate_after` downloads the stored
    log, truncates it and uploads it back; `append` writes to the staging file;
    `sync` uploads it whole. The worker syncs before it reports each
    checkpoint, so the stored log always holds every step up to the latest
    registered checkpoint; whatever a crash loses past it lies past the
    checkpoint a resume restores, and is logged again.
    """

    def __init__(self, location: str | Path):
        self.location = location
        self.remote = is_url(str(location))
        self._staging: Path | None = None

    @property
    def path(self) -> Path:
        """The local file appended to: the log itself, or its staging copy for a URL."""
        if not self.remote:
            return Path(self.location)
        if self._staging is None:
            folder = Path(tempfile.mkdtemp(prefix="raycseg-metrics-"))
            self._staging = folder / Path(str(self.location)).name
        return self._staging

    def truncate_after(self, last_step: int) -> int:
        """Keep only lines with `step <= last_step` (atomic rewrite); return how many were dropped."""
        if self.remote:
            stored = remote.read_bytes(self.location) if remote.is_file(self.location) else b""
            self.path.write_bytes(stored)
        if not self.path.exists():
            return 0
        kept, dropped = [], 0
        for line in self.path.read_text().splitlines():
            if not line.strip():
                continue
            try:
                step = json.loads(line)["step"]
            except (ValueError, KeyError):
                dropped += 1  # a line cut short by a crash
                continue
            if step <= last_step:
                kept.append(line)
            else:
                dropped += 1
        partial = self.path.with_suffix(".jsonl.partial")
        partial.write_text("".join(line + "\n" for line in kept))
        os.replace(partial, self.path)
        self.sync()
        return dropped

    def append(self, record: dict[str, Any]) -> None:
        """Append one record and flush it to disk (the staging file, for a URL)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()

    def sync(self) -> None:
        """Upload the staging file to the URL location (nothing to do for a local log)."""
        if self.remote and self.path.exists():
            remote.write_bytes(self.location, self.path.read_bytes())

    def close(self) -> None:
        """Sync, then remove the staging file (a URL location); the log stays readable."""
        if self.remote and self._staging is not None:
            self.sync()
            shutil.rmtree(self._staging.parent, ignore_errors=True)
            self._staging = None

    def read(self) -> list[dict[str, Any]]:
        """All stored records, in file order."""
        if not remote.is_file(self.location):
            return []
        text = remote.read_text(self.location)
        return [json.loads(line) for line in text.splitlines() if line.strip()]
