"""Cluster configs: rendering, Ray's own validation of the results, field-named problems, the CLI.

No cluster is started: aws/gcp configs go through Ray 2.60's launcher validation
(`prepare_config` + schema + `validate_config`), KubeRay manifests through the required-field
list and Ray's KubeRay autoscaler parser.
"""

from __future__ import annotations

import copy
import importlib.resources
from pathlib import Path

import pytest
import yaml
from cseg.main import app
from typer.testing import CliRunner

from raycseg.cluster.checks import credential_problems
from raycseg.cluster.configs import (
    PROVIDERS,
    check_cluster_config,
    load_cluster_template,
    render_cluster_config,
    write_cluster_config,
)
from raycseg.errors import CsegError

runner = CliRunner()


def _documents(text: str) -> list:
    return [doc for doc in yaml.safe_load_all(text) if doc is not None]


def _write(tmp_path: Path, documents: list, name: str = "cluster.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump_all(documents, sort_keys=False))
    return path


def _template(provider: str) -> list:
    return _documents(load_cluster_template(provider))


def _ray_cluster_to_autoscaler_config(ray_cluster: dict) -> dict:
    """What Ray's KubeRay autoscaler sidecar derives from a live RayCluster."""
    from ray.autoscaler._private.kuberay.autoscaling_config import (
        _derive_autoscaling_config_from_ray_cr,
    )

    ray_cluster = copy.deepcopy(ray_cluster)
    ray_cluster["metadata"]["namespace"] = "default"
    return _derive_autoscaling_config_from_ray_cr(ray_cluster)


# ----------------------------------------------------------------------------- shipped templates


@pytest.mark.parametrize("provider", PROVIDERS)
def test_shipped_template_is_valid_package_data(provider):
    template = importlib.resources.files("raycseg.recipes") / "clusters" / f"{provider}.yaml"
    with importlib.resources.as_file(template) as path:
        assert check_cluster_config(path) == []
    assert load_cluster_template(provider).startswith("# raycseg on ")  # the how-to header


@pytest.mark.parametrize("provider", PROVIDERS)
def test_default_render_is_the_shipped_template(provider):
    assert _documents(render_cluster_config(provider)) == _template(provider)


# ----------------------------------------------------------------------------- rendering


@pytest.mark.parametrize(
    ("options", "instance_type", "gpus", "cpus", "shm"),
    [
        ({"gpus_per_node": 1, "max_nodes": 2, "region": "eu-west-1"}, "g5.2xlarge", 1, 8, "16g"),
        ({"gpus_per_node": 4, "spot": True, "image": "me/img:1"}, "g5.12xlarge", 4, 48, "96g"),
        ({"instance_type": "g6.48xlarge", "min_nodes": 1, "max_nodes": 3}, "g6.48xlarge", 8, 192, "384g"),
    ],
)  # fmt: skip
def test_aws_render_passes_ray_validation(tmp_path, options, instance_type, gpus, cpus, shm):
    text = render_cluster_config("aws", **options)
    assert check_cluster_config(_write(tmp_path, _documents(text))) == []
    (config,) = _documents(text)
    worker = config["available_node_types"]["gpu_worker"]
    assert worker["node_config"]["InstanceType"] == instance_type
    assert worker["resources"] == {"CPU": cpus, "GPU": gpus, "worker_node": gpus}
    assert (worker["min_workers"], worker["max_workers"]) == (
        options.get("min_nodes", 0),
        options.get("max_nodes", 4),
    )
    assert config["max_workers"] == options.get("max_nodes", 4)
    assert config["docker"]["worker_run_options"] == [f"--shm-size={shm}"]
    assert config["provider"]["region"] == options.get("region", "us-west-2")
    assert config["docker"]["image"] == options.get("image", "rayproject/ray:2.60.0-py311-gpu")
    spot = worker["node_config"].get("InstanceMarketOptions")
    assert spot == ({"MarketType": "spot"} if options.get("spot") else None)
    assert config["available_node_types"]["head"]["resources"] == {"CPU": 0, "driver_slot": 16}
    assert f"--max-nodes {options.get('max_nodes', 4)}" in text.splitlines()[1]


@pytest.mark.parametrize(
    ("options", "machine", "zone"),
    [
        ({"gpus_per_node": 1, "region": "us-east1-c", "project_id": "proj-1"}, "g2-standard-8", "us-east1-c"),
        ({"instance_type": "a2-highgpu-2g", "spot": True, "region": "europe-west4"}, "a2-highgpu-2g", "europe-west4-a"),
    ],
)  # fmt: skip
def test_gcp_render_passes_ray_validation(tmp_path, options, machine, zone):
    text = render_cluster_config("gcp", idle_timeout_minutes=2.5, **options)
    assert check_cluster_config(_write(tmp_path, _documents(text))) == []
    (config,) = _documents(text)
    node_config = config["available_node_types"]["gpu_worker"]["node_config"]
    assert node_config["machineType"] == machine
    assert config["provider"]["availability_zone"] == zone
    assert zone.startswith(config["provider"]["region"] + "-")
    assert config["provider"]["project_id"] == options.get("project_id", "my-gcp-project")
    assert config["idle_timeout_minutes"] == 2.5
    # The Compute API wants an object here (ray#46248); spot adds preemptible to it.
    assert node_config["scheduling"]["onHostMaintenance"] == "TERMINATE"
    assert node_config["scheduling"].get("preemptible", False) is options.get("spot", False)


def test_kuberay_render_is_what_rays_autoscaler_reads(tmp_path):
    text = render_cluster_config(
        "kuberay",
        gpus_per_node=2,
        min_nodes=1,
        max_nodes=3,
        instance_type="g5.12xlarge",
        image="registry.example/raycseg:0.1.0-gpu",
        idle_timeout_minutes=10,
        cluster_name="seg-a",
        entrypoint="cseg pretrain cacl/debug scaling.num_workers=2",
    )
    assert check_cluster_config(_write(tmp_path, _documents(text))) == []
    ray_cluster, ray_job = _documents(text)
    autoscaler = _ray_cluster_to_autoscaler_config(ray_cluster)
    workers = autoscaler["available_node_types"]["gpu-workers"]
    assert (workers["min_workers"], workers["max_workers"]) == (1, 3)
    assert {k: workers["resources"][k] for k in ("CPU", "GPU", "worker_node")} == {
        "CPU": 12,
        "GPU": 2,
        "worker_node": 2,
    }
    head = autoscaler["available_node_types"]["headgroup"]["resources"]
    assert (head["CPU"], head["driver_slot"]) == (0, 16)
    assert autoscaler["idle_timeout_minutes"] == 10
    pod = ray_cluster["spec"]["workerGroupSpecs"][0]["template"]["spec"]
    assert pod["nodeSelector"] == {"node.kubernetes.io/instance-type": "g5.12xlarge"}
    assert pod["containers"][0]["image"] == "registry.example/raycseg:0.1.0-gpu"
    assert pod["volumes"][0]["emptyDir"]["sizeLimit"] == "24Gi"
    assert ray_job["spec"]["clusterSelector"] == {"ray.io/cluster": "seg-a"}
    assert ray_job["metadata"]["name"] == "seg-a-pretrain"
    assert ray_job["spec"]["entrypoint"] == "cseg pretrain cacl/debug scaling.num_workers=2"


@pytest.mark.parametrize("provider", ["aws", "gcp"])
def test_launcher_decode_nodes_are_a_cpu_group_only_the_decode_pool_lands_on(tmp_path, provider):
    text = render_cluster_config(provider, max_nodes=4, decode_nodes=3)
    assert check_cluster_config(_write(tmp_path, _documents(text))) == []
    (config,) = _documents(text)
    decode = config["available_node_types"]["cpu_decode"]
    assert (decode["min_workers"], decode["max_workers"]) == (0, 3)
    assert decode["resources"] == {"CPU": 32, "decode_node": 32}
    assert "GPU" not in decode["resources"]
    assert config["max_workers"] == 4 + 3  # the cluster-wide cap leaves room for both groups
    gpu = config["available_node_types"]["gpu_worker"]["resources"]
    assert "decode_node" not in gpu and "worker_node" not in decode["resources"]
    assert "--decode-nodes 3" in text.splitlines()[1]  # the header repeats the command


def test_kuberay_decode_group_is_what_rays_autoscaler_reads(tmp_path):
    text = render_cluster_config("kuberay", max_nodes=2, decode_nodes=5)
    assert check_cluster_config(_write(tmp_path, _documents(text))) == []
    ray_cluster, _ = _documents(text)
    decode = _ray_cluster_to_autoscaler_config(ray_cluster)["available_node_types"]["cpu-decode"]
    assert (decode["min_workers"], decode["max_workers"]) == (0, 5)
    assert decode["resources"]["decode_node"] == 32 and decode["resources"]["CPU"] == 32
    assert decode["resources"].get("GPU", 0) == 0
    (group,) = [
        g for g in ray_cluster["spec"]["workerGroupSpecs"] if g["groupName"] == "cpu-decode"
    ]
    assert "tolerations" not in group["template"]["spec"]  # no GPU taint to tolerate
    assert render_cluster_config("kuberay").count("cpu-decode") == 0  # off by default


def test_kuberay_default_entrypoint_fits_one_pod():
    (_, ray_job) = _documents(render_cluster_config("kuberay", gpus_per_node=4))
    assert "scaling.num_workers=4" in ray_job["spec"]["entrypoint"]


@pytest.mark.parametrize(
    ("provider", "options", "message"),
    [
        ("azure", {}, "pass --provider aws|gcp|kuberay"),
        ("aws", {"gpus_per_node": 2}, "pass --gpus-per-node 1, 4, 8"),
        ("gcp", {"instance_type": "n1-standard-8"}, "a2-highgpu-8g"),
        ("aws", {"instance_type": "g5.2xlarge", "gpus_per_node": 8}, "g5.2xlarge has 1 GPUs"),
        ("aws", {"min_nodes": 5, "max_nodes": 4}, "--min-nodes 5"),
        ("aws", {"max_nodes": 0}, "--max-nodes 0"),
        ("aws", {"cluster_name": "My_Cluster"}, "cluster name 'My_Cluster'"),
        ("aws", {"region": "us-central1"}, "not an AWS region"),
        ("gcp", {"region": "europe"}, "not a GCP region or zone"),
        ("aws", {"project_id": "p"}, "--project applies to gcp only"),
        ("gcp", {"entrypoint": "cseg pretrain x"}, "--entrypoint applies to kuberay only"),
        ("kuberay", {"region": "us-west-2", "spot": True}, "--region, --spot apply to aws/gcp"),
        ("kuberay", {"gpus_per_node": 0}, "--gpus-per-node 0 is out of range"),
    ],
)
def test_render_rejects_bad_options_naming_the_fix(provider, options, message):
    with pytest.raises(CsegError) as raised:
        render_cluster_config(provider, **options)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_rendered_configs_carry_no_credentials(provider):
    text = render_cluster_config(provider, spot=provider != "kuberay")
    assert credential_problems(_documents(text)) == []
    lowered = text.lower()
    assert "secret" not in lowered and "access_key" not in lowered and "password" not in lowered


def test_credential_scan_finds_keys_and_key_like_values():
    documents = [
        {"provider": {"type": "aws", "aws_secret_access_key": "x"}},
        {"env": [{"name": "AWS_SECRET_ACCESS_KEY", "value": "y"}, {"name": "OK", "value": "1"}]},
        {"setup_commands": ["export K=AKIAABCDEFGHIJKLMNOP"]},
    ]
    fields = [problem.split(":")[0] for problem in credential_problems(documents)]
    assert fields == [
        "[0].provider.aws_secret_access_key",
        "[1].env[0].value",
        "[2].setup_commands[0]",
    ]


# ----------------------------------------------------------------------------- launcher problems


def _aws_with(change) -> dict:
    config = copy.deepcopy(_template("aws")[0])
    change(config)
    return config


def _set_min_workers(value):
    return lambda c: c["available_node_types"]["gpu_worker"].update(min_workers=value)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (_set_min_workers(5), "available_node_types.gpu_worker.min_workers"),
        (
            lambda c: c["available_node_types"]["gpu_worker"].update(min_workers=5, max_workers=9),
            "max_workers",  # Ray's own check: the sum of min_workers is above the global cap
        ),
        (lambda c: c.update(idle_timeout=3), "idle_timeout"),
        (lambda c: c["available_node_types"]["gpu_worker"].pop("node_config"),
         "available_node_types.gpu_worker.node_config"),
        (lambda c: c["available_node_types"]["gpu_worker"]["resources"].update(GPU=0.5),
         "available_node_types.gpu_worker.resources.GPU"),
        (lambda c: c.update(head_node_type="nope"), "head_node_type"),
        (lambda c: c["provider"].update(type="nimbus"), "provider.type"),
        (lambda c: c.update(setup_commands="pip install raycseg"), "setup_commands"),
        (lambda c: c["provider"].update(aws_secret_access_key="x"), "provider.aws_secret_access_key"),
    ],
)  # fmt: skip
def test_broken_launcher_config_names_the_field(tmp_path, change, field):
    problems = check_cluster_config(_write(tmp_path, [_aws_with(change)]))
    assert field in [problem.split(": ", 1)[0] for problem in problems], problems


