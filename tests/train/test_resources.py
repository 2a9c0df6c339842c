"""What a stage asks the cluster for, and how the driver joins or starts Ray (no Ray started).

The fake-cluster tests (test_fake_cluster.py) show the autoscaler acting on
these requests; here, the requests themselves.
"""

from __future__ import annotations

import os

import pytest

from raycseg.config import ScalingSection
from raycseg.train.launch import build_scaling_config
from raycseg.train.ray_start import PREEMPTION_WATCHER_VARIABLE, start_ray


def test_workers_request_cpus_gpus_and_custom_resources_from_the_recipe():
    gpu = build_scaling_config(
        ScalingSection(
            num_workers=8, use_gpu=True, cpus_per_worker=6, resources_per_worker={"a10g": 1}
        )
    )
    assert gpu.num_workers == 8 and gpu.use_gpu
    assert gpu.resources_per_worker == {"CPU": 6, "GPU": 1, "a10g": 1}

    tagged = build_scaling_config(
        ScalingSection(
            num_workers=2, resources_per_worker={"worker_node": 1, "GPU": 2}, use_gpu=True
        )
    )
    assert tagged.resources_per_worker == {"CPU": 1.0, "worker_node": 1, "GPU": 2}


def test_min_workers_makes_the_worker_count_elastic():
    elastic = build_scaling_config(ScalingSection(num_workers=4, min_workers=2))
    assert elastic.num_workers == (2, 4) and elastic.elasticity_enabled
    assert not build_scaling_config(ScalingSection(num_workers=4)).elasticity_enabled


def test_local_ray_binds_its_dashboard_to_localhost_and_an_address_is_joined(monkeypatch):
    import ray

    calls: list[dict] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **options: calls.append(options))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv(PREEMPTION_WATCHER_VARIABLE, "")  # so that the end of the test restores it
    monkeypatch.delenv(PREEMPTION_WATCHER_VARIABLE)

    start_ray("10.0.0.5:6379", cpus_needed=2)
    assert PREEMPTION_WATCHER_VARIABLE not in os.environ, "a cluster keeps its watcher"

    start_ray(None, cpus_needed=2)
    assert calls[-1]["address"] == "local" and calls[-1]["dashboard_host"] == "127.0.0.1"
    assert os.environ[PREEMPTION_WATCHER_VARIABLE] == "0", "no spot preemption on one machine"

    start_ray("10.0.0.5:6379", cpus_needed=2)
    assert calls[-1]["address"] == "10.0.0.5:6379"
    assert "num_cpus" not in calls[-1], "joining a cluster starts no local services"

    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.6:6379")
    start_ray(None, cpus_needed=2)
    assert calls[-1]["address"] == "10.0.0.6:6379"


@pytest.mark.parametrize("use_gpu", [False, True])
def test_cpu_only_and_gpu_workers_have_the_recipe_cpu_count(use_gpu):
    config = build_scaling_config(ScalingSection(num_workers=1, cpus_per_worker=3, use_gpu=use_gpu))
    assert config.resources_per_worker["CPU"] == 3
    assert ("GPU" in config.resources_per_worker) == use_gpu
