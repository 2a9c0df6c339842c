"""`cseg`: the root Typer app and the error table.

Every known error (`raycseg.errors.CsegError`) becomes one line on stderr that
names the fix, with the error's exit code (CONTRACTS.md §0). `CSEG_DEBUG=1`
shows the traceback as well.
"""

from __future__ import annotations

import os
import sys
import traceback

import typer
from rich.text import Text

from raycseg import __version__
from raycseg.errors import CsegError

from . import bench, cluster, recipes, shards
from .console import err
from .eval import evaluate
from .export import export
from .pretrain import pretrain
from .report import report
from .splits import split
from .tune import tune

app = typer.Typer(
    name="cseg",
    help="Dense contrastive pretraining for segmentation (CACL, MaskContrast, ReCo) on Ray.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
app.command("pretrain")(pretrain)
app.command("tune")(tune)
app.command("eval")(evaluate)
app.command("export")(export)
app.command("report")(report)
app.add_typer(shards.app, name="shards")
shards.app.command("split")(split)
app.add_typer(recipes.app, name="recipes")
app.add_typer(bench.app, name="bench")
app.add_typer(cluster.app, name="cluster")


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"cseg {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False,
        "--version",
        callback=_print_version,
        is_eager=True,
        help="Show the version and exit.",
    ),
) -> None:
    """Pretrain dense representations without labels, then bootstrap segmentation with few labels."""


def run() -> None:
    """Console-script entry point: run the app and map known errors to one line."""
    try:
        app()
    except CsegError as error:
        if os.environ.get("CSEG_DEBUG") == "1":
            traceback.print_exc()
        err.print(Text.assemble(("error: ", "bold red"), str(error)), highlight=False)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
