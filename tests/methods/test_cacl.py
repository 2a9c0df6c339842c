"""The CACL method: heads per loss weight, negatives from other videos, queue, DDP step."""

from __future__ import annotations

import torch
from gloo_ranks import run_gloo_ranks

from raycseg.config import CACLStage, ModelSection
from raycseg.methods.cacl import CACL

MODEL = ModelSection(backbone="tiny", output_stride=4, width=8)


def make_stage(**fields) -> CACLStage:
    base = {"method": "cacl", "steps": 1, "data": {"train": "x", "image_size": 32}, "head_dim": 8}
    return CACLStage.model_validate({**base, "num_pixel_negatives": 16, **fields})


def make_batch(batch_size: int = 3, size: int = 32, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    views = torch.randint(
        0, 256, (2, batch_size, 3, size, size), dtype=torch.uint8, generator=generator
    )
    return {"view_a": views[0], "view_b": views[1]}


def test_only_heads_that_feed_a_loss_exist_and_get_gradients():
    torch.manual_seed(0)
    method = CACL(make_stage(lambda_pixel=0.0, lambda_cycle=0.1), MODEL)
    assert method.pixel_head is None and method.cycle_head is not None
    output = method(make_batch())
    output["loss"].backward()
    assert (
        set(output["terms"]) == {"global", "pixel", "cycle"}
        and float(output["terms"]["pixel"]) == 0.0
    )
    unused = [name for name, p in method.named_parameters() if p.grad is None]
    assert unused == [] and not method.find_unused_parameters
    assert CACL(make_stage(lambda_global=0.0), MODEL).find_unused_parameters


def test_pixel_negatives_come_from_other_videos_and_the_queue():
    torch.manual_seed(0)
    method = CACL(make_stage(queue_size=4), MODEL)
    p_a = torch.arange(3.0).view(3, 1, 1).expand(3, 8, 5).clone()  # video v's pixels all equal v
    negatives = method._pixel_negatives(p_a, p_a + 0.0)
    assert negatives.shape == (3, 16 + 4, 8)
    drawn = negatives[:, :16, 0]
    for video in range(3):
        assert not (drawn[video] == video).any(), "a video's own pixels are never its negatives"
    assert int(method.queue_pointer) == 3  # one pixel per video of the (global) batch enqueued


def test_loss_falls_over_a_few_steps():
    torch.manual_seed(0)
    method = CACL(make_stage(lambda_cycle=0.5, num_pixel_negatives=8), MODEL)
    optimizer = torch.optim.Adam(method.parameters(), lr=1e-2)
    batch = make_batch(batch_size=4)
    losses = []
    for _ in range(8):
        loss = method(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.9 * losses[0]


def ddp_rank(rank: int, world_size: int) -> dict:
    torch.manual_seed(0)  # same initial weights on both ranks
    method = CACL(make_stage(lambda_pixel=0.0, lambda_cycle=0.1), MODEL)
    model = torch.nn.parallel.DistributedDataParallel(
        method, find_unused_parameters=method.find_unused_parameters
    )
    for step in range(2):  # the second step is where unused parameters would fail
        loss = model(make_batch(seed=10 * rank + step))["loss"]
        loss.backward()
    return {"grads": {name: p.grad.clone() for name, p in method.named_parameters()}}


def test_ddp_steps_with_the_pixel_loss_off_and_grads_agree(tmp_path):
    saved = run_gloo_ranks(ddp_rank, tmp_path)
    for name, grad in saved[0]["grads"].items():
        torch.testing.assert_close(grad, saved[1]["grads"][name], msg=name)
    assert any(float(g.abs().sum()) > 0 for g in saved[0]["grads"].values())
