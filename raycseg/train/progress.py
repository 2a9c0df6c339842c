"""The progress stream from rank 0 to the driver: metrics, reports and start-up phases.

Rank 0 puts each logged metrics record, each record it reported to Ray Train
with where its checkpoint was stored, and `{"phase": ...}` records before its
first step, on a queue (`ProgressStream`); the driver drains it in a thread
while the stage's `fit()` runs (`streamed`). For `cseg pretrain` the stream is
display only (the record of a run is `metrics.jsonl`); a `cseg tune` trial passes
the reports on to Tune (`raycseg.tune.trial`).
"""

from __future__ import annotations

import queue as queue_module
import threading
from collections.abc import Callable
from typing import Any

import ray
from ray.exceptions import RayError
from ray.util.queue import Queue
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy


def progress_queue(local_mode: bool):
    """The queue that streams rank 0's records to this driver.

    Local mode runs the loop in this process, so a plain queue reaches it.
    Otherwise it is a Ray queue on the driver's own node: a 0-CPU actor could
    land on a worker node that the autoscaler later removes, taking the stream with it.
    """
    if local_mode:
        return queue_module.Queue()
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return Queue(actor_options={"num_cpus": 0, "scheduling_strategy": here})


class ProgressStream:
    """Rank 0's end of the queue (None: nobody listens).

    If the queue is gone (its node or the driver died), training goes on without it.
    """

    def __init__(self, queue) -> None:
        self.queue = queue

    def metrics(self, record: dict[str, Any]) -> None:
        """Stream a logged metrics record."""
        self._put(record)

    def report(self, record: dict[str, Any], checkpoint: str | None) -> None:
        """Stream a record reported to Ray Train, and where its checkpoint was stored (or None)."""
        self._put({"report": record, "checkpoint": checkpoint})

    def phase(self, phase: str) -> None:
        """Say what the stage waits on before its first step."""
        self._put({"phase": phase})

    def _put(self, record: dict[str, Any]) -> None:
        if self.queue is None:
            return
        try:
            self.queue.put_nowait(record)
        except RayError:
            self.queue = None


def say(on_phase: Callable[[str], None] | None, phase: str) -> None:
    """Tell `on_phase`, when there is one."""
    if on_phase is not None:
        on_phase(phase)


class streamed:  # noqa: N801 (used as a context manager, like a function)
    """Drain the workers' queue in a thread while fit() runs.

    Metrics records go to `on_metrics`, reported ones to `on_report(record, checkpoint)`,
    rank 0's `{"phase": ...}` records (before its first step) to `on_phase`.
    """

    def __init__(self, progress, on_metrics, on_phase=None, on_report=None):
        self.progress, self.on_metrics, self.on_phase = progress, on_metrics, on_phase
        self.on_report = on_report
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._drain, daemon=True)

    def __enter__(self):
        if self.progress is not None:
            self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout=5)
        return False

    def _drain(self):
        while True:
            try:
                record = self.progress.get(timeout=0.5)
            except queue_module.Empty:  # ray's Empty subclasses queue.Empty
                if self.stop.is_set():
                    return
                continue
            except Exception:  # noqa: BLE001 (the queue's actor is gone: nothing more comes)
                return
            if "phase" in record:
                say(self.on_phase, record["phase"])
            elif "report" in record:
                if self.on_report is not None:
                    self.on_report(record["report"], record["checkpoint"])
            elif self.on_metrics is not None:
                self.on_metrics(record)
