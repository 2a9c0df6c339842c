"""`cseg eval --protocol davis`: label propagation on VOS shards, scores and predictions."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cseg.main import app
from debug_checkpoint import save_debug_checkpoint
from PIL import Image
from typer.testing import CliRunner

from raycseg.data.synthetic_vos import write_davis_tree
from raycseg.shards.build import build_shards

RUNNER = CliRunner()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A cacl/debug checkpoint (random weights, the tiny stride-4 backbone)."""
    return save_debug_checkpoint(tmp_path_factory.mktemp("ckpt") / "run")


@pytest.mark.real_data
@pytest.mark.integration
def test_the_real_sequences_are_scored_and_every_frame_predicted(checkpoint, real_data, tmp_path):
    vos = tmp_path / "vos"
    build_shards("vos", real_data / "davis", vos, layout="davis")
    predictions = tmp_path / "predictions"
    result = RUNNER.invoke(app, [
        "eval", str(checkpoint), "--data", str(vos), "--save-predictions", str(predictions),
        "eval.davis.resolution=96",
    ])  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert (
        "davis: J&F" in result.stdout
        and "3 sequences, 3 objects, 94 frames scored" in result.stdout
    )
    davis = json.loads((checkpoint / "eval.json").read_text())["davis"]
    assert set(davis["sequences"]) == {"blackswan", "car-shadow", "chair"}
    assert davis["frames_scored"] == 28 + 28 + 38  # the first and last frames are not scored
    assert 0.0 <= davis["jf_mean"] <= 1.0
    assert davis["jf_mean"] == pytest.approx((davis["j_mean"] + davis["f_mean"]) / 2)
    assert davis["protocol"]["radius"] == 12 and davis["protocol"]["topk"] == 10
    assert "short side of 96 px" in davis["protocol"]["input"]
    assert "average-pooled to stride 8" in davis["protocol"]["features"]

    chair = sorted((predictions / "chair").iterdir())
    assert [p.stem for p in chair] == [f"{i:05d}" for i in range(40)]  # frame 0 included
    first = Image.open(chair[0])
    assert first.mode == "P" and first.size == (720, 480)  # a palette PNG at the frame's size
    given = Image.open(real_data / "davis" / "Annotations" / "480p" / "chair" / "00000.png")
    np.testing.assert_array_equal(np.asarray(first), np.asarray(given))
    assert set(np.unique(np.asarray(Image.open(chair[20])))) <= {0, 1}
    assert not list(predictions.glob(".*"))  # no staging folder left behind


def test_generated_multi_object_sequences_score_both_models_with_the_protocol_record(
    checkpoint, tmp_path
):
    tree = write_davis_tree(tmp_path / "davis", sequences=2, frames=6, image_size=48)
    vos = tmp_path / "vos"
    build_shards("vos", tree, vos, layout="davis")
    result = RUNNER.invoke(app, [
        "eval", str(checkpoint), "--protocol", "davis", "--vos", str(vos), "--baseline", "random",
        "eval.davis.radius=6", "eval.davis.context=3", "--json",
    ])  # fmt: skip
    assert result.exit_code == 0, result.stderr
    scores = json.loads(result.stdout)
    assert scores["davis"]["objects"] >= 4  # two sequences of 2-3 objects
    assert scores["davis"]["protocol"]["radius"] == 6
    assert "previous 3" in scores["davis"]["protocol"]["context"]
    assert "davis" in scores["baseline_random"]
    # this checkpoint holds the recipe's initial weights, which is what the baseline rebuilds
    assert scores["davis"]["jf_mean"] == scores["baseline_random"]["davis"]["jf_mean"]


def test_missing_or_wrong_vos_data_is_refused_with_the_fix(checkpoint, tmp_path):
    result = RUNNER.invoke(app, ["eval", str(checkpoint), "--vos", str(checkpoint)])
    assert result.exit_code == 2 and "no manifest.json" in result.stderr
    result = RUNNER.invoke(app, ["eval", str(checkpoint), "--protocol", "davis"])
    assert result.exit_code == 1  # no VOS data: davis is skipped, and says why
    assert "davis needs VOS shards" in result.stderr


