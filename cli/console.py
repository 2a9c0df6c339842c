"""The two output channels of every command (CONTRACTS.md §2).

Results go to stdout (`out`); progress, messages and errors go to stderr
(`err`). `--quiet` commands print only the artefact path to stdout, so they
must not print anything else there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


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
