"""Reports for run and experiment directories: `report.md`, a self-contained `report.html`, PNGs.

`write_report(path)` picks the kind from the directory's contents (see
`report.py`; the two reports are `run_report.py` and `experiment_report.py`);
`load_run` and `load_experiment` only read, never unpickle.
"""

from .experiment import ExperimentSummary, TrialSummary, load_experiment
from .experiment_report import write_experiment_report
from .report import write_report
from .run import (
    EvalData,
    EvalSamples,
    ProtocolScore,
    RunSummary,
    SamplePictures,
    StageSpan,
    load_run,
)
from .run_report import write_run_report

__all__ = [
    "EvalData",
    "EvalSamples",
    "ExperimentSummary",
    "ProtocolScore",
    "RunSummary",
    "SamplePictures",
    "StageSpan",
    "TrialSummary",
    "load_experiment",
    "load_run",
    "write_experiment_report",
    "write_report",
    "write_run_report",
]
