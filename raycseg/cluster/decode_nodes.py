"""An optional CPU node group for the Ray Data decode pool (`cseg cluster render --decode-nodes`).

A stage with `data.loader: ray_data` decodes video in Ray tasks. Where GPU nodes
have too few cores per GPU, those tasks can run on CPU nodes of their own: the
group offers `decode_node` slots (one per CPU), so a pool that asks for
`data.decode_pool.resources: {decode_node: 1}` runs there, and only there, and
the autoscaler adds the nodes when the pool asks for them and removes them when
idle. The group starts at 0 nodes.
"""

from __future__ import annotations

import copy

DECODE_RESOURCE = "decode_node"
DECODE_NODE_TYPE = "cpu_decode"  # launcher node type
DECODE_GROUP = "cpu-decode"  # KubeRay worker group
DECODE_CPUS, DECODE_MEMORY_GIB = 32, 64
DECODE_INSTANCE_TYPES = {"aws": "c6i.8xlarge", "gcp": "n2-standard-32"}  # 32 vCPUs each


def add_launcher_decode_nodes(config: dict, provider: str, max_nodes: int) -> None:
    """Add the `cpu_decode` node type (0 to `max_nodes` nodes) to a launcher config."""
    types = config["available_node_types"]
    node_config = copy.deepcopy(types[config["head_node_type"]]["node_config"])
    node_config["InstanceType" if provider == "aws" else "machineType"] = DECODE_INSTANCE_TYPES[
        provider
    ]
    types[DECODE_NODE_TYPE] = {
        "min_workers": 0,
        "max_workers": max_nodes,
        "resources": {"CPU": DECODE_CPUS, DECODE_RESOURCE: DECODE_CPUS},
        "node_config": node_config,
        # Decoded clips wait in the object store, which lives in /dev/shm.
        "docker": {"worker_run_options": [f"--shm-size={DECODE_MEMORY_GIB // 2}g"]},
    }
    config["max_workers"] += max_nodes


def add_kuberay_decode_group(
    cluster: dict, gpu_group: dict, max_nodes: int, resources: str
) -> None:
    """Add the `cpu-decode` worker group (0 to `max_nodes` pods) to a RayCluster.

    Args:
        cluster: The RayCluster document.
        gpu_group: Its GPU worker group, whose pod template (image, mounts) is reused.
        max_nodes: Most decode pods.
        resources: `rayStartParams.resources` text offering the decode slots.
    """
    group = copy.deepcopy(gpu_group)
    group.update(groupName=DECODE_GROUP, replicas=0, minReplicas=0, maxReplicas=max_nodes)
    group["rayStartParams"]["resources"] = resources
    pod = group["template"]["spec"]
    for key in ("tolerations", "nodeSelector"):
        pod.pop(key, None)
    quantities = {"cpu": str(DECODE_CPUS), "memory": f"{DECODE_MEMORY_GIB}Gi"}
    pod["containers"][0]["resources"] = {"limits": dict(quantities), "requests": dict(quantities)}
    for volume in pod.get("volumes", []):
        if volume["name"] == "dshm":
            volume["emptyDir"]["sizeLimit"] = f"{DECODE_MEMORY_GIB // 2}Gi"
    cluster["spec"]["workerGroupSpecs"].append(group)
