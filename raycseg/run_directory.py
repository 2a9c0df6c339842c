"""The files of a run directory: their names, and the helpers that read and write them.

A run directory, `<storage.path>/<name>/`, a local path or a URL:

    config.yaml      the resolved recipe (`write_recipe`, `read_recipe`)
    metrics.jsonl    one line per logged step; rank 0 writes it (`MetricsLog`)
    workers.jsonl    which process ran which rank (`record_workers`)
    <stage>/         Ray Train's run folder for the stage: its checkpoints, each a
                     folder holding `state.pt`; `best/state.pt` keeps the best
                     validation (ReCo); local mode keeps its checkpoints in
                     `local_checkpoints/checkpoint_<step>`
    stages.json      finished stages and their final checkpoints, relative to the
                     run directory (`read_stages`, `write_stages`)
    eval.json        evaluation scores (`merge_eval_json`)
    eval_samples/    a few validation images and predictions, for the report
    davis_strip.png  a DAVIS sequence's propagated masks, for the report
    logs/ray.log     what Ray's processes printed
    lineage.json     a `cseg tune` trial's searched values by step, and PBT's exploits
                     (`raycseg.tune.lineage`)

Every path a run stores into itself is relative to it, so a run copied or
moved (also from a bucket to a disk) still resumes, evaluates and exports:
`path_in_run` makes a location relative for storing, `resolve_in_run` turns a
stored one into a location under the run's current directory (older runs
stored absolute paths and URLs: they are kept where they still exist, else
found again inside the run by their trailing `<stage>/...` part).

This module reads no tensors: `raycseg.train.checkpoint` reads and writes state files.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from . import storage
from .config import Recipe, recipe_to_yaml
from .errors import CsegError
from .storage import is_url

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
WORKERS_FILE = "workers.jsonl"
STAGES_FILE = "stages.json"
EVAL_FILE = "eval.json"
SAMPLES_DIR = "eval_samples"
LINEAGE_FILE = "lineage.json"  # `cseg tune` trials only
DAVIS_STRIP = "davis_strip.png"  # `cseg eval --protocol davis`: propagated masks, for the report
LOGS_DIR = "logs"
STATE_FILE = "state.pt"  # in each checkpoint folder
BEST_CHECKPOINT = "best"  # <run>/<stage>/best/state.pt
LOCAL_CHECKPOINTS = "local_checkpoints"  # local mode: <run>/<stage>/local_checkpoints/checkpoint_*


def is_run_directory(path: str | Path) -> bool:
    """True for a local run directory that has finished at least one stage."""
    return (Path(path) / STAGES_FILE).is_file()


def has_recipe(run_dir: str | Path) -> bool:
    """True when `run_dir` (a path or URL) holds a run's config.yaml."""
    return storage.is_file(storage.join(run_dir, CONFIG_FILE))


def recipe_time(run_dir: str | Path) -> float:
    """When the run's config.yaml was last written (seconds since the epoch)."""
    return storage.modified_time(storage.join(run_dir, CONFIG_FILE))


def write_recipe(run_dir: str | Path, recipe: Recipe) -> None:
    """Write the resolved recipe to `run_dir/config.yaml` (through a temporary name)."""
    storage.write_text(storage.join(run_dir, CONFIG_FILE), recipe_to_yaml(recipe))


def read_recipe(run_dir: str | Path) -> Recipe:
    """The recipe a run was trained with (its config.yaml)."""
    return Recipe.model_validate(
        yaml.safe_load(storage.read_text(storage.join(run_dir, CONFIG_FILE)))
    )


def run_checkpoint(run_dir: Path, stage: str | None = None) -> tuple[Recipe, str]:
    """A run directory's recipe and the final checkpoint of `stage` (default: the last).

    The checkpoint is stored relative to the run directory (an older run's absolute
    path or URL is found inside it once the run was copied or moved), and returned
    as a location under `run_dir`.

    Raises:
        CsegError: the stage is unknown or not finished yet, or its checkpoint is missing.
    """
    stages = read_stages(run_dir)
    recipe = read_recipe(run_dir)
    names = [s.name for s in recipe.stages]
    name = stage or names[-1]
    if name not in names:
        raise CsegError(f"{run_dir} has no stage {name!r}; its stages are {', '.join(names)}")
    if name not in stages:
        raise CsegError(
            f"stage {name!r} of {run_dir} has not finished yet; finish it with "
            "`cseg pretrain --resume`"
        )
    checkpoint = resolve_in_run(run_dir, stages[name]["checkpoint"], f"stage {name}'s checkpoint")
    return recipe, str(checkpoint)


def merge_eval_json(path: Path, scores: dict[str, Any]) -> dict[str, Any]:
    """Merge new scores into eval.json (a later eval adds or replaces keys), atomically."""
    merged = json.loads(path.read_text()) if path.exists() else {}
    for key, value in scores.items():
        if key == "baseline_random" and isinstance(merged.get(key), dict):
            merged[key].update(value)
        else:
            merged[key] = value
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(merged, indent=2))
    os.replace(partial, path)
    return merged


def record_workers(run_dir: str | Path, records: list[dict[str, Any]]) -> None:
    """Append rank records to `run_dir/workers.jsonl`.

    A local (or shared) file is appended to by each rank itself; an object in a
    bucket cannot be appended to, so there rank 0 passes every rank's record
    and the file is rewritten whole.
    """
    lines = "".join(json.dumps(record) + "\n" for record in records)
    if not is_url(str(run_dir)):
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        with (Path(run_dir) / WORKERS_FILE).open("a") as handle:
            handle.write(lines)
        return
    location = storage.join(run_dir, WORKERS_FILE)
    earlier = storage.read_text(location) if storage.is_file(location) else ""
    storage.write_text(location, earlier + lines)


def read_stages(run_dir: str | Path) -> dict[str, dict[str, Any]]:
    """`run_dir/stages.json` as stored: stage name -> {"checkpoint", "last_step"} (empty if none).

    Each "checkpoint" is relative to the run directory; pass it to `resolve_in_run`.
    """
    path = storage.join(run_dir, STAGES_FILE)
    return json.loads(storage.read_text(path)) if storage.is_file(path) else {}


def write_stages(run_dir: str | Path, finished: dict[str, dict[str, Any]]) -> None:
    """Replace `run_dir/stages.json` (atomically); checkpoints are stored relative to the run."""
    stored = {
        name: {**entry, "checkpoint": path_in_run(run_dir, entry["checkpoint"])}
        for name, entry in finished.items()
    }
    storage.write_text(storage.join(run_dir, STAGES_FILE), json.dumps(stored, indent=2))


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
        location = storage.join(run_dir, *PurePosixPath(relative).parts)
        if storage.exists(location):
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
        candidate = storage.join(run_dir, *parts[start:])
        if storage.exists(candidate):
            return candidate
    return None


def _exists_quietly(location: str) -> bool:
    """`storage.exists`, False where the store cannot be reached (no credentials, offline)."""
    try:
        return storage.exists(location)
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
            stored = storage.read_bytes(self.location) if storage.is_file(self.location) else b""
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
            storage.write_bytes(self.location, self.path.read_bytes())

    def close(self) -> None:
        """Sync, then remove the staging file (a URL location); the log stays readable."""
        if self.remote and self._staging is not None:
            self.sync()
            shutil.rmtree(self._staging.parent, ignore_errors=True)
            self._staging = None

    def read(self) -> list[dict[str, Any]]:
        """All stored records, in file order."""
        if not storage.is_file(self.location):
            return []
        text = storage.read_text(self.location)
        return [json.loads(line) for line in text.splitlines() if line.strip()]
