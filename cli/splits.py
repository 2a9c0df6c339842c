"""`cseg shards split SRC OUT`: label-scarce splits of a segmentation shard set (ReCo §6)."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Literal

import typer
from rich.table import Table

from .console import StageProgress, err, out


def split(
    src: Path = typer.Argument(
        ...,
        metavar="SRC",
        help="A segmentation shard set (built with `cseg shards build --kind segmentation`).",
    ),
    dest: Path = typer.Argument(
        ..., metavar="OUT", help="Output folder: OUT/labelled, OUT/unlabelled, OUT/split.json."
    ),
    num_labels: int = typer.Option(
        None,
        "--num-labels",
        "-n",
        min=1,
        help="Partial Dataset, Full Labels: choose N fully labelled images (class-balanced).",
    ),
    partial: Literal["p0", "p1", "p5", "p25"] = typer.Option(
        None,
        "--partial",
        help="Partial Labels, Full Dataset: p0 (one pixel per class), p1, p5 or p25 (% per class).",
    ),
    min_classes: int = typer.Option(
        None,
        "--min-classes",
        min=1,
        help="Classes an image needs to be chosen (default: 3 VOC, 12 Cityscapes, else 1).",
    ),
    sampler: Literal["class-balanced", "rarest-class"] = typer.Option(
        "class-balanced",
        "--sampler",
        help="With --num-labels: class-balanced (VOC, Cityscapes) or rarest-class (SUN RGB-D).",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the sampler and of the seed pixels."),
    source_split: str = typer.Option(
        None, "--split", help="Source split to draw from (default: train, else all)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing OUT."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the output folder."),
) -> None:
    """Split SRC into labelled and unlabelled shard sets plus a split manifest."""
    from raycseg.shards.splits import build_label_split

    with ExitStack() as stack:
        report = build_label_split(
            src,
            dest,
            num_labels=num_labels,
            partial=partial,
            min_classes=min_classes,
            sampler=sampler,
            seed=seed,
            split=source_split,
            overwrite=overwrite,
            on_progress=StageProgress(stack, quiet).stage("splitting"),
        )
    if quiet:
        out.print(str(report.out), markup=False)
        return
    table = Table("set", "path", "images", title=f"split {report.mode} (seed {report.seed})")
    table.add_row("labelled", str(report.labelled), str(report.num_labelled))
    if report.unlabelled is not None:
        table.add_row("unlabelled", str(report.unlabelled), str(report.num_unlabelled))
    out.print(table)
    rare = sorted(report.labelled_images_per_class.items(), key=lambda item: item[1])[:3]
    err.print(
        "labelled images of the rarest classes: "
        + ", ".join(f"{name} {count}" for name, count in rare)
        + f" ({report.seconds:.1f} s)",
        markup=False,
    )
    if report.unlabelled is None:
        err.print(
            "partial labels: every image is in labelled/; use it for both data.train "
            "and data.unlabelled of a reco stage with mode: partial",
            markup=False,
        )
