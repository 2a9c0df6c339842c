"""Write a report for a run or a Tune experiment: `report.md`, `report.html` and PNG plots.

`write_report(path)` tells the two kinds of directory apart (a run directory
has `metrics.jsonl`; a Tune experiment has `experiment_state-*.json`) and
writes everything into that directory. It returns the summary it rendered, so
the CLI can show the same content as a table.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import yaml

from raycseg.errors import CsegError

from .experiment import (
    SPACE_FILE,
    ExperimentSummary,
    TrialSummary,
    is_experiment_dir,
    load_experiment,
)
from .render import (
    Block,
    Code,
    Heading,
    Image,
    Paragraph,
    Table,
    format_number,
    format_step,
    write_report_files,
)
from .run import RunSummary, is_run_dir, load_run

SAMPLES_PICTURE = "eval_samples.png"

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


# --------------------------------------------------------------------------- experiment


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
    plots = [
        _plots("experiment").plot_metric_curves(summary, summary.path / "metric_by_step.png"),
        _plots("experiment").plot_params_vs_metric(summary, summary.path / "params_vs_metric.png"),
        _plots("experiment").plot_parallel_coordinates(
            summary, summary.path / "parallel_coordinates.png"
        ),
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
    errors = [t for t in summary.trials if t.status == "ERROR"]
    if errors:
        blocks.append(Heading("Errors", level=3))
        blocks += [Paragraph(f"`{t.trial_id}`: {t.error or 'see error.txt'}") for t in errors]
    blocks.append(Heading("Plots"))
    captions = {
        "metric_by_step.png": f"{summary.metric} against step, per trial",
        "params_vs_metric.png": f"each parameter against the final {summary.metric}",
        "parallel_coordinates.png": "parallel coordinates of the top trials",
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


def _trials_table(summary: ExperimentSummary) -> Table:
    header = ["#", "trial", "status", *summary.params]
    header += [f"final {summary.metric}", f"best {summary.metric}", "step", "reports", "time (s)"]
    rows = []
    for rank, trial in enumerate(ranked_trials(summary), start=1):
        rows.append([str(rank), f"`{trial.trial_id}`", *trial_cells(trial, summary.params)])
    numeric_params = [
        name
        for name in summary.params
        if all(_is_number(t.params.get(name)) for t in summary.trials if name in t.params)
    ]
    numeric = {"#", *numeric_params, *header[-5:]}
    return Table(header, rows, numeric=frozenset(numeric))


# --------------------------------------------------------------------------- run


def write_run_report(path: Path) -> RunSummary:
    """Read a pretrain run directory and write its report files into it.

    Args:
        path: The run directory.

    Returns:
        The summary, with `files` set to the written paths.
    """
    summary = load_run(Path(path))
    plots = [
        _plots("run").plot_losses(summary, summary.path / "loss.png"),
        _plots("run").plot_schedule_and_throughput(summary, summary.path / "lr_throughput.png"),
        _plots("run").plot_validation(summary, summary.path / "validation.png"),
        _plots("run").plot_eval(summary, summary.path / "eval.png"),
    ]
    if summary.evaluation and summary.eval_samples is not None:
        plots.append(
            _plots("run").plot_eval_samples(
                _pictures().load_samples(summary.eval_samples),
                summary.eval_samples.protocols,
                sample_classes(summary),
                summary.path / SAMPLES_PICTURE,
            )
        )
    plots = [plot for plot in plots if plot is not None]
    blocks = run_blocks(summary, plots)
    summary.files = [
        *write_report_files(summary.path, f"Run report: {summary.path.name}", blocks),
        *plots,
    ]
    return summary


def stage_rows(summary: RunSummary) -> list[list[str]]:
    """Per stage: name, first and last step, final loss, median samples/s."""
    rows = []
    for span in summary.stages:
        inside = [r for r in summary.records if span.first_step <= r["step"] <= span.last_step]
        throughput = [r["samples_per_s"] for r in inside if _is_number(r.get("samples_per_s"))]
        final_loss = inside[-1].get("loss") if inside else None
        rows.append(
            [
                span.name,
                format_step(span.first_step),
                format_step(span.last_step),
                format_number(final_loss if _is_number(final_loss) else None),
                format_number(statistics.median(throughput) if throughput else None, 3),
            ]
        )
    return rows


def eval_header(summary: RunSummary) -> list[str]:
    """The eval table's columns; `pixels scored` only where eval.json records it."""
    header = ["protocol", "pretrained mIoU", "random-init mIoU", "gain"]
    if any(score.pixels_scored is not None for score in summary.evaluation):
        header.append("pixels scored")
    return header


def eval_rows(summary: RunSummary) -> list[list[str]]:
    """Per protocol: pretrained mIoU, random-init mIoU, the difference (and pixels scored)."""
    with_pixels = len(eval_header(summary)) > 4
    rows = []
    for score in summary.evaluation:
        gain = None
        if score.miou is not None and score.baseline_miou is not None:
            gain = score.miou - score.baseline_miou
        row = [
            score.protocol,
            format_number(score.miou),
            format_number(score.baseline_miou),
            "-" if gain is None else f"{gain:+.4f}",
        ]
        if with_pixels:
            row.append("-" if score.pixels_scored is None else f"{score.pixels_scored:,}")
        rows.append(row)
    return rows


