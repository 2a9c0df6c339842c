"""Autoscaling and fault tolerance on one autoscaling fake cluster.

One head for the whole module, started with its dashboard on (127.0.0.1), whose
autoscaler adds `train_worker` nodes (1 CPU, `worker_node: 1`) from 0 to 2 and
releases them after a few idle seconds. Every run asks for
`scaling.resources_per_worker={worker_node: 1}`, which the head does not offer,
so only nodes the autoscaler adds can run the workers.

In this order (each run's idle nodes go before the next test starts):

- a 2-trial `cseg tune` scales the cluster up; its idle nodes go;
- a node removed mid-run: the elastic run (`min_workers=1`) goes on with 1 worker,
  its idle nodes go. This run keeps everything in a bucket (a local S3 server):
  shards, checkpoints, config.yaml, stages.json, metrics.jsonl, eval.json; no
  credential appears in them or in any log;
- `cseg pretrain --address` scales the cluster up, its driver is killed after a
  checkpoint and `cseg pretrain --resume` finishes the run. Last, because the killed
  driver's autoscaler request outlives it by 180 s (docs/fault_tolerance.md), which
  holds the nodes that long; the test does not wait for them (Ray's timer, measured
  once at 195 s after the kill, would cost the suite 3 minutes).

In each run, metrics.jsonl holds every step exactly once. The worker-killed
case is tests/train/test_pretrain_ray.py (not repeated here).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from background_poll import BackgroundPoll
from fake_cluster import (
    WORKER_RESOURCE,
    alive_worker_nodes,
    start_fake_cluster,
    stop_fake_cluster,
    wait_for,
)
from live_jsonl import read_live_jsonl

from raycseg import storage
from raycseg.config import load_recipe
from raycseg.data.synthetic import prepare_data
from raycseg.train.checkpoint import load_state
from raycseg.tune.spaces import find_space

pytestmark = [pytest.mark.ray, pytest.mark.integration]

ON_WORKER_NODES = f"scaling.resources_per_worker={{{WORKER_RESOURCE}: 1}}"
RUN_TIMEOUT_S = 420
RELEASE_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def cluster(s3_bucket):
    """The module's fake cluster; the test process is connected to it as a driver.

    It starts after the S3 server, so the head, its nodes and the Train workers
    inherit the AWS variables that reach that server.
    """
    import ray

    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("RAY_ADDRESS", raising=False)
        # Drivers that join by address do not send Ray's token unless RAY_AUTH_MODE=token
        # is set before Ray is imported, so this test cluster runs without token auth.
        env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
        fake = start_fake_cluster(env, max_nodes=2, idle_timeout_minutes=0.1)
        try:
            if ray.is_initialized():  # a session Ray would not see the fake cluster
                ray.shutdown()
            context = ray.init(
                address=fake.address, logging_config=ray.LoggingConfig(log_level="ERROR")
            )
            fake.dashboard_url = context.dashboard_url
            yield fake
        finally:
            ray.shutdown()
            stop_fake_cluster(fake)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """cacl/debug's generated data, built once for the module."""
    root = tmp_path_factory.mktemp("cluster-data")
    prepare_data(load_recipe("cacl/debug", [f"data.root={root}"]))
    return root


def cseg(*arguments: str) -> list[str]:
    return [sys.executable, "-c", "from cseg.main import run; run()", *arguments]


def debug_run(data_root: Path, runs: Path, name: str, steps: int) -> list[str]:
    """Overrides of a short cacl/debug run on the worker nodes (no validation, no eval)."""
    return [
        f"data.root={data_root}", f"storage.path={runs}", f"storage.name={name}",
        f"stages.cacl.steps={steps}", "stages.cacl.val_every=0", "storage.checkpoint_every=5",
        "eval=null", ON_WORKER_NODES,
    ]  # fmt: skip


class PeakNodes(BackgroundPoll):
    """Counts the alive worker nodes every second in a thread; `peak` is the most seen."""

    def __init__(self):
        self.peak = 0

    def poll(self) -> bool:
        self.peak = max(self.peak, len(alive_worker_nodes()))
        return False


def release_time(cluster, started: float, timeout_s: float = RELEASE_TIMEOUT_S) -> float:
    """Seconds from `started` until the autoscaler has removed every idle worker node."""
    try:
        wait_for(lambda: not alive_worker_nodes(), timeout_s, "idle worker nodes to go")
    except AssertionError as error:
        raise AssertionError(f"{error}; what still holds them: {holdings(cluster)}") from None
    return time.monotonic() - started


