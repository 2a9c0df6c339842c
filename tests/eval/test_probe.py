"""Linear probe on frozen features that are linearly separable by construction."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from eval_scenes import PoolingBackbone, as_batches, color_blocks

from raycseg.errors import DataError
from raycseg.eval import run_linear_probe
from raycseg.eval.probe import upsample_bilinear
from raycseg.models import build_backbone


def _splits():
    train = as_batches(*color_blocks(24, seed=0), batch_size=8)
    val = as_batches(*color_blocks(12, seed=1), batch_size=5)
    return train, val


@pytest.mark.parametrize("cache_bytes", [2**30, 0], ids=["cached", "streaming"])
def test_probe_separates_colour_coded_classes(cache_bytes):
    train, val = _splits()
    result = run_linear_probe(
        PoolingBackbone(1),
        train,
        val,
        4,
        steps=150,
        lr=0.1,
        device="cpu",
        batch_size=8,
        cache_bytes=cache_bytes,
    )
    assert result["miou"] >= 0.99
    assert len(result["per_class_iou"]) == 4


def test_probe_is_seeded_and_reads_feature_fn():
    train, val = _splits()
    calls = []

    def colour_only(images: torch.Tensor) -> torch.Tensor:
        calls.append(images.shape)
        return images

    kwargs = dict(steps=5, lr=0.01, device="cpu", batch_size=4, seed=3)
    first = run_linear_probe(PoolingBackbone(1), train, val, 4, feature_fn=colour_only, **kwargs)
    again = run_linear_probe(PoolingBackbone(1), train, val, 4, feature_fn=colour_only, **kwargs)
    assert first == again
    assert len(calls) == 2 * (len(train) + len(val))


def test_probe_leaves_a_real_backbone_frozen_and_in_its_mode():
    torch.manual_seed(0)
    backbone = build_backbone("tiny", width=8).train()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    train, val = _splits()
    result = run_linear_probe(backbone, train, val, 4, steps=3, lr=0.01, device="cpu")
    assert 0.0 <= result["miou"] <= 1.0
    assert backbone.training
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, before[key]), key  # BN statistics included


def test_probe_rejects_one_shot_iterators_and_bad_labels():
    train, val = _splits()
    with pytest.raises(TypeError, match="one-shot iterator"):
        run_linear_probe(PoolingBackbone(1), iter(train), val, 4, steps=1, lr=0.1, device="cpu")
    with pytest.raises(DataError, match="label value 3"):
        run_linear_probe(PoolingBackbone(1), train, val, 3, steps=1, lr=0.1, device="cpu")


@pytest.mark.parametrize(
    ("size_in", "size_out"), [((4, 4), (16, 16)), ((5, 3), (17, 8)), ((6, 6), (6, 6))]
)
def test_matrix_upsampling_equals_bilinear_interpolation(size_in, size_out):
    logits = torch.randn(2, 3, *size_in)
    expected = F.interpolate(logits, size=size_out, mode="bilinear", align_corners=False)
    torch.testing.assert_close(upsample_bilinear(logits, size_out), expected)
