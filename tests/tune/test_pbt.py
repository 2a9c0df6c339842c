"""PBT without Ray: the space's checks, mutations, lineages, and a trial taking over another's run.

The Ray-level PBT search is in tests/tune/test_search_ray.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from cseg.main import app
from typer.testing import CliRunner

from raycseg.config import load_recipe, value_at
from raycseg.errors import RecipeError
from raycseg.run_directory import METRICS_FILE, STATE_FILE, read_stages
from raycseg.tune import trial as trial_module
from raycseg.tune.lineage import (
    Segment,
    exploit_segments,
    lineage_recipe,
    read_exploits,
    read_lineage,
    write_lineage,
)
from raycseg.tune.pbt import clamped_to, mutations, pbt_scheduler
from raycseg.tune.spaces import find_space, load_space, to_param_space
from raycseg.tune.trial import (
    TAKEN_OVER,
    TRIAL_CHECKPOINT_FILE,
    TrialCheckpoint,
    TrialReports,
    take_over,
)


def write_space(tmp_path: Path, **changes) -> Path:
    raw = yaml.safe_load(find_space("cacl_debug_pbt").read_text())
    for key, value in changes.items():
        section, _, name = key.partition("__")
        if name:
            raw[section][name] = value
        else:
            raw[section] = value
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


# ----------------------------------------------------------------------------- the space


def test_the_debug_pbt_space_loads_and_builds_its_scheduler():
    plan = load_space("cacl_debug_pbt", check_files=False)
    assert plan.space.scheduler.perturbation_interval == plan.recipe.storage.checkpoint_every
    scheduler = pbt_scheduler(plan, to_param_space(plan.space))
    assert scheduler._perturbation_interval == 4 and scheduler._time_attr == "step"
    assert set(scheduler._hyperparam_mutations) == set(plan.space.params)
    load_space("cacl_pbt", check_files=False)  # the real-scale sibling is valid too


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"scheduler__perturbation_interval": 8},
            "scheduler.perturbation_interval=8 differs from the recipe's "
            "storage.checkpoint_every=4",
        ),
        (
            {"params": {"stages.cacl.temperature_global": {"uniform": [0.1, 0.3]}}},
            "params.stages.cacl.temperature_global: PBT changes values while trials train",
        ),
        (
            {"params": {"stages.cacl.lambda_cycle": {"grid": [0.1, 1.0]}}},
            "PBT cannot mutate a grid",
        ),
        ({"num_samples": 1}, "PBT needs a population; set num_samples >= 2"),
        (
            {"overrides": {"stages.cacl.val_every": 3, "storage.checkpoint_every": 4}},
            "set stages.cacl.val_every to a divisor of storage.checkpoint_every (4)",
        ),
    ],
)
def test_a_space_pbt_cannot_run_is_rejected_naming_the_fix(tmp_path, changes, message):
    with pytest.raises(RecipeError) as error:
        load_space(write_space(tmp_path, **changes), check_files=False)
    assert message in str(error.value)


def test_cli_rejects_an_interval_other_than_the_checkpoint_interval_with_exit_2(tmp_path):
    space = write_space(tmp_path, scheduler__perturbation_interval=6)
    result = CliRunner().invoke(app, ["tune", "--space", str(space), "--dry-run"])
    assert result.exit_code == 2
    assert "perturbation_interval=6" in result.stderr and "checkpoint_every=4" in result.stderr


def test_perturbed_values_stay_inside_their_distributions(tmp_path):
    plan = load_space(write_space(tmp_path, params=PARAMS), check_files=False)
    domains = mutations(to_param_space(plan.space))
    assert domains["stages.cacl.lambda_global"] == [0.5, 1.0]  # a choice moves along its list
    explore = clamped_to(plan.space.params)
    config = explore(
        {
            "stages.cacl.lambda_pixel": 3.6,  # 3.0 x 1.2
            "stages.cacl.lambda_cycle": 0.08,  # 0.1 x 0.8
            "stages.cacl.lambda_global": 1.0,
        }
    )
    assert config == {
        "stages.cacl.lambda_pixel": 3.0,
        "stages.cacl.lambda_cycle": 0.1,
        "stages.cacl.lambda_global": 1.0,
    }


PARAMS = {
    "stages.cacl.lambda_pixel": {"loguniform": [0.1, 3.0]},
    "stages.cacl.lambda_cycle": {"uniform": [0.1, 3.0]},
    "stages.cacl.lambda_global": {"choice": [0.5, 1.0]},
}


# ----------------------------------------------------------------------------- lineage


def test_a_lineage_becomes_step_schedules_counted_in_each_stages_own_steps():
    recipe = load_recipe("pipeline/cacl_maskcontrast_reco_debug", ["stages.reco.steps=12"])
    base = recipe.model_dump(mode="json")
    offset = recipe.step_offset("reco")  # the third stage, after 4 + 4 steps
    path = "stages.reco.strong_threshold"
    segments = [
        Segment(0, {path: 0.9}),
        Segment(offset - 2, {path: 0.95}, donor="t1"),  # before reco
        Segment(offset + 4, {path: 0.8}, donor="t2"),
        Segment(offset + 6, {path: 0.8}, donor="t1"),  # a repeat
        Segment(offset + 12, {path: 0.7}, donor="t2"),  # past the end
    ]
    stage = lineage_recipe(base, segments).stages[2]
    assert offset == 8 and stage.strong_threshold.from_step == {0: 0.95, 4: 0.8}
    assert [value_at(stage.strong_threshold, s) for s in (0, 3, 4, 11)] == [0.95, 0.95, 0.8, 0.8]
    assert lineage_recipe(base, segments[:1]).stages[2].strong_threshold == 0.9  # never changed


def test_an_exploit_inherits_the_donors_lineage_up_to_its_step(tmp_path):
    donor = [Segment(0, {"a": 1.0}), Segment(8, {"a": 2.0}, donor="x")]
    segments = exploit_segments(donor, "d", 8, {"a": 2.4})
    assert segments == [Segment(0, {"a": 1.0}), Segment(8, {"a": 2.4}, donor="d")]
    exploits = [{"step": 8, "donor": "d", "before": {"a": 5.0}, "after": {"a": 2.4}}]
    write_lineage(tmp_path, segments, exploits)
    assert read_lineage(tmp_path) == segments and read_exploits(tmp_path) == exploits
    assert read_exploits(tmp_path / "none") == [] and read_lineage(tmp_path / "none") is None


# ----------------------------------------------------------------------------- taking over


def make_run(run_dir: Path, steps: int, value: float) -> None:
    (run_dir / "cacl").mkdir(parents=True)
    (run_dir / "cacl" / "checkpoint_manager_snapshot.json").write_text("{}")
    lines = [json.dumps({"stage": "cacl", "step": s, "loss": value}) for s in range(1, steps + 1)]
    (run_dir / METRICS_FILE).write_text("\n".join(lines) + "\n")


def test_taking_over_keeps_the_donors_log_and_state_and_drops_its_own_stage(tmp_path):
    recipe = load_recipe("cacl/debug", ["stages.cacl.steps=12"])
    experiment = tmp_path / "experiment"
    donor, own = experiment / "runs" / "donor", experiment / "runs" / "own"
    make_run(donor, 9, value=1.0)
    make_run(own, 6, value=2.0)
    state = tmp_path / "checkpoint" / STATE_FILE
    state.parent.mkdir()
    torch.save({"stage_step": 8}, state)
    pointer = TrialCheckpoint(trial="donor", stage="cacl", step=8, stage_step=8)

    resume_from = take_over(own, experiment, pointer, recipe, state)

    assert resume_from == {"cacl": str(own / TAKEN_OVER / STATE_FILE)}
    assert torch.load(resume_from["cacl"], weights_only=True) == {"stage_step": 8}
    assert not (own / "cacl").exists(), "its own snapshot would resume its own run"
    logged = [json.loads(line) for line in (own / METRICS_FILE).read_text().splitlines()]
    assert [r["step"] for r in logged] == list(range(1, 9)) and {r["loss"] for r in logged} == {1.0}

    finished = take_over(own, experiment, TrialCheckpoint("donor", "cacl", 12, 12), recipe, state)
    assert finished == {} and read_stages(own)["cacl"]["last_step"] == 12  # nothing left to train


def test_a_trial_checkpoint_says_where_and_carries_the_state_under_pbt(tmp_path, monkeypatch):
    reported = []

    def report(record, checkpoint=None):
        folder = None if checkpoint is None else Path(checkpoint.path)
        files = {} if folder is None else {p.name: p.read_bytes() for p in folder.iterdir()}
        reported.append((record, files))

    monkeypatch.setattr(trial_module.tune, "report", report)
    recipe = load_recipe("cacl/debug")
    segments = [Segment(0, {"a": 1.0}), Segment(10, {"a": 2.0}, donor="x")]
    checkpoint = tmp_path / "cacl" / "checkpoint_000010"
    checkpoint.mkdir(parents=True)
    (checkpoint / STATE_FILE).write_bytes(b"state")

    reports = TrialReports("t0", tmp_path, recipe, segments, keep_state=True)
    reports({"stage": "cacl", "step": 5, "val_miou": 0.1}, None)
    reports({"stage": "cacl", "step": 10, "val_miou": 0.2}, str(checkpoint))

    assert reported[0] == ({"stage": "cacl", "step": 5, "val_miou": 0.1}, {})
    record, files = reported[1]
    pointer = json.loads(files[TRIAL_CHECKPOINT_FILE])
    assert (pointer["trial"], pointer["stage"], pointer["step"], pointer["stage_step"]) == (
        "t0",
        "cacl",
        10,
        10,
    )
    assert [s["step"] for s in pointer["segments"]] == [0]  # the lineage before this step
    assert files[STATE_FILE] == b"state"
    assert (checkpoint / STATE_FILE).read_bytes() == b"state", "the run keeps its checkpoint"
    assert read_lineage(tmp_path) is None
    assert [p.name for p in tmp_path.iterdir()] == ["cacl"], "the staged folder is gone"
