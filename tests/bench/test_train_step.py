"""`cseg bench train`: the report's figures hang together, every shipped stage runs, no Ray.

Wall times are never asserted (docs/benchmarks.md holds them); what is asserted is
that the split adds up, the counts are those of the step, and the path needs
neither Ray, decord nor PyAV.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from raycseg.bench.train_step import benchmark_training_step
from raycseg.config import load_recipe, shipped_recipes

CONTRACT_KEYS = {
    "step_s", "data_wait_s", "forward_s", "backward_s", "optimizer_s", "samples_per_s",
    "peak_host_mib", "peak_device_mib", "flops_per_step", "tflops", "mfu",
    "host_syncs_per_step", "overhead_ratio", "device",
}  # fmt: skip


@pytest.mark.parametrize("name", ["cacl/debug", "maskcontrast/debug", "reco/voc_60labels_debug"])
def test_a_synthetic_run_reports_a_consistent_step(name):
    report = benchmark_training_step(
        load_recipe(name, check_files=False), steps=3, warmup=1, synthetic=True
    )
    assert CONTRACT_KEYS <= set(report)
    parts = sum(report[k] for k in ("data_wait_s", "forward_s", "backward_s", "optimizer_s"))
    assert parts == pytest.approx(report["step_s"], rel=1e-6)  # the median step's own split
    assert report["host_syncs_per_step"] == 0
    assert report["flops_per_step"] > 0 and report["overhead_ratio"] > 0
    assert report["samples_per_s"] == pytest.approx(report["batch_size"] / report["step_s"])
    assert report["peak_device_mib"] is None and report["mfu"] is None  # a CPU
    json.dumps(report)  # what --json writes


def test_flops_grow_with_the_batch_as_the_networks_do():
    small, large = (
        benchmark_training_step(
            load_recipe("cacl/debug", [f"stages.cacl.data.batch_size={size}"], check_files=False),
            steps=1, warmup=0, synthetic=True,
        )["flops_per_step"]
        for size in (2, 4)
    )  # fmt: skip
    assert 1.9 < large / small < 2.1


def test_on_the_stage_shards_data_wait_is_part_of_the_step(tmp_path):
    recipe = load_recipe("cacl/debug", [f"data.root={tmp_path}"])  # built on first use
    report = benchmark_training_step(recipe, steps=2, warmup=1)
    assert report["synthetic"] is False and report["data_wait_s"] > 0
    assert report["host_syncs_per_step"] == 0


def test_an_unknown_stage_names_the_stages():
    from raycseg.errors import CsegError

    with pytest.raises(CsegError, match="no stage 'nope'; use one of: cacl, maskcontrast, reco"):
        benchmark_training_step(
            load_recipe("pipeline/cacl_maskcontrast_reco_debug", check_files=False),
            stage_name="nope", synthetic=True,
        )  # fmt: skip


@pytest.mark.integration
def test_the_cli_path_imports_neither_ray_decord_nor_pyav(tmp_path):
    script = f"""
import sys
from typer.testing import CliRunner
from cseg.main import app
result = CliRunner().invoke(app, ["bench", "train", "maskcontrast/debug", "--synthetic",
                                  "--steps", "1", "--warmup", "0", "--json", r"{tmp_path / "r.json"}"])
assert result.exit_code == 0, result.output
print(sorted(m for m in ("ray", "decord", "av") if m in sys.modules))
"""
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().splitlines()[-1] == "[]"
    assert json.loads((tmp_path / "r.json").read_text())["host_syncs_per_step"] == 0


def _every_shipped_stage():
    """The stages of every shipped recipe but the pipelines (theirs are those recipes' own)."""
    for name in shipped_recipes():
        if name.startswith("pipeline/"):
            continue
        recipe = load_recipe(name, check_files=False)
        for stage in recipe.stages:
            yield name, stage.name, stage.method


@pytest.mark.integration
@pytest.mark.parametrize(("name", "stage", "method"), list(_every_shipped_stage()))
def test_every_shipped_stage_runs_synthetic(name, stage, method):
    """Each shipped recipe's model (real ones too), on small random images to stay quick
    (ReCo with fewer queries: its real 21 x 256 x 512 draws cost seconds on a CPU)."""
    small = [f"stages.{stage}.data.image_size=32", f"stages.{stage}.data.batch_size=2"]
    if method == "reco":
        small += [f"stages.{stage}.num_queries=16", f"stages.{stage}.num_negatives=32"]
    report = benchmark_training_step(
        load_recipe(name, small, check_files=False), stage_name=stage, steps=1, warmup=0,
        synthetic=True,
    )  # fmt: skip
    assert report["stage"] == stage and report["host_syncs_per_step"] == 0


@pytest.mark.integration
def test_the_device_check_runs_without_a_gpu_and_says_what_it_skipped(tmp_path):
    repo = Path(__file__).resolve().parents[2]
    run = subprocess.run(
        ["sh", str(repo / "scripts" / "device_check.sh")],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "OUT": str(tmp_path), "DEVICE_CHECK_STEPS": "1", "DEVICE_CHECK_WARMUP": "0"},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert "no GPU here" in run.stderr and "skipped" in run.stderr
    runs = json.loads((tmp_path / "device_check.json").read_text())
    assert sorted(runs) == ["debug-cacl", "debug-maskcontrast", "debug-reco"]
    assert {r["host_syncs_per_step"] for r in runs.values()} == {0}
    assert "debug-reco" in (tmp_path / "device_check.txt").read_text()
