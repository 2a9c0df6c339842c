"""`cseg pretrain [RECIPE] [key=value ...]`: run a recipe's stages on Ray Train."""

from __future__ import annotations

import contextlib
import sys
import time

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from raycseg.config import load_recipe, recipe_to_yaml

from .console import err, out
from .eval import print_eval_table


def pretrain(
    recipe: str = typer.Argument("quickstart", help="A shipped recipe name or a YAML path."),
    overrides: list[str] = typer.Argument(
        None, help="key=value overrides, e.g. stages.cacl.steps=100."
    ),
    address: str = typer.Option(
        None, "--address", help="Ray cluster address (default: RAY_ADDRESS, else local Ray)."
    ),
    cluster: str = typer.Option(
        None, "--cluster", help="A cluster overlay (`gpu` or a YAML path) under the overrides."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the latest (or the named) run; error if none."
    ),
    new: bool = typer.Option(
        False, "--new", help="Start afresh under a new name even if the named run exists."
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Validate and print the resolved recipe; run nothing."
    ),
    print_config: bool = typer.Option(
        False, "--print-config", help="Print the resolved recipe before running."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the run directory."),
) -> None:
    """Pretrain: run every stage of RECIPE in order (default: the quickstart on generated data)."""
    from raycseg.train.launch import run_pretrain

    loaded = load_recipe(recipe, overrides or [], cluster=cluster, check_files=not dry_run)
    if dry_run or print_config:
        out.print(recipe_to_yaml(loaded), markup=False)
        if dry_run:
            return
    say = (lambda message: None) if quiet else (lambda message: err.print(message, markup=False))
    total = sum(stage.steps for stage in loaded.stages)
    # Ray and its workers print to stdout; keep stdout for results (CONTRACTS.md §2).
    with _progress_display(total, quiet) as on_metrics, contextlib.redirect_stdout(sys.stderr):
        result = run_pretrain(
            loaded,
            address=address,
            resume=resume,
            new=new,
            on_metrics=on_metrics,
            on_message=say,
            quiet=quiet,
        )
    if quiet:
        out.print(str(result.run_dir.resolve()), markup=False)
        return
    if result.eval:
        print_eval_table(result.eval)
    out.print(f"run directory: {result.run_dir.resolve()}", markup=False)


class _progress_display:
    """A rich progress bar of step, loss and throughput; plain lines when stderr is not a TTY."""

    def __init__(self, total: int, quiet: bool):
        self.total, self.quiet = total, quiet
        self.progress = None
        self.last_line = 0.0

    def __enter__(self):
        if not self.quiet and err.is_terminal:
            self.progress = Progress(
                TextColumn("[bold]{task.fields[stage]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]:.4f}  {task.fields[rate]:.1f} samples/s"),
                TimeElapsedColumn(),
                console=err,
            )
            self.progress.start()
            self.task = self.progress.add_task(
                "train", total=self.total, stage="starting", loss=float("nan"), rate=0.0
            )
        return self.update

    def update(self, record: dict) -> None:
        if self.quiet:
            return
        if self.progress is not None:
            self.progress.update(
                self.task,
                completed=record["step"],
                stage=record["stage"],
                loss=record["loss"],
                rate=record["samples_per_s"],
            )
        elif time.monotonic() - self.last_line >= 5 or record["step"] == self.total:
            self.last_line = time.monotonic()
            err.print(
                f"[{record['stage']}] step {record['step']}/{self.total} loss {record['loss']:.4f} "
                f"{record['samples_per_s']:.1f} samples/s",
                markup=False,
            )

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.stop()
        return False
