"""The ReCo stage: units on tiny tensors, then short end-to-end runs (local mode)."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch

from raycseg.config import ModelSection, RecoStage, load_recipe
from raycseg.data.synthetic import prepare_data
from raycseg.eval.metrics import ProtocolSkipped
from raycseg.methods import reco as reco_module
from raycseg.methods.reco import (
    ReCo,
    build_segmenter,
    confidence_weighted_ce,
    load_segmenter,
    student_labels_under_sparse,
)
from raycseg.models import DeepLabV2, DeepLabV3Plus, load_backbone_weights, normalize_images
from raycseg.shards.splits import build_label_split
from raycseg.train.checkpoint import load_state
from raycseg.train.eval_targets import evaluate_target
from raycseg.train.launch import run_pretrain

MODEL = ModelSection(backbone="tiny", output_stride=4, width=8)


def make_stage(**fields) -> RecoStage:
    values = {
        "method": "reco",
        "steps": 4,
        "num_classes": 3,
        "rep_dim": 8,
        "num_queries": 16,
        "num_negatives": 32,
        "data": {"train": "/unused", "image_size": 32, "batch_size": 2},
    }
    return RecoStage.model_validate(values | fields)


def tiny_batch(semi: bool, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    label = torch.randint(0, 3, (2, 4, 4), generator=generator)
    label = label.repeat_interleave(8, 1).repeat_interleave(8, 2)
    label[:, :2] = 255
    batch = {
        "image": torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=generator),
        "label": label,
    }
    if semi:
        batch["unlabelled_image"] = torch.randint(
            0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=generator
        )
        sparse = torch.full((2, 32, 32), 255)
        sparse[:, 5, 7], sparse[:, 20, 9] = 1, 2  # two labelled pixels per image
        batch["unlabelled_label"] = sparse
    return batch


def parameters(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


# ----------------------------------------------------------------------------- units


def test_supervised_step_trains_the_student_with_ce_and_reco():
    torch.manual_seed(0)
    method = ReCo(make_stage(mode="supervised", strong_threshold=1.0), MODEL)
    assert not hasattr(method, "teacher")
    output = method(tiny_batch(semi=False))
    assert set(output["terms"]) == {"sup", "reco"}
    assert output["terms"]["reco"] > 0
    expected = output["terms"]["sup"] + output["terms"]["reco"]
    assert torch.allclose(output["loss"], expected)
    output["loss"].backward()
    grads = [p.grad for p in method.student.representation.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def test_semi_step_has_three_terms_and_no_teacher_gradient():
    torch.manual_seed(0)
    method = ReCo(make_stage(mode="semi", strong_threshold=0.9, weak_threshold=0.2), MODEL)
    method.train()
    output = method(tiny_batch(semi=True))
    assert set(output["terms"]) == {"sup", "unsup", "reco"}
    assert all(torch.isfinite(v) for v in output["terms"].values())
    output["loss"].backward()
    assert all(p.grad is None and not p.requires_grad for p in method.teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.student.parameters())
    assert all(
        p.requires_grad for p in method.parameters() if p not in set(method.teacher.parameters())
    )


def test_partial_mode_puts_the_sparse_labels_into_the_pseudo_labels(monkeypatch):
    seen = {}

    def unmixed(images, labels, confidence, **options):  # the teacher's output, as it is
        seen.update(labels=labels, confidence=confidence)
        return images, labels, confidence

    monkeypatch.setattr(reco_module, "augment_unlabelled", unmixed)
    torch.manual_seed(0)
    method = ReCo(make_stage(mode="partial", weak_threshold=0.2), MODEL).train()
    batch = tiny_batch(semi=True)
    output = method(batch)
    assert set(output["terms"]) == {"sup", "unsup", "reco"}
    output["loss"].backward()
    labelled = batch["unlabelled_label"] != 255
    assert torch.equal(seen["labels"][labelled], batch["unlabelled_label"][labelled])
    assert (seen["confidence"][labelled] == 1).all() and (seen["confidence"][~labelled] < 1).all()
    with torch.no_grad():
        logits, _ = method.teacher(normalize_images(batch["unlabelled_image"]))
    teacher = reco_module._upsample(logits, labelled.shape[-2:]).argmax(dim=1)
    assert torch.equal(seen["labels"][~labelled], teacher[~labelled])  # elsewhere: the teacher's


def test_student_labels_under_sparse_keep_labels_and_confident_predictions():
    logits = torch.zeros(1, 3, 2, 2)
    logits[0, 2, 0, 0] = 10.0  # confident class 2
    logits[0, 1, 0, 1] = 10.0  # confident class 1, but labelled 0
    logits[0, 1, 1, 0] = 0.5  # unsure class 1
    sparse = torch.tensor([[[255, 0], [255, 255]]])
    labels, valid = student_labels_under_sparse(logits, sparse, threshold=0.97)
    assert labels.tolist() == [[[2, 0], [1, 0]]]
    assert valid.tolist() == [[[True, True], [False, False]]]


def test_teacher_copies_weights_loaded_after_construction_then_follows_the_ema(tmp_path):
    torch.manual_seed(0)
    method = ReCo(make_stage(mode="semi", ema_decay=0.99), MODEL)
    trained = build_segmenter(make_stage(), MODEL).backbone  # other random weights
    torch.save({"format": "raycseg", "backbone": trained.state_dict()}, tmp_path / "state.pt")
    load_backbone_weights(method.backbone, tmp_path / "state.pt")  # what the worker does
    method(tiny_batch(semi=True))  # BN statistics then move on in the teacher's forward
    for name, value in parameters(trained).items():
        assert torch.equal(parameters(method.teacher.backbone)[name], value), name

    optimizer = torch.optim.SGD(method.student.parameters(), lr=0.5)
    for step in range(3):
        before = parameters(method.teacher)
        output = method(tiny_batch(semi=True, seed=step))
        optimizer.zero_grad()
        output["loss"].backward()
        optimizer.step()
        method.after_step(step)
        decay = min(1 - 1 / (step + 1), 0.99)  # 0, 0.5, 0.667
        student = parameters(method.student)
        for name, value in parameters(method.teacher).items():
            expected = decay * before[name] + (1 - decay) * student[name]
            assert torch.allclose(value, expected, atol=1e-6), (step, name)


def test_resumed_teacher_is_not_overwritten_by_the_student():
    torch.manual_seed(0)
    method = ReCo(make_stage(mode="semi"), MODEL)
    method(tiny_batch(semi=True))
    with torch.no_grad():
        for p in method.teacher.parameters():
            p.add_(1.0)
    state = copy.deepcopy(method.state_dict())
    resumed = ReCo(make_stage(mode="semi"), MODEL)
    resumed.load_state_dict(state)
    resumed(tiny_batch(semi=True))
    for name, value in parameters(resumed.teacher).items():
        assert torch.equal(value, state[f"teacher.{name}"]), name


def test_load_segmenter_gives_the_network_that_validates():
    recipe = load_recipe(DEBUG_RECIPE, ["stages.reco.num_classes=5"], check_files=False)
    for mode, evaluated in (("semi", "teacher"), ("partial", "teacher"), ("supervised", "student")):
        stage = recipe.stages[0].model_copy(update={"mode": mode})
        method = ReCo(stage, recipe.model)
        if hasattr(method, "teacher"):
            with torch.no_grad():
                for p in method.teacher.parameters():
                    p.add_(1.0)  # teacher and student differ
        raw = recipe.model_copy(update={"stages": [stage]}).model_dump(mode="json")
        segmenter = load_segmenter({"model": method.state_dict(), "recipe": raw, "stage": "reco"})
        assert not segmenter.training
        expected = parameters(getattr(method, evaluated))
        assert all(torch.equal(v, expected[n]) for n, v in parameters(segmenter).items()), mode
    cacl = load_recipe("cacl/debug", check_files=False).model_dump(mode="json")
    with pytest.raises(
        ProtocolSkipped, match="stage 'cacl', not of a reco stage; evaluate a reco stage"
    ):
        load_segmenter({"model": {}, "recipe": cacl, "stage": "cacl"})


def test_decoders_and_scaled_aspp_rates():
    v3 = build_segmenter(make_stage(), MODEL)
    assert isinstance(v3, DeepLabV3Plus)
    rates = [branch[0].dilation[0] for branch in list(v3.aspp.branches)[1:-1]]
    assert rates == [2, 5, 7]  # 6/12/18 on 21-pixel maps, scaled to the 8x8 maps of a 32 crop
    v2 = ReCo(make_stage(mode="supervised", decoder="deeplabv2"), MODEL)
    assert isinstance(v2.student, DeepLabV2)
    logits, rep = v2.student(torch.zeros(1, 3, 32, 32))
    assert logits.shape == (1, 3, 8, 8) and rep.shape == (1, 8, 8, 8)
    output = v2(tiny_batch(semi=False))
    output["loss"].backward()


def test_a_resnet_keeps_the_spec_rates_whatever_the_crop():
    """deeplabv2 on a ResNet runs at output stride 8 with 6/12/18/24, as the official code."""
    resnet = ModelSection(backbone="resnet18", output_stride=8)
    v2 = build_segmenter(make_stage(decoder="deeplabv2"), resnet)
    assert [conv.dilation[0] for conv in v2.classifier] == [6, 12, 18, 24]
    assert v2.backbone.output_stride == 8
    v3 = build_segmenter(make_stage(), ModelSection(backbone="resnet18", output_stride=16))
    assert [branch[0].dilation[0] for branch in list(v3.aspp.branches)[1:-1]] == [6, 12, 18]


def test_confidence_weighted_ce_closed_forms():
    logits = torch.zeros(2, 4, 3, 3, requires_grad=True)  # uniform: CE = log 4 everywhere
    target = torch.ones(2, 3, 3, dtype=torch.long)
    confidence = torch.ones(2, 3, 3)
    confidence[1, :, :2] = 0.5  # image 1: 3 of 9 pixels confident
    loss = confidence_weighted_ce(logits, target, confidence, 0.97)
    log4 = torch.log(torch.tensor(4.0))
    assert torch.allclose(loss, log4 * (1 + 3 / 9) / 2)
    target[0, 0, :] = 255  # ignored pixels leave the mean; weight 6/6 for image 0
    confidence[0, 0, :] = 0.0
    loss = confidence_weighted_ce(logits, target, confidence, 0.97)
    assert torch.allclose(loss, log4 * (6 * 1 + 9 * 3 / 9) / 15)
    empty = confidence_weighted_ce(logits, torch.full_like(target, 255), confidence, 0.97)
    assert empty == 0
    empty.backward()


# ----------------------------------------------------------------------------- end to end
# Whether semi beats supervised is measured, not tested: `cseg bench reco-semi`
# (docs/benchmarks.md). Here: what a short run records and keeps, deterministically.

DEBUG_RECIPE = "reco/voc_60labels_debug"
SHORT_STEPS = 8


@pytest.fixture(scope="module")
def one_pixel_per_class(tmp_path_factory) -> tuple[Path, Path]:
    """The debug recipe's generated data, split to one labelled pixel per class (p0)."""
    root = tmp_path_factory.mktemp("reco")
    recipe = load_recipe(DEBUG_RECIPE, [f"data.root={root / 'data'}"], check_files=False)
    prepare_data(recipe)
    split = build_label_split(
        root / "data" / recipe.data.synthetic.name / "segmentation", root / "p0", partial="p0"
    )
    return root, split.labelled