def test_every_schema_error_is_listed_not_just_the_first(tmp_path):
    def break_three_fields(config):
        config.update(idle_timeout=3, workers=2)
        config["available_node_types"]["gpu_worker"]["resources"]["GPU"] = 0.5

    problems = check_cluster_config(_write(tmp_path, [_aws_with(break_three_fields)]))
    fields = sorted(problem.split(": ", 1)[0] for problem in problems)
    assert fields == ["available_node_types.gpu_worker.resources.GPU", "idle_timeout", "workers"]
    assert any("did you mean `idle_timeout_minutes`" in problem for problem in problems)


# ----------------------------------------------------------------------------- KubeRay problems


def _kuberay_with(change) -> list:
    documents = copy.deepcopy(_template("kuberay"))
    change(*documents)
    return documents


def _worker_group(cluster: dict) -> dict:
    return cluster["spec"]["workerGroupSpecs"][0]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda rc, job: rc["spec"].pop("workerGroupSpecs"), "RayCluster[raycseg].spec.workerGroupSpecs"),
        (lambda rc, job: rc["spec"].pop("rayVersion"), "RayCluster[raycseg].spec.rayVersion"),
        (lambda rc, job: rc["spec"].update(enableInTreeAutoscaling=False),
         "RayCluster[raycseg].spec.enableInTreeAutoscaling"),
        (lambda rc, job: _worker_group(rc).update(minReplicas=5),
         "RayCluster[raycseg].spec.workerGroupSpecs[0].minReplicas"),
        (lambda rc, job: _worker_group(rc).pop("maxReplicas"),
         "RayCluster[raycseg].spec.workerGroupSpecs[0].maxReplicas"),
        (lambda rc, job: _worker_group(rc)["rayStartParams"].update({"num-gpus": 8}),
         "RayCluster[raycseg].spec.workerGroupSpecs[0].rayStartParams.num-gpus"),
        (lambda rc, job: _worker_group(rc)["rayStartParams"].update(resources="{worker_node: 1}"),
         "RayCluster[raycseg].spec.workerGroupSpecs[0].rayStartParams.resources"),
        (lambda rc, job: _worker_group(rc)["template"]["spec"]["containers"][0].pop("resources"),
         "RayCluster[raycseg].spec.workerGroupSpecs[0].template.spec.containers[0].resources.limits.cpu"),
        (lambda rc, job: _worker_group(rc)["template"]["spec"]["containers"][0]["resources"]["limits"].update(cpu="lots"),
         "RayCluster[raycseg].spec"),  # found by Ray's own KubeRay autoscaler parser
        (lambda rc, job: rc.update(apiVersion="ray.io/v1alpha1"), "RayCluster[raycseg].apiVersion"),
        (lambda rc, job: job["spec"].pop("entrypoint"), "RayJob[raycseg-pretrain].spec.entrypoint"),
        (lambda rc, job: job["spec"].update(clusterSelector={"ray.io/cluster": "other"}),
         "RayJob[raycseg-pretrain].spec.clusterSelector.ray.io/cluster"),
        (lambda rc, job: job["spec"].update(rayClusterSpec=copy.deepcopy(rc["spec"])),
         "RayJob[raycseg-pretrain].spec.clusterSelector"),
        (lambda rc, job: job["spec"].update(ttlSecondsAfterFinished=60),
         "RayJob[raycseg-pretrain].spec.ttlSecondsAfterFinished"),
        (lambda rc, job: job["spec"].update(entrypointResources="driver_slot=1"),
         "RayJob[raycseg-pretrain].spec.entrypointResources"),
    ],
)  # fmt: skip
def test_broken_kuberay_manifest_names_the_field(tmp_path, change, field):
    problems = check_cluster_config(_write(tmp_path, _kuberay_with(change)))
    assert field in [problem.split(": ", 1)[0] for problem in problems], problems


