"""The GPU node shapes cseg can fill into cluster configs: a small, explicit table per provider.

The numbers (vCPUs, GPUs, memory) are what AWS and Google Cloud list for each type; they were
written down offline and are not checked against live APIs. A KubeRay pod has no instance type
of its own: it gets a fixed share of CPUs and memory per GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

from raycseg.errors import CsegError

DEFAULT_GPUS_PER_NODE = 8
KUBERAY_CPUS_PER_GPU = 6  # pod requests: fit inside the allocatable share of common GPU nodes
KUBERAY_MEMORY_GIB_PER_GPU = 24


@dataclass(frozen=True)
class GpuNodeShape:
    """A GPU node (or pod): its instance type and what it offers Ray.

    Attributes:
        instance_type: The provider's name for it ("" for a KubeRay pod without a node selector).
        cpus: vCPUs Ray may schedule on.
        gpus: GPUs per node.
        memory_gib: Memory in GiB; half of it becomes /dev/shm.
    """

    instance_type: str
    cpus: int
    gpus: int
    memory_gib: int


def _shapes(*rows: tuple[str, int, int, int]) -> dict[str, GpuNodeShape]:
    return {row[0]: GpuNodeShape(*row) for row in rows}


# What the providers list for each type (vCPUs, GPUs, memory GiB). Not checked against live APIs.
AWS_GPU_INSTANCES = _shapes(
    ("g5.2xlarge", 8, 1, 32),  # A10G 24 GB
    ("g5.12xlarge", 48, 4, 192),
    ("g5.48xlarge", 192, 8, 768),
    ("g6.2xlarge", 8, 1, 32),  # L4 24 GB
    ("g6.12xlarge", 48, 4, 192),
    ("g6.48xlarge", 192, 8, 768),
    ("p4d.24xlarge", 96, 8, 1152),  # A100 40 GB
    ("p5.48xlarge", 192, 8, 2048),  # H100 80 GB
)
GCP_GPU_MACHINES = _shapes(  # A2 and G2 machine types come with their GPUs attached
    ("g2-standard-8", 8, 1, 32),  # L4 24 GB
    ("g2-standard-24", 24, 2, 96),
    ("g2-standard-48", 48, 4, 192),
    ("g2-standard-96", 96, 8, 384),
    ("a2-highgpu-1g", 12, 1, 85),  # A100 40 GB
    ("a2-highgpu-2g", 24, 2, 170),
    ("a2-highgpu-4g", 48, 4, 340),
    ("a2-highgpu-8g", 96, 8, 680),
)
GPU_NODE_TABLES = {"aws": AWS_GPU_INSTANCES, "gcp": GCP_GPU_MACHINES}
DEFAULT_INSTANCE_FOR_GPUS = {
    "aws": {1: "g5.2xlarge", 4: "g5.12xlarge", 8: "p4d.24xlarge"},
    "gcp": {1: "g2-standard-8", 2: "g2-standard-24", 4: "a2-highgpu-4g", 8: "a2-highgpu-8g"},
}


def resolve_gpu_node_shape(
    provider: str, gpus_per_node: int | None = None, instance_type: str | None = None
) -> GpuNodeShape:
    """Pick the GPU node shape for a provider from the explicit tables above.

    Args:
        provider: aws, gcp or kuberay.
        gpus_per_node: GPUs per node; None means the instance type's count, else 8.
        instance_type: A type from the provider's table (aws/gcp). For KubeRay any node label
            value: it becomes a `node.kubernetes.io/instance-type` node selector.

    Returns:
        The node shape. KubeRay pods get `KUBERAY_CPUS_PER_GPU` CPUs and
        `KUBERAY_MEMORY_GIB_PER_GPU` GiB per GPU.

    Raises:
        CsegError: The combination is not in the table; the message lists valid choices.
    """
    if provider == "kuberay":
        gpus = DEFAULT_GPUS_PER_NODE if gpus_per_node is None else gpus_per_node
        if not 1 <= gpus <= 16:
            raise CsegError(f"--gpus-per-node {gpus} is out of range; pass 1 to 16")
        return GpuNodeShape(
            instance_type or "",
            KUBERAY_CPUS_PER_GPU * gpus,
            gpus,
            KUBERAY_MEMORY_GIB_PER_GPU * gpus,
        )
    if provider not in GPU_NODE_TABLES:
        raise CsegError(f"unknown provider '{provider}'; pass --provider aws|gcp|kuberay")
    table = GPU_NODE_TABLES[provider]
    if instance_type is None:
        gpus = DEFAULT_GPUS_PER_NODE if gpus_per_node is None else gpus_per_node
        defaults = DEFAULT_INSTANCE_FOR_GPUS[provider]
        if gpus not in defaults:
            choices = ", ".join(str(count) for count in defaults)
            raise CsegError(
                f"no default {provider} GPU instance with {gpus} GPUs; pass --gpus-per-node "
                f"{choices}, or --instance-type one of {', '.join(table)}"
            )
        return table[defaults[gpus]]
    if instance_type not in table:
        raise CsegError(
            f"unknown {provider} GPU instance type '{instance_type}'; pass --instance-type one of "
            f"{', '.join(table)} (or edit the rendered YAML)"
        )
    shape = table[instance_type]
    if gpus_per_node is not None and gpus_per_node != shape.gpus:
        raise CsegError(
            f"{instance_type} has {shape.gpus} GPUs, not {gpus_per_node}; pass --gpus-per-node "
            f"{shape.gpus} or leave it out"
        )
    return shape
