"""evaluate_backbone: protocol names, result shape (CONTRACTS.md §3) and skips."""

from __future__ import annotations

import json

import pytest
import torch
from eval_scenes import PoolingBackbone, as_batches, color_blocks

from raycseg.errors import CsegError
from raycseg.eval import evaluate_backbone, protocol_key
from raycseg.models import MaskContrastHead, build_backbone


def test_cli_names_map_to_eval_json_keys():
    assert protocol_key("linear-probe") == "linear_probe"
    assert protocol_key("maskcontrast-kmeans") == "maskcontrast_kmeans"
    assert protocol_key("kmeans") == "kmeans"
    with pytest.raises(CsegError, match="use one of linear-probe, kmeans, maskcontrast-kmeans"):
        protocol_key("knn")


def test_default_protocols_give_the_eval_json_shape_and_skips_say_why():
    train = as_batches(*color_blocks(16, seed=0), batch_size=8)
    val = as_batches(*color_blocks(8, seed=1), batch_size=4)
    scores = evaluate_backbone(
        PoolingBackbone(1),
        train_batches=train,
        val_batches=val,
        num_classes=4,
        device="cpu",
        protocols=("linear-probe", "kmeans", "maskcontrast-kmeans"),
        probe_steps=100,
        probe_lr=0.1,
    )
    assert set(scores) == {"linear_probe", "kmeans", "skipped"}
    assert scores["kmeans"]["seed"] == 0 and scores["kmeans"]["miou"] == pytest.approx(1.0)
    assert scores["linear_probe"]["miou"] >= 0.99
    assert "maskcontrast-kmeans needs the MaskContrast" in scores["skipped"]["maskcontrast_kmeans"]
    for key in ("linear_probe", "kmeans"):
        assert 0.0 <= scores[key]["miou"] <= 1.0
        assert len(scores[key]["per_class_iou"]) == 4
    json.dumps(scores)  # plain JSON types only


def test_probe_without_training_data_is_skipped_not_failed():
    val = as_batches(*color_blocks(8, seed=1), batch_size=4)
    scores = evaluate_backbone(
        PoolingBackbone(4), train_batches=None, val_batches=val, num_classes=4, device="cpu"
    )
    assert set(scores) == {"kmeans", "skipped"}
    assert "labelled training split" in scores["skipped"]["linear_probe"]


def test_a_maskcontrast_model_runs_all_three_protocols_frozen():
    torch.manual_seed(0)
    model = MaskContrastHead(build_backbone("tiny", width=8), embedding_dim=8, aspp_rates=(1, 2, 3))
    with torch.no_grad():
        model.saliency.weight.fill_(1.0)  # ReLU features ≥ 0: every pixel is salient
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train = as_batches(*color_blocks(8, seed=0), batch_size=4)
    val = as_batches(*color_blocks(8, seed=1), batch_size=4)
    scores = evaluate_backbone(
        model,
        train_batches=train,
        val_batches=val,
        num_classes=4,
        device="cpu",
        protocols=("linear-probe", "kmeans", "maskcontrast-kmeans"),
        probe_steps=2,
        feature_fn=model.decoder_features,
        embed_fn=model,
    )
    assert set(scores) == {"linear_probe", "kmeans", "maskcontrast_kmeans"}
    assert len(scores["maskcontrast_kmeans"]["miou_per_seed"]) == 5
    assert model.training  # restored after each protocol
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
