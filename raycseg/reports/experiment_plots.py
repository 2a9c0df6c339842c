"""PNG plots for a Tune experiment report (matplotlib, Agg canvas, no pyplot state)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

from .experiment import EARLY_STOPPED, ExperimentSummary, TrialSummary
from .render import save_figure

MAX_LEGEND_ENTRIES = 12
TOP_TRIALS = 10
_STATUS_MARKERS = {EARLY_STOPPED: "x", "ERROR": "X"}
_STATUS_COLORS = {"TERMINATED": "tab:blue", EARLY_STOPPED: "tab:orange", "ERROR": "tab:red"}


def short_name(trial: TrialSummary) -> str:
    """The trial id's distinguishing suffix (`00003` of `f933e_00003`)."""
    return trial.trial_id.rsplit("_", 1)[-1]


def plot_metric_curves(summary: ExperimentSummary, path: Path) -> Path:
    """The metric against `step`, one line per trial; x marks an early stop, X an error."""
    figure = Figure(figsize=(9, 5), layout="constrained")
    axes = figure.add_subplot()
    colors = matplotlib.colormaps["tab10" if len(summary.trials) <= 10 else "viridis"]
    for index, trial in enumerate(summary.trials):
        points = [(s, v) for s, v in zip(trial.steps, trial.values, strict=True) if v is not None]
        if not points:
            continue
        color = colors(index % 10 if len(summary.trials) <= 10 else index / len(summary.trials))
        steps, values = zip(*points, strict=True)
        width = 2.6 if trial is summary.best else 1.3
        label = f"{short_name(trial)} ({trial.status.lower()})"
        axes.plot(steps, values, color=color, linewidth=width, marker=".", label=label)
        marker = _STATUS_MARKERS.get(trial.status)
        if marker:
            axes.plot(steps[-1], values[-1], marker=marker, color=color, markersize=11, mew=2.5)
    axes.set_xlabel("step")
    axes.set_ylabel(summary.metric)
    axes.set_title(f"{summary.metric} by step ({summary.mode}; thick line = best trial)")
    axes.grid(alpha=0.3)
    if 0 < len(summary.trials) <= MAX_LEGEND_ENTRIES:
        axes.legend(fontsize="small", loc="best", title="trial")
    return save_figure(figure, path)


def plot_schedules(summary: ExperimentSummary, path: Path) -> Path | None:
    """PBT: each searched value against step, one line per trial; a star marks an exploit.

    A trial's line is the values it trained with, which jump where it took over
    another trial's checkpoint. None when no trial was exploited.
    """
    if not summary.exploits:
        return None
    columns = min(2, len(summary.params))
    rows = math.ceil(len(summary.params) / columns)
    figure = Figure(figsize=(6 * columns, 3.6 * rows), layout="constrained")
    colors = matplotlib.colormaps["tab10" if len(summary.trials) <= 10 else "viridis"]
    for index, name in enumerate(summary.params, start=1):
        axes = figure.add_subplot(rows, columns, index)
        for number, trial in enumerate(summary.trials):
            known = [
                (step, value) for step, value in trial.values_by_step(name) if value is not None
            ]
            if not known:
                continue
            color = colors(
                number % 10 if len(summary.trials) <= 10 else number / len(summary.trials)
            )
            steps, values = (list(column) for column in zip(*known, strict=True))
            steps.append(max(trial.last_step or 0, steps[-1]))
            label = short_name(trial)
            axes.step(steps, [*values, values[-1]], where="post", color=color, label=label)
            for exploit in trial.exploits:
                point = (exploit["step"], exploit["after"].get(name))
                axes.plot(*point, marker="*", color=color, markersize=13)
                donor = exploit["donor"].rsplit("_", 1)[-1]
                axes.annotate(f" from {donor}", point, fontsize="small", color=color)
        axes.set_xlabel("step")
        axes.set_title(name, fontsize="medium")
        axes.grid(alpha=0.3)
    handles, labels = _unique_legend_entries(figure)
    if 0 < len(labels) <= MAX_LEGEND_ENTRIES:
        figure.legend(handles, labels, fontsize="small", title="trial", loc="outside right upper")
    figure.suptitle("searched values by step (PBT; * = took over another trial's checkpoint)")
    return save_figure(figure, path)