def train(root: Path, labelled: Path, mode: str) -> list[dict]:
    recipe = load_recipe(
        DEBUG_RECIPE,
        [
            f"data.root={root / 'data'}",
            f"storage.path={root / 'runs'}",
            f"storage.name={mode}",
            f"stages.reco.mode={mode}",
            f"stages.reco.steps={SHORT_STEPS}",
            f"stages.reco.val_every={SHORT_STEPS // 4}",
            f"storage.checkpoint_every={SHORT_STEPS}",
            "storage.log_every=1",
            f"stages.reco.data.train={labelled}",
            f"stages.reco.data.unlabelled={labelled}",
        ],
    )
    result = run_pretrain(recipe)
    lines = (result.run_dir / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    kept = load_state(result.run_dir / "reco" / "best" / "state.pt")  # the best is kept
    assert kept["val_miou"] == pytest.approx(max(r["val_miou"] for r in records if "val_miou" in r))
    return records


@pytest.mark.integration
@pytest.mark.parametrize(
    "mode, terms",
    [("semi", {"sup", "unsup", "reco"}), ("partial", {"sup", "unsup", "reco"}),
     ("supervised", {"sup", "reco"})],
)  # fmt: skip
def test_a_short_run_logs_finite_losses_and_keeps_its_best_validation(
    one_pixel_per_class, mode, terms
):
    records = train(*one_pixel_per_class, mode)
    assert records[-1]["step"] == SHORT_STEPS
    losses = [r for r in records if "loss" in r]
    assert len(losses) == SHORT_STEPS  # log_every=1
    for record in losses:
        assert {key for key in record if key.startswith("loss_")} == {f"loss_{t}" for t in terms}
        assert all(math.isfinite(record[f"loss_{t}"]) for t in terms) and math.isfinite(
            record["loss"]
        )
    scores = [r["val_miou"] for r in records if "val_miou" in r]
    best = [r["best_val_miou"] for r in records if "val_miou" in r]
    assert len(scores) == 4 and best == pytest.approx([max(scores[: i + 1]) for i in range(4)])
    assert all(0.0 <= score <= 1.0 for score in scores)
    # `cseg eval --protocol segmentation` on the kept checkpoint scores what validation did
    root = one_pixel_per_class[0]
    kept = root / "runs" / mode / "reco" / "best"
    scores, written = evaluate_target(
        kept,
        data=str(root / "data" / "synthetic-reco" / "segmentation"),
        protocols=["segmentation"],
    )
    assert scores["segmentation"]["miou"] == pytest.approx(load_state(kept)["val_miou"], abs=1e-12)
    assert json.loads(written.read_text())["segmentation"] == scores["segmentation"]