def data_text(summary: RunSummary) -> str | None:
    """What eval.json says was scored, as one sentence; None for older files without it."""
    data = summary.eval_data
    if data is None:
        return None
    shards = "-" if data.shards is None else f"`{data.shards}`"
    split = "-" if data.split is None else f"`{data.split}`"
    images = "-" if data.images is None else str(data.images)
    classes = len(data.classes)
    return f"Scored data: shards {shards}, split {split}, {images} images, {classes} classes."


def sample_classes(summary: RunSummary) -> list[str]:
    """Class names for the pictures: the samples' index, else eval.json's data record."""
    if summary.eval_samples is not None and summary.eval_samples.classes:
        return summary.eval_samples.classes
    return summary.eval_data.classes if summary.eval_data is not None else []


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def run_blocks(summary: RunSummary, plots: list[Path]) -> list[Block]:
    """The run report's content, shared by the Markdown and HTML renderers."""
    plot_names = {plot.name for plot in plots}
    last_step = summary.records[-1]["step"] if summary.records else None
    blocks: list[Block] = [
        Paragraph(
            f"Run `{summary.path}`: {len(summary.records)} logged steps up to step "
            f"{format_step(last_step)}, {len(summary.stages)} stage(s); "
            f"{summary.skipped_corrupt} corrupt samples skipped."
        ),
        Heading("Stages"),
        Table(
            ["stage", "first step", "last step", "final loss", "median samples/s"],
            stage_rows(summary),
            numeric=frozenset({"first step", "last step", "final loss", "median samples/s"}),
        ),
        Heading("Training curves"),
    ]
    captions = {
        "loss.png": "loss per term against step; dashed lines mark stage boundaries",
        "lr_throughput.png": "learning rate and throughput against step",
    }
    blocks += [Image(name, caption) for name, caption in captions.items() if name in plot_names]
    if "validation.png" in plot_names:
        blocks += [Heading("Validation"), Image("validation.png", "validation metrics by step")]
    blocks += _eval_blocks(summary, plot_names)
    if summary.config_text:
        blocks += [Heading("Recipe (config.yaml)"), Code(summary.config_text.rstrip())]
    return blocks


def _eval_blocks(summary: RunSummary, plot_names: set[str]) -> list[Block]:
    blocks: list[Block] = [Heading("Evaluation")]
    if not summary.evaluation:
        command = f"cseg eval {summary.path} --baseline random"
        return [*blocks, Paragraph("No `eval.json` yet. Evaluate the run with:"), Code(command)]
    seed = "" if summary.eval_seed is None else f" k-means seed: {summary.eval_seed}."
    blocks.append(Paragraph(f"mIoU of the frozen backbone against a random-init one.{seed}"))
    scored = data_text(summary)
    if scored is not None:
        blocks.append(Paragraph(scored))
    header = eval_header(summary)
    blocks.append(Table(header, eval_rows(summary), numeric=frozenset(header[1:])))
    if "eval.png" in plot_names:
        blocks.append(Image("eval.png", "mIoU per protocol, pretrained vs random init"))
    if SAMPLES_PICTURE in plot_names and summary.eval_samples is not None:
        pictures = _pictures()
        loaded = pictures.load_samples(summary.eval_samples)
        caption = pictures.sample_caption(summary.eval_samples, loaded, sample_classes(summary))
        blocks += [Heading("Validation images", level=3), Image(SAMPLES_PICTURE, caption)]
    blocks += [
        Heading("Per-class IoU", level=3),
        Paragraph(
            "By class id (and name, where eval.json records it); `-` where the class "
            "never occurs (TP+FP+FN = 0)."
        ),
        _per_class_table(summary),
    ]
    return blocks


def _per_class_table(summary: RunSummary) -> Table:
    header, columns = ["class"], []
    for score in summary.evaluation:
        header.append(score.protocol)
        columns.append(score.per_class_iou)
        if score.baseline_per_class_iou:
            header.append(f"{score.protocol} (random)")
            columns.append(score.baseline_per_class_iou)
    classes = max((len(column) for column in columns), default=0)
    names = summary.eval_data.classes if summary.eval_data is not None else []
    rows = [
        [f"{index} {names[index]}" if index < len(names) else str(index)]
        + [format_number(column[index] if index < len(column) else None) for column in columns]
        for index in range(classes)
    ]
    return Table(header, rows, numeric=frozenset(header[1:] if names else header))


def _pictures():
    """`raycseg.reports.pictures` (imported on use, as the plots are)."""
    from . import pictures

    return pictures


def _plots(kind: str):
    """The plotting module for `kind` (imported on use: matplotlib is slow to import)."""
    import importlib

    return importlib.import_module(f"{__package__}.{kind}_plots")
