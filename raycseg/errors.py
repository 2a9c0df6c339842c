"""Errors that the CLI turns into one line naming the fix, and their exit codes.

Every command exits 0 on success; 1 when it completed but found problems it
reports (skipped inputs, corrupt samples, a failed check); 2 when it could not
run as asked (a bad recipe, override, space, path or usage), said before Ray
starts and with nothing written.

Anything raised from here is *expected*: the user gave us something we cannot
use. The CLI prints `str(error)` on one line and exits with `exit_code`;
`CSEG_DEBUG=1` shows the traceback too. Unexpected exceptions are bugs and keep
their traceback.
"""


class CsegError(Exception):
    """The command could not run as asked (exit code 2). The message names the fix."""

    exit_code = 2


class RecipeError(CsegError):
    """A recipe, override or tune space is invalid."""


class DataError(CsegError):
    """Input data is missing, empty or in the way (for example shards already exist)."""


class FoundProblems(CsegError):
    """The command completed but found problems it reports (exit code 1)."""

    exit_code = 1
