"""One `cseg tune` trial: its recipe, its run directory, and its reports to Tune.

Tune runs `make_trial_driver`'s function once per trial (and again after a
restore, a pause or a PBT exploit). It fits the trial's recipe with
`run_stages` in `<experiment>/runs/<trial_id>/`.

**Reports.** Rank 0 streams every record it reports to Ray Train, with where
that report's checkpoint was stored, to this driver (`run_stages(on_report=)`),
which reports it to Tune with a *trial checkpoint*: a small folder holding
`trial_checkpoint.json` (this trial, the stage, the step and the values it has
trained with so far) and, for PBT, the Train checkpoint's `state.pt` (hard-linked
where the file system allows). Ray's own `TuneReportCallback` forwards metrics
only, and with no Tune checkpoint PBT skips every exploit; and re-running a
Train run under its name resumes that run's own snapshot, never another
trial's. Carrying the state in the trial checkpoint also keeps it when the
donor's run has since deleted its own copy (`storage.num_to_keep`).

**Start.** With a trial checkpoint of its own (a restore, or a pause of the
scheduler), the trial resumes its run from the run's own latest checkpoint.
With another trial's (a PBT exploit at step N), it takes that trial's place:
its stage folders from that stage on are dropped, `metrics.jsonl` becomes the
donor's lines up to N, stages the donor had finished are marked finished, and
the stage resumes from the donor's state (model, optimizer and data position)
with the trial's new values from step N on.

The trial's values by step, and its exploits, are its lineage
(`raycseg.tune.lineage`); its recipe (`config.yaml`) holds them as step schedules.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ray import tune

from ..config import Recipe
from ..run_directory import (
    METRICS_FILE,
    STATE_FILE,
    MetricsLog,
    read_stages,
    resolve_in_run,
    write_recipe,
    write_stages,
)
from ..train.launch import run_stages
from .lineage import (
    Segment,
    exploit_segments,
    lineage_recipe,
    read_exploits,
    read_lineage,
    write_lineage,
)
from .results import RUNS_DIR
from .spaces import plain_value

TRIAL_CHECKPOINT_FILE = "trial_checkpoint.json"
TAKEN_OVER = "taken_over"  # <run>/taken_over/state.pt: the donor's state of the latest exploit


@dataclass
class TrialCheckpoint:
    """What a trial checkpoint says: whose run, where in it, and the lineage up to there."""

    trial: str
    stage: str
    step: int
    stage_step: int
    segments: list[Segment] = field(default_factory=list)


def make_trial_driver(
    base_raw: dict[str, Any], experiment_dir: Path, *, keep_state: bool
) -> Callable[[dict], None]:
    """The function Tune runs for each trial.

    Args:
        base_raw: the resolved base recipe (a plain dict).
        experiment_dir: the experiment directory (trials' run directories are in `runs/`).
        keep_state: put the state file in every trial checkpoint (PBT exploits need it).
    """

    def cseg_trial(config: dict[str, Any]) -> None:
        trial_id = tune.get_context().get_trial_id()
        run_dir = experiment_dir / RUNS_DIR / trial_id
        run_dir.mkdir(parents=True, exist_ok=True)
        values = {key: plain_value(value) for key, value in config.items()}
        restored = read_trial_checkpoint(tune.get_checkpoint())
        exploit = restored is not None and restored.trial != trial_id
        own, exploits = read_lineage(run_dir), read_exploits(run_dir)
        if restored is None:  # a fresh start (or a restart before its first checkpoint)
            segments = own or [Segment(0, values)]
        elif not exploit:  # a restore, or a pause of the scheduler: its own run resumes
            segments = restored.segments
        else:
            segments = exploit_segments(restored.segments, restored.trial, restored.step, values)
            if not own or own[-1] != segments[-1]:  # not a restart of this very exploit
                before = own[-1].values if own else None
                exploits.append(
                    {
                        "step": restored.step,
                        "donor": restored.trial,
                        "before": before,
                        "after": values,
                    }
                )
        recipe = lineage_recipe(base_raw, segments)
        resume_from: dict[str, str] = {}
        if exploit:
            with tune.get_checkpoint().as_directory() as folder:
                donor_state = Path(folder) / STATE_FILE
                resume_from = take_over(run_dir, experiment_dir, restored, recipe, donor_state)
        write_recipe(run_dir, recipe)
        write_lineage(run_dir, segments, exploits)
        reports = TrialReports(trial_id, run_dir, recipe, segments, keep_state)
        run_stages(recipe, run_dir, on_report=reports, resume_from=resume_from)

    return cseg_trial


class TrialReports:
    """Pass each Train report on to Tune, with a trial checkpoint when it has a checkpoint.

    Called from the thread that drains rank 0's stream, while `fit()` runs. The trial
    checkpoint is staged in the run directory, so its state file can be a hard link.
    """

    def __init__(
        self,
        trial_id: str,
        run_dir: Path,
        recipe: Recipe,
        segments: list[Segment],
        keep_state: bool,
    ):
        self.trial_id, self.run_dir, self.recipe = trial_id, run_dir, recipe
        self.segments, self.keep_state = segments, keep_state

    def __call__(self, record: dict[str, Any], checkpoint: str | None) -> None:
        """Report `record` to Tune; with the location of its Train checkpoint, a trial checkpoint."""
        if checkpoint is None:
            tune.report(record)
            return
        pointer = TrialCheckpoint(
            trial=self.trial_id,
            stage=record["stage"],
            step=record["step"],
            stage_step=record["step"] - self.recipe.step_offset(record["stage"]),
            segments=[s for s in self.segments if s.step < record["step"]],
        )
        with tempfile.TemporaryDirectory(prefix=".trial-checkpoint-", dir=self.run_dir) as folder:
            (Path(folder) / TRIAL_CHECKPOINT_FILE).write_text(json.dumps(asdict(pointer)))
            if self.keep_state:
                _link_or_copy(Path(checkpoint) / STATE_FILE, Path(folder) / STATE_FILE)
            tune.report(record, checkpoint=tune.Checkpoint.from_directory(folder))


def read_trial_checkpoint(checkpoint) -> TrialCheckpoint | None:
    """The content of a trial checkpoint (None for no checkpoint)."""
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        record = json.loads((Path(folder) / TRIAL_CHECKPOINT_FILE).read_text())
    record["segments"] = [Segment(**entry) for entry in record["segments"]]
    return TrialCheckpoint(**record)


# ----------------------------------------------------------------------------- exploit


def take_over(
    run_dir: Path, experiment_dir: Path, donor: TrialCheckpoint, recipe: Recipe, state: Path
) -> dict[str, str]:
    """Make `run_dir` continue the donor's run from its checkpoint; return `resume_from`.

    `state` is the donor's state file, from the trial checkpoint Tune restored
    (under PBT it holds one); it is kept as `<run>/taken_over/state.pt`. Stage
    folders from the donor's stage on are dropped, so Ray Train starts those
    stages without a snapshot of their own.
    """
    if not state.is_file():
        raise FileNotFoundError(
            f"the trial checkpoint of {donor.trial} at step {donor.step} has no "
            f"{STATE_FILE}; only PBT searches keep the state in their trial checkpoints"
        )
    names = [stage.name for stage in recipe.stages]
    current = names.index(donor.stage)
    for name in names[current:]:
        shutil.rmtree(run_dir / name, ignore_errors=True)
    kept = run_dir / TAKEN_OVER / STATE_FILE
    kept.parent.mkdir(parents=True, exist_ok=True)
    _copy_atomically(state, kept)

    donor_dir = experiment_dir / RUNS_DIR / donor.trial
    donor_stages = read_stages(donor_dir)
    finished = {
        name: {
            **donor_stages[name],
            "checkpoint": str(
                resolve_in_run(donor_dir, donor_stages[name]["checkpoint"], f"stage {name}")
            ),
        }
        for name in names[:current]
    }
    stage_done = donor.stage_step == recipe.stages[current].steps
    if stage_done:
        finished[donor.stage] = {"checkpoint": str(kept), "last_step": donor.step}
    write_stages(run_dir, finished)
    donor_log, own_log = donor_dir / METRICS_FILE, run_dir / METRICS_FILE
    if donor_log.is_file():
        _copy_atomically(donor_log, own_log)
    else:
        own_log.unlink(missing_ok=True)
    MetricsLog(own_log).truncate_after(donor.step)  # the donor's lines up to its step
    return {} if stage_done else {donor.stage: str(kept)}


def _copy_atomically(source: Path, target: Path) -> None:
    """Copy `source` to `target` through a temporary name."""
    partial = target.with_name(target.name + ".partial")
    shutil.copyfile(source, partial)
    os.replace(partial, target)


# ----------------------------------------------------------------------------- helpers


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link of `source` at `target` where the file system allows one, else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
