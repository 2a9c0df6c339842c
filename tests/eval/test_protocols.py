"""evaluate_backbone: protocol names, result shape (eval.json), skips, segmentation."""

from __future__ import annotations

import json
from importlib import metadata

import pytest
import torch
from eval_scenes import PALETTE, PoolingBackbone, as_batches, color_blocks

from raycseg.config import LinearProbeSection
from raycseg.errors import CsegError, DataError
from raycseg.eval import evaluate_backbone, protocol_key
from raycseg.eval.batches import ProbeEpochs
from raycseg.eval.segmentation import run_segmentation_protocol
from raycseg.models import DecoderFeatures, MaskContrastHead, build_backbone, normalize_images


def _epochs(batches: list[dict]) -> ProbeEpochs:
    return ProbeEpochs(lambda _epoch: batches, len(batches), sum(len(b["image"]) for b in batches))


def test_cli_names_map_to_eval_json_keys():
    assert protocol_key("linear-probe") == "linear_probe"
    assert protocol_key("maskcontrast-kmeans") == "maskcontrast_kmeans"
    assert protocol_key("kmeans") == "kmeans"
    assert protocol_key("segmentation") == "segmentation"
    with pytest.raises(CsegError, match="use one of linear-probe, kmeans, maskcontrast-kmeans"):
        protocol_key("knn")


def test_default_protocols_give_the_eval_json_shape_and_skips_say_why():
    train = as_batches(*color_blocks(16, seed=0), batch_size=8)
    val = as_batches(*color_blocks(8, seed=1), batch_size=4)
    short = LinearProbeSection(epochs=15, batch_size=8)
    scores = evaluate_backbone(
        PoolingBackbone(1),
        val_batches=val,
        num_classes=4,
        device="cpu",
        protocols=("linear-probe", "kmeans", "maskcontrast-kmeans"),
        probe=_epochs(train),
        probe_settings=short,
    )
    assert set(scores) == {"linear_probe", "kmeans", "skipped"}
    assert scores["kmeans"]["seed"] == 0 and scores["kmeans"]["miou"] == pytest.approx(1.0)
    assert scores["linear_probe"]["miou"] >= 0.99
    assert "maskcontrast-kmeans needs the MaskContrast" in scores["skipped"]["maskcontrast_kmeans"]
    scored = int((torch.cat([b["label"] for b in val]) != 255).sum())
    for key in ("linear_probe", "kmeans"):
        assert 0.0 <= scores[key]["miou"] <= 1.0
        assert len(scores[key]["per_class_iou"]) == 4
        assert scores[key]["pixels_scored"] == scored
        assert scores[key]["protocol"]["versions"]["torch"] == metadata.version("torch")
    record = scores["linear_probe"]["protocol"]
    assert record["epochs"] == 15 and record["optimizer"].startswith("SGD lr 0.1, momentum 0.9")
    assert record["differs_from_paper"] == {
        "epochs": {"ran": 15, "paper": 60},
        "batch_size": {"ran": 8, "paper": 16},
    }
    assert "own protocol" in scores["kmeans"]["protocol"]["name"]
    json.dumps(scores)  # plain JSON types only


def test_the_paper_probe_differs_from_nothing():
    train = as_batches(*color_blocks(16, seed=0), batch_size=8)
    val = as_batches(*color_blocks(4, seed=1), batch_size=4)
    paper = LinearProbeSection()
    scores = evaluate_backbone(
        PoolingBackbone(4), val_batches=val, num_classes=4, device="cpu",
        protocols=("linear-probe",), probe=_epochs(train), probe_settings=paper.model_copy(
            update={"epochs": 1}),
    )  # fmt: skip
    assert list(scores["linear_probe"]["protocol"]["differs_from_paper"]) == ["epochs"]
    assert scores["linear_probe"]["protocol"]["selection"].startswith("best epoch")


def test_probe_without_training_data_is_skipped_not_failed():
    val = as_batches(*color_blocks(8, seed=1), batch_size=4)
    scores = evaluate_backbone(PoolingBackbone(4), val_batches=val, num_classes=4, device="cpu")
    assert set(scores) == {"kmeans", "skipped"}
    assert "labelled training split" in scores["skipped"]["linear_probe"]


