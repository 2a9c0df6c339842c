"""Search spaces (raycseg.tune.spaces): parsing, validation against the recipe, Tune objects.

Every check here runs before Ray would start; none of these tests starts Ray.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import yaml

from raycseg.config import find_recipe
from raycseg.errors import RecipeError
from raycseg.tune.spaces import (
    find_space,
    load_space,
    shipped_spaces,
    to_param_space,
    trial_recipe,
)

BASE_PARAMS = {"stages.cacl.lambda_cycle": {"loguniform": [0.1, 3.0]}}


def write_space(tmp_path, params=None, **changes):
    raw = {
        "recipe": "cacl/debug",
        "num_samples": 2,
        "params": BASE_PARAMS if params is None else params,
    }
    raw.update(changes)
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def load(tmp_path, params=None, cli_overrides=(), **changes):
    return load_space(
        write_space(tmp_path, params, **changes), overrides=list(cli_overrides), check_files=False
    )


def assert_no_ray_started():
    ray = sys.modules.get("ray")
    assert ray is None or not ray.is_initialized()


# ----------------------------------------------------------------------------- shipped


@pytest.mark.parametrize("name", ["cacl", "cacl_debug", "reco", "reco_debug", "maskcontrast", "maskcontrast_debug"])  # fmt: skip
def test_every_shipped_space_validates_against_its_recipe(name):
    assert name in shipped_spaces()
    recipe = yaml.safe_load(find_space(name).read_text())["recipe"]
    find_recipe(recipe)  # a shipped space names a shipped recipe
    plan = load_space(name, check_files=False)
    assert plan.metric == "val_miou" and plan.mode == "max"
    assert plan.space.params


def test_debug_spaces_are_small_one_worker_searches():
    """Four trials each; a PBT population of two trials side by side (exploits need both live)."""
    for name in [n for n in shipped_spaces() if "debug" in n]:
        raw = yaml.safe_load(find_space(name).read_text())
        grid = 1
        for distribution in raw["params"].values():
            grid *= len(distribution.get("grid", [None]))
        pbt = raw["scheduler"]["type"] == "pbt"
        assert grid * raw["num_samples"] == (2 if pbt else 4), name
        assert raw["overrides"]["scaling.num_workers"] == 1, name
        if pbt:
            assert raw["max_concurrent_trials"] == raw["num_samples"], name


def test_cacl_debug_space_searches_the_quickstart_loss_balance():
    plan = load_space("cacl_debug", check_files=False)
    assert set(plan.space.params) == {"stages.cacl.lambda_cycle", "stages.cacl.lambda_pixel"}
    assert plan.recipe.scaling.num_workers == 1  # the space's own overrides apply
    assert plan.max_t == plan.recipe.stages[0].steps  # ASHA's max_t defaults to the total steps


# ----------------------------------------------------------------------------- errors


def test_unknown_path_names_the_path(tmp_path):
    with pytest.raises(RecipeError, match=r"params\.stages\.cacl\.lambda_cyle.*unknown key"):
        load(tmp_path, {"stages.cacl.lambda_cyle": {"uniform": [0.1, 1.0]}})
    with pytest.raises(RecipeError, match=r"params\.stages\.reco\.weak_threshold.*no stage named"):
        load(tmp_path, {"stages.reco.weak_threshold": {"uniform": [0.5, 0.9]}})
    with pytest.raises(RecipeError, match=r"params\.optim\.learning_rate.*unknown key"):
        load(tmp_path, {"optim.learning_rate": {"choice": [0.1]}})
    assert_no_ray_started()


@pytest.mark.parametrize(
    ("distribution", "message"),
    [
        ({"uniform": [1.0, 0.5]}, "lo < hi"),
        ({"loguniform": [0.0, 1.0]}, "loguniform needs lo > 0"),
        ({"loguniform": [-1.0, 1.0]}, "loguniform needs lo > 0"),
        ({"randint": [5, 2]}, "randint needs lo <= hi"),
        ({"choice": []}, "choice needs at least one value"),
        ({"grid": []}, "grid needs at least one value"),
        ({"uniform": [0.1, 1.0], "choice": [1.0]}, "exactly one of"),
        ({"normal": [0.0, 1.0]}, "unknown key"),
        ({"uniform": [0.1]}, "uniform"),
    ],
)
def test_bad_distribution_names_the_path(tmp_path, distribution, message):
    with pytest.raises(RecipeError) as caught:
        load(tmp_path, {"stages.cacl.lambda_cycle": distribution})
    text = str(caught.value)
    assert "params.stages.cacl.lambda_cycle" in text and message in text
    assert "\n" not in text  # one line, naming the fix
    assert_no_ray_started()


@pytest.mark.parametrize(
    ("path", "distribution", "bad_value"),
    [
        ("stages.cacl.lambda_cycle", {"uniform": [-1.0, 1.0]}, "-1.0"),  # ge=0 fails at lo
        ("stages.cacl.temperature_global", {"choice": [0.1, "warm"]}, "'warm'"),
        ("stages.cacl.steps", {"uniform": [1, 10]}, "5.5"),  # an int field sampled as a float
        ("stages.cacl.cycle_edge_dropout", {"uniform": [0.0, 1.0]}, "1.0"),  # lt=1 fails at hi
        ("scaling.num_workers", {"randint": [-1, 2]}, "-1"),
    ],
)
def test_value_failing_the_schema_names_the_path_and_value(tmp_path, path, distribution, bad_value):
    with pytest.raises(RecipeError) as caught:
        load(tmp_path, {path: distribution})
    assert f"params.{path} = {bad_value}" in str(caught.value)
    assert_no_ray_started()


def test_space_file_keys_are_checked(tmp_path):
    with pytest.raises(RecipeError, match="schedulr: unknown key"):
        load(tmp_path, schedulr={"type": "asha"})
    with pytest.raises(RecipeError, match="scheduler.type"):
        load(tmp_path, scheduler={"type": "hyperband"})
    with pytest.raises(RecipeError, match="grace_period=50 exceeds max_t=20"):
        load(tmp_path, scheduler={"grace_period": 50})
    with pytest.raises(RecipeError, match="params"):
        load(tmp_path, params={})


def test_a_searched_path_cannot_also_be_fixed(tmp_path):
    with pytest.raises(RecipeError, match="both searched"):
        load(tmp_path, overrides={"stages.cacl.lambda_cycle": 1.0})
    with pytest.raises(RecipeError, match="the command line sets"):
        load(tmp_path, cli_overrides=["stages.cacl.lambda_cycle=2"])


def test_validation_metric_needs_a_validating_stage(tmp_path):
    with pytest.raises(RecipeError, match=r"val_every > 0.*stages\.cacl\.val_every"):
        load(tmp_path, cli_overrides=["stages.cacl.val_every=0"])
    plan = load(tmp_path, cli_overrides=["stages.cacl.val_every=0"], metric="loss", mode="min")
    assert (plan.metric, plan.mode) == ("loss", "min")


def test_missing_search_library_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # not importable, installed or not
    with pytest.raises(RecipeError, match="needs the `optuna` package"):
        load(tmp_path, search_alg="optuna")


def test_unknown_space_and_recipe(tmp_path):
    with pytest.raises(RecipeError, match="no space file or shipped space named 'nope'"):
        load_space("nope")
    with pytest.raises(RecipeError, match="no recipe file or shipped recipe"):
        load(tmp_path, recipe="no/such/recipe")


# ----------------------------------------------------------------------------- recipes


def test_recipe_precedence_recipe_then_space_overrides_then_command_line(tmp_path):
    plan = load(
        tmp_path,
        cli_overrides=["stages.cacl.steps=12"],
        overrides={"stages.cacl.steps": 8, "scaling.num_workers": 1},
    )
    assert plan.recipe.stages[0].steps == 12  # the command line wins
    assert plan.recipe.scaling.num_workers == 1
    assert plan.max_t == 12


def test_recipe_given_on_the_command_line_replaces_the_space_one(tmp_path):
    space = write_space(tmp_path, metric="loss", mode="min")
    plan = load_space(space, recipe="quickstart", check_files=False)
    assert plan.recipe.name == "quickstart"


def test_recipe_path_relative_to_the_space_file(tmp_path):
    (tmp_path / "mine.yaml").write_text(find_recipe("cacl/debug").read_text())
    plan = load(tmp_path, recipe="mine.yaml")
    assert plan.recipe_path == (tmp_path / "mine.yaml").resolve()


def test_trial_recipe_takes_sampled_numpy_values():
    plan = load_space("cacl_debug", check_files=False)
    recipe = trial_recipe(
        plan.base_raw,
        {
            "stages.cacl.lambda_cycle": np.float64(0.25),
            "stages.cacl.num_pixel_negatives": np.int64(7),
        },
    )
    stage = recipe.stages[0]
    assert stage.lambda_cycle == 0.25 and stage.num_pixel_negatives == 7
    assert type(stage.num_pixel_negatives) is int
    assert plan.recipe.stages[0].lambda_cycle == 1.0  # the base is not modified


# ----------------------------------------------------------------------------- Tune objects


def test_param_space_maps_each_distribution_to_its_tune_domain(tmp_path):
    from ray import tune

    plan = load(
        tmp_path,
        {
            "stages.cacl.lambda_global": {"uniform": [0.5, 1.5]},
            "stages.cacl.lambda_cycle": {"loguniform": [0.01, 1.0]},
            "stages.cacl.head_dim": {"randint": [8, 10]},
            "stages.cacl.lambda_pixel": {"choice": [0.0, 1.0]},
            "optim.lr": {"grid": [0.001, 0.01]},
        },
    )
    space = to_param_space(plan.space)
    rng = np.random.default_rng(0)
    uniform = space["stages.cacl.lambda_global"].sample(size=200, random_state=rng)
    assert 0.5 <= min(uniform) and max(uniform) <= 1.5
    logs = np.log10(space["stages.cacl.lambda_cycle"].sample(size=400, random_state=rng))
    assert logs.min() >= -2 and logs.max() <= 0 and abs(np.median(logs) + 1) < 0.2
    ints = set(space["stages.cacl.head_dim"].sample(size=200, random_state=rng))
    assert ints == {8, 9, 10}  # both ends included
    assert isinstance(space["stages.cacl.lambda_pixel"], tune.search.sample.Categorical)
    assert space["optim.lr"] == {"grid_search": [0.001, 0.01]}