def test_rayjob_with_inline_cluster_spec_is_checked_like_a_raycluster(tmp_path):
    cluster, job = copy.deepcopy(_template("kuberay"))
    job["spec"].pop("clusterSelector")
    job["spec"].update(rayClusterSpec=cluster["spec"], shutdownAfterJobFinishes=True)
    job["spec"]["ttlSecondsAfterFinished"] = 600
    assert check_cluster_config(_write(tmp_path, [job])) == []
    job["spec"]["rayClusterSpec"].pop("headGroupSpec")
    problems = check_cluster_config(_write(tmp_path, [job]))
    assert problems[0].startswith("RayJob[raycseg-pretrain].spec.rayClusterSpec.headGroupSpec:")


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("cluster_name: x\nmax_workers: [1\n", "(yaml)"),
        ("", "(file)"),
        ("cluster_name: x\n", "provider.type"),
        ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n", "provider.type"),
        ("apiVersion: ray.io/v1\nkind: RayService\nmetadata: {name: x}\n", "kind"),
    ],
)
def test_unreadable_or_unknown_files_name_what_is_missing(tmp_path, text, field):
    path = tmp_path / "cluster.yaml"
    path.write_text(text)
    problems = check_cluster_config(path)
    assert [problem.split(": ", 1)[0] for problem in problems] == [field]


