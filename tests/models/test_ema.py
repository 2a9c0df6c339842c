"""EMA: ReCo's decay schedule and the parameter-only moving average."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from raycseg.models import build_ema_copy, reco_ema_decay, update_ema


def test_reco_decay_schedule():
    assert reco_ema_decay(0) == 0.0
    assert reco_ema_decay(1) == pytest.approx(0.5)
    assert reco_ema_decay(3) == pytest.approx(0.75)
    assert reco_ema_decay(99) == pytest.approx(0.99)
    assert reco_ema_decay(100) == pytest.approx(0.99)
    assert reco_ema_decay(10_000) == pytest.approx(0.99)
    assert reco_ema_decay(10_000, max_decay=0.999) == pytest.approx(0.999)
    with pytest.raises(ValueError):
        reco_ema_decay(-1)


def _model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))


def test_update_ema_averages_parameters_and_leaves_buffers():
    torch.manual_seed(0)
    source = _model()
    target = build_ema_copy(source)
    assert all(not p.requires_grad for p in target.parameters())
    with torch.no_grad():
        for p in source.parameters():
            p.add_(torch.randn_like(p))
        source[1].running_mean.fill_(5.0)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    update_ema(target, source, decay=0.9)
    for name, param in target.named_parameters():
        expected = 0.9 * before[name] + 0.1 * dict(source.named_parameters())[name]
        torch.testing.assert_close(param, expected)
    assert torch.equal(target[1].running_mean, before["1.running_mean"])
    assert int(target[1].num_batches_tracked) == int(before["1.num_batches_tracked"])


def test_decay_zero_copies_and_decay_one_keeps():
    source, target = _model(), _model()
    kept = [p.clone() for p in target.parameters()]
    update_ema(target, source, decay=1.0)
    for param, old in zip(target.parameters(), kept, strict=True):
        assert torch.equal(param, old)
    update_ema(target, source, decay=0.0)
    for param, new in zip(target.parameters(), source.parameters(), strict=True):
        assert torch.equal(param, new)


def test_update_ema_rejects_mismatched_modules_and_bad_decay():
    with pytest.raises(ValueError, match="different parameters"):
        update_ema(_model(), nn.Linear(2, 2), decay=0.5)
    with pytest.raises(ValueError, match="decay"):
        update_ema(_model(), _model(), decay=1.5)
