"""Where a build prepares its samples: this process, a local process pool, or Ray tasks.

A *preparer* is called as `preparer(items, options, on_progress)` and yields one
`prepare_sample` result per item, in the items' order, whatever runs them; the
shard writer consumes that order, so a build's shards are the same byte for byte
however many processes or nodes prepared them.

* `prepare_in_processes`: the default; `num_procs` local processes (a
  `ProcessPoolExecutor`), or this process alone for one.
* `RayTasks`: one Ray task per item (1 CPU each, on any node of the cluster),
  a bounded number in flight, results taken in order. The driver lists the source
  and writes the shards; a task reads its input from the same path on its node, so
  on a cluster of several machines the source must be on a filesystem every node
  mounts at that path. `RayTasks` does not start Ray itself: it calls the `join`
  it was given (the CLI passes `raycseg.train.ray_start.start_ray`, the project's
  one place that joins Ray) unless Ray is already initialised.
  `check_ray_address` turns an address nobody answers at into one line naming
  the fix, instead of `ray.init` retrying for minutes.
"""

from __future__ import annotations

import socket
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from raycseg.errors import CsegError, DataError

ProgressFn = Callable[[int, int], None]

if TYPE_CHECKING:  # samples imports the media stack: `check_ray_address` stays quick to import
    from .samples import PreparedSample, PrepareOptions
    from .sources import LeftOut, SourceItem

    Result = PreparedSample | LeftOut
    Preparer = Callable[[list[SourceItem], PrepareOptions, ProgressFn | None], Iterator[Result]]

CONNECT_TIMEOUT_S = 5.0


def _reported(results: Iterable[Result], total: int, on_progress: ProgressFn | None):
    for done, result in enumerate(results, start=1):
        if on_progress is not None:
            on_progress(done, total)
        yield result


def prepare_in_processes(
    items: list[SourceItem], options: PrepareOptions, num_procs: int, on_progress: ProgressFn | None
) -> Iterator[Result]:
    """Prepare items in order, in a process pool when num_procs > 1."""
    from .samples import prepare_sample

    total = len(items)
    if num_procs <= 1 or total < 2:
        yield from _reported((prepare_sample(item, options) for item in items), total, on_progress)
        return
    pool = ProcessPoolExecutor(max_workers=min(num_procs, total))
    chunk = max(1, min(16, total // (num_procs * 4)))
    try:
        results = pool.map(prepare_sample, items, [options] * total, chunksize=chunk)
        yield from _reported(results, total, on_progress)
    finally:
        pool.shutdown(cancel_futures=True)


@dataclass(frozen=True)
class _Unreadable:
    """A task's node could not see an input at the path the driver listed."""

    path: str
    node: str


def _prepare_on_node(item: SourceItem, options: PrepareOptions) -> Result | _Unreadable:
    """The body of one Ray task: `prepare_sample`, once the inputs are known to be here."""
    from .samples import prepare_sample

    for path in (item.path, item.mask_path):
        if path is not None and not path.exists():
            return _Unreadable(str(path), socket.gethostname())
    return prepare_sample(item, options)


class RayTasks:
    """A preparer that runs `prepare_sample` as Ray tasks (1 CPU each) on any node.

    Args:
        join: joins (or starts) Ray; called once, unless Ray is already initialised.
        max_in_flight: most tasks submitted and not yet consumed (default: twice the
            cluster's CPUs, at least 2); bounds the results waiting in the object store.
    """

    def __init__(self, join: Callable[[], None], max_in_flight: int | None = None):
        self.join, self.max_in_flight = join, max_in_flight

    def __call__(
        self, items: list[SourceItem], options: PrepareOptions, on_progress: ProgressFn | None
    ) -> Iterator[Result]:
        """Yield one result per item, in order; join Ray first if it is not initialised."""
        import ray

        if not ray.is_initialized():
            self.join()
        task = ray.remote(num_cpus=1)(_prepare_on_node)
        options_ref = ray.put(options)
        window = self.max_in_flight or max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
        queued, pending = iter(items), deque()

        def submit() -> None:
            item = next(queued, None)
            if item is not None:
                pending.append(task.remote(item, options_ref))

        for _ in range(window):
            submit()
        try:
            for done in range(1, len(items) + 1):
                result = ray.get(pending.popleft())
                submit()
                if isinstance(result, _Unreadable):
                    raise DataError(
                        f"{result.path} is not readable on Ray node {result.node}; put the source "
                        "on a filesystem every node mounts at the same path, or build without --address"
                    )
                if on_progress is not None:
                    on_progress(done, len(items))
                yield result
        finally:
            for ref in pending:
                ray.cancel(ref)


def check_ray_address(address: str) -> None:
    """Raise `CsegError` (one line naming the fix) unless a Ray cluster answers at `address`.

    `address` is HOST:PORT, ray://HOST:PORT, `auto` (RAY_ADDRESS, else the cluster
    `ray start` started on this machine) or `local` (a new local Ray: nothing to check).
    """
    if address == "local":
        return
    target = address.removeprefix("ray://")
    if target == "auto":
        from ray._private.services import canonicalize_bootstrap_address_or_die

        try:
            target = canonicalize_bootstrap_address_or_die("auto")
        except (ConnectionError, ValueError):
            raise CsegError(
                "--address auto found no running Ray cluster (RAY_ADDRESS is unset and none "
                "was started here); start one with `ray start --head` or pass --address HOST:PORT"
            ) from None
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise CsegError(
            f"cannot read Ray address {address!r}; write it as HOST:PORT (the head's GCS "
            "port, 6379 by default), ray://HOST:PORT or auto"
        )
    try:
        socket.create_connection((host.strip("[]"), int(port)), CONNECT_TIMEOUT_S).close()
    except OSError as error:
        raise CsegError(
            f"no Ray cluster answers at {target} ({error.strerror or error}); start it "
            "(`ray start --head`) or pass the address `ray status` prints on its head"
        ) from None
