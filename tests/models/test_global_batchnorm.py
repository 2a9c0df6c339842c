"""GlobalBatchNorm2d: BatchNorm2d alone, single-process BN over the global batch on 2 gloo ranks."""

from __future__ import annotations

import pytest
import torch
from gloo_ranks import run_gloo_ranks
from torch import nn

from raycseg.models.global_batchnorm import GlobalBatchNorm2d, convert_to_global_batchnorm

CHANNELS = 3
ROWS = (6, 2)  # one global batch of 8, split unevenly over the two ranks


def global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs [8, C, 4, 5] (channel means far from 0) and the weights of a per-sample loss."""
    generator = torch.Generator().manual_seed(1)
    shape = (sum(ROWS), CHANNELS, 4, 5)
    x = torch.randn(shape, generator=generator, dtype=torch.float64) * 3 + 5
    return x, torch.randn(shape, generator=generator, dtype=torch.float64)


def fresh_layer(kind: type[nn.BatchNorm2d]) -> nn.BatchNorm2d:
    layer = kind(CHANNELS).double()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([0.5, 1.0, 2.0]))
        layer.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    return layer


def train_steps(layer: nn.BatchNorm2d, x: torch.Tensor, weights: torch.Tensor) -> dict:
    """Two training steps (loss sum(weights·out²), not linear in out), then an eval forward."""
    x = x.clone().requires_grad_()
    for _ in range(2):
        out = layer(x)
        (weights * out**2).sum().backward()
    layer.eval()
    return {
        "out": out.detach(),
        "x_grad": x.grad / 2,
        "weight_grad": layer.weight.grad / 2,
        "bias_grad": layer.bias.grad / 2,
        "running_mean": layer.running_mean.clone(),
        "running_var": layer.running_var.clone(),
        "eval_out": layer(x).detach(),
    }


def split_rank(rank: int, world_size: int) -> dict:
    x, weights = global_batch()
    rows = slice(sum(ROWS[:rank]), sum(ROWS[: rank + 1]))
    return train_steps(fresh_layer(GlobalBatchNorm2d), x[rows], weights[rows])


@pytest.mark.integration
def test_two_ranks_6_plus_2_equal_one_process_on_all_8(tmp_path):
    ranks = run_gloo_ranks(split_rank, tmp_path)
    x, weights = global_batch()
    single = train_steps(fresh_layer(nn.BatchNorm2d), x, weights)
    local = train_steps(fresh_layer(nn.BatchNorm2d), x[: ROWS[0]], weights[: ROWS[0]])
    assert not torch.allclose(local["out"], single["out"][: ROWS[0]])  # a split batch differs ...
    for key in ("out", "x_grad", "eval_out"):  # ... the global one is the single process's
        torch.testing.assert_close(torch.cat([r[key] for r in ranks]), single[key], msg=key)
    for key in ("running_mean", "running_var"):  # global mean, unbiased global variance
        for rank in ranks:
            torch.testing.assert_close(rank[key], single[key], msg=key)
    for key in ("weight_grad", "bias_grad"):  # summed over ranks, as the losses are
        torch.testing.assert_close(sum(r[key] for r in ranks), single[key], msg=key)


def test_without_a_process_group_it_is_batchnorm2d_with_the_same_state():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Sequential(nn.BatchNorm2d(4)))
    reference = {key: value.clone() for key, value in net.state_dict().items()}
    weight = net[1].weight
    x = torch.randn(5, 3, 6, 6)
    expected = net(x)
    torch.manual_seed(0)
    converted = convert_to_global_batchnorm(
        nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Sequential(nn.BatchNorm2d(4)))
    )
    assert type(converted[1]) is GlobalBatchNorm2d and type(converted[2][0]) is GlobalBatchNorm2d
    assert converted.state_dict().keys() == reference.keys()
    converted.load_state_dict(reference)
    torch.testing.assert_close(converted(x), expected)
    torch.testing.assert_close(converted[1].running_var, net[1].running_var)
    assert convert_to_global_batchnorm(net)[1].weight is weight  # parameters are shared
