"""`cseg export RUN --out FILE`: a run's backbone as a torchvision ResNet state dict."""

from __future__ import annotations

from pathlib import Path

import typer

from .console import out


def export(
    target: Path = typer.Argument(
        ..., help="A run directory or a checkpoint (state.pt or its folder)."
    ),
    output: Path = typer.Option(..., "--out", "-o", help="The .pth file to write."),
    stage: str = typer.Option(
        None, "--stage", help="The run's stage to export (default: its last finished stage)."
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing --out file."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the written path."),
) -> None:
    """Export the backbone as a plain torchvision ResNet state dict (no fc)."""
    from raycseg.train.export import export_backbone

    exported = export_backbone(target, output, stage=stage, force=force)
    if quiet:
        out.print(str(exported.path), markup=False)
        return
    source = f"stage {exported.stage}" if exported.stage else str(target)
    out.print(
        f"wrote {exported.path}: {exported.backbone} backbone of {source} "
        f"({exported.tensors} tensors; load with strict=False, fc stays untrained)",
        markup=False,
    )
