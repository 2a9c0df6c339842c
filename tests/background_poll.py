"""`BackgroundPoll`: a check run every few seconds in a thread while a `with` block runs.

Test helper shared by the Ray-level tests (tests/ is on sys.path: its conftest.py
has no package around it).
"""

from __future__ import annotations

import threading


class BackgroundPoll:
    """Calls `poll()` at once, then every `interval_s`, in a daemon thread during `with`.

    The thread stops at the end of the block, or as soon as `poll()` returns True.
    """

    interval_s = 1.0

    def poll(self) -> bool:
        raise NotImplementedError

    def __enter__(self):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self.poll() and not self._stop.wait(self.interval_s):
            pass
