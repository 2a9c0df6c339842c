"""The CACL method: heads per loss weight, negatives from other videos, queue, DDP step."""

from __future__ import annotations

import pytest
import torch
from gloo_ranks import run_gloo_ranks
from pydantic import ValidationError

from raycseg.config import CACLStage, ModelSection
from raycseg.data.loaders import StreamShare
from raycseg.methods import cacl as cacl_module
from raycseg.methods.cacl import CACL
from raycseg.models.global_batchnorm import GlobalBatchNorm2d

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


@pytest.mark.integration
def test_ddp_steps_with_the_pixel_loss_off_and_grads_agree(tmp_path):
    saved = run_gloo_ranks(ddp_rank, tmp_path)
    for name, grad in saved[0]["grads"].items():
        torch.testing.assert_close(grad, saved[1]["grads"][name], msg=name)
    assert any(float(g.abs().sum()) > 0 for g in saved[0]["grads"].values())


def test_batch_norm_is_global_or_local_and_nothing_else():
    assert make_stage().batch_norm == "global"
    with pytest.raises(ValidationError, match="batch_norm"):
        make_stage(batch_norm="shuffle")


def test_the_cacl_loader_blurs_views_with_the_stage_blur_p(monkeypatch):
    monkeypatch.setattr(cacl_module, "training_urls", lambda data, world: (["x"], 4))
    for stage, expected in ((make_stage(), 0.5), (make_stage(data={"train": "x", "blur_p": 0}), 0)):
        loader = cacl_module.build_cacl_loader(stage, StreamShare())
        assert loader.dataset.decode.transform.blur.p == expected


def record_step(model: torch.nn.Module, method: CACL, batch: dict) -> dict:
    """One step through `model` (the method or its DDP wrapper), backward included.

    Returns the backbone's features of the 2B views, the loss and the parameter gradients.
    """
    seen = []
    hook = method.backbone.register_forward_hook(lambda _m, _i, out: seen.append(out.detach()))
    loss = model(batch)["loss"]
    loss.backward()
    hook.remove()
    grads = {name: p.grad.clone() for name, p in method.named_parameters()}
    return {"features": seen[0], "loss": loss.detach(), "grads": grads}


def build_for_bn(batch_norm: str) -> CACL:
    torch.manual_seed(0)  # the same weights in every process
    return CACL(make_stage(lambda_pixel=0.0, lambda_cycle=0.5, batch_norm=batch_norm), MODEL)


def global_bn_rank(rank: int, world_size: int) -> dict:
    """Clips 4r..4r+3 of one global batch of 8, with global and with local BatchNorm."""
    mine = {key: views[4 * rank : 4 * rank + 4] for key, views in make_batch(8).items()}
    saved, keys = {}, {}
    for batch_norm in ("global", "local"):
        method = build_for_bn(batch_norm)
        keys[batch_norm] = list(method.state_dict())
        model = torch.nn.parallel.DistributedDataParallel(method)  # averages the gradients
        saved[batch_norm] = record_step(model, method, mine)
        layers = [type(m) for m in method.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        saved[batch_norm]["global_layers"] = torch.tensor(
            [layer is GlobalBatchNorm2d for layer in layers]
        )
    saved["same_state_keys"] = torch.tensor(keys["global"] == keys["local"])  # checkpoints load
    return saved


@pytest.mark.integration
def test_global_batch_norm_on_two_ranks_equals_one_process_on_the_global_batch(tmp_path):
    ranks = run_gloo_ranks(global_bn_rank, tmp_path)
    single_method = build_for_bn("global")
    single = record_step(single_method, single_method, make_batch(8))
    halves = [rank["global"]["features"].chunk(2) for rank in ranks]  # (view_a, view_b) each
    features = torch.cat([half[0] for half in halves] + [half[1] for half in halves])
    torch.testing.assert_close(features, single["features"], rtol=1e-4, atol=1e-5)
    mean_loss = (ranks[0]["global"]["loss"] + ranks[1]["global"]["loss"]) / 2
    torch.testing.assert_close(mean_loss, single["loss"], rtol=1e-4, atol=1e-5)
    for name, grad in single["grads"].items():
        got = ranks[0]["global"]["grads"][name]
        torch.testing.assert_close(got, grad, rtol=1e-3, atol=1e-5, msg=name)
    assert ranks[0]["global"]["global_layers"].all()
    assert not ranks[0]["local"]["global_layers"].any() and ranks[0]["same_state_keys"]
    local = ranks[0]["local"]["features"].chunk(2)[0]  # per-worker BN: other statistics
    assert not torch.allclose(local, single["features"][:4], rtol=1e-3, atol=1e-3)
