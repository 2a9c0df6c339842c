"""PNG plots for a pretrain run report (matplotlib, Agg canvas, no pyplot state)."""

from __future__ import annotations

from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

from .render import save_figure
from .run import RunSummary


def mark_stages(axes: Axes, summary: RunSummary) -> None:
    """Dashed lines at stage boundaries, with each stage's name at the top of its span."""
    for index, span in enumerate(summary.stages):
        if index > 0:
            boundary = (summary.stages[index - 1].last_step + span.first_step) / 2
            axes.axvline(boundary, color="0.35", linestyle="--", linewidth=1)
        if len(summary.stages) > 1:
            middle = (span.first_step + span.last_step) / 2
            axes.annotate(
                span.name,
                (middle, 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(0, -12),
                textcoords="offset points",
                ha="center",
                fontsize=9,
                color="0.25",
            )


def staged_series(summary: RunSummary, key: str) -> tuple[list[float], list[float]]:
    """`summary.series(key)` with a NaN between stages, so lines break at each boundary."""
    steps, values = summary.series(key)
    starts = {span.first_step for span in summary.stages[1:]}
    gapped_steps: list[float] = []
    gapped_values: list[float] = []
    for step, value in zip(steps, values, strict=True):
        if step in starts and gapped_steps:
            gapped_steps.append(step)
            gapped_values.append(float("nan"))
        gapped_steps.append(step)
        gapped_values.append(value)
    return gapped_steps, gapped_values


def plot_losses(summary: RunSummary, path: Path) -> Path | None:
    """The total loss and each `loss_<term>` against step (log y when all are positive)."""
    keys = [key for key in ["loss", *summary.loss_terms] if summary.series(key)[0]]
    if not keys:
        return None
    figure = Figure(figsize=(10, 4.8), layout="constrained")
    axes = figure.add_subplot()
    all_positive = True
    for key in keys:
        all_positive = all_positive and min(summary.series(key)[1]) > 0
        width = 2.2 if key == "loss" else 1.2
        axes.plot(*staged_series(summary, key), linewidth=width, label=key)
    if all_positive:
        axes.set_yscale("log")
        axes.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        axes.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        axes.yaxis.set_minor_formatter(NullFormatter())
    mark_stages(axes, summary)
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.set_title("training loss by term (dashed lines: stage boundaries)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small", loc="upper right")
    return save_figure(figure, path)


def plot_schedule_and_throughput(summary: RunSummary, path: Path) -> Path | None:
    """Two panels: learning rate and samples per second against step."""
    panels = [("lr", "learning rate"), ("samples_per_s", "samples / s")]
    panels = [(key, label) for key, label in panels if summary.series(key)[0]]
    if not panels:
        return None
    figure = Figure(figsize=(10, 3.4 * len(panels)), layout="constrained")
    for index, (key, label) in enumerate(panels, start=1):
        axes = figure.add_subplot(len(panels), 1, index)
        color = "tab:green" if key == "lr" else "tab:purple"
        axes.plot(*staged_series(summary, key), color=color)
        mark_stages(axes, summary)
        axes.set_ylabel(label)
        axes.grid(alpha=0.3)
        if index == len(panels):
            axes.set_xlabel("step")
    figure.suptitle("learning rate and throughput")
    return save_figure(figure, path)


def plot_validation(summary: RunSummary, path: Path) -> Path | None:
    """Each validation metric against the steps where it was computed."""
    keys = [key for key in summary.validation_keys if summary.series(key)[0]]
    if not keys:
        return None
    figure = Figure(figsize=(10, 4.2), layout="constrained")
    axes = figure.add_subplot()
    for key in keys:
        steps, values = summary.series(key)
        axes.plot(steps, values, marker="o", label=key)
    mark_stages(axes, summary)
    axes.set_xlabel("step")
    axes.set_title("validation metrics")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small", loc="best")
    return save_figure(figure, path)


def plot_eval(summary: RunSummary, path: Path) -> Path | None:
    """mIoU per protocol: the pretrained backbone beside the random-init baseline."""
    scores = [score for score in summary.evaluation if score.miou is not None]
    if not scores:
        return None
    figure = Figure(figsize=(max(5.0, 2.2 * len(scores) + 2), 4), layout="constrained")
    axes = figure.add_subplot()
    width = 0.38
    positions = range(len(scores))
    pretrained = [score.miou for score in scores]
    random = [score.baseline_miou or 0.0 for score in scores]
    bars = axes.bar([p - width / 2 for p in positions], pretrained, width, label="pretrained")
    axes.bar_label(bars, fmt="%.3f", fontsize=8)
    if any(score.baseline_miou is not None for score in scores):
        bars = axes.bar(
            [p + width / 2 for p in positions], random, width, label="random init", color="0.65"
        )
        axes.bar_label(bars, fmt="%.3f", fontsize=8)
    axes.set_xticks(list(positions), [score.protocol for score in scores])
    axes.set_ylabel("mIoU")
    axes.set_ylim(0, min(1.0, max(pretrained + random) * 1.25 + 0.02))
    axes.set_title("evaluation: pretrained vs random-init backbone")
    axes.legend(fontsize="small")
    axes.grid(axis="y", alpha=0.3)
    return save_figure(figure, path)
