"""Where Ray's own output goes while the driver runs a recipe.

Ray prints two kinds of text into the driver's terminal: log records of the
driver process itself (the `ray` logger), and the lines that its worker and
actor processes write, which Ray's log monitor streams to the driver. On one
machine (local Ray) some of both are notices about Ray rather than about the
run (checked against Ray 2.60):

* the token-authentication notice of every new local cluster (a driver
  record of `ray._private.authentication.authentication_token_setup`);
* "Failed to send resource request for train-..." and a `GetTimeoutError`
  traceback: Ray Train's controller actor registers the workers' resources
  with the autoscaling coordinator every 20 s and gives up after 5 s when the
  CPUs are busy (logger `ray.train.v2._internal.execution.scaling_policy.
  autoscaling_coordinator_client`, a warning in the controller's process);
* a traceback of the `PlacementGroupCleanerMonitor` thread, or its "Failed to
  query Ray Train Controller actor state" line (the cleaner actor cannot
  query the state API, e.g. when several local clusters run on the machine);
* the autoscaler's event lines ("Tip: use `ray status`...", "Warning: The
  following resource request cannot be scheduled right now..."): a local
  cluster has the CPUs it has, there is nothing to scale.

`route_driver_notices` (before `ray.init`) and `route_worker_output` (after
it) send those to `<run>/logs/ray.log` instead of the terminal; that file also
gets a copy of every streamed line, with the process that wrote it. All other
lines still reach stderr, never stdout (which carries results only; with
`--quiet`, just the run directory's path), and never with colour codes when stderr is not a terminal
(Ray's own printer colours its "[repeated Nx across cluster]" notes
regardless). Joined clusters keep every notice on screen. Ray's session logs
(`/tmp/ray/session_latest/logs`) keep everything as well.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path

LOG_FILE = "ray.log"
_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"
_PRINTER = "ray_print_logs"  # the name of Ray's own printer in its stream dispatcher

# Lines that start a notice of local Ray; True: a Python traceback follows it.
_LOCAL_NOTICES = (
    (re.compile(r"^Failed to send resource request for "), True),
    (re.compile(r"^Exception in thread PlacementGroupCleaner"), True),
    (re.compile(r"Failed to query Ray Train Controller actor state"), False),
)
_TRACEBACK = "Traceback (most recent call last):"
_CHAINED = ("During handling of the above exception", "The above exception was the direct cause")
_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_DEDUP_WINDOW_S = 5.0
_lock = threading.Lock()


def route_driver_notices(log_dir: Path | None) -> None:
    """Local Ray: send the driver's token-authentication notice to `log_dir/ray.log`.

    Call before `ray.init`. Without a `log_dir` (a run directory at a URL) the
    notice is only left out of the terminal.
    """
    logger = logging.getLogger(_AUTH_LOGGER)
    for old in [f for f in logger.filters if isinstance(f, _ToLogFile)]:
        logger.removeFilter(old)
    logger.addFilter(_ToLogFile(log_dir))


def route_worker_output(log_dir: Path | None, *, local: bool) -> bool:
    """Print the lines Ray streams from its processes through `WorkerOutput`.

    Call after `ray.init(log_to_driver=True)`. Returns False, changing
    nothing, where this Ray has no stream dispatcher or printer to replace.
    """
    try:
        from ray._private import worker as ray_worker
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:
        return False
    if not any(name == _PRINTER for name, _ in dispatcher.handlers):
        return False
    events = getattr(ray_worker, "filter_autoscaler_events", lambda lines: lines)
    printer = WorkerOutput(log_dir, local=local, events=events)
    dispatcher.remove_handler(_PRINTER)
    dispatcher.add_handler(_PRINTER, printer)  # under Ray's name: ray.shutdown() removes it
    return True


class WorkerOutput:
    """Prints one batch of streamed lines (Ray's `LogBatch` dict) the cseg way.

    Every line goes to `log_dir/ray.log` with its process; of the autoscaler's
    log, only its events (`events` picks them, as Ray's printer does). Lines
    then go to stderr, without colour codes off a terminal, and the same line
    from another process within 5 s is printed once (as Ray does). With
    `local`, the notices of local Ray listed in the module docstring, with
    their tracebacks, and the autoscaler's events stay in the file.
    """

    def __init__(
        self,
        log_dir: Path | None,
        *,
        local: bool,
        events: Callable[[list[str]], Iterable[str]] = lambda lines: lines,
    ):
        self.log_dir, self.local, self.events = log_dir, local, events
        self.notices = _Notices()
        self.recent: dict[str, tuple[float, object]] = {}

    def __call__(self, data: dict) -> None:
        """Log, filter and print one `LogBatch` (its `pid`, `ip` and `lines`)."""
        pid, source = data.get("pid"), (data.get("ip"), data.get("pid"))
        lines = [str(line) for line in data.get("lines") or []]
        if pid == "autoscaler":
            try:
                lines = list(self.events(lines))
            except Exception:  # noqa: BLE001 (then all of them)
                pass
        try:
            shown = [
                line
                for line in lines
                if not (
                    self.local and (pid == "autoscaler" or self.notices.is_notice(source, line))
                )
                and self._first_in_window(line, source)
            ]
        except Exception:  # noqa: BLE001 (never lose lines, nor Ray's printing thread)
            shown = lines
        name = data.get("actor_name") or data.get("task_name")
        process = f"{name} pid={pid}" if name else f"pid={pid}"
        _append(self.log_dir, [f"({process}) {line}" for line in lines])
        if shown:
            _write_plain(sys.stderr, shown)

    def _first_in_window(self, line: str, source: object) -> bool:
        now = time.monotonic()
        if len(self.recent) > 1000:
            self.recent = {k: v for k, v in self.recent.items() if now - v[0] < _DEDUP_WINDOW_S}
        seen = self.recent.get(line)
        if line.strip() and seen and seen[1] != source and now - seen[0] < _DEDUP_WINDOW_S:
            return False
        self.recent[line] = (now, source)
        return True


class _Notices:
    """Tells, line by line and per process, which lines belong to a notice of local Ray."""

    def __init__(self):
        # per process, while in a notice: "header", "frames", "raised" or "chained"
        self.state: dict[object, str] = {}

    def is_notice(self, source: object, line: str) -> bool:
        state = self.state.pop(source, None)
        if state == "header" and line.startswith(_TRACEBACK):
            self.state[source] = "frames"
            return True
        if state == "frames":
            indented = not line.strip() or line[:1].isspace() or line.startswith(_TRACEBACK)
            self.state[source] = "frames" if indented else "raised"  # else: the exception line
            return True
        if state in ("raised", "chained"):  # a chained exception's traceback may follow
            if not line.strip() or line.startswith(_CHAINED):
                self.state[source] = "chained"
                return True
            if state == "chained" and line.startswith(_TRACEBACK):
                self.state[source] = "frames"
                return True
        for pattern, traceback_follows in _LOCAL_NOTICES:
            if pattern.search(line):
                if traceback_follows:
                    self.state[source] = "header"
                return True
        return False


class _ToLogFile(logging.Filter):
    """A logger filter that writes each record to `log_dir/ray.log` and drops it."""

    def __init__(self, log_dir: Path | None):
        super().__init__()
        self.log_dir = log_dir

    def filter(self, record: logging.LogRecord) -> bool:
        _append(self.log_dir, [f"{record.levelname} {record.name}: {record.getMessage()}"])
        return False


def _append(log_dir: Path | None, lines: list[str]) -> None:
    if log_dir is None or not lines:
        return
    stamp = datetime.now().isoformat(sep=" ", timespec="milliseconds")
    try:
        with _lock:
            log_dir.mkdir(parents=True, exist_ok=True)
            with open(log_dir / LOG_FILE, "a", encoding="utf-8") as file:
                file.writelines(f"{stamp} {line}\n" for line in lines)
    except OSError:
        pass  # a log copy is never worth failing a run over


def _write_plain(stream, lines: list[str]) -> None:
    text = "\n".join(lines) + "\n"
    try:
        if not stream.isatty():
            text = _ESCAPE.sub("", text)
    except (AttributeError, ValueError):
        text = _ESCAPE.sub("", text)
    stream.write(text)
    stream.flush()
