"""Field checks for KubeRay manifests: the RayCluster and RayJob objects of a file.

Problems read "Kind[name].field.path: what is wrong". The required-field list follows the KubeRay
operator's own validation (ray-operator `validation.go`: names, replicas, containers, RayJob
cluster selection and deletion rules). When a RayCluster spec passes it, Ray's own KubeRay
autoscaler parser (`_derive_autoscaling_config_from_ray_cr`, which the autoscaler sidecar runs on
the live RayCluster) reads it too, so a bad `rayStartParams` or resource quantity shows up here
rather than in a crash-looping pod. Nothing here talks to Kubernetes.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import yaml

from raycseg.cluster.checks import credential_problems, is_count, one_line

KUBERAY_KINDS = ("RayCluster", "RayJob")
KUBERAY_API_VERSION = "ray.io/v1"
SUBMISSION_MODES = ("K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode")
UPSCALING_MODES = ("Default", "Conservative", "Aggressive")
_MAX_NAME = {"RayCluster": 63, "RayJob": 47}
_DNS_1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")


def check_kuberay_documents(documents: list[Any]) -> list[str]:
    """Check the RayCluster and RayJob objects of a KubeRay manifest.

    Args:
        documents: The parsed YAML documents of the file. Other Kubernetes objects in it pass
            unchecked.

    Returns:
        Problems, each "Kind[name].field.path: what is wrong"; empty when the fields are valid.
    """
    problems: list[str] = []
    cluster_names: set[str] = set()
    jobs: list[tuple[str, dict]] = []
    ray_objects = 0
    for index, doc in enumerate(documents):
        if not isinstance(doc, dict):
            problems.append(f"document {index + 1}: not a mapping")
            continue
        kind = doc.get("kind")
        if kind not in KUBERAY_KINDS:
            continue
        ray_objects += 1
        metadata = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
        name = metadata.get("name")
        where = f"{kind}[{name or f'document {index + 1}'}]"
        found = _object_meta_problems(doc, kind, name)
        spec = doc.get("spec")
        if not isinstance(spec, dict):
            found.append("spec: required")
        elif kind == "RayCluster":
            found += check_ray_cluster_spec(spec, "spec")
        else:
            jobs.append((where, spec))  # checked below, once every RayCluster name is known
        if kind == "RayCluster" and isinstance(name, str):
            cluster_names.add(name)
        found += credential_problems(doc)
        problems += [f"{where}.{problem}" for problem in found]
    for where, spec in jobs:
        problems += [f"{where}.{problem}" for problem in _ray_job_problems(spec, cluster_names)]
    if not ray_objects:
        problems.append("kind: no RayCluster or RayJob in this file")
    return problems


def _object_meta_problems(doc: dict, kind: str, name: Any) -> list[str]:
    problems = []
    if doc.get("apiVersion") != KUBERAY_API_VERSION:
        problems.append(f"apiVersion: must be {KUBERAY_API_VERSION}, not {doc.get('apiVersion')!r}")
    if not isinstance(name, str) or not name:
        problems.append("metadata.name: required")
    elif len(name) > _MAX_NAME[kind] or not _DNS_1035.fullmatch(name):
        problems.append(
            f"metadata.name: '{name}' must be up to {_MAX_NAME[kind]} lowercase letters, digits "
            "and '-', starting with a letter"
        )
    return problems


def check_ray_cluster_spec(spec: dict, at: str) -> list[str]:
    """Required fields of a RayCluster spec (also a RayJob's `rayClusterSpec`), then Ray's parser."""
    problems = []
    if not isinstance(spec.get("rayVersion"), str) or not spec["rayVersion"]:
        problems.append(f"{at}.rayVersion: required: the Ray version in the image, e.g. '2.60.0'")
    if spec.get("enableInTreeAutoscaling") is not True:
        problems.append(
            f"{at}.enableInTreeAutoscaling: must be true, so GPU worker pods follow demand"
        )
    options = spec.get("autoscalerOptions", {})
    if not isinstance(options, dict):
        problems.append(f"{at}.autoscalerOptions: must be a mapping")
    else:
        if "idleTimeoutSeconds" in options and not is_count(options["idleTimeoutSeconds"]):
            problems.append(
                f"{at}.autoscalerOptions.idleTimeoutSeconds: must be a whole number >= 0"
            )
        if options.get("upscalingMode", "Default") not in UPSCALING_MODES:
            problems.append(
                f"{at}.autoscalerOptions.upscalingMode: must be one of {', '.join(UPSCALING_MODES)}"
            )
    head = spec.get("headGroupSpec")
    if isinstance(head, dict):
        problems += _group_problems(head, f"{at}.headGroupSpec")
    else:
        problems.append(f"{at}.headGroupSpec: required")
    groups = spec.get("workerGroupSpecs")
    if not isinstance(groups, list) or not groups:
        problems.append(f"{at}.workerGroupSpecs: required: a list with at least one worker group")
    else:
        problems += _worker_groups_problems(groups, f"{at}.workerGroupSpecs")
    return problems or _ray_autoscaler_parse_problems(spec, at)


def _worker_groups_problems(groups: list, at: str) -> list[str]:
    problems, seen = [], set()
    for index, group in enumerate(groups):
        where = f"{at}[{index}]"
        if not isinstance(group, dict):
            problems.append(f"{where}: must be a mapping")
            continue
        name = group.get("groupName")
        if not isinstance(name, str) or not name:
            problems.append(f"{where}.groupName: required")
        elif name in seen:
            problems.append(f"{where}.groupName: '{name}' is used by another worker group")
        seen.add(name)
        for key in ("minReplicas", "maxReplicas"):
            if not is_count(group.get(key)):
                problems.append(f"{where}.{key}: required: a whole number >= 0")
        low, high = group.get("minReplicas"), group.get("maxReplicas")
        if is_count(low) and is_count(high):
            if low > high:
                problems.append(f"{where}.minReplicas: {low} is more than maxReplicas {high}")
            replicas = group.get("replicas", low)
            if not is_count(replicas) or not low <= replicas <= high:
                problems.append(f"{where}.replicas: must be between minReplicas and maxReplicas")
        problems += _group_problems(group, where)
    return problems


def _group_problems(group: dict, at: str) -> list[str]:
    problems = []
    params = group.get("rayStartParams", {})
    if not isinstance(params, dict):
        return [f"{at}.rayStartParams: must be a mapping of strings"]
    for key, value in params.items():
        if not isinstance(value, str):
            problems.append(f"{at}.rayStartParams.{key}: must be a string; quote it: '{value}'")
    if "labels" in params:
        problems.append(f"{at}.rayStartParams.labels: not supported; use the group's `labels`")
    ray_start_resource_keys = {"num-cpus", "num-gpus", "memory", "resources"} & set(params)
    if group.get("resources") and ray_start_resource_keys:
        problems.append(f"{at}.resources: set resources here or in rayStartParams, not both")
    if (
        isinstance(params.get("resources"), str)
        and _parse_ray_start_resources(params["resources"]) is None
    ):
        problems.append(
            f'{at}.rayStartParams.resources: must look like \'"{{\\"worker_node\\": 1}}"\' '
            "(a JSON object of whole numbers, quoted)"
        )
    pod = (
        group.get("template", {}).get("spec", {}) if isinstance(group.get("template"), dict) else {}
    )
    containers = pod.get("containers") if isinstance(pod, dict) else None
    if not isinstance(containers, list) or not containers or not isinstance(containers[0], dict):
        return problems + [f"{at}.template.spec.containers: required: the Ray container first"]
    ray_container = containers[0]
    for key in ("name", "image"):
        if not isinstance(ray_container.get(key), str) or not ray_container[key]:
            problems.append(f"{at}.template.spec.containers[0].{key}: required")
    quantities = ray_container.get("resources") or {}
    declared = [quantities.get(kind) or {} for kind in ("limits", "requests")]
    if "num-cpus" not in params and "CPU" not in (group.get("resources") or {}):
        if not any("cpu" in entry for entry in declared if isinstance(entry, dict)):
            problems.append(
                f"{at}.template.spec.containers[0].resources.limits.cpu: required (or "
                "rayStartParams num-cpus) so the autoscaler knows the group's CPUs"
            )
    return problems


def _parse_ray_start_resources(text: str) -> dict | None:
    r"""Parse KubeRay's quoted JSON (`"{\"worker_node\": 1}"`) the way Ray's autoscaler does."""
    try:
        parsed = json.loads(text[1:-1].replace("\\", ""))
    except ValueError:
        return None
    if not isinstance(parsed, dict) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in parsed.values()
    ):
        return None
    return parsed


def _ray_autoscaler_parse_problems(spec: dict, at: str) -> list[str]:
    """Run Ray's own KubeRay autoscaler parser on the spec (what its sidecar runs at start)."""
    from ray.autoscaler._private.kuberay.autoscaling_config import (
        _derive_autoscaling_config_from_ray_cr,
    )

    ray_cluster = {
        "metadata": {"name": "check", "namespace": "default"},
        "spec": copy.deepcopy(spec),
    }
    try:
        _derive_autoscaling_config_from_ray_cr(ray_cluster)
    except Exception as error:  # the parser raises KeyError/ValueError/AssertionError/schema errors
        return [f"{at}: Ray's KubeRay autoscaler cannot read this cluster: {one_line(error)}"]
    return []


def _ray_job_problems(spec: dict, cluster_names: set[str]) -> list[str]:
    problems = []
    entrypoint = spec.get("entrypoint")
    if not isinstance(entrypoint, str) or not entrypoint.strip():
        problems.append(
            "spec.entrypoint: required: the command to run, e.g. `cseg pretrain RECIPE`"
        )
    selector, inline = spec.get("clusterSelector"), spec.get("rayClusterSpec")
    if selector and inline is not None:
        problems.append("spec.clusterSelector: set clusterSelector or rayClusterSpec, not both")
    elif not selector and inline is None:
        problems.append(
            "spec.rayClusterSpec: required unless spec.clusterSelector names a RayCluster"
        )
    if selector:
        problems += _cluster_selector_problems(spec, selector, cluster_names)
    if inline is not None:
        if isinstance(inline, dict):
            problems += check_ray_cluster_spec(inline, "spec.rayClusterSpec")
        else:
            problems.append("spec.rayClusterSpec: must be a mapping")
    mode = spec.get("submissionMode", "K8sJobMode")
    if mode not in SUBMISSION_MODES:
        problems.append(f"spec.submissionMode: must be one of {', '.join(SUBMISSION_MODES)}")
    shutdown = spec.get("shutdownAfterJobFinishes", False) is True
    ttl = spec.get("ttlSecondsAfterFinished")
    if ttl is not None and not is_count(ttl):
        problems.append("spec.ttlSecondsAfterFinished: must be a whole number >= 0")
    elif ttl and not shutdown:
        problems.append("spec.ttlSecondsAfterFinished: needs shutdownAfterJobFinishes: true")
    if spec.get("suspend") and not shutdown:
        problems.append("spec.suspend: needs shutdownAfterJobFinishes: true")
    deadline = spec.get("activeDeadlineSeconds")
    if deadline is not None and (not is_count(deadline) or deadline == 0):
        problems.append("spec.activeDeadlineSeconds: must be a whole number > 0")
    problems += _job_string_field_problems(spec)
    return problems


def _cluster_selector_problems(spec: dict, selector: Any, cluster_names: set[str]) -> list[str]:
    target = selector.get("ray.io/cluster") if isinstance(selector, dict) else None
    problems = []
    if not isinstance(target, str) or not target:
        problems.append("spec.clusterSelector.ray.io/cluster: required: the RayCluster's name")
    elif cluster_names and target not in cluster_names:
        problems.append(
            f"spec.clusterSelector.ray.io/cluster: '{target}' is not a RayCluster in this file "
            f"({', '.join(sorted(cluster_names))})"
        )
    if spec.get("submissionMode") == "SidecarMode":
        problems.append("spec.submissionMode: SidecarMode does not work with clusterSelector")
    if is_count(spec.get("backoffLimit")) and spec["backoffLimit"] > 0:
        problems.append("spec.backoffLimit: must be 0 with clusterSelector")
    if spec.get("suspend"):
        problems.append("spec.suspend: not supported with clusterSelector")
    return problems


def _job_string_field_problems(spec: dict) -> list[str]:
    problems = []
    runtime_env = spec.get("runtimeEnvYAML")
    if runtime_env is not None:
        try:
            parsed = yaml.safe_load(runtime_env) if isinstance(runtime_env, str) else None
        except yaml.YAMLError:
            parsed = None
        if not isinstance(parsed, dict):
            problems.append("spec.runtimeEnvYAML: must be a string holding a YAML mapping")
    resources = spec.get("entrypointResources")
    if resources is not None:
        try:
            parsed = json.loads(resources) if isinstance(resources, str) else None
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            problems.append(
                "spec.entrypointResources: must be a JSON object string, e.g. '{\"driver_slot\": 1}'"
            )
    return problems
