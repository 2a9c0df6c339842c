"""A trial's lineage: the searched values it trained with, by step, and PBT's exploits.

`<run>/lineage.json` (`LINEAGE_FILE`) lists the trial's segments: the global
step each began after, the searched values, and for an exploit the trial it
took over (`donor`) and the values it had before (`replaced`). A trial that was
never exploited has one segment. The trial's recipe writes each searched value
as a step schedule over the segments (`lineage_recipe`), so the recipe of the
best trial (`best.yaml`) replays what it trained with.
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
        replaced: for an exploit, the values the trial had before.
    """

    step: int
    values: dict[str, Any]
    donor: str | None = None
    replaced: dict[str, Any] | None = None


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
    donor_segments: list[Segment],
    donor: str,
    step: int,
    values: dict[str, Any],
    own: list[Segment] | None,
) -> list[Segment]:
    """The lineage of a trial that continues `donor`'s checkpoint at `step` with `values`."""
    before = own[-1].values if own else None
    inherited = [segment for segment in donor_segments if segment.step < step]
    return [*inherited, Segment(step, values, donor=donor, replaced=before)]


def read_lineage(run_dir: str | Path) -> list[Segment] | None:
    """A trial's segments (None when it has not started)."""
    path = Path(run_dir) / LINEAGE_FILE
    if not path.is_file():
        return None
    return [Segment(**entry) for entry in json.loads(path.read_text())["segments"]]


def write_lineage(run_dir: str | Path, segments: list[Segment]) -> None:
    """Write `<run>/lineage.json` (through a temporary name)."""
    record = {"segments": [asdict(segment) for segment in segments]}
    storage.write_text(storage.join(run_dir, LINEAGE_FILE), json.dumps(record, indent=2) + "\n")


def _without_repeats(schedule: dict[int, Any]) -> dict[int, Any]:
    """The schedule without entries that repeat the value before them."""
    kept: dict[int, Any] = {}
    for step in sorted(schedule):
        if not kept or list(kept.values())[-1] != schedule[step]:
            kept[step] = schedule[step]
    return kept
