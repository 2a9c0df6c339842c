"""A trial's lineage: the searched values its weights were trained with, by step, and its exploits.

`<run>/lineage.json` (`LINEAGE_FILE`) holds:

    segments   the values the trial's current weights were trained with: the global
               step each set began after, and where a segment starts with another
               trial's checkpoint, that trial (`donor`). An exploit inherits the
               donor's segments up to its step. A trial never exploited has one.
    exploits   every exploit of the trial, in order (never rewritten): `step`,
               `donor`, the values `before` and `after`.

The trial's recipe writes each searched value as a step schedule over the segments
(`lineage_recipe`), so the recipe of the best trial (`best.yaml`) replays what its
weights were trained with.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .. import storage
from ..config import Recipe
from ..run_directory import LINEAGE_FILE
from .spaces import trial_recipe


@dataclass
class Segment:
    """A stretch of a trial's training with one set of searched values.

    Attributes:
        step: the global step it began after (0: the start).
        values: searched recipe path -> value.
        donor: for an exploit, the trial whose checkpoint at `step` it continued.
    """

    step: int
    values: dict[str, Any]
    donor: str | None = None


def lineage_recipe(base_raw: dict[str, Any], segments: list[Segment]) -> Recipe:
    """The recipe a trial trains with: each searched value as a step schedule over its segments.

    A value that never changed stays a plain value. A `stages.<name>.<field>`
    schedule counts that stage's own steps; a segment that began before the
    stage gives its value from the stage's step 0.
    """
    base = Recipe.model_validate(base_raw)
    params: dict[str, Any] = {}
    for path in segments[0].values:
        changes = [(segment.step, segment.values[path]) for segment in segments]
        if len({json.dumps(value) for _, value in changes}) == 1:
            params[path] = changes[0][1]
            continue
        stage_name = path.split(".")[1]
        offset = base.step_offset(stage_name)
        steps = next(stage.steps for stage in base.stages if stage.name == stage_name)
        schedule: dict[int, Any] = {}
        for step, value in changes:
            if step < offset + steps:
                schedule[max(0, step - offset)] = value
        params[path] = {"from_step": _without_repeats(schedule)}
    return trial_recipe(base_raw, params)


def exploit_segments(
    donor_segments: list[Segment], donor: str, step: int, values: dict[str, Any]
) -> list[Segment]:
    """The segments of a trial that continues `donor`'s checkpoint at `step` with `values`."""
    inherited = [segment for segment in donor_segments if segment.step < step]
    return [*inherited, Segment(step, values, donor=donor)]


def read_lineage(run_dir: str | Path) -> list[Segment] | None:
    """A trial's segments (None when it has not started)."""
    record = _read(run_dir)
    return None if record is None else [Segment(**entry) for entry in record["segments"]]


def read_exploits(run_dir: str | Path) -> list[dict[str, Any]]:
    """A trial's exploits, oldest first: `step`, `donor`, `before`, `after`."""
    record = _read(run_dir)
    return [] if record is None else record["exploits"]


def write_lineage(
    run_dir: str | Path, segments: list[Segment], exploits: list[dict[str, Any]]
) -> None:
    """Write `<run>/lineage.json` (through a temporary name)."""
    record = {"segments": [asdict(segment) for segment in segments], "exploits": exploits}
    storage.write_text(storage.join(run_dir, LINEAGE_FILE), json.dumps(record, indent=2) + "\n")


def _read(run_dir: str | Path) -> dict[str, Any] | None:
    path = Path(run_dir) / LINEAGE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _without_repeats(schedule: dict[int, Any]) -> dict[int, Any]:
    """The schedule without entries that repeat the value before them."""
    kept: dict[int, Any] = {}
    for step in sorted(schedule):
        if not kept or list(kept.values())[-1] != schedule[step]:
            kept[step] = schedule[step]
    return kept
