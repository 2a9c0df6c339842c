"""The worker loop in Ray Train local mode (num_workers=0: in-process, no ray.init)."""

from __future__ import annotations

import json

import pytest

from raycseg.config import load_recipe
from raycseg.errors import CsegError
from raycseg.train.evaluation import evaluate_checkpoint
from raycseg.train.launch import run_pretrain


def debug_recipe(tmp_path, *overrides):
    return load_recipe(
        "cacl/debug",
        [
            f"data.root={tmp_path / 'data'}",
            f"storage.path={tmp_path / 'runs'}",
            "storage.name=local",
            "scaling.num_workers=0",
            "stages.cacl.steps=6",
            "stages.cacl.val_every=3",
            "storage.checkpoint_every=3",
            *overrides,
        ],
    )


def test_local_run_writes_config_metrics_checkpoints_and_eval(tmp_path):
    recipe = debug_recipe(tmp_path)
    result = run_pretrain(recipe)
    run_dir = result.run_dir
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    first = records[0]
    for key in (
        "stage",
        "loss",
        "loss_global",
        "loss_pixel",
        "loss_cycle",
        "lr",
        "samples_per_s",
        "skipped_corrupt",
    ):
        assert key in first
    assert first["loss"] == pytest.approx(
        first["loss_global"] + first["loss_pixel"] + first["loss_cycle"], rel=1e-4
    )
    assert "val_miou" in records[2] and 0.0 <= records[2]["val_miou"] <= 1.0
    assert load_recipe(run_dir / "config.yaml") == recipe
    assert result.checkpoints["cacl"].endswith("state.pt")
    scores = json.loads((run_dir / "eval.json").read_text())
    for protocol in ("linear_probe", "kmeans"):
        assert (
            0.0 <= scores[protocol]["miou"] <= 1.0 and len(scores[protocol]["per_class_iou"]) == 5
        )

    skipped = evaluate_checkpoint(
        result.checkpoints["cacl"], recipe, protocols=["maskcontrast-kmeans"]
    )
    assert "maskcontrast stage" in skipped["skipped"]["maskcontrast_kmeans"]

    again = run_pretrain(recipe)  # same name and storage: finished stages are skipped
    assert again.resumed and len((run_dir / "metrics.jsonl").read_text().splitlines()) == 6


def test_non_finite_loss_stops_with_a_clear_message(tmp_path):
    recipe = debug_recipe(tmp_path, "optim.lr=1e30", "optim.grad_clip=null", "storage.name=nan")
    with pytest.raises(CsegError, match="non-finite at step"):
        run_pretrain(recipe)


def test_each_node_builds_the_generated_data_on_its_own_disk_once(tmp_path):
    """On a cluster the driver's disk is not the workers': local rank 0 builds it there."""
    from raycseg.train.worker import _generated_data_on_this_node

    recipe = debug_recipe(tmp_path)  # no run: nothing built on this "node" yet
    generated = tmp_path / "data" / recipe.data.synthetic.name
    assert not generated.exists()
    _generated_data_on_this_node(recipe, local_rank=1)
    assert not generated.exists(), "only local rank 0 builds"
    _generated_data_on_this_node(recipe, local_rank=0)
    assert (generated / "video" / "manifest.json").exists()
    assert (generated / "segmentation" / "manifest.json").exists()
