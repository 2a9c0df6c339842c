"""Data checks before Ray starts: nothing ever scores training data as validation."""

from __future__ import annotations

import numpy as np
import pytest

from raycseg.config import load_recipe
from raycseg.data.images import encode_jpeg, encode_mask_png
from raycseg.data.shards import build_shards
from raycseg.errors import DataError, RecipeError
from raycseg.train.launch import run_pretrain


def voc_shards_without_val(root):
    """Segmentation shards of a VOC tree that lists only train ids (split `train`)."""
    tree = root / "voc"
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (tree / folder).mkdir(parents=True)
    ids = [f"img{i}" for i in range(4)]
    for index, image_id in enumerate(ids):
        mask = np.zeros((16, 16), np.uint8)
        mask[4:12, 4:12] = index % 4 + 1
        (tree / "JPEGImages" / f"{image_id}.jpg").write_bytes(
            encode_jpeg(np.full((16, 16, 3), 60 * index, np.uint8))
        )
        (tree / "SegmentationClass" / f"{image_id}.png").write_bytes(encode_mask_png(mask))
    (tree / "ImageSets/Segmentation/train.txt").write_text("\n".join(ids) + "\n")
    build_shards("segmentation", tree, root / "shards", layout="voc", num_procs=1)
    return root / "shards"


def test_a_reco_stage_validating_on_shards_without_val_is_refused_before_anything_runs(tmp_path):
    shards = voc_shards_without_val(tmp_path)
    recipe = load_recipe(
        "reco/voc_60labels_debug",
        [f"data.root={tmp_path / 'data'}", f"storage.path={tmp_path / 'runs'}",
         f"stages.reco.data.val={shards}"],
    )  # fmt: skip
    with pytest.raises(
        RecipeError, match=r"stages\.reco\.data\.val: .* no 'val' split \(it has train\)"
    ):
        run_pretrain(recipe)
    assert not (tmp_path / "runs").exists()  # nothing written
    no_validation = load_recipe(
        "reco/voc_60labels_debug",
        [f"data.root={tmp_path / 'data'}", f"stages.reco.data.val={shards}", "stages.reco.val_every=0",
         f"eval.data={shards}", "eval.num_classes=5"],
    )  # fmt: skip
    with pytest.raises(RecipeError, match=r"^eval\.data: .* no 'val' split"):
        run_pretrain(no_validation)


def test_reco_validation_reads_the_val_split_and_nothing_else(tmp_path):
    from raycseg.methods.reco import ReCo

    shards = voc_shards_without_val(tmp_path)
    recipe = load_recipe(
        "reco/voc_60labels_debug", [f"stages.reco.data.val={shards}"], check_files=False
    )
    stage = recipe.stages[0]
    with pytest.raises(DataError, match="no 'val' split"):
        ReCo(stage, recipe.model).validation_metrics(stage, recipe, "cpu")