def holdings(cluster) -> dict:
    """Placement groups not removed, actors alive and autoscaler requests (what keeps nodes)."""
    import ray
    from ray.util.state import list_actors

    groups = {
        pg_id: (info["state"], info["bundles"])
        for pg_id, info in ray.util.placement_group_table().items()
        if info["state"] != "REMOVED"
    }
    alive = [("state", "=", "ALIVE")]
    actors = [
        a.class_name for a in list_actors(address=f"http://{cluster.dashboard_url}", filters=alive)
    ]
    return {"placement_groups": groups, "actors": actors, "nodes": len(alive_worker_nodes())}


def test_head_dashboard_is_on_and_bound_to_localhost(cluster):
    assert cluster.dashboard_url.startswith("127.0.0.1:"), cluster.dashboard_url
    assert not alive_worker_nodes(), "worker nodes start at 0"


def two_trial_space(tmp_path: Path) -> Path:
    """The cacl_debug space cut to 2 trials of 4 steps (one grid axis), run to the end.

    FIFO, not ASHA: a trial that Tune stops (ASHA stops even a finishing trial when
    it reports max_t) kills its Train controller before it withdraws its autoscaler
    request, and Ray 2.60 keeps that request for 180 s, holding the nodes that long
    (docs/fault_tolerance.md).
    """
    raw = yaml.safe_load(find_space("cacl_debug").read_text())
    raw["params"] = {"stages.cacl.lambda_cycle": {"grid": [0.1, 1.0]}}
    raw["overrides"].update({"stages.cacl.steps": 4, "stages.cacl.val_every": 4})
    raw["scheduler"] = {"type": "fifo"}
    path = tmp_path / "cacl_two_trials.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_tune_trials_scale_the_cluster_up_then_the_idle_nodes_go(cluster, data_root, tmp_path):
    command = cseg(
        "tune", "--space", str(two_trial_space(tmp_path)), "--name", "two",
        f"data.root={data_root}", f"storage.path={tmp_path / 'runs'}", ON_WORKER_NODES,
        "--address", cluster.address, "--quiet",
    )  # fmt: skip
    started = time.monotonic()
    with PeakNodes() as nodes:
        search = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    finished = time.monotonic()
    assert search.returncode == 0, search.stderr[-3000:]
    experiment = Path(search.stdout.strip())
    assert experiment == tmp_path / "runs" / "tune" / "two"
    trials = json.loads((experiment / "trials.json").read_text())
    assert len(trials) == 2 and {t["status"] for t in trials} == {"completed"}, trials
    assert nodes.peak >= 1, "the autoscaler added nodes for the trials' workers"
    for trial in trials:
        steps = [r["step"] for r in read_live_jsonl(Path(trial["run_dir"]) / "metrics.jsonl")]
        assert steps == [1, 2, 3, 4]
    released = release_time(cluster, finished)
    print(
        f"\n2-trial tune: {finished - started:.0f} s, at most {nodes.peak} nodes; "
        f"idle nodes gone {released:.0f} s later"
    )


