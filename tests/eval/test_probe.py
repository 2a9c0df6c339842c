"""The linear probe (MaskContrast's linear protocol) on features separable by construction."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from eval_scenes import PoolingBackbone, as_batches, color_blocks

from raycseg.config import LinearProbeSection
from raycseg.errors import DataError
from raycseg.eval import run_linear_probe
from raycseg.eval.batches import ProbeEpochs
from raycseg.eval.probe import _decays_before, upsample_bilinear
from raycseg.models import build_backbone


def _splits():
    train = as_batches(*color_blocks(24, seed=0), batch_size=8)
    val = as_batches(*color_blocks(12, seed=1), batch_size=5)
    return ProbeEpochs(lambda _epoch: train, len(train), 24), val


def _settings(**changes) -> LinearProbeSection:
    return LinearProbeSection(**{"epochs": 3, "batch_size": 8, "lr": 0.1, **changes})


@pytest.mark.parametrize("cache_bytes", [2**30, 0], ids=["cached", "recomputed"])
def test_probe_separates_colour_coded_classes(cache_bytes):
    train, val = _splits()
    result = run_linear_probe(
        PoolingBackbone(1), train, val, 4, settings=_settings(epochs=20), device="cpu",
        cache_bytes=cache_bytes,
    )  # fmt: skip
    assert result["miou"] >= 0.99
    assert len(result["per_class_iou"]) == 4
    labels = torch.cat([batch["label"] for batch in val])
    assert result["pixels_scored"] == int((labels != 255).sum())


def test_the_learning_rate_drops_after_each_decay_epoch_as_the_official_schedule():
    settings = _settings(lr_decay_epochs=[25])
    # official: lr x 0.1 ** sum(epoch > 25), epochs counted from 0
    assert [_decays_before(epoch, settings) for epoch in (0, 25, 26, 59)] == [0, 0, 1, 1]
    two = _settings(lr_decay_epochs=[2, 4])
    assert [_decays_before(epoch, two) for epoch in range(6)] == [0, 0, 0, 1, 1, 2]


def test_the_best_epoch_is_kept_or_only_the_last_is_scored():
    train, val = _splits()
    best = run_linear_probe(
        PoolingBackbone(1), train, val, 4, settings=_settings(epochs=4, lr=0.5), device="cpu"
    )
    assert len(best["miou_per_epoch"]) == 4
    assert best["miou"] == max(best["miou_per_epoch"])
    assert best["miou_per_epoch"][best["epoch"] - 1] == best["miou"]
    last = run_linear_probe(
        PoolingBackbone(1), train, val, 4, settings=_settings(epochs=4, lr=0.5, select_best=False),
        device="cpu",
    )  # fmt: skip
    assert last["epoch"] == 4 and last["miou_per_epoch"] == [best["miou_per_epoch"][-1]]


def test_probe_is_seeded_reads_feature_fn_and_computes_val_features_once():
    train, val = _splits()
    calls = []

    def colour_only(images: torch.Tensor) -> torch.Tensor:
        calls.append(images.shape)
        return images

    kwargs = dict(settings=_settings(), device="cpu", seed=3, feature_fn=colour_only)
    first = run_linear_probe(PoolingBackbone(1), train, val, 4, **kwargs)
    again = run_linear_probe(PoolingBackbone(1), train, val, 4, **kwargs)
    assert first == again
    # per run: 3 epochs of training batches, and the validation features once (cached)
    assert len(calls) == 2 * (3 * train.steps_per_epoch + len(val))
    calls.clear()
    run_linear_probe(PoolingBackbone(1), train, val, 4, cache_bytes=0, **kwargs)
    assert len(calls) == 3 * train.steps_per_epoch + 1 + 3 * len(val)  # recomputed per epoch


def test_probe_leaves_a_real_backbone_frozen_and_in_its_mode():
    torch.manual_seed(0)
    backbone = build_backbone("tiny", width=8).train()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    train, val = _splits()
    result = run_linear_probe(backbone, train, val, 4, settings=_settings(epochs=1), device="cpu")
    assert 0.0 <= result["miou"] <= 1.0
    assert backbone.training
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, before[key]), key  # BN statistics included


def test_probe_rejects_one_shot_iterators_and_bad_labels():
    train, val = _splits()
    settings = _settings(epochs=1)
    with pytest.raises(TypeError, match="one-shot iterator"):
        run_linear_probe(PoolingBackbone(1), train, iter(val), 4, settings=settings, device="cpu")
    with pytest.raises(DataError, match="label value 3"):
        run_linear_probe(PoolingBackbone(1), train, val, 3, settings=settings, device="cpu")


@pytest.mark.parametrize(
    ("size_in", "size_out"), [((4, 4), (16, 16)), ((5, 3), (17, 8)), ((6, 6), (6, 6))]
)
def test_matrix_upsampling_equals_bilinear_interpolation(size_in, size_out):
    logits = torch.randn(2, 3, *size_in)
    expected = F.interpolate(logits, size=size_out, mode="bilinear", align_corners=False)
    torch.testing.assert_close(upsample_bilinear(logits, size_out), expected)
