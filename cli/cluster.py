"""`cseg cluster`: render cluster configs from options and check their fields (docs/clusters.md).

`render` writes a Ray cluster launcher YAML (aws, gcp) or a KubeRay manifest (RayCluster +
RayJob) to `--out` or stdout; `check` validates a file's fields and exits 2 naming each bad one.
The work happens in `raycseg.cluster.configs`.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer

from raycseg.cluster.configs import (
    check_cluster_config,
    infer_cluster_provider,
    load_cluster_documents,
    render_cluster_config,
    write_cluster_config,
)
from raycseg.errors import CsegError

from .console import err, out

app = typer.Typer(
    help="Cluster configs: render them for AWS, GCP or KubeRay, and check their fields.",
    epilog="""Examples:

cseg cluster render --provider aws --out aws.yaml
cseg cluster check aws.yaml""",
    no_args_is_help=True,
)


class Provider(StrEnum):
    """Where the cluster runs."""

    aws = "aws"
    gcp = "gcp"
    kuberay = "kuberay"


@app.command(
    epilog="""Examples:

cseg cluster render --provider aws --instance-type g5.xlarge --out aws.yaml
cseg cluster render --provider gcp --project my-proj --spot --out gcp.yaml
cseg cluster render --provider kuberay --max-nodes 8 --out kuberay.yaml""",
)
def render(
    provider: Provider = typer.Option(..., "--provider", help="aws, gcp (ray up) or kuberay."),
    gpus_per_node: int | None = typer.Option(
        None, "--gpus-per-node", help="GPUs per worker node/pod [default: the type's, else 8]."
    ),
    max_nodes: int = typer.Option(4, "--max-nodes", help="Most GPU worker nodes (pods)."),
    min_nodes: int = typer.Option(0, "--min-nodes", help="GPU worker nodes kept when idle."),
    instance_type: str | None = typer.Option(
        None, "--instance-type", help="GPU instance type, e.g. g5.12xlarge or a2-highgpu-4g."
    ),
    image: str | None = typer.Option(None, "--image", help="Container image."),
    region: str | None = typer.Option(
        None, "--region", help="AWS region, or GCP region or zone (us-central1-a)."
    ),
    project: str | None = typer.Option(None, "--project", help="GCP project id."),
    cluster_name: str = typer.Option("raycseg", "--cluster-name", help="Cluster name."),
    spot: bool = typer.Option(False, "--spot", help="Spot/preemptible GPU workers (aws, gcp)."),
    idle_timeout_minutes: float = typer.Option(
        5.0, "--idle-timeout-minutes", help="Remove GPU nodes idle this long."
    ),
    entrypoint: str | None = typer.Option(
        None, "--entrypoint", help="KubeRay RayJob command, e.g. 'cseg pretrain RECIPE ...'."
    ),
    decode_nodes: int = typer.Option(
        0,
        "--decode-nodes",
        help="Most CPU nodes of a group for the Ray Data decode pool (data.loader: ray_data).",
    ),
    out_path: Path | None = typer.Option(
        None, "--out", help="Write here (atomically) instead of to stdout."
    ),
) -> None:
    """Render a cluster config with autoscaling GPU workers from the shipped template."""
    text = render_cluster_config(
        provider.value,
        gpus_per_node=gpus_per_node,
        max_nodes=max_nodes,
        min_nodes=min_nodes,
        instance_type=instance_type,
        image=image,
        region=region,
        cluster_name=cluster_name,
        project_id=project,
        spot=spot,
        idle_timeout_minutes=idle_timeout_minutes,
        entrypoint=entrypoint,
        decode_nodes=decode_nodes,
    )
    if out_path is None:
        out.print(text, end="", markup=False, highlight=False, emoji=False)
        return
    written = write_cluster_config(text, out_path)
    out.print(str(written), markup=False, highlight=False)
    launch = "kubectl apply -f" if provider is Provider.kuberay else "ray up"
    err.print(
        f"next: `cseg cluster check {written}`, then `{launch} {written}` (docs/clusters.md)",
        markup=False,
        highlight=False,
    )


@app.command(
    epilog="""Examples:

cseg cluster check aws.yaml
cseg cluster check kuberay.yaml             # RayCluster + RayJob""",
)
def check(
    config_file: Path = typer.Argument(..., help="A rendered or hand-edited cluster config."),
) -> None:
    """Check a cluster config's fields: Ray's own validation (aws, gcp) or KubeRay's required fields."""
    problems = check_cluster_config(config_file)
    if problems:
        for problem in problems:
            err.print(f"  {problem}", markup=False, highlight=False)
        fields = ", ".join(dict.fromkeys(problem.split(": ", 1)[0] for problem in problems))
        raise CsegError(
            f"{config_file}: {len(problems)} problem(s) in {fields}; fix them as listed above "
            f"and run `cseg cluster check {config_file}` again"
        )
    provider = infer_cluster_provider(load_cluster_documents(config_file))
    out.print(f"{config_file}: valid {provider} config", markup=False, highlight=False)