def test_a_node_removed_mid_run_the_elastic_run_goes_on_in_a_bucket(cluster, data_root, s3_bucket):
    """`cseg pretrain --address` as its own process (as the other runs here: a driver
    in the test process, after the earlier tests' local Ray sessions in it, once saw its
    Train controller cancelled before it ran)."""
    steps, shards = 20, f"{s3_bucket.url}/shards/synthetic-debug"
    s3_bucket.upload_folder(data_root / "synthetic-debug", shards)
    command = cseg(
        "pretrain", "cacl/debug", "--address", cluster.address,
        f"data.root={data_root}", "data.synthetic=null",
        f"stages.cacl.data.train={shards}/video", "stages.cacl.data.val=null",
        f"eval.data={shards}/segmentation", "eval.linear_probe.epochs=1",
        f"storage.path={s3_bucket.url}/runs", "storage.name=node", "storage.max_failures=2",
        f"stages.cacl.steps={steps}", "stages.cacl.val_every=0", "storage.checkpoint_every=5",
        "scaling.num_workers=2", "scaling.min_workers=1", ON_WORKER_NODES,
    )  # fmt: skip
    keys = s3_bucket.keys
    started = time.monotonic()
    # Both nodes up, and known to Ray's autoscaling coordinator, before training starts,
    # so the elastic run starts with 2 workers (it starts with whatever the coordinator
    # has seen, which may be the first node alone).
    hold_worker_nodes(2)
    try:
        with PeakNodes() as nodes:
            run = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            try:
                # Training has started once the workers are recorded: the run's own request
                # holds both nodes now.
                wait_for(lambda: "runs/node/workers.jsonl" in keys(), RUN_TIMEOUT_S, "the workers")
                release_worker_nodes()
                wait_for(
                    lambda: any(k.endswith("/state.pt") for k in keys()),
                    RUN_TIMEOUT_S,
                    "the checkpoint of step 5",
                    poll_s=0.2,
                )
                removed = _kill_a_worker_node(cluster)
                out, err = run.communicate(timeout=RUN_TIMEOUT_S)
            finally:
                run.kill()
    finally:
        release_worker_nodes()
    finished = time.monotonic()
    assert run.returncode == 0, err[-3000:]
    assert removed, "a worker node was removed"
    assert nodes.peak == 2, "the autoscaler added one node per worker (the head has none)"
    run_dir = f"{s3_bucket.url}/runs/node"
    assert out.strip().splitlines()[-1] == f"run directory: {run_dir}"

    metrics = read_jsonl_at(f"{run_dir}/metrics.jsonl")
    assert [r["step"] for r in metrics] == list(range(1, steps + 1))
    workers = read_jsonl_at(f"{run_dir}/workers.jsonl")
    sizes = [w["world_size"] for w in workers if w["rank"] == 0]
    assert sizes[0] == 2 and 1 in sizes[1:], f"went on with the remaining node: {sizes}"

    stored = keys()
    for name in ("config.yaml", "stages.json", "metrics.jsonl", "workers.jsonl", "eval.json"):
        assert f"runs/node/{name}" in stored
    assert any(
        k.startswith("runs/node/cacl/checkpoint_") and k.endswith("/state.pt") for k in stored
    )
    final = json.loads(storage.read_text(f"{run_dir}/stages.json"))["cacl"]["checkpoint"]
    assert final.startswith("cacl/checkpoint_")  # stored relative to the run
    assert load_state(f"{run_dir}/{final}")["step"] == steps
    assert "kmeans" in json.loads(storage.read_text(f"{run_dir}/eval.json"))
    _assert_no_secret(s3_bucket, cluster, out + err)
    released = release_time(cluster, finished)
    print(
        f"\nS3 run, a node removed after the checkpoint of step 5: {finished - started:.0f} s, "
        f"rank-0 world sizes {sizes}; idle nodes gone {released:.0f} s later"
    )


# Ray Train's elastic runs size themselves from Ray's AutoscalingCoordinator (a detached
# actor, Ray 2.60 internals): it reserves nodes to requesters, highest priority first,
# from a view of the cluster it refreshes every 20 s. The test holds nodes through it too.
NODE_HOLDER = "cseg-test-node-holder"


def _autoscaling_coordinator():
    from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
        get_or_create_autoscaling_coordinator,
    )

    return get_or_create_autoscaling_coordinator()


def hold_worker_nodes(count: int) -> None:
    """Have `count` worker nodes up, idle and in the coordinator's view of the cluster.

    A low-priority request: a Train run (high priority) that asks for them gets them
    all at once. The autoscaler keeps them until `release_worker_nodes`.
    """
    import ray
    from ray.data._internal.cluster_autoscaler.base_autoscaling_coordinator import (
        ResourceRequestPriority,
    )

    coordinator = _autoscaling_coordinator()
    bundles = [{"CPU": 1, WORKER_RESOURCE: 1}] * count
    ray.get(
        coordinator.request_resources.remote(
            NODE_HOLDER, bundles, expire_after_s=RUN_TIMEOUT_S, priority=ResourceRequestPriority.LOW
        )
    )

    def reserved_nodes() -> int:  # recompute: refresh the coordinator's view now
        reserved = coordinator.get_reserved_resources.remote(NODE_HOLDER, recompute=True)
        return len(ray.get(reserved))

    wait_for(lambda: reserved_nodes() >= count, RUN_TIMEOUT_S, f"{count} nodes held")


def release_worker_nodes() -> None:
    import ray

    ray.get(_autoscaling_coordinator().cancel_request.remote(NODE_HOLDER))


def read_jsonl_at(location: str) -> list[dict]:
    return [json.loads(line) for line in storage.read_text(location).splitlines()]


