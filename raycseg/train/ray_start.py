"""The one place that joins or starts Ray (for `cseg pretrain` and `cseg tune`)."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

import ray

from .progress import say
from .ray_logs import route_driver_notices, route_worker_output

PREEMPTION_WATCHER_VARIABLE = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"  # Ray Train 2.60


def start_ray(
    address: str | None,
    *,
    cpus_needed: float = 0,
    quiet: bool = False,
    log_dir: Path | None = None,
    on_phase: Callable[[str], None] | None = None,
    dashboard: bool | None = None,
) -> None:
    """Join `address` (or RAY_ADDRESS), else start local Ray with this machine's CPUs.

    Args:
        address: a Ray cluster to join; None starts local Ray unless RAY_ADDRESS is set.
        cpus_needed: local Ray offers at least this many CPUs (a recipe's workers may
            ask for more than the machine has; they then share its cores).
        quiet: keep the workers' logs out of the driver's output and show only Ray's errors.
        log_dir: where local Ray's notices about itself and the workers' lines are kept
            (`ray.log`); the workers' lines reach stderr, never stdout (`ray_logs`).
        on_phase: hears "starting Ray" (or "joining Ray at ...").
        dashboard: start the dashboard (the State API needs it); None: Ray's default.

    Local services (the dashboard) bind to 127.0.0.1, and Ray Train's preemption
    watcher is off there. Nothing happens when Ray is already initialised.
    """
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    logging_config = ray.LoggingConfig(log_level="ERROR" if quiet else "WARNING")
    if address:
        say(on_phase, f"joining Ray at {address}")
        ray.init(address=address, logging_config=logging_config, log_to_driver=not quiet)
        route_worker_output(log_dir, local=False)
        return
    # One machine has no spot preemptions to watch; Ray Train's watcher actor would only
    # print a core-worker error line at each stage start. Set by the user, it stays.
    os.environ.setdefault(PREEMPTION_WATCHER_VARIABLE, "0")
    route_driver_notices(log_dir)
    say(on_phase, "starting Ray")
    ray.init(
        address="local",
        num_cpus=max(os.cpu_count() or 1, math.ceil(cpus_needed)),
        include_dashboard=dashboard,
        dashboard_host="127.0.0.1",
        logging_config=logging_config,
        log_to_driver=not quiet,
    )
    route_worker_output(log_dir, local=True)
