"""A user's own shards through data-path overrides only: what is built, checked and scored."""

from __future__ import annotations

import json

import pytest
from cseg.main import app
from debug_checkpoint import save_debug_checkpoint
from typer.testing import CliRunner
from voc_tree import voc_shards

from raycseg.config import load_recipe, synthetic_dir
from raycseg.data.synthetic import prepare_data

RUNNER = CliRunner()


def cseg(*args):
    """`cseg ARGS` in process on the root app."""
    return RUNNER.invoke(app, list(args))


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Segmentation shards with a train and a val split (5 classes: VOC's first ids)."""
    return voc_shards(tmp_path_factory.mktemp("own"))


def test_generated_data_is_built_only_when_the_run_reads_it(tmp_path, shards):
    own = [f"data.root={tmp_path}", f"stages.cacl.data.val={shards}", f"eval.data={shards}"]
    reads_generated = load_recipe("cacl/debug", own, check_files=False)  # train still generated
    assert synthetic_dir(reads_generated) == f"{tmp_path}/synthetic-debug"
    mine = load_recipe("cacl/debug", [*own, f"stages.cacl.data.train={shards}"], check_files=False)
    assert mine.data.synthetic is not None and synthetic_dir(mine) is None
    prepare_data(mine)
    assert not (tmp_path / "synthetic-debug").exists()


def test_shards_of_the_wrong_kind_are_refused_before_anything_starts(shards):
    result = cseg("pretrain", "cacl/debug", f"stages.cacl.data.train={shards}", "--dry-run")
    assert result.exit_code == 2 and result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert f"stages.cacl.data.train: {shards} holds segmentation shards" in line
    assert "needs video shards" in line and "Traceback" not in result.stderr


def test_class_counts_come_from_the_manifest_and_a_disagreeing_one_is_refused(shards):
    paths = [f"stages.cacl.data.val={shards}", f"eval.data={shards}"]
    result = cseg("pretrain", "cacl/debug", *paths, "--dry-run")
    assert result.exit_code == 0, result.stderr
    assert "num_classes: 21" in result.stdout  # the VOC class list of the shards
    result = cseg("pretrain", "cacl/debug", *paths, "eval.num_classes=5", "--dry-run")
    assert result.exit_code == 2
    assert "eval.num_classes=5, but" in result.stderr and "has 21 classes" in result.stderr


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, shards):
    """A cacl/debug checkpoint (random weights) whose recipe evaluates `shards`."""
    return save_debug_checkpoint(
        tmp_path_factory.mktemp("ckpt") / "run",
        [f"eval.data={shards}", "eval.linear_probe.epochs=1"],
    )


def test_eval_chooses_split_classes_and_settings_and_prints_json(checkpoint, shards):
    earlier = cseg("eval", str(checkpoint), "--protocol", "kmeans", "--baseline", "random")
    assert earlier.exit_code == 0, earlier.stderr  # eval.json now holds a baseline
    assert f"scored: {shards} split val, 2 images, 21 classes" in earlier.stdout
    result = cseg(
        "eval", str(checkpoint), "eval.image_size=24", "--split", "train", "--num-classes", "21",
        "--protocol", "kmeans", "--baseline", "none", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    scores = json.loads(result.stdout)
    assert scores["data"]["split"] == "train" and scores["data"]["images"] == 4
    assert len(scores["kmeans"]["per_class_iou"]) == 21
    assert "baseline_random" not in scores  # this evaluation's scores, not eval.json's
    assert "baseline_random" in json.loads((checkpoint / "eval.json").read_text())
    assert scores["kmeans"]["protocol"]["input"].startswith("each image resized to 24x24")


def test_eval_refuses_bad_choices_and_exits_1_when_a_protocol_cannot_run(checkpoint, shards):
    bad = cseg("eval", str(checkpoint), "--baseline", "imagenet")
    assert bad.exit_code == 2 and "imagenet" in bad.stderr
    outside = cseg("eval", str(checkpoint), "stages.cacl.steps=3")
    assert outside.exit_code == 2 and "eval section only" in outside.stderr
    split = cseg("eval", str(checkpoint), "--data", str(shards), "--split", "test")
    assert split.exit_code == 2 and "no 'test' split (it has train, val)" in split.stderr
    skipped = cseg("eval", str(checkpoint), "--protocol", "maskcontrast-kmeans")
    assert skipped.exit_code == 1
    assert "maskcontrast_kmeans" in skipped.stderr and "could not run" in skipped.stderr
