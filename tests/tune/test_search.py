"""The search's bookkeeping without Ray: trial resources, summaries, best recipe, resume errors.

The Ray-level search (ASHA, freed workers, restore) is tests/tune/test_search_ray.py.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml
from cseg.main import app
from typer.testing import CliRunner

from raycseg.config import load_recipe
from raycseg.errors import CsegError, RecipeError
from raycseg.tune.resources import trial_demand
from raycseg.tune.results import choose_best, summarise_trial, write_best_recipe
from raycseg.tune.search import load_plan, run_tune
from raycseg.tune.spaces import load_space


def fake_result(trial_id, config, history, *, done=False, error=None, metric="val_miou"):
    """A Tune `Result` look-alike: the attributes summarise_trial reads."""
    rows = [{"step": step, metric: value} for step, value in history]
    last = dict(rows[-1]) if rows else {}
    last.update(trial_id=trial_id, done=done, training_iteration=len(rows), time_total_s=3.0)
    frame = pd.DataFrame(rows) if rows else None
    return SimpleNamespace(
        metrics=last,
        metrics_dataframe=frame,
        config=config,
        path=f"/exp/{trial_id}",
        error=error,
    )


@pytest.fixture(scope="module")
def plan():
    return load_space("cacl_debug", check_files=False)


# ----------------------------------------------------------------------------- resources


def test_trial_demand_driver_takes_no_cpu_and_the_trial_needs_its_workers():
    recipe = load_recipe(
        "cacl/debug", ["scaling.num_workers=3", "scaling.cpus_per_worker=2"], check_files=False
    )
    driver, need = trial_demand(recipe)
    assert driver["cpu"] == 0 and 0 < driver["memory"] <= 2**30  # no CPU: it only waits
    assert need == {"CPU": 6.0}
    gpu = load_recipe(
        "cacl/debug",
        ["scaling.num_workers=4", "scaling.use_gpu=true", "scaling.resources_per_worker={worker_node: 1}"],
        check_files=False,
    )  # fmt: skip
    assert trial_demand(gpu)[1] == {"CPU": 4.0, "GPU": 4.0, "worker_node": 4.0}


def test_the_gpu_overlay_pins_trial_drivers_to_the_head_and_workers_to_gpu_nodes():
    plan = load_space("cacl_debug", overrides=["scaling.num_workers=8"], cluster="gpu",
                      check_files=False)  # fmt: skip
    driver, need = trial_demand(plan.recipe)
    assert driver["driver_slot"] == 1 and driver["cpu"] == 0
    assert need == {"CPU": 40.0, "GPU": 8.0, "worker_node": 8.0}


def test_local_mode_trial_trains_in_its_driver():
    recipe = load_recipe("cacl/debug", ["scaling.num_workers=0"], check_files=False)
    driver, need = trial_demand(recipe)
    assert driver == {"cpu": 1.0} and need == {"CPU": 1.0}


# ----------------------------------------------------------------------------- summaries


def test_trial_status_from_its_reports(plan):
    max_t = plan.max_t
    completed = summarise_trial(
        fake_result("a", {}, [(4, 0.2), (max_t, 0.3)], done=True), plan, Path("/exp")
    )
    stopped = summarise_trial(
        fake_result("b", {}, [(4, 0.1), (8, 0.15)], done=True), plan, Path("/exp")
    )
    running = summarise_trial(fake_result("c", {}, [(4, 0.1)]), plan, Path("/exp"))
    failed = summarise_trial(
        fake_result("d", {}, [(4, 0.1)], error=RuntimeError("boom\nValueError: nan loss")),
        plan,
        Path("/exp"),
    )
    assert [t.status for t in (completed, stopped, running, failed)] == [
        "completed", "stopped", "unfinished", "error",
    ]  # fmt: skip
    assert failed.error == "ValueError: nan loss"
    assert completed.final_metric == 0.3 and completed.best_metric == 0.3
    assert stopped.last_step == 8 and stopped.run_dir == "/exp/runs/b"


def test_a_trial_is_named_by_its_folder_not_by_the_result_pbt_handed_it(plan):
    """PBT gives a trial that took over another's last checkpoint that trial's last result."""
    exploiting = fake_result("t0", {}, [(4, 0.2), (plan.max_t, 0.3)])
    exploiting.metrics["trial_id"] = "t1"
    trial = summarise_trial(exploiting, plan, Path("/exp"))
    assert trial.trial_id == "t0" and trial.run_dir == "/exp/runs/t0"


def test_metric_history_skips_reports_without_the_metric(plan):
    result = fake_result("a", {}, [(1, float("nan")), (2, 0.4), (3, float("nan")), (4, 0.2)])
    trial = summarise_trial(result, plan, Path("/exp"))
    assert trial.final_metric == 0.2 and trial.best_metric == 0.4


def test_best_prefers_completed_trials_and_respects_the_mode(plan):
    trials = [
        summarise_trial(fake_result("early", {}, [(8, 0.9)], done=True), plan, Path("/e")),
        summarise_trial(fake_result("low", {}, [(plan.max_t, 0.2)], done=True), plan, Path("/e")),
        summarise_trial(fake_result("high", {}, [(plan.max_t, 0.4)], done=True), plan, Path("/e")),
        summarise_trial(fake_result("none", {}, []), plan, Path("/e")),
    ]
    assert choose_best(trials, "max").trial_id == "high"
    assert choose_best(trials, "min").trial_id == "low"
    assert choose_best(trials[:1], "max").trial_id == "early"  # no completed trial: any scored
    assert choose_best(trials[3:], "max") is None


def test_best_yaml_reproduces_the_best_trial(plan, tmp_path):
    best = summarise_trial(
        fake_result("t1", {"stages.cacl.lambda_cycle": 0.1, "stages.cacl.lambda_pixel": 0.0},
                    [(plan.max_t, 0.31)], done=True),
        plan, tmp_path,
    )  # fmt: skip
    path = write_best_recipe(plan, best, tmp_path)
    assert path == tmp_path / "best.yaml" and not list(tmp_path.glob("*.partial"))
    recipe = load_recipe(path, check_files=False)
    assert recipe.stages[0].lambda_cycle == 0.1 and recipe.stages[0].lambda_pixel == 0.0
    assert recipe.scaling.num_workers == 1  # the space's fixed overrides are part of it
    assert recipe.model_dump() == load_recipe(path, check_files=False).model_dump()
    assert "cseg pretrain" in path.read_text().splitlines()[3]


# ----------------------------------------------------------------------------- resume


def test_resume_with_nothing_to_resume_is_a_usage_error_before_ray(tmp_path):
    with pytest.raises(CsegError, match="nothing to resume") as caught:
        run_tune("cacl_debug", name="never-ran", resume=True, storage_path=str(tmp_path))
    assert caught.value.exit_code == 2
    with pytest.raises(RecipeError, match="give --space"):
        run_tune(None, name="never-ran", storage_path=str(tmp_path))
    assert not (tmp_path / "never-ran").exists()
    ray = sys.modules.get("ray")
    assert ray is None or not ray.is_initialized()


def test_remote_storage_is_refused_before_ray(tmp_path):
    with pytest.raises(RecipeError, match="shared \\(NFS\\) folder"):
        run_tune("cacl_debug", storage_path="s3://bucket/runs")


def test_plan_round_trips_through_the_experiment_dir(plan, tmp_path):
    from raycseg.tune.search import _save_plan

    _save_plan(plan, tmp_path, fresh=True)
    again = load_plan(tmp_path)
    assert again.recipe.model_dump() == plan.recipe.model_dump()
    assert again.space == plan.space and (again.metric, again.mode) == ("val_miou", "max")
    space = yaml.safe_load((tmp_path / "space.yaml").read_text())
    assert space["metric"] == "val_miou" and space["mode"] == "max"
    assert space["params"]["stages.cacl.lambda_pixel"] == {"grid": [0.0, 30.0]}
    assert Path(space["recipe"]).is_absolute()
    assert load_plan(tmp_path / "absent") is None


# ----------------------------------------------------------------------------- CLI


@pytest.fixture
def cli():
    """`cseg tune ARGS` in process on the root app."""
    runner = CliRunner()
    return lambda *args: runner.invoke(app, ["tune", *args])


def test_cli_dry_run_prints_the_plan(cli):
    result = cli("--space", "cacl_debug", "stages.cacl.steps=12", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "stages.cacl.lambda_cycle" in result.stdout and "up to 12" in result.stdout


def test_cli_bad_space_is_a_recipe_error_with_exit_code_2(cli, tmp_path):
    space = tmp_path / "bad.yaml"
    space.write_text(
        yaml.safe_dump({"recipe": "cacl/debug", "params": {"stages.cacl.nope": {"choice": [1]}}})
    )
    result = cli("--space", str(space), "--dry-run")
    assert result.exit_code == 2 and "params.stages.cacl.nope" in result.stderr
    missing = cli()
    assert missing.exit_code == 2 and "--space" in missing.stderr


def test_math_of_best_metric_is_finite_only(plan):
    trial = summarise_trial(
        fake_result("n", {}, [(plan.max_t, float("inf"))], done=True), plan, Path("/e")
    )
    assert math.isinf(trial.final_metric) and choose_best([trial], "max") is None


def test_tune_does_not_copy_aws_credentials_into_trial_runtime_envs(monkeypatch):
    """Ray Tune copies AWS_* from the driver into each trial's runtime_env, which Ray logs."""
    from ray.tune.execution.class_cache import _ActorClassCache

    from raycseg.tune.search import TUNE_ENVIRONMENT, _environment

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-test")
    monkeypatch.delenv("TUNE_DISABLE_STRICT_METRIC_CHECKING", raising=False)

    class Trainable:
        pass

    exposed = _ActorClassCache().get(Trainable)._default_options["runtime_env"]["env_vars"]
    assert exposed["AWS_SECRET_ACCESS_KEY"] == "secret-test", "what happens without the guard"

    with _environment(**TUNE_ENVIRONMENT):
        guarded = _ActorClassCache().get(Trainable)._default_options["runtime_env"]["env_vars"]
        assert os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] == "1"
    assert not any(key.startswith("AWS_") for key in guarded), guarded
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == "secret-test", "restored after the search"
    assert "TUNE_DISABLE_STRICT_METRIC_CHECKING" not in os.environ
