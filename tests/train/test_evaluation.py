"""`evaluate_checkpoint`: what eval.json records, and which features each protocol reads."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from raycseg.config import load_recipe
from raycseg.data.synthetic import build_synthetic
from raycseg.errors import DataError
from raycseg.media.images import decode_mask
from raycseg.methods import build_method
from raycseg.shards.manifest import list_shard_urls
from raycseg.shards.tars import iter_shard_samples
from raycseg.train.checkpoint import save_state
from raycseg.train.evaluation import evaluate_checkpoint


@pytest.fixture(scope="module")
def segmentation(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "data"
    build_synthetic(out, seed=1, num_clips=6, val_clips=4, image_size=32, frames=4, num_procs=1)
    return out / "segmentation"


def _val_pixels(root) -> int:
    masks = [
        decode_mask(s["png"]) for u in list_shard_urls(root, "val") for s in iter_shard_samples(u)
    ]
    return sum(int((mask != 255).sum()) for mask in masks)


def test_a_maskcontrast_checkpoint_is_probed_on_its_decoder_and_eval_json_says_what_ran(
    tmp_path, segmentation
):
    recipe = load_recipe(
        "maskcontrast/debug",
        [f"eval.data={segmentation}", "eval.linear_probe.epochs=1", "eval.baseline=random"],
        check_files=False,
    )
    torch.manual_seed(0)
    method = build_method(recipe.stages[0], recipe.model)
    state = {"backbone": method.backbone.state_dict(), "model": method.state_dict(),
             "recipe": recipe.model_dump(mode="json"), "stage": "maskcontrast"}  # fmt: skip
    save_state(tmp_path / "ckpt", state)
    scores = evaluate_checkpoint(
        tmp_path / "ckpt", recipe, run_dir=tmp_path, protocols=["linear-probe", "kmeans"]
    )
    probe, kmeans = scores["linear_probe"]["protocol"], scores["kmeans"]["protocol"]
    assert probe["features"] == "MaskContrast decoder features (256-d)"
    assert kmeans["features"].startswith("backbone")
    assert scores["baseline_random"]["linear_probe"]["protocol"]["features"] == "backbone"
    assert probe["input"].startswith("each image resized to 32x32")
    assert probe["differs_from_paper"]["epochs"] == {"ran": 1, "paper": 60}
    pixels = _val_pixels(segmentation)
    for key in ("linear_probe", "kmeans"):
        assert scores[key]["pixels_scored"] == pixels
    assert scores["data"] == {
        "shards": str(segmentation),
        "split": "val",
        "images": 4,
        "classes": json.loads((segmentation / "manifest.json").read_text())["classes"],
    }
    assert json.loads((tmp_path / "eval.json").read_text())["data"] == scores["data"]
    assert all("samples" not in scores[key] for key in ("linear_probe", "kmeans"))
    index = json.loads((tmp_path / "eval_samples" / "index.json").read_text())
    assert index["protocols"] == ["linear_probe", "kmeans"] and len(index["samples"]) == 4
    for sample in index["samples"]:
        label = np.array(Image.open(tmp_path / "eval_samples" / sample["label"]))
        for key in ("image", "linear_probe", "kmeans"):
            picture = np.array(Image.open(tmp_path / "eval_samples" / sample[key]))
            assert picture.shape[:2] == label.shape  # every picture at the mask's own size
        assert set(np.unique(label)) <= set(range(5)) | {255}


def test_evaluation_scores_val_and_never_another_split(tmp_path, segmentation):
    recipe = load_recipe("cacl/debug", [f"eval.data={segmentation}"], check_files=False)
    manifest = json.loads((segmentation / "manifest.json").read_text())
    manifest["splits"] = {"train": manifest["splits"]["train"]}
    other = tmp_path / "train-only"
    other.mkdir()
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=r"no 'val' split \(it has train\)"):
        evaluate_checkpoint(tmp_path / "any", recipe, data=str(other))


def test_plain_weights_are_evaluated_with_the_recipe_given(tmp_path, segmentation):
    import torchvision
    import yaml

    from raycseg.errors import CsegError
    from raycseg.train.eval_targets import evaluate_target

    weights = tmp_path / "weights" / "resnet18.pth"
    weights.parent.mkdir()
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    with pytest.raises(CsegError, match="pass --recipe NAME"):
        evaluate_target(weights, data=str(segmentation), protocols=["kmeans"])
    recipe = tmp_path / "resnet18.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "r18", "model": {"backbone": "resnet18", "output_stride": 8},
        "stages": [{"method": "cacl", "steps": 1, "data": {"train": "video"}}],
        "eval": {"data": str(segmentation), "num_classes": 5, "image_size": 32},
    }))  # fmt: skip
    scores, written = evaluate_target(weights, recipe=str(recipe), protocols=["kmeans"])
    assert written == weights.parent / "eval.json"
    assert json.loads(written.read_text())["kmeans"]["miou"] == scores["kmeans"]["miou"]
