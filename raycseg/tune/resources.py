"""Trial resources: what a trial asks of the cluster and how many trials fit at once.

Also the placement groups that stopped trials leave behind, and their cleanup.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import ray
from ray._private.state import state  # the call Train V2 itself uses; no public API in 2.60
from ray.util.placement_group import PlacementGroup
from ray.util.state import list_placement_groups

from ..config import Recipe

DRIVER_MEMORY_BYTES = 256 * 1024**2  # what a trial's waiting driver asks the scheduler for


def trial_demand(recipe: Recipe) -> tuple[dict[str, float], dict[str, float]]:
    """What one trial asks for: (the Tune driver's resources, the whole trial's need).

    The driver only waits on `fit()` (Train's controller is a 0-CPU actor and
    Train requests the workers' placement group itself), so it takes no CPU;
    Tune cannot place a request that is all zeros, so it asks for a little
    memory instead (a scheduling hint, not a limit), plus
    `scaling.driver_resources` (e.g. `{driver_slot: 1}`, which only the head of
    the shipped cluster configs offers, so drivers stay off spot nodes). In local mode
    (`num_workers=0`) the driver trains, so it takes a worker's share.
    """
    scaling = recipe.scaling
    per_worker = {"CPU": scaling.cpus_per_worker, **scaling.resources_per_worker}
    if scaling.use_gpu:
        per_worker.setdefault("GPU", 1.0)
    if scaling.num_workers == 0:
        driver = {key.lower() if key in ("CPU", "GPU") else key: v for key, v in per_worker.items()}
        return driver, per_worker
    need = {key: value * scaling.num_workers for key, value in per_worker.items() if value}
    if recipe.decode_pool_cpus():  # a stage's Ray Data decode pool runs beside the workers
        need["CPU"] = need.get("CPU", 0.0) + recipe.decode_pool_cpus()
    return {"cpu": 0, "memory": DRIVER_MEMORY_BYTES, **scaling.driver_resources}, need


def cluster_capacity() -> dict[str, float]:
    """The most of each resource the cluster can offer: its autoscaler's maximum, else its total.

    An autoscaling cluster publishes its node types' `max_workers` to the GCS;
    Ray Train V2 reads it with the same call (`get_max_resources_from_cluster_config`).
    A cluster without that config (local Ray, a fixed cluster) offers what it has now.
    """
    capacity = {key: float(value) for key, value in ray.cluster_resources().items()}
    try:
        configured = state.get_max_resources_from_cluster_config() or {}
    except Exception:  # noqa: BLE001 (older GCS without the autoscaler config)
        configured = {}
    for key, value in configured.items():
        capacity[key] = max(capacity.get(key, 0.0), float(value))
    return capacity


def default_max_concurrent(
    trial_need: dict[str, float], on_message: Callable[[str], None] = lambda _: None
) -> int:
    """How many trials fit at once in the cluster's maximum size (at least 1)."""
    capacity = cluster_capacity()
    limits = {key: math.floor(capacity.get(key, 0.0) / value) for key, value in trial_need.items()}
    if not limits:
        return max(1, int(capacity.get("CPU", 1)))
    short = {key: capacity.get(key, 0.0) for key, limit in limits.items() if limit < 1}
    if short:
        on_message(
            f"the cluster offers at most {short}, less than one trial's need {trial_need}; "
            "trials will wait for resources (lower scaling.num_workers or add nodes)"
        )
    return max(1, min(limits.values()))


def remove_leaked_placement_groups(on_message: Callable[[str], None]) -> None:
    """Free the placement groups this driver's finished trials left behind.

    Ray 2.60 race: a trial that Tune kills (ASHA, an interrupt) after its Train
    controller created the workers' placement group but before it registered the
    group with Train's cleaner leaves the group to live as long as this driver,
    holding the workers' CPUs/GPUs. Once `fit()` has returned no trial of this job
    runs, so every group this job still holds is such a leftover.
    """
    job = ray.get_runtime_context().get_job_id()
    try:
        groups = list_placement_groups(filters=[("state", "!=", "REMOVED")], detail=True)
    except Exception as error:  # noqa: BLE001 (the State API needs the dashboard)
        on_message(f"could not check for leaked placement groups: {error}")
        return
    for group in groups:
        if group.creator_job_id == job:
            ray.util.remove_placement_group(
                PlacementGroup(ray.PlacementGroupID(bytes.fromhex(group.placement_group_id)))
            )
            on_message(f"freed placement group {group.placement_group_id} of a stopped trial")
