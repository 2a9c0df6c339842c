"""Experiment reports from a Tune experiment directory written in Ray 2.60's layout."""

from __future__ import annotations

import base64
import json
import pickle
import re
from pathlib import Path

import pytest

from raycseg.errors import CsegError
from raycseg.reports import ExperimentSummary, load_experiment, write_report
from raycseg.reports.experiment_report import experiment_blocks
from raycseg.reports.render import render_markdown

from .conftest import (
    PNG_MAGIC,
    SESSION,
    STANDARD_TRIALS,
    FakeTrial,
    section,
    state_entry,
    write_experiment,
)


@pytest.fixture(scope="module")
def reported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ExperimentSummary]:
    """One experiment directory with its report written (shared: writing takes a second)."""
    root = write_experiment(tmp_path_factory.mktemp("reported") / "probe", STANDARD_TRIALS)
    (root / "best.yaml").write_text("# written by cseg tune\nname: best\n")
    return root, write_report(root)


def test_report_names_every_trial_and_the_best_config(
    reported: tuple[Path, ExperimentSummary],
) -> None:
    experiment_dir, summary = reported

    markdown = (experiment_dir / "report.md").read_text()
    html = (experiment_dir / "report.html").read_text()
    for trial in STANDARD_TRIALS:
        assert f"`{trial.trial_id}`" in section(markdown, "All trials")
        assert trial.trial_id in html
    best = section(markdown, "Best trial")
    assert "f933e_00004" in best
    assert "| `lr` | 0.2945 |" in best and "| `arch` | a |" in best
    assert summary.best is not None and summary.best.trial_id == "f933e_00004"
    assert summary.best.final_metric == pytest.approx(0.55 + 0.07 * 6)


def test_report_files_are_written_and_html_is_self_contained(
    reported: tuple[Path, ExperimentSummary],
) -> None:
    experiment_dir, summary = reported

    pngs = sorted(path.name for path in experiment_dir.glob("*.png"))
    assert pngs == ["metric_by_step.png", "parallel_coordinates.png", "params_vs_metric.png"]
    for name in pngs:
        assert (experiment_dir / name).read_bytes().startswith(PNG_MAGIC)
    assert {path.name for path in summary.files} == {"report.md", "report.html", *pngs}
    html = (experiment_dir / "report.html").read_text()
    assert 'src="http' not in html and "<link" not in html and "<script" not in html
    sources = re.findall(r'src="([^"]*)"', html)
    assert len(sources) == 3
    for source in sources:
        assert source.startswith("data:image/png;base64,")
        assert base64.b64decode(source.split(",", 1)[1]).startswith(PNG_MAGIC)
    markdown = (experiment_dir / "report.md").read_text()
    for name in pngs:
        assert f"]({name})" in markdown


def test_statuses_tell_early_stops_from_completed_and_errored_trials(
    experiment_dir: Path,
) -> None:
    trials = {trial.trial_id: trial for trial in load_experiment(experiment_dir).trials}

    assert trials["f933e_00000"].status == "EARLY_STOPPED"
    assert trials["f933e_00002"].status == "EARLY_STOPPED"
    assert trials["f933e_00005"].status == "EARLY_STOPPED"
    # Returned on its own at step 6 < 8: done=false on its last logged report.
    assert trials["f933e_00003"].status == "TERMINATED"
    # Stopped by ASHA at max_t = the experiment's largest step: completed, not early.
    assert trials["f933e_00006"].status == "TERMINATED"
    assert trials["f933e_00001"].status == "ERROR"
    assert trials["f933e_00001"].error == "RuntimeError: boom"


def test_trial_rows_carry_history_final_best_and_time(experiment_dir: Path) -> None:
    summary = load_experiment(experiment_dir)
    trial = next(t for t in summary.trials if t.trial_id == "f933e_00003")

    assert trial.steps == [1, 2, 3, 4, 5, 6]
    assert trial.values == pytest.approx([0.2 + 0.1 * s for s in range(1, 7)])
    assert trial.final_metric == pytest.approx(0.8)
    assert trial.best_metric == pytest.approx(0.8)
    assert trial.reports == 6
    assert trial.time_total_s == pytest.approx(1.8)
    assert trial.params == {"lr": 0.0908, "arch": "a", "steps": 6}
    assert summary.params == ["arch", "lr", "steps"]
    assert summary.metric == "val_miou" and summary.mode == "max"
    assert summary.mode_source == "inferred"


def test_mode_min_picks_the_lowest_final_metric(experiment_dir: Path) -> None:
    summary = load_experiment(experiment_dir, metric="loss", mode="min")

    assert summary.metric == "loss" and summary.mode_source == "argument"
    assert summary.best is not None and summary.best.trial_id == "f933e_00004"
    early = next(t for t in summary.trials if t.trial_id == "f933e_00000")
    assert early.best_metric == pytest.approx(1 - 0.085)  # the lowest loss it reached


def test_best_prefers_trials_that_ran_to_the_end(tmp_path: Path) -> None:
    trials = [
        FakeTrial(0, {"lr": 0.1}, [(1, 0.9), (2, 0.95)], "scheduler"),  # lucky early rung
        FakeTrial(1, {"lr": 0.01}, [(s, 0.1 * s) for s in range(1, 5)], "returned"),
    ]
    summary = load_experiment(write_experiment(tmp_path / "exp", trials))

    assert [t.status for t in summary.trials] == ["EARLY_STOPPED", "TERMINATED"]
    assert summary.best is not None and summary.best.trial_id == "f933e_00001"


