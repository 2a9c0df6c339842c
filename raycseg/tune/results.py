"""The outcome of a search: per-trial summaries, the best trial and its exported recipe.

Trial status, as `cseg tune` shows it:

    completed   reached `max_t` (the recipe's last step, or the scheduler's max_t)
    stopped     stopped early by the scheduler (ASHA); Tune marks it TERMINATED
    error       the trial raised (its Ray Train run failed)
    unfinished  still pending or running when the search was interrupted

The best trial is the one with the best *final* value of the metric (Tune's
scope "last"), chosen among completed trials when there are any, so that a
trial stopped early on a lucky first rung cannot win over trials that ran to the end.
Its recipe, as it trained (`runs/<trial>/config.yaml`: under PBT its searched
values are step schedules), is exported as `best.yaml`.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..config import recipe_to_yaml
from ..run_directory import has_recipe, read_recipe
from .lineage import read_lineage
from .spaces import SearchPlan, plain_value, trial_recipe

TRIALS_FILE = "trials.json"
BEST_FILE = "best.yaml"
RUNS_DIR = "runs"


@dataclass
class TrialOutcome:
    """One trial of a search."""

    trial_id: str
    config: dict[str, Any]
    status: str
    final_metric: float | None
    best_metric: float | None
    last_step: int | None
    iterations: int
    time_s: float
    run_dir: str
    error: str | None = None


@dataclass
class TuneResult:
    """What `run_tune` produced."""

    experiment_dir: Path
    name: str
    metric: str
    mode: str
    trials: list[TrialOutcome] = field(default_factory=list)
    best: TrialOutcome | None = None
    best_recipe_path: Path | None = None
    interrupted: bool = False
    resumed: bool = False

    @property
    def best_metric(self) -> float | None:
        """The best trial's final value of the metric."""
        return None if self.best is None else self.best.final_metric

    @property
    def failed(self) -> list[TrialOutcome]:
        """Trials that ended in an error."""
        return [trial for trial in self.trials if trial.status == "error"]


def summarise_results(grid, plan: SearchPlan, experiment_dir: Path, *, resumed: bool) -> TuneResult:
    """Summarise a Tune `ResultGrid`, write `trials.json`, and `best.yaml` unless interrupted."""
    trials = [summarise_trial(result, plan, experiment_dir) for result in grid]
    result = TuneResult(
        experiment_dir=experiment_dir,
        name=experiment_dir.name,
        metric=plan.metric,
        mode=plan.mode,
        trials=trials,
        resumed=resumed,
        interrupted=any(trial.status == "unfinished" for trial in trials),
    )
    write_atomic(
        experiment_dir / TRIALS_FILE, json.dumps([asdict(t) for t in trials], indent=2) + "\n"
    )
    if not result.interrupted:
        result.best = choose_best(trials, plan.mode)
        if result.best is not None:
            result.best_recipe_path = write_best_recipe(plan, result.best, experiment_dir)
    return result


def summarise_trial(result, plan: SearchPlan, experiment_dir: Path) -> TrialOutcome:
    """One Tune `Result` as a `TrialOutcome` (the metric's history from its reports)."""
    last = result.metrics or {}
    # The trial's folder is named by its id (`_trial_dirname`). Its last metrics may be
    # another trial's: PBT hands an exploiting trial its donor's last result.
    trial_id = Path(result.path).name
    history = _metric_history(result, plan.metric)
    last_step = last.get("step")
    if result.error is not None:
        status = "error"
    elif last_step is not None and last_step >= plan.max_t:
        status = "completed"
    elif last.get("done"):
        status = "stopped"
    else:
        status = "unfinished"
    best = None
    if history:
        best = max(history) if plan.mode == "max" else min(history)
    run_dir = experiment_dir / RUNS_DIR / trial_id
    segments = read_lineage(run_dir)  # PBT changes a trial's values: its last ones
    config = segments[-1].values if segments else (result.config or {})
    return TrialOutcome(
        trial_id=trial_id,
        config={key: plain_value(value) for key, value in config.items()},
        status=status,
        final_metric=history[-1] if history else None,
        best_metric=best,
        last_step=None if last_step is None else int(last_step),
        iterations=int(last.get("training_iteration", 0)),
        time_s=float(last.get("time_total_s", 0.0)),
        run_dir=str(run_dir),
        error=None if result.error is None else _last_line(result.error),
    )


def choose_best(trials: list[TrialOutcome], mode: str) -> TrialOutcome | None:
    """The trial with the best final metric, preferring trials that ran to the end."""
    scored = [t for t in trials if t.final_metric is not None and math.isfinite(t.final_metric)]
    completed = [t for t in scored if t.status == "completed"]
    candidates = completed or scored
    if not candidates:
        return None
    sign = 1.0 if mode == "max" else -1.0
    return max(candidates, key=lambda t: sign * t.final_metric)


def write_best_recipe(plan: SearchPlan, best: TrialOutcome, experiment_dir: Path) -> Path:
    """Write `best.yaml` atomically: the best trial's full resolved recipe, as it trained."""
    run_dir = Path(best.run_dir)
    if has_recipe(run_dir):
        recipe = read_recipe(run_dir)
    else:  # a trial that never started its run
        recipe = trial_recipe(plan.base_raw, best.config)
    segments = read_lineage(run_dir) or []
    values = (
        f"# Sampled: {json.dumps(best.config)}\n"
        if len(segments) < 2
        else "# Values by step (PBT; the recipe holds them as step schedules):\n"
        + "".join(f"#   from step {s.step}: {json.dumps(s.values)}\n" for s in segments)
    )
    path = experiment_dir / BEST_FILE
    header = (
        f"# Best trial {best.trial_id} of the search {experiment_dir.name} "
        f"({plan.metric} = {best.final_metric:.4g}, mode {plan.mode}).\n"
        f"{values}#\n"
        f"#   cseg pretrain {path}\n"
    )
    write_atomic(path, header + recipe_to_yaml(recipe))
    return path


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` so that readers see the old file or the whole new one."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


def _metric_history(result, metric: str) -> list[float]:
    frame = result.metrics_dataframe
    if frame is None or metric not in frame:
        value = (result.metrics or {}).get(metric)
        return [float(value)] if isinstance(value, int | float) else []
    values = [float(v) for v in frame[metric].tolist() if isinstance(v, int | float)]
    return [v for v in values if not math.isnan(v)]


def _last_line(error: BaseException) -> str:
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__
