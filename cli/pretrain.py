"""`cseg pretrain [RECIPE] [key=value ...]`: run a recipe's stages on Ray Train."""

from __future__ import annotations

import contextlib
import sys
import time

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from raycseg.config import load_recipe, recipe_to_yaml

from .console import err, out
from .eval import print_eval_table, raise_if_skipped


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
    from raycseg.train.preflight import check_run_data

    loaded = load_recipe(recipe, overrides or [], cluster=cluster)
    check_run_data(loaded)  # before Ray, torch or generated data: fast failures
    if dry_run or print_config:
        out.print(recipe_to_yaml(loaded), markup=False)
        if dry_run:
            return
    from raycseg.train.launch import run_pretrain

    say = (lambda message: None) if quiet else (lambda message: err.print(message, markup=False))
    total = sum(stage.steps for stage in loaded.stages)
    # Ray and its workers print to stdout; keep stdout for results (`--quiet`: the run path only).
    with _progress_display(total, quiet) as display, contextlib.redirect_stdout(sys.stderr):
        result = run_pretrain(
            loaded,
            address=address,
            resume=resume,
            new=new,
            on_metrics=display.update,
            on_message=say,
            quiet=quiet,
            on_phase=display.phase,
        )
    run_dir = result.run_dir if isinstance(result.run_dir, str) else result.run_dir.resolve()
    if quiet:
        out.print(str(run_dir), markup=False)
    else:
        if result.eval:
            print_eval_table(result.eval)
        out.print(f"run directory: {run_dir}", markup=False)
    raise_if_skipped(result.eval)


class _progress_display:
    """A rich progress bar of step, loss and throughput; plain lines when stderr is not a TTY.

    Until a stage's first logged step, the bar names what the run waits on
    (`phase`: "starting Ray", "starting 2 workers", "waiting for the first
    batch", ...); off a TTY each phase is one line, printed once.
    """

    def __init__(self, total: int, quiet: bool):
        self.total, self.quiet = total, quiet
        self.progress = None
        self.last_line = 0.0
        self.last_phase: str | None = None

    def __enter__(self):
        if not self.quiet and err.is_terminal:
            self.progress = Progress(
                TextColumn("[bold]{task.fields[stage]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[detail]}"),
                TimeElapsedColumn(),
                console=err,
            )
            self.progress.start()
            self.task = self.progress.add_task(
                "train", total=self.total, stage="preparing", detail=""
            )
        return self

    def phase(self, text: str) -> None:
        if self.quiet or text == self.last_phase:
            return
        self.last_phase = text
        if self.progress is not None:
            self.progress.update(self.task, stage=text)
        else:
            err.print(text, markup=False, highlight=False)

    def update(self, record: dict) -> None:
        if self.quiet:
            return
        self.last_phase = None
        if self.progress is not None:
            self.progress.update(
                self.task,
                completed=record["step"],
                stage=record["stage"],
                detail=f"loss {record['loss']:.4f}  {record['samples_per_s']:.1f} samples/s",
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
