"""`cseg`: the root Typer app and the error table.

Every known error (`raycseg.errors.CsegError`) becomes one line on stderr that
names the fix, with the error's exit code (2: it could not run as asked;
1: it ran but found problems). `CSEG_DEBUG=1` shows the traceback as well.
The root group does this itself, so it holds for `cseg` run from a shell and
for the app run in process (Typer's `CliRunner`).
"""

from __future__ import annotations

import os
import sys
import traceback
import unicodedata

import typer
from rich.text import Text
from typer.core import TyperCommand, TyperGroup

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


def one_line(text: str) -> str:
    """`text` on one line: newlines, tabs and other control characters escaped."""
    return "".join(
        char.encode("unicode_escape", "backslashreplace").decode("ascii")
        if unicodedata.category(char) in ("Cc", "Cs", "Zl", "Zp")
        else char
        for char in text
    )


def report_error(error: CsegError) -> None:
    """Print a known error as one line on stderr (and its traceback with CSEG_DEBUG=1)."""
    if os.environ.get("CSEG_DEBUG") == "1":
        traceback.print_exception(error, file=sys.stderr)
    err.print(Text.assemble(("error: ", "bold red"), one_line(str(error))), highlight=False)


def _hide_flag_types(params: list) -> list:
    """Flags take no value: show no `<bool>` type beside them in --help."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


class CsegCommand(TyperCommand):
    """A `cseg` command: flags without a type in --help."""

    def get_params(self, ctx):
        """The command's parameters, boolean flags without a type in --help."""
        return _hide_flag_types(super().get_params(ctx))


class CsegGroup(TyperGroup):
    """A `cseg` command group: flags without a type in --help.

    As the root group it also turns every `CsegError` raised below it into one
    line on stderr and its exit code, before click would print a traceback.
    """

    def get_params(self, ctx):
        """The group's parameters, boolean flags without a type in --help."""
        return _hide_flag_types(super().get_params(ctx))

    def invoke(self, ctx):
        """Run the group; as the root, turn a `CsegError` into its line and exit code."""
        if ctx.parent is not None:
            return super().invoke(ctx)
        try:
            return super().invoke(ctx)
        except CsegError as error:
            report_error(error)
            ctx.exit(error.exit_code)


app = typer.Typer(
    name="cseg",
    cls=CsegGroup,
    help="Dense contrastive pretraining for segmentation (CACL, MaskContrast, ReCo) on Ray.",
    epilog="""Examples:

cseg pretrain                        # the quickstart: generated data, CPU
cseg recipes ls                      # the shipped recipes
cseg pretrain cacl/debug stages.cacl.steps=20 --dry-run""",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
app.command(
    "pretrain",
    epilog="""Examples:

cseg pretrain                        # the quickstart: generated data, CPU
cseg pretrain cacl/debug stages.cacl.steps=20 stages.cacl.lambda_cycle=0.5
cseg pretrain reco/voc_60labels --cluster gpu --address auto -q""",
)(pretrain)
app.command(
    "tune",
    epilog="""Examples:

cseg tune --space cacl_debug --dry-run   # check the space and its recipe
cseg tune --space cacl_debug --name cacl-search stages.cacl.steps=20
cseg tune --resume cacl-search           # go on after an interruption""",
)(tune)
app.command(
    "eval",
    epilog="""Examples:

cseg eval runs/RUN                   # the run recipe's eval section
cseg eval runs/RUN --protocol kmeans --baseline random
cseg eval resnet50.pth --recipe maskcontrast/voc --data ~/data/voc""",
)(evaluate)
app.command(
    "export",
    epilog="""Examples:

cseg export runs/RUN --out backbone.pth
cseg export runs/RUN --stage maskcontrast --out maskcontrast.pth --force""",
)(export)
app.command(
    "report",
    epilog="""Examples:

cseg report runs/RUN                 # a run: stages, losses, scores
cseg report ~/ray_results/cacl-search --metric val_miou --mode max
cseg report runs/A runs/B --out compare-ab   # one report comparing runs""",
)(report)
app.add_typer(shards.app, name="shards")
shards.app.command(
    "split",
    epilog="""Examples:

cseg shards split data/voc data/voc-60 --num-labels 60
cseg shards split data/cityscapes data/cityscapes-p1 --partial p1
cseg shards split data/sunrgbd data/sunrgbd-50 -n 50 --sampler rarest-class""",
)(split)
app.add_typer(recipes.app, name="recipes")
app.add_typer(bench.app, name="bench")
app.add_typer(cluster.app, name="cluster")


def _use_cseg_classes(typer_app: typer.Typer) -> None:
    """Build every command and group of `typer_app` with the `cseg` classes above."""
    for command in typer_app.registered_commands:
        if command.cls in (None, TyperCommand):
            command.cls = CsegCommand
    for group in typer_app.registered_groups:
        if group.cls in (None, TyperGroup) or not isinstance(group.cls, type):
            group.cls = CsegGroup
        _use_cseg_classes(group.typer_instance)


_use_cseg_classes(app)


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
    """Console-script entry point: run the app (known errors are one line, see CsegGroup)."""
    try:
        app()
    except CsegError as error:  # raised outside a command, e.g. while building the app
        report_error(error)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
