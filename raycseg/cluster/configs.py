"""Cluster configs: render the shipped templates from options, and check a config's fields.

Three templates ship in ``raycseg.recipes`` under ``clusters/`` (docs/clusters.md):

* ``aws.yaml`` and ``gcp.yaml``: Ray cluster launcher configs (``ray up``). A CPU head node
  offers ``{"CPU": 0, "driver_slot": 16}`` so that only drivers run there; the node type
  ``gpu_worker`` autoscales from ``min_workers`` to ``max_workers`` and offers
  ``{"CPU", "GPU", "worker_node"}`` (one ``worker_node`` slot per GPU), which
  ``ScalingConfig.resources_per_worker`` can target.
* ``kuberay.yaml``: a RayCluster with the in-tree autoscaler and a GPU worker group, plus a
  RayJob that runs ``cseg pretrain`` on it through ``clusterSelector``.

:func:`render_cluster_config` loads a template, applies the options and returns YAML text; the
templates are exactly what it renders with its defaults. :func:`check_cluster_config` infers the
provider and lists problems, each starting with the field it is about. For aws/gcp that is Ray
2.60's own launcher validation (``prepare_config``, the ``ray-schema.json`` schema that
``validate_config`` uses, then ``validate_config`` itself) plus two checks of ours; for KubeRay
it is a required-field list that follows the KubeRay operator's validation, then Ray's own
KubeRay autoscaler parser. Nothing here talks to a cloud or to Kubernetes.
"""

from __future__ import annotations

import importlib.resources
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from raycseg import __version__
from raycseg.cluster.checks import check_launcher_config
from raycseg.cluster.decode_nodes import (
    DECODE_CPUS,
    DECODE_RESOURCE,
    add_kuberay_decode_group,
    add_launcher_decode_nodes,
)
from raycseg.cluster.gpu_nodes import GpuNodeShape, resolve_gpu_node_shape
from raycseg.cluster.kuberay import KUBERAY_KINDS, check_kuberay_documents
from raycseg.errors import CsegError

PROVIDERS = ("aws", "gcp", "kuberay")
GPU_WORKER_TYPE = "gpu_worker"  # launcher node type of the GPU workers
GPU_WORKER_GROUP = "gpu-workers"  # KubeRay worker group of the GPU workers
DEFAULT_CLUSTER_NAME = "raycseg"
DEFAULT_ENTRYPOINT = (
    "cseg pretrain quickstart --cluster gpu scaling.num_workers={workers} "
    "storage.path=s3://YOUR-BUCKET/raycseg/runs"
)
_MAX_CLUSTER_NAME = 38  # the RayJob is named "<cluster>-pretrain" and KubeRay allows 47


@dataclass(frozen=True)
class _RenderOptions:
    provider: str
    max_nodes: int
    min_nodes: int
    cluster_name: str
    idle_timeout_minutes: float
    instance_type: str | None
    image: str | None
    region: str | None
    project_id: str | None
    spot: bool
    entrypoint: str | None
    decode_nodes: int = 0


def load_cluster_template(provider: str) -> str:
    """Return the text of the shipped template for `provider` (aws, gcp or kuberay)."""
    provider = _known_provider(provider)
    template = importlib.resources.files("raycseg.recipes") / "clusters" / f"{provider}.yaml"
    return template.read_text(encoding="utf-8")


