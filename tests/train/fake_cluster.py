"""An autoscaling Ray cluster on one machine: Ray's fake multinode provider.

`ray start --head --block --autoscaling-config=...` with `RAY_FAKE_CLUSTER=1`
runs a head whose autoscaler "launches" worker nodes as extra raylets on this
machine. The head runs with its dashboard on (bound to 127.0.0.1): without
it, a trial that Tune stops leaks its workers' placement group.

Everything the cluster starts descends from the head process, which is the
leader of its own session, and the cluster keeps its files (sessions, logs,
the address file) in its own temporary folder, so a bare `ray.init()`
elsewhere on the machine never attaches to it. Teardown ends only those
processes; it never runs `ray stop`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

WORKER_NODE_TYPE = "train_worker"
WORKER_RESOURCE = "worker_node"
LIST_KEYS = (
    "initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
    "head_start_ray_commands", "worker_start_ray_commands", "cluster_synced_files",
    "rsync_exclude", "rsync_filter",
)  # fmt: skip


@dataclass
class FakeCluster:
    """A running fake cluster: its GCS address, head process and folder."""

    address: str
    head: subprocess.Popen
    temp_dir: Path
    dashboard_url: str = ""  # as a connected driver sees it


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def autoscaling_config(gcs_address: str, *, max_nodes: int, idle_timeout_minutes: float) -> dict:
    """The fake-multinode cluster config: a 1-CPU head, `train_worker` nodes from 0 to max."""
    return {
        "cluster_name": "cseg-fake",
        "max_workers": max_nodes,
        "head_node_type": "ray.head.default",
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": gcs_address,
        },
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 1}, "node_config": {}, "max_workers": 0},
            WORKER_NODE_TYPE: {
                "resources": {"CPU": 1, WORKER_RESOURCE: 1},
                "node_config": {},
                "min_workers": 0,
                "max_workers": max_nodes,
            },
        },
        "idle_timeout_minutes": idle_timeout_minutes,
        "upscaling_speed": 1.0,
        "auth": {},
        "docker": {},
        "file_mounts": {},
        "file_mounts_sync_continuously": False,
        **{key: [] for key in LIST_KEYS},
    }


def start_fake_cluster(
    env: dict[str, str],
    *,
    max_nodes: int = 2,
    idle_timeout_minutes: float = 0.1,
    timeout_s: float = 180,
) -> FakeCluster:
    """Start the head (dashboard on, on 127.0.0.1) and wait until it accepts drivers.

    Args:
        env: the environment of the head and of everything it starts (the
            fake nodes, Train workers), e.g. with test settings and S3 variables.
        max_nodes: most worker nodes the autoscaler may add.
        idle_timeout_minutes: how long an idle worker node lives.
        timeout_s: give up (and tear down) when the head is not up by then.
    """
    from ray._private.services import get_node_ip_address  # what the fake nodes use too

    temp_dir = Path(tempfile.mkdtemp(prefix="cseg-fc-", dir="/tmp"))  # short: socket paths
    port, dashboard_port = free_port(), free_port()
    address = f"{get_node_ip_address()}:{port}"
    config = temp_dir / "autoscaling.json"
    config.write_text(
        json.dumps(
            autoscaling_config(
                address, max_nodes=max_nodes, idle_timeout_minutes=idle_timeout_minutes
            )
        )
    )
    ray = str(Path(sys.executable).with_name("ray"))
    command = [
        ray, "start", "--head", "--block", f"--autoscaling-config={config}",
        f"--port={port}", "--num-cpus=1",
        f"--temp-dir={temp_dir}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard_port}", f"--dashboard-agent-listen-port={free_port()}",
        f"--ray-client-server-port={free_port()}", "--disable-usage-stats",
    ]  # fmt: skip
    head_env = {
        **env,
        "RAY_FAKE_CLUSTER": "1",
        "AUTOSCALER_UPDATE_INTERVAL_S": "1",
        # Ray's own State API calls inside the cluster (Train's placement-group cleaner)
        # would otherwise look for "the" Ray on this machine and find other people's too.
        "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{dashboard_port}",
        "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
    }
    log = (temp_dir / "head.log").open("w")
    head = subprocess.Popen(
        command, env=head_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    cluster = FakeCluster(address, head, temp_dir)
    try:
        wait_for_head(cluster, timeout_s)
    except BaseException:
        stop_fake_cluster(cluster)
        raise
    return cluster


def wait_for_head(cluster: FakeCluster, timeout_s: float) -> None:
    """Block until `ray start` says the head runs (its GCS then accepts drivers)."""
    log = cluster.temp_dir / "head.log"
    deadline = time.monotonic() + timeout_s
    while "Ray runtime started" not in log.read_text():
        if cluster.head.poll() is not None:
            raise RuntimeError(f"the fake cluster's head exited:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the fake cluster's head did not come up in {timeout_s:.0f} s")
        time.sleep(0.5)


def stop_fake_cluster(cluster: FakeCluster) -> None:
    """End the head and every process it started (by pid), then remove its folder."""
    import psutil  # ships with ray (ray/thirdparty_files), importable after `import ray`

    try:
        started = psutil.Process(cluster.head.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        started = []
    try:
        os.killpg(cluster.head.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(_running(p) for p in started):
        time.sleep(0.2)
    for process in started:
        if _running(process):
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
    try:
        cluster.head.wait(timeout=15)
    except subprocess.TimeoutExpired:
        cluster.head.kill()
        cluster.head.wait(timeout=15)
    shutil.rmtree(cluster.temp_dir, ignore_errors=True)


def _running(process) -> bool:
    """True while a process runs (a zombie waiting for its parent has ended)."""
    import psutil

    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def alive_worker_nodes() -> list[dict]:
    """The fake worker nodes (they offer `worker_node`) that are alive, from `ray.nodes()`."""
    import ray

    return [n for n in ray.nodes() if n["Alive"] and WORKER_RESOURCE in n.get("Resources", {})]


def wait_for(condition, timeout_s: float, what: str, poll_s: float = 1.0):
    """Poll `condition()` until it returns something truthy; return it, or fail naming `what`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
