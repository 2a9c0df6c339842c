"""Data checks before Ray starts: nothing ever scores training data as validation."""

from __future__ import annotations

import pytest
import torch
from voc_tree import voc_shards

from raycseg.config import load_recipe
from raycseg.errors import DataError, RecipeError
from raycseg.train.launch import run_pretrain


def voc_shards_without_val(root):
    """Segmentation shards of a VOC tree that lists only train ids (split `train`)."""
    return voc_shards(root, train=4, val=0)


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
        "reco/voc_60labels_debug",
        [f"stages.reco.data.val={shards}", "stages.reco.num_classes=5"],
        check_files=False,
    )
    stage = recipe.stages[0]
    with pytest.raises(DataError, match="no 'val' split"):
        ReCo(stage, recipe.model).validation_metrics(torch.device("cpu"))
