"""The MaskContrast stage: key encoder, queue, loss resolutions, evaluation, end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from gloo_ranks import run_gloo_ranks

from raycseg.config import load_recipe
from raycseg.eval.cluster import run_maskcontrast_kmeans
from raycseg.eval.metrics import ProtocolSkipped
from raycseg.losses.maskcontrast import maskcontrast_loss
from raycseg.methods import build_method
from raycseg.methods.maskcontrast import (
    MaskContrast,
    _shuffled_forward,
    load_query_encoder,
)
from raycseg.models import build_backbone, load_backbone_weights, normalize_images
from raycseg.train.checkpoint import load_state, save_state

IMAGE = 32
BATCH = 4


def debug_recipe(*overrides: str, check_files: bool = False):
    return load_recipe("maskcontrast/debug", list(overrides), check_files=check_files)


def new_method(*overrides: str) -> MaskContrast:
    recipe = debug_recipe(*overrides)
    torch.manual_seed(0)
    return build_method(recipe.stages[0], recipe.model)


def make_batch(seed: int = 0, *, empty: bool = False, size: int = IMAGE) -> dict:
    """Random views with one salient rectangle per image (or no salient pixel)."""
    generator = torch.Generator().manual_seed(seed)
    batch = {}
    for view in ("query", "key"):
        batch[view] = torch.randint(0, 256, (BATCH, 3, size, size), dtype=torch.uint8,
                                    generator=generator)  # fmt: skip
        mask = torch.zeros(BATCH, size, size, dtype=torch.bool)
        if not empty:
            for b in range(BATCH):
                top, left = torch.randint(0, size // 2, (2,), generator=generator).tolist()
                mask[b, top : top + size // 3, left : left + size // 3] = True
        batch[f"{view}_mask"] = mask
    return batch


def parameters_of(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def save_backbone_checkpoint(path: Path, seed: int) -> dict[str, torch.Tensor]:
    """A raycseg checkpoint holding a randomly initialised tiny backbone; returns its state."""
    recipe = debug_recipe()
    torch.manual_seed(seed)
    backbone = build_backbone("tiny", output_stride=4, width=recipe.model.width)
    state = {k: v.clone() for k, v in backbone.state_dict().items()}
    save_state(path, {"backbone": state})
    return state


# ----------------------------------------------------------------------------- unit


def test_forward_backward_gives_terms_and_gradients_only_to_the_query_encoder():
    method = new_method("stages.maskcontrast.saliency_weight=2.5").train()
    output = method(make_batch())
    terms = output["terms"]
    assert set(terms) == {"contrastive", "saliency"}
    assert torch.isfinite(output["loss"]) and output["loss"].dim() == 0
    assert output["loss"].item() == pytest.approx(
        terms["contrastive"].item() + 2.5 * terms["saliency"].item(), rel=1e-6
    )
    output["loss"].backward()
    query_grads = [p.grad for p in method.query_encoder.parameters()]
    assert all(g is not None for g in query_grads)
    assert method.query_encoder.embedding.weight.grad.abs().sum() > 0
    assert method.query_encoder.saliency.weight.grad.abs().sum() > 0
    assert method.backbone.conv1.weight.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in method.key_encoder.parameters())


def test_frozen_early_layers_get_no_gradient_and_keep_their_batchnorm_statistics():
    method = new_method(
        "stages.maskcontrast.freeze_early_layers=true", "stages.maskcontrast.init_from=/weights.pt"
    ).train()
    frozen = [getattr(method.backbone, name) for name in ("conv1", "bn1", "layer1", "layer2")]
    batchnorms = [
        m for layer in frozen for m in layer.modules() if isinstance(m, torch.nn.BatchNorm2d)
    ]
    assert batchnorms and not any(m.training for m in batchnorms)  # train() keeps them in eval
    assert method.query_encoder.decoder.training  # the rest trains
    statistics = {id(m): m.running_mean.clone() for m in batchnorms}
    method(make_batch(0))["loss"].backward()
    assert all(
        p.grad is None and not p.requires_grad for layer in frozen for p in layer.parameters()
    )
    assert method.query_encoder.embedding.weight.grad.abs().sum() > 0
    assert all(torch.equal(m.running_mean, statistics[id(m)]) for m in batchnorms)
    key_backbone = method.key_encoder.backbone
    assert not any(m.training for m in key_backbone.layer1.modules())
    unfrozen = new_method().train()
    assert unfrozen.backbone.layer1.training and unfrozen.backbone.conv1.weight.requires_grad


def test_backbone_is_the_query_backbone_and_is_not_stored_twice():
    method = new_method()
    assert method.backbone is method.query_encoder.backbone
    keys = method.state_dict().keys()
    assert not any(key.startswith("backbone.") for key in keys)
    assert "key_synced" in keys and "queue" in keys and "queue_pointer" in keys


def test_key_encoder_copies_the_loaded_init_weights_on_the_first_forward(tmp_path):
    method = new_method().train()
    loaded = save_backbone_checkpoint(tmp_path / "init", seed=123)
    load_backbone_weights(method.backbone, tmp_path / "init")  # what the worker does after build
    key_conv = method.key_encoder.backbone.conv1.weight
    assert not torch.equal(key_conv, loaded["conv1.weight"])  # built before the load
    method(make_batch())
    for name, value in method.key_encoder.backbone.state_dict().items():
        if "num_batches_tracked" not in name and "running" not in name:
            assert torch.equal(value, loaded[name]), name
    assert bool(method.key_synced)


def test_key_encoder_moves_by_ema_before_each_later_key_forward():
    method = new_method().train()
    method(make_batch(0))  # first forward: the key encoder becomes a copy
    key_before = parameters_of(method.key_encoder)
    with torch.no_grad():
        for p in method.query_encoder.parameters():
            p.add_(torch.randn_like(p))
    query_now = parameters_of(method.query_encoder)
    method(make_batch(1))
    m = method.momentum
    for name, value in method.key_encoder.named_parameters():
        expected = m * key_before[name] + (1 - m) * query_now[name]
        torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6)
    frozen = parameters_of(method.key_encoder)
    method.eval()(make_batch(2))  # an eval-mode forward moves nothing
    assert all(torch.equal(frozen[n], p) for n, p in method.key_encoder.named_parameters())


def test_resumed_method_keeps_its_key_encoder_instead_of_recopying():
    method = new_method().train()
    method(make_batch(0))
    with torch.no_grad():
        method.key_encoder.embedding.bias.add_(1.0)  # a key copy that differs from the query
    restored = new_method().train()
    restored.load_state_dict(method.state_dict())
    key_bias = restored.key_encoder.embedding.bias.detach().clone()
    query_bias = restored.query_encoder.embedding.bias.detach().clone()
    restored(make_batch(1))
    m = restored.momentum
    torch.testing.assert_close(
        restored.key_encoder.embedding.bias, m * key_bias + (1 - m) * query_bias
    )


def test_queue_is_fed_with_the_key_prototypes_and_wraps():
    method = new_method("stages.maskcontrast.queue_size=8").train()
    queue_size, dim = method.queue.shape
    assert queue_size == 8 and int(method.queue_pointer) == 0
    torch.testing.assert_close(method.queue.norm(dim=1), torch.ones(queue_size))
    first = torch.nn.functional.normalize(torch.randn(BATCH, dim), dim=1)
    second = torch.nn.functional.normalize(torch.randn(BATCH, dim), dim=1)
    method._enqueue(first)
    assert int(method.queue_pointer) == BATCH
    method._enqueue(second)
    assert int(method.queue_pointer) == 0  # wrapped
    torch.testing.assert_close(method.queue, torch.cat([first, second]))
    method._enqueue(second)
    torch.testing.assert_close(method.queue, torch.cat([second, second]))


def test_forward_enqueues_this_steps_prototypes_and_uses_the_old_queue():
    method = new_method("stages.maskcontrast.queue_size=8").eval()
    batch = make_batch(3)
    old_queue = method.queue.clone()
    with torch.no_grad():  # the expected loss and prototypes, from the eval-mode encoders
        method.sync_key_encoder()
        query, query_logits = method.query_encoder(normalize_images(batch["query"]))
        key = method.key_encoder(normalize_images(batch["key"]))[0]
        up = torch.nn.functional.interpolate
        query = up(query, (IMAGE, IMAGE), mode="bilinear", align_corners=False)
        key = up(key, (IMAGE, IMAGE), mode="bilinear", align_corners=False)
        expected_loss, prototypes = maskcontrast_loss(
            query, batch["query_mask"], key, batch["key_mask"], old_queue, method.temperature
        )
    method.momentum = 1.0  # the EMA leaves the synced key encoder unchanged
    method.train()
    for module in method.modules():  # BN and dropout as in eval, the step as in training
        if module is not method:
            module.eval()
    output = method(batch)
    torch.testing.assert_close(output["terms"]["contrastive"], expected_loss)
    torch.testing.assert_close(method.queue[:BATCH], prototypes)
    torch.testing.assert_close(method.queue[BATCH:], old_queue[BATCH:])
    assert int(method.queue_pointer) == BATCH


@pytest.mark.parametrize("resolution", ["full", "feature"])
def test_empty_masks_give_a_finite_connected_loss(resolution):
    method = new_method(f"stages.maskcontrast.loss_resolution={resolution}").train()
    output = method(make_batch(empty=True))
    assert torch.isfinite(output["loss"])
    assert output["terms"]["contrastive"].item() == 0.0
    output["loss"].backward()
    assert method.query_encoder.saliency.weight.grad is not None
    assert method.queue[:BATCH].abs().sum() == 0  # dropped images enqueue zero rows


def test_feature_resolution_differs_from_full_and_both_train():
    losses = {}
    for resolution in ("full", "feature"):
        method = new_method(
            f"stages.maskcontrast.loss_resolution={resolution}",
            "stages.maskcontrast.queue_size=0",  # a fixed set of candidates: a fixed objective
        ).train()
        optimizer = torch.optim.SGD(method.query_encoder.parameters(), lr=0.02)
        batch = make_batch(5)
        values = []
        for _ in range(5):
            torch.manual_seed(1)  # the same dropout noise every step
            loss = method(batch)["loss"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            values.append(loss.item())
        assert values[-1] < values[0], (resolution, values)
        losses[resolution] = values[0]
    assert losses["full"] != pytest.approx(losses["feature"], rel=1e-3)


# ----------------------------------------------------------------------------- evaluation


def labelled_batches(count: int = 3) -> list[dict]:
    generator = torch.Generator().manual_seed(9)
    return [
        {
            "image": torch.randint(
                0, 256, (8, 3, IMAGE, IMAGE), dtype=torch.uint8, generator=generator
            ),  # fmt: skip
            "label": torch.randint(0, 5, (8, IMAGE, IMAGE), generator=generator),
        }
        for _ in range(count)
    ]


def test_maskcontrast_kmeans_runs_on_the_query_encoder_of_a_checkpoint_state(tmp_path):
    recipe = debug_recipe(f"model.init_from={tmp_path / 'gone.pt'}")  # must not be read
    torch.manual_seed(0)
    method = build_method(recipe.stages[0], recipe.model.model_copy(update={"init_from": None}))
    with torch.no_grad():
        method.query_encoder.saliency.weight.fill_(1.0)  # ReLU features: most pixels salient
    state = {"model": method.state_dict(), "recipe": recipe.model_dump(mode="json")}
    save_state(tmp_path / "ckpt", state)
    state = load_state(tmp_path / "ckpt")
    encoder = load_query_encoder(state)
    assert not encoder.training
    torch.testing.assert_close(encoder.saliency.weight, method.query_encoder.saliency.weight)
    try:
        scores = run_maskcontrast_kmeans(encoder, labelled_batches(), 5, device="cpu")
    except ProtocolSkipped as reason:  # pragma: no cover - would mean the setup above is wrong
        pytest.fail(f"protocol skipped: {reason}")
    assert 0.0 <= scores["miou"] <= 1.0
    assert len(scores["per_class_iou"]) == 5 and len(scores["miou_per_seed"]) == 5


def test_maskcontrast_kmeans_is_skipped_for_a_checkpoint_of_another_stage():
    recipe = load_recipe("cacl/debug", check_files=False)
    state = {"model": {}, "recipe": recipe.model_dump(mode="json"), "stage": "cacl"}
    with pytest.raises(ProtocolSkipped, match="stage 'cacl'"):
        load_query_encoder(state)


# ----------------------------------------------------------------------------- two workers


TWO_WORKER_BATCH = 3
TWO_WORKER_IMAGE = 16


def two_worker_rank(rank: int, world: int) -> dict:
    """One rank: enqueue known rows, encode keys with and without shuffle-BN, one training step.

    Returns what the parent compares: the queue after each rank
    enqueued rows filled with rank + 1; key embeddings of this rank's images through
    shuffle-BN and through a plain forward, with BN in eval mode (per-image outputs:
    equal when the un-shuffle is right) and in train mode (batch statistics: different
    when the key batch really was shuffled); the queue and pointer after a training step.
    """
    batch_size, size = TWO_WORKER_BATCH, TWO_WORKER_IMAGE
    method = new_method(
        f"stages.maskcontrast.data.batch_size={batch_size}",
        "stages.maskcontrast.queue_size=12",
        f"stages.maskcontrast.data.image_size={size}",
        f"scaling.num_workers={world}",
    )
    saved = {}
    method._enqueue(torch.full((batch_size, method.queue.shape[1]), float(rank + 1)))
    saved["queue_after_enqueue"] = method.queue.clone()
    saved["pointer_after_enqueue"] = method.queue_pointer.clone()
    generator = torch.Generator().manual_seed(100 + rank)
    images = torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8,
                           generator=generator)  # fmt: skip
    encoder = method.key_encoder
    with torch.no_grad():
        for mode in ("eval", "train"):
            encoder.train(mode == "train")
            torch.manual_seed(7)  # rank 0 draws the permutation; dropout noise alike
            saved[f"shuffled_{mode}"] = _shuffled_forward(encoder, images)
            torch.manual_seed(7)
            saved[f"local_{mode}"] = encoder(normalize_images(images))[0]
    batch = {
        "query": images,
        "key": images.flip(-1),
        "query_mask": torch.rand(batch_size, size, size, generator=generator) > 0.5,
        "key_mask": torch.rand(batch_size, size, size, generator=generator) > 0.5,
    }
    method.train()(batch)["loss"].backward()
    saved["queue_after_step"] = method.queue.clone()
    saved["pointer_after_step"] = method.queue_pointer.clone()
    return saved


@pytest.mark.integration
def test_two_gloo_workers_share_the_queue_and_unshuffle_keys(tmp_path):
    saved = run_gloo_ranks(two_worker_rank, tmp_path)
    rows = TWO_WORKER_BATCH
    for result in saved:
        queue = result["queue_after_enqueue"]
        assert int(result["pointer_after_enqueue"]) == 2 * rows  # the global batch
        assert (queue[:rows] == 1.0).all() and (queue[rows : 2 * rows] == 2.0).all()
        torch.testing.assert_close(result["shuffled_eval"], result["local_eval"])
        assert not torch.allclose(result["shuffled_train"], result["local_train"], atol=1e-4)
        assert int(result["pointer_after_step"]) == 0  # 12 rows, 2 x 3 per step: wrapped
    torch.testing.assert_close(saved[0]["queue_after_enqueue"], saved[1]["queue_after_enqueue"])
    torch.testing.assert_close(saved[0]["queue_after_step"], saved[1]["queue_after_step"])


# ----------------------------------------------------------------------------- end to end


def local_recipe(tmp_path: Path, *overrides: str):
    return debug_recipe(
        f"data.root={tmp_path / 'data'}",
        f"storage.path={tmp_path / 'runs'}",
        "storage.name=local",
        "scaling.num_workers=0",
        "stages.maskcontrast.steps=8",
        "stages.maskcontrast.val_every=4",
        "storage.checkpoint_every=4",
        *overrides,
        check_files=True,
    )


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_stage_runs_end_to_end_on_generated_saliency_shards(tmp_path):
    from raycseg.train.launch import run_pretrain

    init = tmp_path / "cacl-checkpoint"
    save_backbone_checkpoint(init, seed=5)
    recipe = local_recipe(tmp_path, f"stages.maskcontrast.init_from={init}")
    result = run_pretrain(recipe)
    records = read_metrics(result.run_dir)
    assert [r["step"] for r in records] == list(range(1, recipe.stages[0].steps + 1))
    for record in records:
        assert record["stage"] == "maskcontrast"
        assert record["loss"] == pytest.approx(
            record["loss_contrastive"] + record["loss_saliency"], rel=1e-4
        )
    assert 0.0 <= records[3]["val_miou"] <= 1.0
    state = load_state(result.checkpoints["maskcontrast"])
    assert bool(state["model"]["key_synced"])
    assert int(state["model"]["queue_pointer"]) == 0  # 8 steps x 4 images, 16 rows
    scores = json.loads((result.run_dir / "eval.json").read_text())
    assert 0.0 <= scores["kmeans"]["miou"] <= 1.0
    # the official protocol ran the trained heads: it scored, or (8 steps in) found no salient pixel
    if "maskcontrast_kmeans" in scores:
        assert 0.0 <= scores["maskcontrast_kmeans"]["miou"] <= 1.0
    else:
        assert "salient pixel" in scores["skipped"]["maskcontrast_kmeans"]


@pytest.mark.real_data
def test_stage_runs_on_real_voc_images_with_computed_saliency(tmp_path, real_data):
    from raycseg.shards.build import build_shards
    from raycseg.train.launch import run_pretrain

    voc = real_data / "voc"
    saliency = tmp_path / "data" / "voc-saliency"
    report = build_shards("saliency", voc / "JPEGImages", saliency, compute_saliency=True,
                          num_procs=1)  # fmt: skip
    assert sum(report.counts.values()) >= BATCH, report.dropped
    recipe = local_recipe(
        tmp_path,
        "stages.maskcontrast.data.train=voc-saliency",
        "stages.maskcontrast.data.val=null",
        "stages.maskcontrast.steps=3",
        "stages.maskcontrast.data.image_size=48",
        "eval=null",
        "data.synthetic=null",
    )
    result = run_pretrain(recipe)
    records = read_metrics(result.run_dir)
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(math.isfinite(r["loss_contrastive"]) and r["loss_saliency"] > 0 for r in records)
