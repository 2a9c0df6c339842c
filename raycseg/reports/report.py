"""Write a report for a run or a Tune experiment: `report.md`, `report.html` and PNG plots.

`write_report(path)` tells the two kinds of directory apart (a run directory
has `metrics.jsonl`; a Tune experiment has `experiment_state-*.json`) and
writes everything into that directory (`raycseg.reports.run_report`,
`raycseg.reports.experiment_report`). It returns the summary it rendered, so
the CLI can show the same content as a table.
"""

from __future__ import annotations

from pathlib import Path

from raycseg.errors import CsegError

from .experiment import ExperimentSummary, is_experiment_dir
from .experiment_report import write_experiment_report
from .run import RunSummary, is_run_dir
from .run_report import write_run_report

Summary = RunSummary | ExperimentSummary


def write_report(path: Path, *, metric: str | None = None, mode: str | None = None) -> Summary:
    """Write the report that fits the directory: a run report or an experiment report.

    Args:
        path: A `cseg pretrain` run directory or a `cseg tune` experiment directory.
        metric: Experiment reports only: the objective (default: the experiment's own).
        mode: Experiment reports only: `max` or `min` (default: see `load_experiment`).

    Returns:
        The `RunSummary` or `ExperimentSummary`; its `files` lists what was written.

    Raises:
        CsegError: The path is missing, or is neither kind of directory.
    """
    path = Path(path).expanduser().resolve()
    if not path.is_dir():
        raise CsegError(
            f"{path} is not a directory; pass the run or experiment directory that "
            "`cseg pretrain` or `cseg tune` printed"
        )
    if is_run_dir(path):
        return write_run_report(path)
    if is_experiment_dir(path):
        return write_experiment_report(path, metric=metric, mode=mode)
    raise CsegError(
        f"{path} has neither metrics.jsonl (a run) nor experiment_state-*.json (a Tune "
        "experiment); pass the directory that `cseg pretrain` or `cseg tune` printed"
    )
