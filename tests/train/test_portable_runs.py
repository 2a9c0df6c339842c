"""Portable runs: a run stores every path into itself relative to itself.

So a run copied or moved elsewhere, its original deleted, still evaluates, reports,
exports and resumes from its new place; so does a run copied from a bucket to a disk,
and an older run whose stages.json holds absolute paths or URLs. All in Ray Train's
local mode (`scaling.num_workers=0`). That Ray Train's own resume snapshot survives a
move (it names checkpoints by folder) is described in docs/fault_tolerance.md.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import torch
import torchvision

from raycseg import storage
from raycseg.config import load_recipe
from raycseg.errors import CsegError
from raycseg.reports.report import write_report
from raycseg.run_directory import (
    MetricsLog,
    path_in_run,
    read_stages,
    resolve_in_run,
    run_checkpoint,
    write_stages,
)
from raycseg.train.checkpoint import load_state
from raycseg.train.eval_targets import evaluate_target
from raycseg.train.export import export_backbone
from raycseg.train.launch import run_pretrain

STORED_FILES = ("config.yaml", "stages.json", "metrics.jsonl", "workers.jsonl", "eval.json")


@pytest.fixture(scope="module")
def moved_run(tmp_path_factory) -> tuple[Path, Path, str]:
    """A finished local-mode run (a ResNet-18, so that it exports), trained at
    `.../runs/first` and then moved to `.../moved/first`: nothing is left where it ran.

    Returns the moved run, the segmentation shards, and where the run was trained.
    """
    base = tmp_path_factory.mktemp("portable")
    recipe = load_recipe(
        "cacl/debug",
        [
            f"data.root={base / 'data'}",
            f"storage.path={base / 'runs'}",
            "storage.name=first",
            "scaling.num_workers=0",
            "model.backbone=resnet18",
            "model.output_stride=8",
            "model.width=64",
            "stages.cacl.steps=2",
            "stages.cacl.val_every=0",
            "storage.checkpoint_every=2",
            "eval=null",
        ],
    )
    trained = run_pretrain(recipe).run_dir
    stored = json.loads((trained / "stages.json").read_text())
    assert stored["cacl"]["checkpoint"] == "cacl/local_checkpoints/checkpoint_000002/state.pt"
    moved = base / "moved" / "first"
    moved.parent.mkdir()
    shutil.move(trained, moved)
    assert not trained.exists()
    return moved, base / "data" / "synthetic-debug" / "segmentation", str(trained)


def evaluate_report_and_export(run: Path, shards: Path, out: Path) -> None:
    scores, written = evaluate_target(run, data=str(shards), protocols=["kmeans"])
    assert written == run / "eval.json" and 0.0 <= scores["kmeans"]["miou"] <= 1.0
    summary = write_report(run)
    assert summary.evaluation and all(run in file.parents for file in summary.files)
    exported = export_backbone(run, out)
    assert (exported.stage, exported.backbone) == ("cacl", "resnet18")
    resnet = torchvision.models.resnet18()
    loaded = resnet.load_state_dict(torch.load(out, weights_only=True), strict=False)
    assert loaded.missing_keys == ["fc.weight", "fc.bias"]


@pytest.mark.integration
def test_a_moved_run_evaluates_reports_and_exports_from_its_new_place(moved_run, tmp_path):
    moved, shards, trained_at = moved_run
    run = tmp_path / "copy-of-a-copy"
    shutil.copytree(moved, run)
    evaluate_report_and_export(run, shards, tmp_path / "resnet18.pth")
    for name in STORED_FILES:  # no file the run stores points back to where it ran
        assert trained_at not in (run / name).read_text(), name


@pytest.mark.integration
def test_a_bucket_run_copied_to_a_disk_evaluates_and_exports(moved_run, tmp_path, s3_bucket):
    moved, shards, _ = moved_run
    bucket_run = f"{s3_bucket.url}/runs/first"
    s3_bucket.upload_folder(moved, bucket_run)
    checkpoint_url = f"{bucket_run}/cacl/local_checkpoints/checkpoint_000002/state.pt"
    # the driver records a bucket run's final checkpoint relative to the run's prefix
    write_stages(bucket_run, {"cacl": {"checkpoint": checkpoint_url, "last_step": 2}})
    stored = json.loads(storage.read_text(f"{bucket_run}/stages.json"))
    assert stored["cacl"]["checkpoint"] == "cacl/local_checkpoints/checkpoint_000002/state.pt"
    assert resolve_in_run(bucket_run, stored["cacl"]["checkpoint"], "x") == checkpoint_url

    local = tmp_path / "from-the-bucket"
    filesystem, path = pafs.FileSystem.from_uri(bucket_run)
    pafs.copy_files(path, str(local), source_filesystem=filesystem)
    _, checkpoint = run_checkpoint(local)
    assert Path(checkpoint).is_relative_to(local)
    evaluate_report_and_export(local, shards, tmp_path / "resnet18.pth")

    # a bucket run written before runs were portable holds URLs: the disk copy is used
    (local / "stages.json").write_text(json.dumps({"cacl": {"checkpoint": checkpoint_url}}))
    assert run_checkpoint(local)[1] == str(local / path_in_run(bucket_run, checkpoint_url))


def test_older_runs_with_absolute_paths_still_resolve(tmp_path):
    def make_run(run: Path) -> str:
        checkpoint = run / "cacl" / "checkpoint_000004" / "state.pt"
        checkpoint.parent.mkdir(parents=True)
        checkpoint.write_bytes(b"state")
        return str(checkpoint)

    absolute = make_run(tmp_path / "runs" / "old")
    assert path_in_run(tmp_path / "runs" / "old", absolute) == "cacl/checkpoint_000004/state.pt"
    assert path_in_run(tmp_path / "runs" / "old", "/elsewhere/state.pt") == "/elsewhere/state.pt"
    assert path_in_run("s3://b/runs/old", "s3://b/runs/old/cacl/c/state.pt") == "cacl/c/state.pt"
    assert Path(resolve_in_run(tmp_path / "runs" / "old", absolute, "x")) == Path(absolute)
    (tmp_path / "runs" / "old").rename(tmp_path / "moved")  # absolute, into the old place
    found = resolve_in_run(tmp_path / "moved", absolute, "x")
    assert found == tmp_path / "moved" / "cacl" / "checkpoint_000004" / "state.pt"
    url = "s3://bucket/runs/old/cacl/checkpoint_000004/state.pt"  # a bucket run, on disk now
    assert resolve_in_run(tmp_path / "moved", url, "x") == found
    assert resolve_in_run(tmp_path / "moved", "cacl/checkpoint_000004/state.pt", "x") == found

    shutil.rmtree(tmp_path / "moved" / "cacl")  # copied without its stage folders
    for stored in (absolute, "cacl/checkpoint_000004/state.pt"):
        with pytest.raises(CsegError, match="copy or move the whole run directory") as error:
            resolve_in_run(tmp_path / "moved", stored, "stage cacl's checkpoint")
        assert "\n" not in str(error.value)


class Interrupted(Exception):
    """Stands in for a killed driver."""


def test_a_run_moved_mid_pipeline_resumes_there_with_every_step_once(tmp_path, monkeypatch):
    """Stopped in the middle of its second stage (cacl finished, maskcontrast checkpointed at
    its step 2), moved, and resumed: cacl is skipped, maskcontrast continues from its
    checkpoint in the moved run, reco starts from maskcontrast's final checkpoint."""

    def recipe(storage):
        return load_recipe(
            "pipeline/cacl_maskcontrast_reco_debug",
            [
                f"data.root={tmp_path / 'data'}",
                f"storage.path={storage}",
                "storage.name=pipe",
                "storage.checkpoint_every=2",
                "eval=null",
            ],
        )

    append = MetricsLog.append

    def append_then_stop(self, record):
        append(self, record)
        if record["step"] == 7:  # maskcontrast's step 3: its checkpoint of step 2 is saved
            raise Interrupted

    monkeypatch.setattr(MetricsLog, "append", append_then_stop)
    with pytest.raises(Interrupted):
        run_pretrain(recipe(tmp_path / "runs"))
    monkeypatch.undo()
    ran_at = tmp_path / "runs" / "pipe"
    before = (ran_at / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in before] == list(range(1, 8))
    assert list(read_stages(ran_at)) == ["cacl"]
    shutil.move(ran_at, tmp_path / "moved" / "pipe")

    resumed = run_pretrain(recipe(tmp_path / "moved"), resume=True)
    run = tmp_path / "moved" / "pipe"
    assert resumed.resumed and resumed.run_dir == run and not ran_at.exists()
    lines = (run / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    expected = [*(["cacl"] * 4), *(["maskcontrast"] * 4), *(["reco"] * 4)]
    assert [r["stage"] for r in records] == expected
    assert [r["step"] for r in records] == list(range(1, 13))
    # maskcontrast resumed from its step-2 checkpoint: its first two lines are the originals
    assert lines[:6] == before[:6] and lines[6] != before[6]
    stored = read_stages(run)
    assert list(stored) == ["cacl", "maskcontrast", "reco"]
    assert all(not Path(entry["checkpoint"]).is_absolute() for entry in stored.values())
    assert load_state(resumed.checkpoints["maskcontrast"])["step"] == 8
    assert load_state(resumed.checkpoints["reco"])["step"] == 12
    for name in ("config.yaml", "stages.json", "metrics.jsonl", "workers.jsonl"):
        assert str(ran_at) not in (run / name).read_text(), name
