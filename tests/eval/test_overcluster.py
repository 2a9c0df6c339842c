"""Overclustering: many clusters, each named by the class it overlaps most on train."""

from __future__ import annotations

import pytest
import torch
from eval_scenes import PoolingBackbone, as_batches, color_blocks

from raycseg.eval.metrics import ProtocolSkipped
from raycseg.eval.overcluster import run_overcluster_protocol


def test_colour_coded_classes_score_one_for_every_k_and_seed_and_k_is_clamped():
    train = as_batches(*color_blocks(8, grid=4, block=4, seed=1), 4)
    val = as_batches(*color_blocks(6, grid=4, block=4, seed=2), 3)
    result = run_overcluster_protocol(
        PoolingBackbone(4), train, val, 4, device="cpu", ks=[6, 1000], seeds=[0, 1, 2]
    )
    six, most = result["per_k"]["6"], result["per_k"]["1000"]
    assert six["k"] == 6 and six["miou"] == pytest.approx(1.0) and six["miou_std"] == 0.0
    assert six["miou_per_seed"] == pytest.approx([1.0, 1.0, 1.0])
    assert most["k"] == 8 * 16  # one cluster per train feature pixel at most
    assert most["miou"] == pytest.approx(1.0)
    assert result["notes"] == ["K=1000 clamped to 128: the train split has 128 feature pixels"]
    assert result["seeds"] == [0, 1, 2]
    assert result["pixels_scored"] == sum(int((b["label"] != 255).sum()) for b in val)


def test_one_cluster_per_class_is_too_few_when_colours_do_not_tell_the_classes():
    images, labels = color_blocks(8, grid=4, block=4, seed=3)
    shuffled = labels.clone()
    shuffled[labels != 255] = (labels[labels != 255] + torch.randint(0, 2, (1,)).item()) % 4
    train = as_batches(images, labels, 4)
    val = as_batches(images, shuffled.roll(1, dims=0), 4)  # labels of other images
    result = run_overcluster_protocol(
        PoolingBackbone(4), train, val, 4, device="cpu", ks=[4], seeds=[0]
    )
    assert result["per_k"]["4"]["miou"] < 0.6


def test_overcluster_needs_train_pixels():
    val = as_batches(*color_blocks(2, grid=2, block=4), 2)
    with pytest.raises(ProtocolSkipped, match="train split"):
        run_overcluster_protocol(PoolingBackbone(4), [], val, 4, device="cpu", ks=[4], seeds=[0])
