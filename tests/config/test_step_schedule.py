"""Step schedules of loss weights and thresholds: parsing, errors, YAML, and the step applying them."""

from __future__ import annotations

import pytest
import torch
import yaml

from raycseg.config import (
    CACLStage,
    MaskContrastStage,
    RecoStage,
    StepSchedule,
    load_recipe,
    recipe_to_yaml,
    schedulable_fields,
    stage_at_step,
    value_at,
)
from raycseg.errors import RecipeError
from raycseg.methods import build_method
from raycseg.train.step import StageStep

SCHEDULE = "stages.cacl.lambda_cycle={from_step: {0: 1.0, 4: 0.25, 9: 2.0}}"


def test_a_schedule_holds_each_value_from_its_step_on():
    stage = load_recipe("cacl/debug", [SCHEDULE]).stages[0]
    assert isinstance(stage.lambda_cycle, StepSchedule)
    expected = [1.0] * 4 + [0.25] * 5 + [2.0] * 3
    assert [value_at(stage.lambda_cycle, step) for step in range(12)] == expected
    assert value_at(stage.lambda_pixel, 7) == 1.0  # a plain number holds everywhere
    at_five = stage_at_step(stage, 5)
    assert at_five.lambda_cycle == 0.25 and at_five.lambda_pixel == stage.lambda_pixel
    assert isinstance(stage.lambda_cycle, StepSchedule), "the stage itself is left as it is"


def test_only_loss_weights_and_thresholds_take_schedules():
    assert schedulable_fields(CACLStage) == ["lambda_global", "lambda_pixel", "lambda_cycle"]
    assert schedulable_fields(MaskContrastStage) == ["saliency_weight"]
    assert schedulable_fields(RecoStage) == ["strong_threshold", "weak_threshold", "lambda_reco"]
    with pytest.raises(RecipeError, match="temperature_global"):
        load_recipe("cacl/debug", ["stages.cacl.temperature_global={from_step: {0: 0.1}}"])


def test_a_schedule_round_trips_through_the_stored_yaml(tmp_path):
    recipe = load_recipe("cacl/debug", [SCHEDULE])
    text = recipe_to_yaml(recipe)
    stored = yaml.safe_load(text)["stages"][0]["lambda_cycle"]
    assert stored == {"from_step": {0: 1.0, 4: 0.25, 9: 2.0}}  # integer steps, as written
    path = tmp_path / "replay.yaml"
    path.write_text(text)
    assert load_recipe(str(path)).stages[0].lambda_cycle == recipe.stages[0].lambda_cycle


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("{from_step: {2: 1.0}}", "stages.cacl.lambda_cycle: a schedule starts at step 0"),
        ("{from_step: {0: -1.0}}", "stages.cacl.lambda_cycle.from_step.0: Input should be greater"),
        ("-1.0", "stages.cacl.lambda_cycle: Input should be greater than or equal to 0"),
        ("{steps: {0: 1.0}}", "stages.cacl.lambda_cycle.steps: unknown key"),
    ],
)
def test_bad_schedules_name_their_path(value, message):
    with pytest.raises(RecipeError) as error:
        load_recipe("cacl/debug", [f"stages.cacl.lambda_cycle={value}"])
    assert message in str(error.value)
    assert "step schedule" not in str(error.value) and "plain number" not in str(error.value)


def test_thresholds_keep_their_range_inside_a_schedule():
    with pytest.raises(RecipeError, match=r"strong_threshold.from_step.3: Input should be less"):
        load_recipe(
            "reco/voc_60labels_debug",
            ["stages.reco.strong_threshold={from_step: {0: 0.9, 3: 1.5}}"],
        )


def test_the_training_step_applies_each_steps_weights():
    """The loss of step s weighs the CACL terms with the schedule's values at s."""
    recipe = load_recipe(
        "cacl/debug",
        [
            "stages.cacl.lambda_pixel={from_step: {0: 0.0, 2: 0.5}}",
            "stages.cacl.lambda_cycle={from_step: {0: 1.0, 1: 3.0}}",
            "stages.cacl.num_pixel_negatives=8",
        ],
    )
    stage = recipe.stages[0]
    torch.manual_seed(0)
    method = build_method(stage, recipe.model)
    assert method.pixel_head is not None, "a weight that is ever above 0 gets its head"
    assert method.find_unused_parameters, "the pixel head gets no gradient while its weight is 0"
    step = StageStep(
        method, method, recipe.optim_for(stage), 4, recipe.scaling, torch.device("cpu")
    )
    views = torch.randint(0, 256, (2, 4, 3, 32, 32), dtype=torch.uint8)
    batch = {"view_a": views[0], "view_b": views[1]}
    for stage_step, (pixel, cycle) in enumerate([(0.0, 1.0), (0.0, 3.0), (0.5, 3.0), (0.5, 3.0)]):
        output = step.forward(batch, stage_step)
        terms = output["terms"]
        expected = terms["global"] + pixel * terms["pixel"] + cycle * terms["cycle"]
        assert (method.stage.lambda_pixel, method.stage.lambda_cycle) == (pixel, cycle)
        assert torch.allclose(output["loss"], expected), stage_step
        assert (float(terms["pixel"].detach()) == 0.0) == (
            pixel == 0.0
        )  # a 0 weight skips its term