def test_a_maskcontrast_model_runs_its_protocols_frozen_and_the_probe_reads_its_decoder():
    torch.manual_seed(0)
    model = MaskContrastHead(build_backbone("tiny", width=8), embedding_dim=8, aspp_rates=(1, 2, 3))
    with torch.no_grad():
        model.saliency.weight.fill_(1.0)  # ReLU features ≥ 0: every pixel is salient
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train = as_batches(*color_blocks(8, seed=0), batch_size=4)
    val = as_batches(*color_blocks(8, seed=1), batch_size=4)
    read = []
    model.decoder.register_forward_hook(lambda module, args, out: read.append(out.shape[1]))
    scores = evaluate_backbone(
        model,
        val_batches=val,
        num_classes=4,
        device="cpu",
        protocols=("linear-probe", "maskcontrast-kmeans"),
        probe=_epochs(train),
        probe_settings=LinearProbeSection(epochs=1, batch_size=4),
        probe_features=DecoderFeatures(model),
        feature_source="MaskContrast decoder features (256-d)",
        embed_fn=model,
    )
    assert set(scores) == {"linear_probe", "maskcontrast_kmeans"}
    assert scores["linear_probe"]["protocol"]["features"].startswith("MaskContrast decoder")
    assert read and set(read) == {256}  # the probe trained and scored on 256-d decoder features
    assert len(scores["maskcontrast_kmeans"]["miou_per_seed"]) == 5
    assert model.training  # restored after each protocol
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


class PaletteSegmenter(torch.nn.Module):
    """Logits: minus the distance of each pixel's colour to each class colour."""

    def __init__(self, swap: tuple[int, int] | None = None):
        super().__init__()
        colours = normalize_images(PALETTE[:, :, None, None])[:, :, 0, 0]  # [C, 3]
        if swap:
            colours[list(swap)] = colours[list(reversed(swap))]
        self.register_buffer("colours", colours)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return -((images[:, None] - self.colours[None, :, :, None, None]) ** 2).sum(2)


def reference_miou(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """IoU per class from pixel counts, ignore (255) left out, mean over classes that occur."""
    ious = []
    for c in range(num_classes):
        kept = labels != 255
        tp = int(((predictions == c) & (labels == c) & kept).sum())
        union = int((((predictions == c) | (labels == c)) & kept).sum())
        if union:
            ious.append(tp / union)
    return sum(ious) / len(ious)


def test_segmentation_protocol_scores_the_segmenters_own_predictions():
    images, labels = color_blocks(8, seed=2)
    val = as_batches(images, labels, batch_size=3)
    perfect = run_segmentation_protocol(PaletteSegmenter(), val, 4, device="cpu")
    assert perfect["miou"] == pytest.approx(1.0) and len(perfect["per_class_iou"]) == 4
    swapped = run_segmentation_protocol(PaletteSegmenter(swap=(0, 1)), val, 4, device="cpu")
    predictions = torch.where(labels == 0, 1, torch.where(labels == 1, 0, labels))
    assert swapped["miou"] == pytest.approx(reference_miou(predictions, labels, 4))
    assert swapped["per_class_iou"][0] == 0.0 and swapped["per_class_iou"][3] == 1.0
    with pytest.raises(DataError, match="predicts 4 classes and the data has 5"):
        run_segmentation_protocol(PaletteSegmenter(), val, 5, device="cpu")


def test_segmentation_needs_a_segmenter_and_runs_it_frozen():
    val = as_batches(*color_blocks(4, seed=3), batch_size=2)
    scores = evaluate_backbone(
        PoolingBackbone(2), val_batches=val, num_classes=4, device="cpu",
        protocols=("segmentation",),
    )  # fmt: skip
    assert "evaluate a checkpoint of a reco stage" in scores["skipped"]["segmentation"]
    segmenter = PaletteSegmenter().train()
    modes = []
    scores = evaluate_backbone(
        segmenter, val_batches=val, num_classes=4, device="cpu",
        protocols=("segmentation",),
        segment_fn=lambda images: modes.append(segmenter.training) or segmenter(images),
    )  # fmt: skip
    assert scores["segmentation"]["miou"] == pytest.approx(1.0)
    assert modes == [False, False] and segmenter.training