def _kill_a_worker_node(cluster) -> str:
    """SIGKILL one fake worker node: its raylet and every process it started; return its id."""
    import psutil

    node_id = alive_worker_nodes()[0]["NodeID"]
    for process in psutil.Process(cluster.head.pid).children(recursive=True):
        try:
            command = process.cmdline()
        except psutil.Error:
            continue
        if command and command[0].endswith("raylet") and f"--node_id={node_id}" in command:
            for doomed in [*process.children(recursive=True), process]:  # workers first
                try:
                    doomed.kill()
                except psutil.NoSuchProcess:
                    pass
            return node_id
    raise AssertionError(f"no raylet found for worker node {node_id}")


def _assert_no_secret(s3_bucket, cluster, driver_output: str) -> None:
    """The credentials appear in no stored object, no driver output and no Ray log."""
    secrets = [s3_bucket.env["AWS_SECRET_ACCESS_KEY"], s3_bucket.env["AWS_ACCESS_KEY_ID"]]
    texts = {f"s3 {key}": s3_bucket.read(key) for key in s3_bucket.keys()}
    texts["driver output"] = driver_output.encode()
    logs = [p for p in cluster.temp_dir.rglob("*") if p.is_file() and not p.is_socket()]
    assert any(p.suffix in (".log", ".out", ".err") for p in logs), "Ray logs were found"
    texts.update({str(p): p.read_bytes() for p in logs})
    leaks = {
        where: _line_around(data, s.encode())
        for where, data in texts.items()
        for s in secrets
        if s.encode() in data
    }
    assert not leaks, f"credentials found: {leaks}"


def _line_around(data: bytes, secret: bytes) -> str:
    """The line of `data` that holds `secret`, with the secret masked, to say what leaked it."""
    start = data.rfind(b"\n", 0, data.index(secret)) + 1
    end = data.find(b"\n", start)
    line = data[start : end if end >= 0 else len(data)]
    return line.replace(secret, b"<SECRET>")[:400].decode(errors="replace")


def test_pretrain_scales_up_and_a_killed_driver_resumes_with_every_step_once(
    cluster, data_root, tmp_path
):
    """The last test: a killed driver's autoscaler request outlives it (Ray keeps it 180 s),
    so its nodes stay up that long after the kill; the test does not wait for that."""
    steps, run_dir = 20, tmp_path / "runs" / "driver"
    command = cseg(
        "pretrain", "cacl/debug", *debug_run(data_root, tmp_path / "runs", "driver", steps),
        "--address", cluster.address,
    )  # fmt: skip
    started = time.monotonic()
    with PeakNodes() as nodes, (tmp_path / "first.log").open("w") as log:
        first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
        try:
            before = wait_for(
                lambda: _lines_once_checkpointed(run_dir, at_least=7),
                RUN_TIMEOUT_S,
                "the first driver to pass a checkpoint",
                poll_s=0.2,
            )
        finally:
            first.kill()  # SIGKILL: no cleanup in the driver
            first.wait(timeout=60)
        killed_at = time.monotonic()
        old_workers = [w["pid"] for w in read_live_jsonl(run_dir / "workers.jsonl")]
        wait_for(lambda: not any(map(_alive, old_workers)), 120, "the old workers to end")
        second = subprocess.run(
            [*command, "--resume", "--quiet"], capture_output=True, text=True, timeout=RUN_TIMEOUT_S
        )
    finished = time.monotonic()
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.strip() == str(run_dir)
    assert nodes.peak == 2, "the autoscaler added one node per worker (the head has none)"

    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(1, steps + 1))
    # The steps up to the restored checkpoint were not run again: their lines, with
    # their measured samples_per_s, are the ones the first driver wrote.
    kept = [line for line in lines if line in before]
    assert len(kept) >= 5 and kept == lines[: len(kept)] and len(kept) % 5 == 0
    workers = read_live_jsonl(run_dir / "workers.jsonl")
    assert len(workers) == 4 and {w["world_size"] for w in workers} == {2}
    print(
        f"\npretrain: driver killed at step {len(before)} after {killed_at - started:.0f} s, "
        f"resumed from step {len(kept)}, done after {finished - started:.0f} s"
    )


def _lines_once_checkpointed(run_dir: Path, at_least: int) -> list[str] | None:
    """metrics.jsonl's lines once a checkpoint exists and `at_least` steps are logged."""
    path = run_dir / "metrics.jsonl"
    checkpoints = list((run_dir / "cacl").glob("checkpoint_*")) if run_dir.exists() else []
    lines = path.read_text().splitlines() if path.exists() else []
    return lines if checkpoints and len(lines) >= at_least else None


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