def render_cluster_config(
    provider: str,
    *,
    gpus_per_node: int | None = None,
    max_nodes: int = 4,
    min_nodes: int = 0,
    instance_type: str | None = None,
    image: str | None = None,
    region: str | None = None,
    cluster_name: str = DEFAULT_CLUSTER_NAME,
    project_id: str | None = None,
    spot: bool = False,
    idle_timeout_minutes: float = 5.0,
    entrypoint: str | None = None,
    decode_nodes: int = 0,
) -> str:
    """Render a cluster config from the shipped template for `provider`.

    Args:
        provider: aws, gcp (Ray cluster launcher) or kuberay (RayCluster + RayJob).
        gpus_per_node: GPUs per worker node or pod (default: the instance type's, else 8).
        max_nodes: Most GPU worker nodes (pods) the autoscaler may run.
        min_nodes: GPU worker nodes (pods) kept even when idle.
        instance_type: GPU instance type (see `resolve_gpu_node_shape`).
        image: Container image; default: the template's (Ray 2.60 GPU image, unverified tag,
            for aws/gcp; for KubeRay an image with raycseg installed that you build).
        region: AWS region, or GCP region or zone (a region gets its "-a" zone).
        cluster_name: Lowercase letters, digits and "-", starting with a letter.
        project_id: GCP project id (GCP only).
        spot: Spot (AWS) or preemptible (GCP) GPU workers.
        idle_timeout_minutes: Idle GPU nodes (pods) are removed after this long.
        entrypoint: The KubeRay RayJob's command (default: a quickstart run on one node's GPUs).
        decode_nodes: Most CPU nodes (pods) of an autoscaling group for the Ray Data decode
            pool (`raycseg.cluster.decode_nodes`); 0: no such group.

    Returns:
        YAML text: one document for aws/gcp, two (RayCluster, RayJob) for kuberay. It carries
        no credentials: the provider's default credential chain is used.

    Raises:
        CsegError: An option is invalid or does not apply to the provider.
    """
    options = _RenderOptions(
        _known_provider(provider), max_nodes, min_nodes, cluster_name, idle_timeout_minutes,
        instance_type, image, region, project_id, spot, entrypoint, decode_nodes,
    )  # fmt: skip
    _check_render_options(options)
    shape = resolve_gpu_node_shape(options.provider, gpus_per_node, instance_type)
    documents = [doc for doc in yaml.safe_load_all(load_cluster_template(options.provider)) if doc]
    if options.provider == "kuberay":
        _fill_kuberay(documents, options, shape)
    else:
        _fill_launcher(documents[0], options, shape)
    body = "---\n".join(
        yaml.safe_dump(doc, sort_keys=False, default_flow_style=False, width=1000)
        for doc in documents
    )
    return _render_header(options, shape) + body


def write_cluster_config(text: str, path: str | Path) -> Path:
    """Write `text` to `path` atomically (a temporary file in the same folder, then a rename).

    Returns:
        The absolute path written.
    """
    target = Path(path).expanduser().resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    temporary.replace(target)
    return target


def load_cluster_documents(path: str | Path) -> list[Any]:
    """Read every YAML document in `path` (empty documents dropped).

    Raises:
        CsegError: There is no such file.
        yaml.YAMLError: The file is not YAML.
    """
    source = Path(path)
    if not source.is_file():
        raise CsegError(
            f"no cluster config at {source}; render one with "
            "`cseg cluster render --provider aws|gcp|kuberay --out FILE`"
        )
    return [
        doc for doc in yaml.safe_load_all(source.read_text(encoding="utf-8")) if doc is not None
    ]


def infer_cluster_provider(documents: list[Any]) -> str | None:
    """Return "kuberay" for KubeRay manifests, else a launcher config's `provider.type`, else None."""
    for doc in documents:
        if isinstance(doc, dict) and (
            str(doc.get("apiVersion", "")).startswith("ray.io/") or doc.get("kind") in KUBERAY_KINDS
        ):
            return "kuberay"
    if len(documents) == 1 and isinstance(documents[0], dict):
        provider = documents[0].get("provider")
        if isinstance(provider, dict) and isinstance(provider.get("type"), str):
            return provider["type"] or None
    return None


def check_cluster_config(path: str | Path) -> list[str]:
    """Check a cluster config file and list its problems (an empty list means valid).

    Each problem reads "FIELD: what is wrong", FIELD being a dotted path into the config
    (for KubeRay prefixed with `Kind[name]`).

    Args:
        path: A Ray cluster launcher YAML (aws, gcp) or a KubeRay manifest (RayCluster/RayJob).

    Raises:
        CsegError: There is no such file.
    """
    try:
        documents = load_cluster_documents(path)
    except yaml.YAMLError as error:
        return [f"(yaml): not valid YAML: {' '.join(str(error).split())}"]
    if not documents:
        return ["(file): empty; render a config with `cseg cluster render`"]
    provider = infer_cluster_provider(documents)
    if provider is None:
        return [
            "provider.type: missing; a Ray cluster launcher config needs provider.type "
            "(aws or gcp), a KubeRay manifest needs apiVersion ray.io/v1"
        ]
    if provider == "kuberay":
        return check_kuberay_documents(documents)
    if len(documents) != 1:
        return ["(file): a Ray cluster launcher config is a single YAML document"]
    return check_launcher_config(documents[0])


