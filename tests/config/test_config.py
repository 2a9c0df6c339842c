"""Recipe schema, overrides and error reporting (raycseg.config)."""

from __future__ import annotations

import pytest
import yaml

from raycseg.config import (
    CACLStage,
    RecoStage,
    apply_overrides,
    load_recipe,
    recipe_to_yaml,
    shipped_recipes,
)
from raycseg.errors import RecipeError


def write_recipe(tmp_path, **changes):
    raw = {
        "name": "t",
        "data": {"root": str(tmp_path / "data")},
        "stages": [
            {"method": "cacl", "steps": 10, "data": {"train": "video"}},
            {"method": "reco", "steps": 5, "num_classes": 3, "data": {"train": "seg"}},
        ],
    }
    raw.update(changes)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_overrides_are_typed_by_the_schema_and_address_stages_by_name(tmp_path):
    recipe = load_recipe(
        write_recipe(tmp_path),
        [
            "stages.cacl.lambda_cycle=0.3",
            "stages.reco.strong_threshold=0.9",
            "stages.1.steps=7",
            "optim.lr=1e-3",
        ],
        check_files=False,
    )
    cacl, reco = recipe.stages
    assert isinstance(cacl, CACLStage) and isinstance(reco, RecoStage)
    assert cacl.lambda_cycle == pytest.approx(0.3)
    assert reco.strong_threshold == pytest.approx(0.9) and reco.steps == 7
    assert recipe.optim.lr == pytest.approx(1e-3)
    assert [s.name for s in recipe.stages] == ["cacl", "reco"]


def test_every_problem_is_reported_at_once_with_its_path(tmp_path):
    with pytest.raises(RecipeError) as caught:
        load_recipe(
            write_recipe(tmp_path),
            [
                "stages.cacl.lambda_cyle=0.3",
                "stages.cacl.data.batch_size=many",
                "scaling.num_workers=-1",
            ],
            check_files=False,
        )
    message = str(caught.value)
    assert "stages.cacl.lambda_cyle: unknown key" in message
    assert "stages.cacl.data.batch_size" in message
    assert "scaling.num_workers" in message
    assert "\n" not in message


def test_unknown_stage_and_malformed_override_are_errors(tmp_path):
    path = write_recipe(tmp_path)
    with pytest.raises(RecipeError, match="no stage named 'nope'"):
        load_recipe(path, ["stages.nope.steps=3"], check_files=False)
    with pytest.raises(RecipeError, match="not key=value"):
        load_recipe(path, ["optim.lr"], check_files=False)


def test_missing_inputs_are_reported_but_generated_data_is_not(tmp_path):
    with pytest.raises(RecipeError) as caught:
        load_recipe(write_recipe(tmp_path))
    assert "stages.cacl.data.train" in str(caught.value) and "cseg shards" in str(caught.value)
    generated = write_recipe(
        tmp_path,
        data={"root": str(tmp_path / "data"), "synthetic": {"name": "gen"}},
        stages=[{"method": "cacl", "steps": 1, "data": {"train": "gen/video"}}],
    )
    recipe = load_recipe(generated)
    assert recipe.stages[0].data.train == str(tmp_path / "data" / "gen" / "video")


def test_maskcontrast_queue_must_be_a_multiple_of_the_global_batch(tmp_path):
    stage = {
        "method": "maskcontrast",
        "steps": 1,
        "queue_size": 48,
        "data": {"train": "s", "batch_size": 8},
    }
    path = write_recipe(tmp_path, stages=[stage], scaling={"num_workers": 4})
    with pytest.raises(RecipeError, match="multiple of the global batch 32"):
        load_recipe(path, check_files=False)
    assert load_recipe(path, ["scaling.num_workers=3"], check_files=False).scaling.num_workers == 3


def test_duplicate_stage_names_are_rejected(tmp_path):
    stage = {"method": "cacl", "steps": 1, "data": {"train": "v"}}
    with pytest.raises(RecipeError, match="unique"):
        load_recipe(write_recipe(tmp_path, stages=[stage, stage]), check_files=False)


def test_resolved_recipe_round_trips_through_yaml(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path), ["stages.cacl.lambda_pixel=0"], check_files=False)
    again = tmp_path / "again.yaml"
    again.write_text(recipe_to_yaml(recipe))
    assert load_recipe(again, check_files=False) == recipe


def test_apply_overrides_parses_yaml_values():
    raw = apply_overrides(
        {"stages": [{"method": "cacl"}]}, ["stages.cacl.data.frame_gap_s=[0.5, 1.0]", "seed=3"]
    )
    assert raw["stages"][0]["data"]["frame_gap_s"] == [0.5, 1.0] and raw["seed"] == 3


def test_every_shipped_recipe_validates():
    names = shipped_recipes()
    assert "quickstart" in names and "cacl/debug" in names
    for name in names:
        assert load_recipe(name, check_files=False).description, f"{name}: `recipes ls` shows it"


