"""The report of a `cseg tune` experiment: its trials ranked, the best one, what to run next.

`write_experiment_report` reads the experiment directory (`raycseg.reports.experiment`),
draws its plots (`raycseg.reports.experiment_plots`) and writes `report.md` and
`report.html` (`raycseg.reports.render`) into it.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from .experiment import SPACE_FILE, ExperimentSummary, TrialSummary, load_experiment
from .render import (
    Block,
    Code,
    Heading,
    Image,
    Paragraph,
    Table,
    format_number,
    format_step,
    is_number,
    write_report_files,
)


def write_experiment_report(
    path: Path, *, metric: str | None = None, mode: str | None = None
) -> ExperimentSummary:
    """Read a Tune experiment directory and write its report files into it.

    Args:
        path: The experiment directory.
        metric: The objective (default: the experiment's own).
        mode: `max` or `min` (default: see `load_experiment`).

    Returns:
        The summary, with `files` set to the written paths.
    """
    summary = load_experiment(Path(path), metric=metric, mode=mode)
    from . import experiment_plots as plot  # matplotlib is slow to import: only here

    plots = [
        plot.plot_metric_curves(summary, summary.path / "metric_by_step.png"),
        plot.plot_params_vs_metric(summary, summary.path / "params_vs_metric.png"),
        plot.plot_parallel_coordinates(summary, summary.path / "parallel_coordinates.png"),
        plot.plot_schedules(summary, summary.path / "schedules.png"),
    ]
    plots = [plot for plot in plots if plot is not None]
    blocks = experiment_blocks(summary, plots)
    title = f"Search report: {summary.path.name}"
    summary.files = [*write_report_files(summary.path, title, blocks), *plots]
    return summary


def next_command(summary: ExperimentSummary) -> str | None:
    """The `cseg pretrain` command that reruns the best trial, if one can be named."""
    if summary.best_recipe is not None:
        return f"cseg pretrain {summary.best_recipe}"
    recipe = _space_recipe(summary.path)
    if summary.best is None or recipe is None:
        return None
    overrides = " ".join(
        f"{name.replace('/', '.')}={value}" for name, value in summary.best.params.items()
    )
    return f"cseg pretrain {recipe} {overrides}".strip()


def _space_recipe(path: Path) -> str | None:
    space_file = path / SPACE_FILE
    if not space_file.is_file():
        return None
    space = yaml.safe_load(space_file.read_text(encoding="utf-8"))
    return str(space["recipe"]) if isinstance(space, dict) and space.get("recipe") else None


def ranked_trials(summary: ExperimentSummary) -> list[TrialSummary]:
    """Trials best-first by final metric; trials without one come last, by id."""
    sign = -1.0 if summary.mode == "max" else 1.0
    return sorted(
        summary.trials,
        key=lambda t: (t.final_metric is None, sign * (t.final_metric or 0.0), t.trial_id),
    )


def status_counts(summary: ExperimentSummary) -> str:
    """E.g. `2 TERMINATED, 1 EARLY_STOPPED, 1 ERROR`."""
    counts: dict[str, int] = {}
    for trial in summary.trials:
        counts[trial.status] = counts.get(trial.status, 0) + 1
    return ", ".join(f"{count} {status}" for status, count in counts.items())


def format_param(value: object) -> str:
    """Parameter values: floats to 4 significant digits, the rest as written."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def experiment_blocks(summary: ExperimentSummary, plots: list[Path]) -> list[Block]:
    """The experiment report's content, shared by the Markdown and HTML renderers."""
    best = summary.best
    blocks: list[Block] = [
        Paragraph(
            f"Experiment `{summary.path}`: {len(summary.trials)} trials "
            f"({status_counts(summary)}). Objective: `{summary.metric}`, mode `{summary.mode}` "
            f"({summary.mode_source}). EARLY_STOPPED = stopped by the scheduler before "
            "`max_t`; the best trial is chosen among TERMINATED trials when there are any."
        ),
        Heading("Best trial"),
    ]
    if best is None:
        blocks.append(Paragraph(f"No trial reported `{summary.metric}` yet."))
    else:
        blocks.append(
            Paragraph(
                f"**{best.trial_id}** ({best.status}): final `{summary.metric}` = "
                f"**{format_number(best.final_metric)}** at step {format_step(best.last_step)}"
                f" (best during the trial: {format_number(best.best_metric)})."
            )
        )
        rows = [[f"`{name}`", format_param(value)] for name, value in best.params.items()]
        blocks.append(Table(["parameter", "value"], rows))
    blocks.append(Heading("What to run next"))
    command = next_command(summary)
    if summary.best_recipe is not None:
        blocks.append(Paragraph("Train the best configuration (its full recipe is `best.yaml`):"))
    elif command is not None:
        blocks.append(Paragraph("No `best.yaml` here; the best trial's overrides on its recipe:"))
    else:
        blocks.append(Paragraph("No `best.yaml` here; `cseg tune` writes it when a trial ends."))
    if command is not None:
        blocks.append(Code(command))
    blocks += [Heading("All trials"), _trials_table(summary)]
    if summary.exploits:
        blocks += [Heading("Exploits (PBT)"), _exploits_table(summary)]
    errors = [t for t in summary.trials if t.status == "ERROR"]
    if errors:
        blocks.append(Heading("Errors", level=3))
        blocks += [Paragraph(f"`{t.trial_id}`: {t.error or 'see error.txt'}") for t in errors]
    blocks.append(Heading("Plots"))
    captions = {
        "metric_by_step.png": f"{summary.metric} against step, per trial",
        "params_vs_metric.png": f"each parameter against the final {summary.metric}",
        "parallel_coordinates.png": "parallel coordinates of the top trials",
        "schedules.png": "each searched value by step, per trial; * marks an exploit",
    }
    blocks += [Image(plot.name, captions.get(plot.name, plot.stem)) for plot in plots]
    return blocks


def trial_cells(trial: TrialSummary, params: list[str]) -> list[str]:
    """A trial's row after its name: status, searched values, metrics, step, reports, time."""
    return [
        trial.status,
        *(format_param(trial.params.get(name, "-")) for name in params),
        format_number(trial.final_metric),
        format_number(trial.best_metric),
        format_step(trial.last_step),
        str(trial.reports),
        format_number(trial.time_total_s, 3),
    ]


def _exploits_table(summary: ExperimentSummary) -> Table:
    """Every exploit: when, which trial took over which one's checkpoint, its values around it."""
    rows = [
        [
            format_step(exploit.step),
            f"`{exploit.trial}`",
            f"`{exploit.donor}`",
            _values_text(exploit.before),
            _values_text(exploit.after),
        ]
        for exploit in summary.exploits
    ]
    return Table(["step", "trial", "took over", "values before", "values after"], rows)


def _values_text(values: dict) -> str:
    return ", ".join(f"`{name}` {format_param(value)}" for name, value in values.items()) or "-"


def _trials_table(summary: ExperimentSummary) -> Table:
    header = ["#", "trial", "status", *summary.params]
    header += [f"final {summary.metric}", f"best {summary.metric}", "step", "reports", "time (s)"]
    rows = []
    for rank, trial in enumerate(ranked_trials(summary), start=1):
        rows.append([str(rank), f"`{trial.trial_id}`", *trial_cells(trial, summary.params)])
    numeric_params = [
        name
        for name in summary.params
        if all(is_number(t.params.get(name)) for t in summary.trials if name in t.params)
    ]
    numeric = {"#", *numeric_params, *header[-5:]}
    return Table(header, rows, numeric=frozenset(numeric))