# ----------------------------------------------------------------------------- rendering helpers


def _known_provider(provider: str) -> str:
    if provider not in PROVIDERS:
        raise CsegError(f"unknown provider '{provider}'; pass --provider {'|'.join(PROVIDERS)}")
    return provider


def _check_render_options(options: _RenderOptions) -> None:
    if options.max_nodes < 1:
        raise CsegError(f"--max-nodes {options.max_nodes} is too small; pass 1 or more")
    if not 0 <= options.min_nodes <= options.max_nodes:
        raise CsegError(
            f"--min-nodes {options.min_nodes} must be between 0 and --max-nodes {options.max_nodes}"
        )
    if options.decode_nodes < 0:
        raise CsegError(f"--decode-nodes {options.decode_nodes} is negative; pass 0 or more")
    if options.idle_timeout_minutes < 0:
        raise CsegError("--idle-timeout-minutes must be 0 or more")
    name = options.cluster_name
    if len(name) > _MAX_CLUSTER_NAME or not re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name):
        raise CsegError(
            f"cluster name '{name}' is not valid; use up to {_MAX_CLUSTER_NAME} lowercase "
            "letters, digits and '-', starting with a letter (e.g. raycseg)"
        )
    if options.provider == "kuberay":
        misplaced = [
            flag
            for flag, value in (("--region", options.region), ("--project", options.project_id),
                                ("--spot", options.spot))
            if value
        ]  # fmt: skip
        if misplaced:
            raise CsegError(
                f"{', '.join(misplaced)} apply to aws/gcp only; on Kubernetes the node pools "
                "decide region and spot capacity"
            )
    elif options.entrypoint is not None:
        raise CsegError(
            "--entrypoint applies to kuberay only; with `ray up`, run "
            "`ray job submit -- cseg pretrain ...` (docs/clusters.md)"
        )
    if options.provider == "aws" and options.project_id:
        raise CsegError("--project applies to gcp only; AWS uses your default account")


def _fill_launcher(config: dict, options: _RenderOptions, shape: GpuNodeShape) -> None:
    config["cluster_name"] = options.cluster_name
    config["max_workers"] = options.max_nodes
    config["idle_timeout_minutes"] = options.idle_timeout_minutes
    docker = config["docker"]
    if options.image:
        docker["image"] = options.image
    docker["worker_run_options"] = [
        option for option in docker.get("worker_run_options", []) if "--shm-size" not in option
    ] + [f"--shm-size={shape.memory_gib // 2}g"]
    worker = config["available_node_types"][GPU_WORKER_TYPE]
    worker["min_workers"] = options.min_nodes
    worker["max_workers"] = options.max_nodes
    worker["resources"] = {"CPU": shape.cpus, "GPU": shape.gpus, "worker_node": shape.gpus}
    node_config = worker["node_config"]
    if options.decode_nodes:
        add_launcher_decode_nodes(config, options.provider, options.decode_nodes)
    if options.provider == "aws":
        node_config["InstanceType"] = shape.instance_type
        if options.region:
            config["provider"]["region"] = _aws_region(options.region)
        if options.spot:
            node_config["InstanceMarketOptions"] = {"MarketType": "spot"}
        return
    node_config["machineType"] = shape.instance_type
    if options.region:
        region, zone = _gcp_region_and_zone(options.region)
        config["provider"].update(region=region, availability_zone=zone)
    if options.project_id:
        config["provider"]["project_id"] = options.project_id
    if options.spot:
        node_config["scheduling"]["preemptible"] = True


