"""Read a Ray Tune experiment directory, without unpickling anything.

Layout written by Ray 2.60 Tune (observed on a real run, see
tests/reports/conftest.py for a copy of the formats):

    EXPERIMENT/
      experiment_state-<session>.json   {"trial_data": [[trial_json, run_json], ...],
                                         "runner_data": {"_metric": ...}, "stats": ...}
      basic-variant-state-<session>.json, tuner.pkl    pickles: never read here
      <trial dir>/params.json           the trial's full config
      <trial dir>/result.json           one JSON object per `tune.report`
      <trial dir>/progress.csv          the same, flattened with "/" (fallback)
      <trial dir>/error.txt             the traceback of an ERROR trial
      runs/<trial id>/lineage.json      `cseg tune`: the trial's values by step (PBT exploits)

`trial_json` and `run_json` are JSON *strings*; `trial_json` holds
`trial_id`, `status` (PENDING, RUNNING, PAUSED, TERMINATED, ERROR),
`relative_logdir` (the trial dir) and `evaluated_params` (the sampled
parameters only). The newest state file is the one whose name sorts last, as
Tune itself picks it.

Early stops. Tune marks a trial that the scheduler stopped TERMINATED, the
same as one that finished, and the state file keeps no stop reason. The
trial's own log tells them apart: when the scheduler (or a stopper) says STOP,
Tune sets `done: true` on that reported result before logging it, while a
function trainable that returns on its own leaves its last logged result at
`done: false` (Tune only marks an unlogged duplicate). ASHA also says STOP
when a trial reaches `max_t`, which is not an early stop. So a TERMINATED
trial is *early-stopped* when its last logged result has `done: true` and
its last step is below `max_t`. `max_t` is read from `space.yaml`
(`scheduler.max_t`) when it is there; otherwise the largest last step of any
trial stands in for it, and if no trial ran to `max_t` (all stopped early, or
the best one errored), an early stop at that largest step reads as TERMINATED.

Metric and mode. `runner_data._metric` names the metric; the mode is only in
the pickles. Both can be given by the caller (`cseg tune` passes them), or
are read from the `space.yaml` copy of the search space that `cseg tune`
writes into the experiment directory; failing both, the mode is inferred from
the metric's name (`min` for names containing loss or error, else `max`).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from raycseg.errors import CsegError
from raycseg.run_directory import LINEAGE_FILE

STATE_GLOB = "experiment_state-*.json"
SPACE_FILE = "space.yaml"
RUNS_DIR = "runs"  # cseg tune: each trial's run directory, runs/<trial id>/
EARLY_STOPPED = "EARLY_STOPPED"
_STEP_KEYS = ("step", "training_iteration")


@dataclass
class TrialSummary:
    """One trial as the report shows it.

    Attributes:
        trial_id: Tune's trial id, e.g. `f933e_00003`.
        directory: The trial's directory name inside the experiment.
        params: The searched values (name -> value): the sampled ones, or under PBT the
            ones the trial ended with.
        status: TERMINATED, EARLY_STOPPED, ERROR, RUNNING, PENDING or PAUSED.
        steps: The `step` of each logged report, ascending (one per step).
        values: The metric at each of `steps` (None where not reported).
        final_metric: The metric at the last report that carried it.
        best_metric: The best metric over all reports, by the mode.
        reports: How many reports the trial logged.
        time_total_s: Training time of the trial, from its last report.
        error: The last line of `error.txt` for an ERROR trial.
        last_report_done: Whether the last logged report carries `done: true`.
        segments: The values its final weights were trained with (`raycseg.tune.lineage`):
            dicts with the `step` each set of `values` began after.
        exploits: Its PBT exploits, oldest first: `step`, `donor`, `before`, `after`.
    """

    trial_id: str
    directory: str
    params: dict[str, Any]
    status: str
    steps: list[float] = field(default_factory=list)
    values: list[float | None] = field(default_factory=list)
    final_metric: float | None = None
    best_metric: float | None = None
    reports: int = 0
    time_total_s: float | None = None
    error: str | None = None
    last_report_done: bool = False
    segments: list[dict[str, Any]] = field(default_factory=list)
    exploits: list[dict[str, Any]] = field(default_factory=list)

    @property
    def last_step(self) -> float | None:
        """The step of the last report, or None before the first."""
        return self.steps[-1] if self.steps else None

    def values_by_step(self, name: str) -> list[tuple[int, Any]]:
        """The value of a searched parameter the trial trained with, from each step on.

        Its own values, changed at each exploit (its segments would show the donor's
        values before an exploit instead).
        """
        if self.exploits and self.exploits[0]["before"]:
            first = [(0, self.exploits[0]["before"].get(name))]
            return first + [(e["step"], e["after"].get(name)) for e in self.exploits]
        return [(s["step"], s["values"].get(name)) for s in self.segments]


@dataclass
class ExperimentSummary:
    """What a Tune experiment report says.

    Attributes:
        path: The experiment directory.
        metric: The objective.
        mode: `max` or `min`.
        mode_source: Where the mode came from: `argument`, `space.yaml` or `inferred`.
        params: The searched parameter names, in a stable order.
        log_params: Parameters shown on a log axis.
        trials: All trials, in trial-id order.
        best: The trial with the best final metric (Tune's scope "last"), among the
            TERMINATED trials when there are any, so that a trial stopped on a lucky
            early rung does not win over trials that ran to the end.
        best_recipe: `best.yaml` in the experiment directory, if present.
        files: The files the report wrote (filled in by the writer).
    """

    path: Path
    metric: str
    mode: str
    mode_source: str
    params: list[str]
    log_params: frozenset[str]
    trials: list[TrialSummary]
    best: TrialSummary | None
    best_recipe: Path | None
    files: list[Path] = field(default_factory=list)

    @property
    def exploits(self) -> list[Exploit]:
        """PBT's exploits over all trials, by step then trial."""
        found = [
            Exploit(e["step"], trial.trial_id, e["donor"], e["before"] or {}, e["after"])
            for trial in self.trials
            for e in trial.exploits
        ]
        return sorted(found, key=lambda exploit: (exploit.step, exploit.trial))


@dataclass
class Exploit:
    """A PBT exploit: at `step`, `trial` took over `donor`'s checkpoint and changed its values."""

    step: int
    trial: str
    donor: str
    before: dict[str, Any]
    after: dict[str, Any]


def is_experiment_dir(path: Path) -> bool:
    """True when `path` holds a Tune experiment-state file."""
    return any(path.glob(STATE_GLOB))


def load_experiment(
    path: Path, *, metric: str | None = None, mode: str | None = None
) -> ExperimentSummary:
    """Read a Tune experiment directory into an `ExperimentSummary`.

    Args:
        path: The experiment directory (`<storage_path>/<name>`).
        metric: The objective; default: from `space.yaml`, else Tune's state file.
        mode: `max` or `min`; default: from `space.yaml`, else inferred from the name.

    Returns:
        The summary, with the best trial chosen by final metric (see `ExperimentSummary.best`).

    Raises:
        CsegError: No experiment state, no metric, or a bad mode.
    """
    state_files = sorted(path.glob(STATE_GLOB))
    if not state_files:
        raise CsegError(f"{path} has no {STATE_GLOB}; pass the directory `cseg tune` printed")
    state = json.loads(state_files[-1].read_text(encoding="utf-8"))
    space = _read_space(path / SPACE_FILE)
    metric = metric or space.get("metric") or state.get("runner_data", {}).get("_metric")
    if not metric:
        raise CsegError(f"{path}: the experiment names no metric; pass `--metric NAME`")
    mode, mode_source = _resolve_mode(metric, mode, space.get("mode"))
    trials = [
        _load_trial(path, _as_dict(pair[0]), _as_dict(pair[1]), metric, mode)
        for pair in state.get("trial_data", [])
    ]
    trials.sort(key=lambda trial: trial.trial_id)
    scheduler = space.get("scheduler") if isinstance(space.get("scheduler"), dict) else {}
    _mark_early_stops(trials, _as_float(scheduler.get("max_t")))
    params = sorted({name for trial in trials for name in trial.params})
    best_recipe = path / "best.yaml"
    return ExperimentSummary(
        path=path,
        metric=metric,
        mode=mode,
        mode_source=mode_source,
        params=params,
        log_params=_log_scaled_params(trials, params, space.get("params") or {}),
        trials=trials,
        best=_best_trial(trials, mode),
        best_recipe=best_recipe if best_recipe.is_file() else None,
    )


def _as_dict(entry: str | dict) -> dict:
    return json.loads(entry) if isinstance(entry, str) else entry


def _read_space(path: Path) -> dict:
    if not path.is_file():
        return {}
    loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    return loaded if isinstance(loaded, dict) else {}


def _resolve_mode(metric: str, given: str | None, from_space: str | None) -> tuple[str, str]:
    if given is not None:
        mode, source = given, "argument"
    elif from_space is not None:
        mode, source = from_space, SPACE_FILE
    else:
        lowered = metric.lower()
        mode = "min" if ("loss" in lowered or "error" in lowered) else "max"
        source = "inferred"
    if mode not in ("max", "min"):
        raise CsegError(f"mode {mode!r} is not max or min; pass `--mode max` or `--mode min`")
    return mode, source


def _load_trial(root: Path, trial: dict, run: dict, metric: str, mode: str) -> TrialSummary:
    directory = trial.get("relative_logdir") or ""
    trial_dir = root / directory
    logged = _read_results(trial_dir) if directory else []
    # Without a trial log, fall back on the state's last result (its `done` is not the logged one).
    results = logged or ([run["last_result"]] if run.get("last_result") else [])
    params = trial.get("evaluated_params") or _flatten(trial.get("config") or {})
    lineage = _read_lineage(root / RUNS_DIR / trial.get("trial_id", ""))
    if lineage["segments"]:
        params = lineage["segments"][-1]["values"]
    steps, values = _history(results, metric)
    present = [value for value in values if value is not None]
    pick = max if mode == "max" else min
    summary = TrialSummary(
        trial_id=trial.get("trial_id", directory),
        directory=directory,
        params=dict(params),
        status=trial.get("status", "UNKNOWN"),
        steps=steps,
        values=values,
        final_metric=present[-1] if present else None,
        best_metric=pick(present) if present else None,
        reports=len(results),
        time_total_s=_as_float(results[-1].get("time_total_s")) if results else None,
        last_report_done=bool(logged and logged[-1].get("done") is True),
        segments=lineage["segments"],
        exploits=lineage["exploits"],
    )
    if summary.status == "ERROR":
        summary.error = _last_error_line(trial_dir, run)
    return summary


def _read_lineage(run_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """A trial's lineage.json: `segments` and `exploits` (both empty without one)."""
    path = run_dir / LINEAGE_FILE
    if not path.is_file():
        return {"segments": [], "exploits": []}
    return json.loads(path.read_text(encoding="utf-8"))


def _read_results(trial_dir: Path) -> list[dict]:
    """The trial's logged reports: result.json, else progress.csv."""
    result_json = trial_dir / "result.json"
    if result_json.is_file():
        lines = result_json.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]
    progress_csv = trial_dir / "progress.csv"
    if progress_csv.is_file():
        with progress_csv.open(newline="", encoding="utf-8") as handle:
            return [_parse_csv_row(row) for row in csv.DictReader(handle)]
    return []


def _parse_csv_row(row: dict[str, str]) -> dict[str, Any]:
    parsed: dict[str, Any] = {}
    for key, text in row.items():
        if text in ("True", "False"):
            parsed[key] = text == "True"
        else:
            number = _as_float(text)
            parsed[key] = number if number is not None else text
    return parsed


def _history(results: list[dict], metric: str) -> tuple[list[float], list[float | None]]:
    """Metric by step, ascending; a step reported twice (after a restore) keeps its last value."""
    by_step: dict[float, float | None] = {}
    for index, result in enumerate(results):
        flat = _flatten(result)
        step = next((_as_float(flat[k]) for k in _STEP_KEYS if k in flat), None)
        by_step[step if step is not None else float(index + 1)] = _as_float(flat.get(metric))
    steps = sorted(by_step)
    return steps, [by_step[step] for step in steps]


def _flatten(mapping: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and key != "config":
            flat.update(_flatten(value, f"{name}/"))
        elif not isinstance(value, dict):
            flat[name] = value
    return flat


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _last_error_line(trial_dir: Path, run: dict) -> str | None:
    error_file = trial_dir / (run.get("error_filename") or "error.txt")
    if not error_file.is_file():
        return None
    lines = [line.strip() for line in error_file.read_text(encoding="utf-8").splitlines()]
    lines = [line for line in lines if line]
    return lines[-1] if lines else None


def _mark_early_stops(trials: list[TrialSummary], max_t: float | None) -> None:
    """Relabel scheduler-stopped TERMINATED trials as EARLY_STOPPED (see module docstring).

    A stop at or past `max_t` is a completion; without a known `max_t`, the
    largest last step of any trial stands in for it.
    """
    if max_t is None:
        max_t = max((t.last_step for t in trials if t.last_step is not None), default=None)
    if max_t is None:
        return
    for trial in trials:
        stopped = trial.status == "TERMINATED" and trial.last_report_done
        if stopped and trial.last_step is not None and trial.last_step < max_t:
            trial.status = EARLY_STOPPED


def _log_scaled_params(
    trials: list[TrialSummary], params: list[str], space_params: dict[str, Any]
) -> frozenset[str]:
    """Parameters searched `loguniform` per space.yaml; unknown ones when positive over >= 10x."""
    known = {str(name).replace("/", "."): dist for name, dist in space_params.items()}
    log_scaled = set()
    for name in params:
        distribution = known.get(name.replace("/", "."))
        if isinstance(distribution, dict):
            if "loguniform" in distribution:
                log_scaled.add(name)
            continue
        values = [_as_float(trial.params.get(name)) for trial in trials]
        numbers = [value for value in values if value is not None]
        if numbers and len(numbers) == len(values) and min(numbers) > 0:
            if max(numbers) / min(numbers) >= 10:
                log_scaled.add(name)
    return frozenset(log_scaled)


def _best_trial(trials: list[TrialSummary], mode: str) -> TrialSummary | None:
    """Best final metric among TERMINATED trials if any, else among all (as `cseg tune` picks)."""
    scored = [trial for trial in trials if trial.final_metric is not None]
    candidates = [trial for trial in scored if trial.status == "TERMINATED"] or scored
    if not candidates:
        return None
    sign = 1.0 if mode == "max" else -1.0
    return max(candidates, key=lambda trial: sign * trial.final_metric)
