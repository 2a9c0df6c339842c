"""The two output channels of every command.

Results go to stdout (`out`); progress, messages and errors go to stderr
(`err`). `--quiet` commands print only the artefact path to stdout, so they
must not print anything else there.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

from rich.console import Console, ConsoleDimensions
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

# Laid out this wide when the output is a pipe or a file: tables keep whole names.
PIPED_WIDTH = 10_000


class _Console(Console):
    """A rich Console that writes plain text unless its file is a terminal right now.

    Rich decides by itself whether a file is a terminal, and also believes
    FORCE_COLOR and TTY_COMPATIBLE; then the path that `--quiet` prints, or a
    `--json` document, carries colour codes into a pipe. Here only the file's
    own `isatty()` decides. In a pipe or a file the console is `PIPED_WIDTH`
    columns wide instead of rich's 80, so tables print whole names: no "…",
    no wrapped cells.
    """

    @property
    def is_terminal(self) -> bool:
        isatty = getattr(self.file, "isatty", None)
        try:
            return bool(isatty is not None and isatty())
        except ValueError:  # a closed file (at interpreter exit)
            return False

    @property
    def _color_system(self):  # read by rich at each write: no colours off a terminal
        return self._colors_on_terminal if self.is_terminal else None

    @_color_system.setter
    def _color_system(self, value) -> None:  # rich sets it once, in __init__
        self._colors_on_terminal = value

    def _size(self) -> ConsoleDimensions:
        size = Console.size.fget(self)
        if self._width is None and not self.is_terminal:
            return ConsoleDimensions(PIPED_WIDTH, size.height)
        return size

    size = property(_size, Console.size.fset)


out = _Console(soft_wrap=True)
err = _Console(stderr=True, soft_wrap=True)


def print_json(data) -> None:
    """Write `data` to stdout as one valid JSON document, as it is.

    No markup, emoji or colour; NaN and infinities become null, paths and other
    objects strings.
    """
    sys.stdout.write(json.dumps(_finite(data), indent=2, default=str, allow_nan=False) + "\n")
    sys.stdout.flush()


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


@contextmanager
def progress_bar(description: str, total: int | None, *, quiet: bool = False) -> Iterator:
    """Yield `advance(n=1)` for a rich progress bar on stderr (silent when quiet)."""
    if quiet:
        yield lambda n=1: None
        return
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=err, transient=False) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n=1: progress.advance(task, n)


class StageProgress:
    """Progress callbacks `(done, total)`, one bar per stage, each opened on its first call.

    A command whose checks fail before any work prints only its error line.
    """

    def __init__(self, stack: ExitStack, quiet: bool):
        self.stack, self.quiet = stack, quiet
        self.bars: dict[str, tuple] = {}

    def stage(self, name: str) -> Callable[[int, int], None]:
        """The progress callback of stage `name`; its bar opens on the first call."""

        def update(done: int, total: int) -> None:
            if name not in self.bars:
                self.bars[name] = (
                    self.stack.enter_context(progress_bar(name, total, quiet=self.quiet)),
                    [0],
                )
            advance, seen = self.bars[name]
            advance(done - seen[0])
            seen[0] = done

        return update


def human_size(num_bytes: float) -> str:
    """A byte count as B, KiB, MiB or GiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if num_bytes < 1024 or unit == "GiB":
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024
    return str(num_bytes)


def print_problems(title: str, rows: list[tuple[str, str]]) -> None:
    """A table of inputs and reasons on stderr, titled with their count."""
    table = Table("input", "reason", title=f"{title} ({len(rows)})")
    for name, reason in rows:
        table.add_row(name, reason)
    err.print(table)