def _fill_kuberay(documents: list[dict], options: _RenderOptions, shape: GpuNodeShape) -> None:
    cluster = next(doc for doc in documents if doc["kind"] == "RayCluster")
    job = next(doc for doc in documents if doc["kind"] == "RayJob")
    spec = cluster["spec"]
    cluster["metadata"]["name"] = options.cluster_name
    spec["autoscalerOptions"]["idleTimeoutSeconds"] = round(options.idle_timeout_minutes * 60)
    group = next(g for g in spec["workerGroupSpecs"] if g["groupName"] == GPU_WORKER_GROUP)
    group.update(replicas=options.min_nodes, minReplicas=options.min_nodes)
    group["maxReplicas"] = options.max_nodes
    group["rayStartParams"]["resources"] = ray_start_resources({"worker_node": shape.gpus})
    pod = group["template"]["spec"]
    quantities = {
        "cpu": str(shape.cpus),
        "memory": f"{shape.memory_gib}Gi",
        "nvidia.com/gpu": shape.gpus,
    }
    pod["containers"][0]["resources"] = {"limits": dict(quantities), "requests": dict(quantities)}
    for volume in pod.get("volumes", []):
        if volume["name"] == "dshm":
            volume["emptyDir"]["sizeLimit"] = f"{shape.memory_gib // 2}Gi"
    if shape.instance_type:
        pod["nodeSelector"] = {"node.kubernetes.io/instance-type": shape.instance_type}
    if options.image:
        for container in (spec["headGroupSpec"]["template"]["spec"]["containers"][0],
                          pod["containers"][0]):  # fmt: skip
            container["image"] = options.image
    if options.decode_nodes:
        slots = ray_start_resources({DECODE_RESOURCE: DECODE_CPUS})
        add_kuberay_decode_group(cluster, group, options.decode_nodes, slots)
    job["metadata"]["name"] = f"{options.cluster_name}-pretrain"
    job["spec"]["clusterSelector"] = {"ray.io/cluster": options.cluster_name}
    job["spec"]["entrypoint"] = options.entrypoint or DEFAULT_ENTRYPOINT.format(workers=shape.gpus)


def ray_start_resources(resources: dict[str, int]) -> str:
    r"""Format custom resources the way KubeRay's `rayStartParams.resources` expects them.

    Example: `{"worker_node": 8}` becomes the string `"{\"worker_node\": 8}"` (outer quotes
    and escaped inner quotes included), which Ray's KubeRay autoscaler parses back.
    """
    return '"' + json.dumps(resources).replace('"', '\\"') + '"'


def _aws_region(region: str) -> str:
    if not re.fullmatch(r"[a-z]{2}(-[a-z]+)+-\d", region):
        raise CsegError(f"--region '{region}' is not an AWS region; pass e.g. us-west-2")
    return region


def _gcp_region_and_zone(region_or_zone: str) -> tuple[str, str]:
    match = re.fullmatch(r"([a-z]+-[a-z]+\d+)(?:-([a-z]))?", region_or_zone)
    if not match:
        raise CsegError(
            f"--region '{region_or_zone}' is not a GCP region or zone; pass e.g. us-central1-a"
        )
    region = match.group(1)
    return region, f"{region}-{match.group(2) or 'a'}"


def _render_header(options: _RenderOptions, shape: GpuNodeShape) -> str:
    argv = ["cseg", "cluster", "render", "--provider", options.provider]
    argv += ["--gpus-per-node", str(shape.gpus), "--max-nodes", str(options.max_nodes)]
    argv += ["--min-nodes", str(options.min_nodes)]
    optional = (
        ("--instance-type", options.instance_type),
        ("--image", options.image),
        ("--region", options.region),
        ("--project", options.project_id),
        ("--entrypoint", options.entrypoint),
    )
    argv += [part for flag, value in optional if value for part in (flag, value)]
    if options.cluster_name != DEFAULT_CLUSTER_NAME:
        argv += ["--cluster-name", options.cluster_name]
    if options.idle_timeout_minutes != 5.0:
        argv += ["--idle-timeout-minutes", f"{options.idle_timeout_minutes:g}"]
    if options.spot:
        argv.append("--spot")
    if options.decode_nodes:
        argv += ["--decode-nodes", str(options.decode_nodes)]
    return (
        f"# Rendered by raycseg {__version__}:\n#   {shlex.join(argv)}\n"
        f"# Annotated template: recipes/clusters/{options.provider}.yaml. Validate with\n"
        "# `cseg cluster check FILE`; launch and submit as in docs/clusters.md.\n"
        "# No credentials here: the provider's default credential chain is used.\n"
    )
