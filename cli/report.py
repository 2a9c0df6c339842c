"""`cseg report DIR`: write report.md, a self-contained report.html and PNG plots into DIR.

DIR is a `cseg pretrain` run directory or a `cseg tune` experiment directory; several
DIRs give one comparison report in `--out` (`raycseg.reports.compare`).
Register it on the root app with `app.command("report")(report.report)`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer
from rich.table import Table

from raycseg.reports import ExperimentSummary, RunSummary, write_report
from raycseg.reports.experiment_report import next_command, ranked_trials, trial_cells
from raycseg.reports.render import format_number
from raycseg.reports.run_report import data_text, eval_header, eval_rows, stage_rows

from .console import err, out
from .eval import davis_line


def report(
    paths: list[Path] = typer.Argument(
        ...,
        metavar="DIR...",
        help="A run directory (metrics.jsonl) or a Tune experiment; several: a comparison.",
    ),
    out_dir: Path = typer.Option(
        Path("comparison"), "--out", help="Comparisons: the folder the report goes in."
    ),
    metric: str | None = typer.Option(
        None, help="Experiments: the objective (default: the search's)."
    ),
    mode: Literal["max", "min"] | None = typer.Option(
        None, help="Experiments: maximise or minimise the metric (default: the search's)."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the report directory."),
) -> None:
    """Write a report (Markdown, self-contained HTML, PNG plots) for a run or a search.

    Given several, one report compares them: recipe differences, loss curves and scores.
    """
    if len(paths) > 1:
        from raycseg.reports.compare import write_comparison_report

        written = write_comparison_report(paths, out_dir)
        if quiet:
            out.print(str(written[0].parent), markup=False, highlight=False)
            return
        for path in written:
            err.print(f"wrote {path}", markup=False, highlight=False)
        out.print(f"report: {written[0].parent / 'report.html'}", markup=False, highlight=False)
        return
    summary = write_report(paths[0], metric=metric, mode=mode)
    if quiet:
        out.print(str(summary.path), markup=False, highlight=False)
        return
    for written in summary.files:
        err.print(f"wrote {written}", markup=False, highlight=False)
    print_summary(summary)


def print_summary(summary: RunSummary | ExperimentSummary) -> None:
    """Show a report's summary as rich tables on stdout."""
    if isinstance(summary, ExperimentSummary):
        _print_experiment(summary)
    else:
        _print_run(summary)
    out.print(f"report: {summary.path / 'report.html'}", markup=False, highlight=False)


def _print_experiment(summary: ExperimentSummary) -> None:
    table = Table(title=f"{summary.path.name}: {summary.metric} ({summary.mode})")
    columns = ["trial", "status", *summary.params, "final", "best", "step", "reports", "time (s)"]
    for column in columns:
        table.add_column(column, justify="left" if column in ("trial", "status") else "right")
    for trial in ranked_trials(summary):
        marker = " *" if trial is summary.best else ""
        table.add_row(trial.trial_id + marker, *trial_cells(trial, summary.params))
    out.print(table)
    if summary.best is not None:
        out.print(
            f"best trial: {summary.best.trial_id} "
            f"({summary.metric} = {format_number(summary.best.final_metric)})",
            markup=False,
        )
    command = next_command(summary)
    if command is not None:
        out.print(f"next: {command}", markup=False, highlight=False)


def _print_run(summary: RunSummary) -> None:
    stages = Table(title=f"{summary.path.name}: stages")
    for column in ("stage", "first step", "last step", "final loss", "median samples/s"):
        stages.add_column(column, justify="left" if column == "stage" else "right")
    for row in stage_rows(summary):
        stages.add_row(*row)
    out.print(stages)
    if summary.evaluation:
        scores = Table(title="evaluation (mIoU)")
        columns = ["protocol", "pretrained", "random init", "gain"]
        columns += eval_header(summary)[len(columns) :]  # pixels scored, where recorded
        for column in columns:
            scores.add_column(column, justify="left" if column == "protocol" else "right")
        for row in eval_rows(summary):
            scores.add_row(*row)
        out.print(scores)
        scored = data_text(summary)
        if scored is not None:
            out.print(scored.replace("`", ""), markup=False, highlight=False)
    if summary.davis is not None:
        out.print(davis_line(summary.davis, summary.davis_baseline), markup=False)
    if summary.skipped_corrupt:
        out.print(f"corrupt samples skipped: {summary.skipped_corrupt}", markup=False)