def plot_params_vs_metric(summary: ExperimentSummary, path: Path) -> Path | None:
    """One panel per searched parameter: its value against the final metric, coloured by status."""
    if not summary.params:
        return None
    columns = min(3, len(summary.params))
    rows = math.ceil(len(summary.params) / columns)
    figure = Figure(figsize=(4.3 * columns, 3.6 * rows), layout="constrained")
    for index, name in enumerate(summary.params, start=1):
        axes = figure.add_subplot(rows, columns, index)
        scored = [t for t in summary.trials if t.final_metric is not None and name in t.params]
        positions, labels = _axis_positions([t.params[name] for t in scored])
        for status in sorted({t.status for t in scored}):
            points = [
                (x, t.final_metric)
                for t, x in zip(scored, positions, strict=True)
                if t.status == status
            ]
            xs, ys = zip(*points, strict=True)
            axes.scatter(
                xs,
                ys,
                color=_STATUS_COLORS.get(status, "0.5"),
                s=40,
                zorder=3,
                label=status.lower(),
                marker=_STATUS_MARKERS.get(status, "o"),
            )
        if summary.best is not None and name in summary.best.params:
            best_x = positions[scored.index(summary.best)]
            axes.scatter(
                best_x,
                summary.best.final_metric,
                s=220,
                facecolors="none",
                edgecolors="black",
                linewidths=1.5,
                zorder=4,
                label="best",
            )
        if labels is not None:
            axes.set_xticks(range(len(labels)), labels, rotation=20)
            axes.set_xlim(-0.5, len(labels) - 0.5)
        elif name in summary.log_params:
            axes.set_xscale("log")
            axes.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            axes.xaxis.set_major_formatter(FormatStrFormatter("%g"))
            axes.xaxis.set_minor_formatter(NullFormatter())
        axes.set_xlabel(name)
        axes.set_ylabel(f"final {summary.metric}")
        axes.grid(alpha=0.3)
    handles, labels = _unique_legend_entries(figure)
    figure.legend(handles, labels, loc="outside right upper", fontsize="small")
    figure.suptitle(f"each parameter against the final {summary.metric}")
    return save_figure(figure, path)


def _unique_legend_entries(figure: Figure) -> tuple[list, list[str]]:
    """Each label once across all panels, so a figure-level legend lists every status."""
    entries: dict[str, object] = {}
    for axes in figure.axes:
        for handle, label in zip(*axes.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, handle)
    return list(entries.values()), list(entries)


def _axis_positions(values: list[Any]) -> tuple[list[float], list[str] | None]:
    """Numbers stay numbers; anything else becomes evenly spaced categories."""
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return [float(v) for v in values], None
    labels = sorted({str(v) for v in values})
    return [float(labels.index(str(v))) for v in values], labels


def plot_parallel_coordinates(summary: ExperimentSummary, path: Path) -> Path | None:
    """Parallel coordinates of the top trials: one axis per parameter, then the metric."""
    sign = 1.0 if summary.mode == "max" else -1.0
    scored = [t for t in summary.trials if t.final_metric is not None]
    top = sorted(scored, key=lambda t: -sign * t.final_metric)[:TOP_TRIALS]
    if not top or not summary.params:
        return None
    axis_names = [*summary.params, summary.metric]
    columns = [[t.params.get(name) for t in top] for name in summary.params]
    columns.append([t.final_metric for t in top])
    scaled_columns = [
        _scale_column(column, name in summary.log_params)
        for name, column in zip(axis_names, columns, strict=True)
    ]
    figure = Figure(figsize=(max(7.5, 2.2 * len(axis_names) + 2.5), 4.8), layout="constrained")
    axes = figure.add_subplot()
    norm = Normalize(min(t.final_metric for t in top), max(t.final_metric for t in top))
    cmap = matplotlib.colormaps["viridis" if summary.mode == "max" else "viridis_r"]
    for row, trial in enumerate(top):
        ys = [scaled[row] for scaled, _ in scaled_columns]
        axes.plot(
            range(len(axis_names)),
            ys,
            color=cmap(norm(trial.final_metric)),
            linewidth=2.6 if trial is summary.best else 1.6,
            marker="o",
            markersize=4,
            label=f"{short_name(trial)}  {trial.final_metric:.4g}",
        )
    for x, (_, (low, high)) in enumerate(scaled_columns):
        axes.axvline(x, color="0.3", linewidth=1, zorder=0)
        axes.annotate(high, (x, 1.0), xytext=(4, 6), textcoords="offset points", fontsize=8)
        axes.annotate(low, (x, 0.0), xytext=(4, -12), textcoords="offset points", fontsize=8)
    axes.set_xticks(range(len(axis_names)), axis_names, rotation=10)
    axes.set_yticks([])
    axes.set_ylim(-0.1, 1.1)
    axes.set_xlim(-0.2, len(axis_names) - 0.6)
    for side in ("left", "right", "top"):
        axes.spines[side].set_visible(False)
    axes.legend(
        fontsize="small",
        title=f"trial  {summary.metric}",
        loc="center left",
        bbox_to_anchor=(1.01, 0.5),
        frameon=False,
    )
    axes.set_title(f"top {len(top)} trials by final {summary.metric} (axes span min to max)")
    return save_figure(figure, path)


def _scale_column(values: list[Any], log_scale: bool) -> tuple[list[float], tuple[str, str]]:
    """Map a column onto [0, 1]; return the scaled values and the (low, high) tick labels."""
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    if not numeric:
        labels = sorted({str(v) for v in values})
        span = max(len(labels) - 1, 1)
        return [labels.index(str(v)) / span for v in values], (labels[0], labels[-1])
    numbers = [float(v) for v in values]
    log_scale = log_scale and min(numbers) > 0
    transformed = [math.log10(v) for v in numbers] if log_scale else numbers
    low, high = min(transformed), max(transformed)
    span = high - low
    scaled = [(v - low) / span if span > 0 else 0.5 for v in transformed]
    return scaled, (f"{min(numbers):.3g}", f"{max(numbers):.3g}")