def test_a_cluster_overlay_lies_between_the_recipe_and_the_overrides(tmp_path):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(
        "scaling: {num_workers: 8, cpus_per_worker: 4, resources_per_worker: {worker_node: 1}}\n"
        "stages: {cacl: {data: {batch_size: 64}}}\n"
    )
    recipe = load_recipe(
        write_recipe(tmp_path, scaling={"num_workers": 2, "resources_per_worker": {"a10g": 1}}),
        ["scaling.num_workers=16"],
        cluster=overlay,
        check_files=False,
    )
    assert recipe.scaling.num_workers == 16  # the command line wins over the overlay
    assert recipe.scaling.cpus_per_worker == 4  # the overlay wins over the recipe
    assert recipe.scaling.resources_per_worker == {"a10g": 1, "worker_node": 1}  # key by key
    assert recipe.stages[0].data.batch_size == 64  # stages by name, as in overrides


def test_the_shipped_gpu_overlay_fits_every_shipped_recipe():
    for name in shipped_recipes():
        recipe = load_recipe(name, cluster="gpu", check_files=False)
        scaling = recipe.scaling
        assert scaling.use_gpu and scaling.resources_per_worker == {"worker_node": 1}, name
        assert scaling.driver_resources == {"driver_slot": 1}, name


def test_a_bad_cluster_overlay_names_the_fix(tmp_path):
    with pytest.raises(RecipeError, match="shipped overlays: gpu"):
        load_recipe("quickstart", cluster="gpux", check_files=False)
    overlay = tmp_path / "typo.yaml"
    overlay.write_text("scaling: {use_gpus: true}\n")
    with pytest.raises(
        RecipeError, match=r"cluster overlay .*typo.yaml: scaling.use_gpus: unknown"
    ):
        load_recipe("quickstart", cluster=overlay, check_files=False)


def test_freezing_early_layers_without_weights_to_freeze_names_init_from(tmp_path):
    stage = {"method": "maskcontrast", "steps": 5, "queue_size": 0, "freeze_early_layers": True,
             "data": {"train": "sal"}}  # fmt: skip
    path = write_recipe(tmp_path, stages=[stage])
    with pytest.raises(RecipeError, match="freeze_early_layers .* set model.init_from"):
        load_recipe(path, check_files=False)
    for weights in ("model.init_from=torchvision:resnet50", "stages.maskcontrast.init_from=/w.pt"):
        load_recipe(path, [weights, "model.backbone=resnet50"], check_files=False)
    # after another stage, the previous stage's checkpoint fills the frozen layers
    first = {"method": "cacl", "steps": 5, "data": {"train": "video"}}
    load_recipe(write_recipe(tmp_path, stages=[first, stage]), check_files=False)


def test_deeplabv2_on_a_resnet_runs_at_output_stride_8(tmp_path):
    path = write_recipe(tmp_path)
    overrides = ["model.backbone=resnet101", "stages.reco.decoder=deeplabv2"]
    with pytest.raises(RecipeError, match="deeplabv2 .* set model.output_stride: 8"):
        load_recipe(path, overrides, check_files=False)
    load_recipe(path, [*overrides, "model.output_stride=8"], check_files=False)


def test_gradient_clipping_is_off_unless_a_recipe_sets_it(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path), check_files=False)
    assert recipe.optim.grad_clip is None
    assert (
        load_recipe(
            write_recipe(tmp_path), ["optim.grad_clip=3"], check_files=False
        ).optim.grad_clip
        == 3
    )


def test_evaluation_is_turned_off_by_eval_null_or_eval_data_null(tmp_path):
    for off in ("eval=null", "eval.data=null"):
        assert load_recipe("quickstart", [off], check_files=False).eval is None
    assert load_recipe("quickstart", check_files=False).eval is not None


def test_the_decode_pool_is_offered_to_single_stream_stages_with_ray_workers(tmp_path):
    reco = {"method": "reco", "steps": 5, "data": {"train": "seg", "loader": "ray_data"}}
    with pytest.raises(RecipeError, match="ReCo reads two, so use data.loader: webdataset"):
        load_recipe(write_recipe(tmp_path, stages=[reco]), check_files=False)
    cacl = {"method": "cacl", "steps": 5, "data": {"train": "video", "loader": "ray_data"}}
    path = write_recipe(tmp_path, stages=[cacl])
    with pytest.raises(RecipeError, match="set scaling.num_workers >= 1"):
        load_recipe(path, ["scaling.num_workers=0"], check_files=False)
    recipe = load_recipe(path, ["stages.cacl.data.decode_pool.tasks=3"], check_files=False)
    assert recipe.stages[0].data.decode_pool.tasks == 3
    assert recipe.stages[0].data.decode_pool.cpus_per_task == 1.0
    assert (
        recipe.decode_pool_cpus() == 3.0
    )  # local Ray and Tune trials reserve these beside workers
