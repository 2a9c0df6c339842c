"""The report of a `cseg pretrain` run: its stages, training curves, validation and evaluation.

`write_run_report` reads the run directory (`raycseg.reports.run`), draws its plots
(`raycseg.reports.run_plots`, `raycseg.reports.pictures`) and writes `report.md` and
`report.html` (`raycseg.reports.render`) into it.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from ..run_directory import DAVIS_STRIP
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
from .run import RunSummary, load_run

SAMPLES_PICTURE = "eval_samples.png"


def write_run_report(path: Path) -> RunSummary:
    """Read a pretrain run directory and write its report files into it.

    Args:
        path: The run directory.

    Returns:
        The summary, with `files` set to the written paths.
    """
    summary = load_run(Path(path))
    from . import run_plots as plot  # matplotlib is slow to import: only here

    plots = [
        plot.plot_losses(summary, summary.path / "loss.png"),
        plot.plot_schedule_and_throughput(summary, summary.path / "lr_throughput.png"),
        plot.plot_validation(summary, summary.path / "validation.png"),
        plot.plot_eval(summary, summary.path / "eval.png"),
    ]
    if summary.evaluation and summary.eval_samples is not None:
        plots.append(
            plot.plot_eval_samples(
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
        throughput = [r["samples_per_s"] for r in inside if is_number(r.get("samples_per_s"))]
        final_loss = inside[-1].get("loss") if inside else None
        rows.append(
            [
                span.name,
                format_step(span.first_step),
                format_step(span.last_step),
                format_number(final_loss if is_number(final_loss) else None),
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
    if not summary.evaluation and summary.davis is None:
        command = f"cseg eval {summary.path} --baseline random"
        return [*blocks, Paragraph("No `eval.json` yet. Evaluate the run with:"), Code(command)]
    seed = "" if summary.eval_seed is None else f" k-means seed: {summary.eval_seed}."
    scored = data_text(summary)
    if summary.evaluation:
        blocks.append(Paragraph(f"mIoU of the frozen backbone against a random-init one.{seed}"))
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
    blocks += _davis_blocks(summary)
    blocks += [
        Heading("Protocol fingerprints", level=3),
        Paragraph(
            "sha256 (12 digits) of each protocol record in eval.json: what ran, its settings "
            "and package versions. Scores compare only where fingerprints are equal."
        ),
        Table(["protocol", "fingerprint"], [[k, v] for k, v in summary.fingerprints.items()]),
    ]
    if summary.evaluation:
        blocks += [
            Heading("Per-class IoU", level=3),
            Paragraph(
                "By class id (and name, where eval.json records it); `-` where the class "
                "never occurs (TP+FP+FN = 0)."
            ),
            _per_class_table(summary),
        ]
    return blocks


def _davis_blocks(summary: RunSummary) -> list[Block]:
    """DAVIS label propagation: J&F per sequence and the strip of propagated masks."""
    davis = summary.davis
    if davis is None:
        return []
    random = summary.davis_baseline
    text = (
        f"J&F {davis['jf_mean']:.4f} (J {davis['j_mean']:.4f}, F {davis['f_mean']:.4f}) over "
        f"{davis['objects']} objects, {davis['frames_scored']} frames scored"
    )
    if random is not None:
        text += f"; random init J&F {random['jf_mean']:.4f}"
    rows = [
        [name, format_number(s["j_mean"]), format_number(s["f_mean"]), format_number(s["jf_mean"]),
         str(s["objects"])]
        for name, s in davis["sequences"].items()
    ]  # fmt: skip
    blocks = [
        Heading("DAVIS label propagation", level=3),
        Paragraph(text + "."),
        Table(["sequence", "J", "F", "J&F", "objects"], rows, numeric=frozenset({"J", "F", "J&F"})),
    ]
    if (summary.path / DAVIS_STRIP).is_file():
        caption = "the first sequence's frames, propagated masks overlaid (DAVIS palette)"
        blocks.append(Image(DAVIS_STRIP, caption))
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