def test_missing_file_is_a_usage_error(tmp_path):
    with pytest.raises(CsegError, match="cseg cluster render"):
        check_cluster_config(tmp_path / "absent.yaml")


# ----------------------------------------------------------------------------- CLI


def test_cli_render_to_stdout_is_the_config():
    result = runner.invoke(app, ["cluster", "render", "--provider", "gcp", "--gpus-per-node", "1"])
    assert result.exit_code == 0, result.output
    (config,) = _documents(result.stdout)
    assert (
        config["available_node_types"]["gpu_worker"]["node_config"]["machineType"]
        == "g2-standard-8"
    )
    assert result.stdout.startswith("# Rendered by raycseg")


def test_cli_render_out_replaces_the_file_atomically(tmp_path, monkeypatch):
    target = tmp_path / "configs" / "cluster.yaml"
    result = runner.invoke(app, ["cluster", "render", "--provider", "aws", "--out", str(target)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(target.resolve())
    assert check_cluster_config(target) == []
    first = target.read_text()

    def interrupted_rename(self, other):
        raise OSError("disk went away")

    monkeypatch.setattr(Path, "replace", interrupted_rename)
    with pytest.raises(OSError):
        write_cluster_config("half a config", target)
    assert target.read_text() == first  # the old file stays whole until the rename


def test_cli_check_exit_codes(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(render_cluster_config("kuberay"))
    result = runner.invoke(app, ["cluster", "check", str(good)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"{good}: valid kuberay config"

    bad = _write(tmp_path, [_aws_with(_set_min_workers(9))], "bad.yaml")
    result = runner.invoke(app, ["cluster", "check", str(bad)])
    assert result.exit_code == 2, result.output
    message = result.stderr.splitlines()[-1]  # the error, on one line
    assert message.startswith("error: ")
    assert "available_node_types.gpu_worker.min_workers" in message and "max_workers" in message
    assert "available_node_types.gpu_worker.min_workers: 9 is more than" in result.stderr
    assert result.stdout == ""


def test_cli_render_rejects_an_unknown_provider_as_usage_error():
    result = runner.invoke(app, ["cluster", "render", "--provider", "azure"])
    assert result.exit_code == 2