def test_newest_state_file_wins(experiment_dir: Path) -> None:
    stale = {
        "trial_data": [state_entry(trial, status="RUNNING") for trial in STANDARD_TRIALS],
        "runner_data": {"_metric": "val_miou"},
    }
    older = experiment_dir / "experiment_state-2026-11-19_08-00-00.json"
    older.write_text(json.dumps(stale))

    statuses = {trial.status for trial in load_experiment(experiment_dir).trials}

    assert "RUNNING" not in statuses
    assert f"experiment_state-{SESSION}.json" > older.name


def test_progress_csv_is_read_when_result_json_is_missing(experiment_dir: Path) -> None:
    for result_json in experiment_dir.glob("*/result.json"):
        result_json.unlink()

    trials = {trial.trial_id: trial for trial in load_experiment(experiment_dir).trials}

    assert trials["f933e_00003"].values == pytest.approx([0.2 + 0.1 * s for s in range(1, 7)])
    assert trials["f933e_00000"].status == "EARLY_STOPPED"
    assert trials["f933e_00003"].status == "TERMINATED"


def test_space_file_sets_mode_log_axes_and_the_next_command(experiment_dir: Path) -> None:
    (experiment_dir / "space.yaml").write_text(
        "recipe: recipes/cacl/debug.yaml\nmetric: val_miou\nmode: max\nnum_samples: 7\n"
        "params:\n  lr: {uniform: [0.01, 0.5]}\n  arch: {choice: [a, b, c]}\n"
    )
    summary = load_experiment(experiment_dir)

    assert summary.mode_source == "space.yaml"
    assert "lr" not in summary.log_params  # searched uniform, although it spans 20x
    markdown = render_markdown("t", experiment_blocks(summary, plots=[]))
    command = "cseg pretrain recipes/cacl/debug.yaml lr=0.2945 arch=a steps=6"
    assert command in section(markdown, "What to run next")


def test_next_command_uses_best_yaml_when_present(
    reported: tuple[Path, ExperimentSummary],
) -> None:
    experiment_dir, _ = reported
    markdown = (experiment_dir / "report.md").read_text()

    command = f"cseg pretrain {experiment_dir / 'best.yaml'}"
    assert command in section(markdown, "What to run next")


def test_max_t_from_the_space_file_marks_a_stop_below_it_early(tmp_path: Path) -> None:
    trials = [
        FakeTrial(0, {"lr": 0.1}, [(1, 0.5), (2, 0.6)], "scheduler"),
        FakeTrial(1, {"lr": 0.01}, [(s, 0.1 * s) for s in range(1, 5)], "scheduler"),
    ]
    root = write_experiment(tmp_path / "exp", trials)
    assert [t.status for t in load_experiment(root).trials] == ["EARLY_STOPPED", "TERMINATED"]

    (root / "space.yaml").write_text("scheduler: {type: asha, max_t: 10}\n")

    assert [t.status for t in load_experiment(root).trials] == ["EARLY_STOPPED"] * 2


def test_log_axis_is_inferred_without_a_space_file(experiment_dir: Path) -> None:
    summary = load_experiment(experiment_dir)

    assert summary.log_params == frozenset({"lr"})  # positive, spans 0.0148..0.4005


def test_reading_never_unpickles(experiment_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("the report unpickled something")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)

    summary = load_experiment(experiment_dir)

    assert len(summary.trials) == len(STANDARD_TRIALS)


def test_state_without_a_metric_names_the_fix(tmp_path: Path) -> None:
    root = write_experiment(tmp_path / "exp", STANDARD_TRIALS[:2], metric="")

    with pytest.raises(CsegError, match="--metric"):
        load_experiment(root)


def test_bad_mode_names_the_fix(experiment_dir: Path) -> None:
    with pytest.raises(CsegError, match="--mode max"):
        load_experiment(experiment_dir, mode="maximum")


def test_pbt_exploits_are_listed_and_each_trials_values_plotted_by_step(tmp_path: Path) -> None:
    root = write_experiment(tmp_path / "pbt", STANDARD_TRIALS)
    exploited, donor = STANDARD_TRIALS[0].trial_id, STANDARD_TRIALS[1].trial_id
    lineage = {
        # its weights: the donor's up to step 4, then its own perturbed values
        "segments": [
            {"step": 0, "values": {"lr": 0.3}, "donor": None},
            {"step": 4, "values": {"lr": 0.36}, "donor": donor},
        ],
        "exploits": [{"step": 4, "donor": donor, "before": {"lr": 0.01}, "after": {"lr": 0.36}}],
    }
    (root / "runs" / exploited).mkdir(parents=True)
    (root / "runs" / exploited / "lineage.json").write_text(json.dumps(lineage))

    summary = write_report(root)
    trial = next(t for t in summary.trials if t.trial_id == exploited)
    assert trial.params == {"lr": 0.36}  # the values it ended with
    assert trial.values_by_step("lr") == [(0, 0.01), (4, 0.36)]  # its own, then the new ones
    assert [(e.step, e.trial, e.donor) for e in summary.exploits] == [(4, exploited, donor)]
    markdown = (root / "report.md").read_text()
    assert f"| 4 | `{exploited}` | `{donor}` | `lr` 0.01 | `lr` 0.36 |" in section(
        markdown, "Exploits (PBT)"
    )
    assert (root / "schedules.png").read_bytes().startswith(PNG_MAGIC)
