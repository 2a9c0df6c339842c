"""raycseg.distributed: identities without a process group; the autograd gather on 2 gloo ranks."""

from __future__ import annotations

import pytest
import torch
from gloo_ranks import run_gloo_ranks

from raycseg.distributed import all_gather_no_grad, all_gather_with_grad, get_rank, get_world_size

ROWS = (2, 3)  # rank 0 holds 2 rows, rank 1 holds 3: unequal first dims are supported


def test_without_a_process_group_everything_is_an_identity():
    assert (get_rank(), get_world_size()) == (0, 1)
    x = torch.randn(3, 2, requires_grad=True)
    assert all_gather_with_grad(x) is x
    detached = all_gather_no_grad(x)
    assert torch.equal(detached, x) and not detached.requires_grad


def rank_rows(rank: int) -> torch.Tensor:
    start = sum(ROWS[:rank])
    return torch.arange(start, start + ROWS[rank], dtype=torch.float64)[:, None] * torch.tensor(
        [1.0, -1.0], dtype=torch.float64
    )


def rank_weights(rank: int) -> torch.Tensor:
    """A different loss on every rank: L_r = sum(weights_r * gathered)."""
    return torch.arange(sum(ROWS) * 2, dtype=torch.float64).reshape(sum(ROWS), 2) * (rank + 1)


def gather_worker(rank: int, world: int) -> dict:
    x = rank_rows(rank).requires_grad_()
    gathered = all_gather_with_grad(x)
    (rank_weights(rank) * gathered).sum().backward()
    return {
        "rank": torch.tensor([get_rank(), get_world_size()]),
        "gathered": gathered.detach(),
        "no_grad": all_gather_no_grad(x),
        "no_grad_requires_grad": torch.tensor(all_gather_no_grad(x).requires_grad),
        "equal_shapes": all_gather_no_grad(x[:2], equal_shapes=True),
        "grad": x.grad,
    }


@pytest.mark.integration
def test_gather_forward_and_backward_on_two_gloo_ranks(tmp_path):
    ranks = run_gloo_ranks(gather_worker, tmp_path)
    everything = torch.cat([rank_rows(r) for r in range(2)])
    total_weights = sum(rank_weights(r) for r in range(2))  # backward sums over ranks ...
    for rank, saved in enumerate(ranks):
        assert saved["rank"].tolist() == [rank, 2]
        torch.testing.assert_close(saved["gathered"], everything)  # rank order, unequal sizes
        torch.testing.assert_close(saved["no_grad"], everything)
        assert not saved["no_grad_requires_grad"].item()
        first_two = torch.cat([rank_rows(r)[:2] for r in range(2)])  # no size exchange needed
        torch.testing.assert_close(saved["equal_shapes"], first_two)
        rows = slice(sum(ROWS[:rank]), sum(ROWS[: rank + 1]))
        torch.testing.assert_close(
            saved["grad"], total_weights[rows]
        )  # ... and routes the owner's rows
