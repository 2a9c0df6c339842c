"""PNG plots for a pretrain run report (matplotlib, Agg canvas, no pyplot state)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

from .pictures import (
    IGNORE_ID,
    MAX_NAMED_CLASSES,
    PALETTE,
    LoadedSample,
    class_name,
    classes_present,
    colour_ids,
    has_ignore,
    protocol_title,
)
from .render import save_figure
from .run import RunSummary

SAMPLE_CELL_INCHES = 2.3
LEGEND_CHAR_INCHES = 0.075  # a character of the legend's small font, roughly


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


def log_loss_axis(axes: Axes) -> None:
    """A log y axis labelled at 1, 2 and 5 of each decade, as plain numbers."""
    axes.set_yscale("log")
    axes.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axes.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    axes.yaxis.set_minor_formatter(NullFormatter())


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
        log_loss_axis(axes)
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
    """Plot mIoU per protocol: the pretrained backbone beside the random-init baseline."""
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


def plot_eval_samples(
    loaded: list[LoadedSample], protocols: list[str], classes: list[str], path: Path
) -> Path | None:
    """A grid of the saved validation images: image | ground truth | each protocol.

    One row per sample; class ids in the VOC palette (`pictures.PALETTE`), drawn
    pixel for pixel (nearest neighbour), with a legend of the classes present.

    Args:
        loaded: The samples (`pictures.load_samples`).
        protocols: The prediction columns, eval.json keys in the index's order.
        classes: Class names in id order, for the legend.
        path: The PNG to write.

    Returns:
        `path`, or None when there is no sample.
    """
    if not loaded:
        return None
    columns = [("image", "image"), ("label", "ground truth")]
    columns += [(key, protocol_title(key)) for key in protocols]
    aspect = max(_height_over_width(sample) for sample in loaded)
    width = SAMPLE_CELL_INCHES * len(columns)
    legend = _legend_handles(loaded, classes)
    longest = max((len(handle.get_label()) for handle in legend), default=0)
    legend_columns = max(1, min(len(legend), int(width / (0.5 + LEGEND_CHAR_INCHES * longest))))
    legend_rows = math.ceil(len(legend) / legend_columns)
    figure = Figure(
        figsize=(width, SAMPLE_CELL_INCHES * aspect * len(loaded) + 0.25 * legend_rows + 0.6),
        layout="constrained",
    )
    grid = figure.subplots(len(loaded), len(columns), squeeze=False)
    for row, sample in enumerate(loaded):
        for column, (key, title) in enumerate(columns):
            axes = grid[row][column]
            axes.set_xticks([])
            axes.set_yticks([])
            pixels = _cell_pixels(sample, key)
            if pixels is None:
                axes.text(0.5, 0.5, "not saved", ha="center", va="center", color="0.4")
            else:
                axes.imshow(pixels, interpolation="nearest")
            if row == 0:
                axes.set_title(title, fontsize=10)
            if column == 0:
                axes.set_ylabel(sample.key[-28:], fontsize=8)
    if legend:
        figure.legend(
            handles=legend,
            loc="outside lower center",
            ncols=legend_columns,
            fontsize="small",
            frameon=False,
        )
    figure.suptitle("scored validation images")
    return save_figure(figure, path)


def _cell_pixels(sample: LoadedSample, key: str) -> np.ndarray | None:
    """The RGB array of one cell: the image as stored, id maps in palette colours."""
    if key == "image":
        return sample.image
    ids = sample.label if key == "label" else sample.predictions.get(key)
    return None if ids is None else colour_ids(ids)


def _height_over_width(sample: LoadedSample) -> float:
    for pixels in (sample.label, sample.image):
        if pixels is not None and pixels.shape[1] > 0:
            return min(3.0, max(1 / 3, pixels.shape[0] / pixels.shape[1]))
    return 1.0


def _legend_handles(loaded: list[LoadedSample], classes: list[str]) -> list[Patch]:
    present = classes_present(loaded)[:MAX_NAMED_CLASSES]
    handles = [
        Patch(
            facecolor=PALETTE[index] / 255,
            edgecolor="0.5",
            label=f"{index} {class_name(index, classes)}",
        )
        for index in present
    ]
    if has_ignore(loaded):
        handles.append(Patch(facecolor=PALETTE[IGNORE_ID] / 255, edgecolor="0.5", label="ignore"))
    return handles