def test_the_paper_suite_runs_what_the_checkpoint_and_data_support_in_one_eval_json(
    checkpoint, tmp_path
):
    from voc_tree import voc_shards

    segmentation = voc_shards(tmp_path / "seg", train=4, val=2, size=16)
    tree = write_davis_tree(tmp_path / "davis", sequences=1, frames=4, image_size=32)
    vos = tmp_path / "vos"
    build_shards("vos", tree, vos, layout="davis")
    result = RUNNER.invoke(app, [
        "eval", str(checkpoint), "--suite", "paper", "--data", str(segmentation), "--vos", str(vos),
        "eval.image_size=16", "eval.linear_probe.epochs=1", "eval.linear_probe.batch_size=2",
        "eval.overcluster_ks=[4, 1000]",
        "eval.davis.resolution=32", "--baseline", "none", "--json",
    ])  # fmt: skip
    assert result.exit_code == 0, result.stderr  # the protocols it cannot run are no failure
    scores = json.loads(result.stdout)
    assert {"linear_probe", "kmeans", "overcluster", "davis"} <= set(scores)
    assert scores["kmeans"]["seeds"] == [0, 1, 2, 3, 4] and "miou_std" in scores["kmeans"]
    assert scores["kmeans"]["protocol"]["seeds"] == [0, 1, 2, 3, 4]
    overcluster = scores["overcluster"]
    assert set(overcluster["per_k"]) == {"4", "1000"} and overcluster["seeds"] == [0, 1, 2, 3, 4]
    assert overcluster["per_k"]["1000"]["k"] < 1000 and "clamped" in overcluster["notes"][0]
    assert set(scores["skipped"]) == {"maskcontrast_kmeans", "segmentation"}
    assert "maskcontrast stage" in scores["skipped"]["maskcontrast_kmeans"]
    written = json.loads((checkpoint / "eval.json").read_text())
    assert {"linear_probe", "kmeans", "overcluster", "davis", "data"} <= set(written)


def test_the_davis_benchmark_compares_with_the_initial_weights_per_seed(checkpoint):
    from raycseg.bench.davis import benchmark_davis

    before = (checkpoint / "eval.json").read_text() if (checkpoint / "eval.json").exists() else None
    results = benchmark_davis(checkpoint, seeds=2, sequences=1, frames=4, image_size=32)
    assert [r["seed"] for r in results["rounds"]] == [0, 1]
    # these weights are the recipe's initial ones: no gain on any seed
    assert all(r["gain"] == 0.0 for r in results["rounds"]) and results["seeds_won"] == 0
    assert results["rounds"][0]["pretrained_jf"] != results["rounds"][1]["pretrained_jf"]
    after = (checkpoint / "eval.json").read_text() if (checkpoint / "eval.json").exists() else None
    assert before == after  # the benchmark leaves the run's eval.json alone


def test_pretrain_checks_the_davis_data_of_its_eval_section_before_it_starts(tmp_path):
    from voc_tree import voc_shards

    segmentation = voc_shards(tmp_path / "seg")
    own = [f"stages.cacl.data.val={segmentation}", f"eval.data={segmentation}"]
    result = RUNNER.invoke(
        app, ["pretrain", "cacl/debug", *own, f"eval.davis.data={segmentation}", "--dry-run"]
    )
    assert result.exit_code == 2
    assert f"eval.davis.data: {segmentation} holds segmentation shards" in result.stderr
    assert "--kind vos" in result.stderr
    tree = write_davis_tree(tmp_path / "davis", sequences=1, frames=3, image_size=32)
    build_shards("vos", tree, tmp_path / "vos", layout="davis")
    result = RUNNER.invoke(
        app, ["pretrain", "cacl/debug", *own, f"eval.davis.data={tmp_path / 'vos'}", "--dry-run"]
    )
    assert result.exit_code == 0, result.stderr
