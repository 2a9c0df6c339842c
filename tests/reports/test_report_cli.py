"""`cseg report DIR` through the root app: results to stdout, `--quiet` prints only the
directory, a bad directory is one line on stderr."""

from __future__ import annotations

from pathlib import Path

import pytest
from cseg.main import app
from typer.testing import CliRunner

from .conftest import STANDARD_TRIALS, write_experiment, write_run


@pytest.fixture
def wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rich reads COLUMNS; without it, tables are cut to 80 columns."""
    monkeypatch.setenv("COLUMNS", "200")


def test_quiet_prints_only_the_run_directory(tmp_path: Path) -> None:
    root = tmp_path / "run"
    root.mkdir()
    lines = [f'{{"stage": "cacl", "step": {step}, "skipped_corrupt": 0}}' for step in (1, 2)]
    (root / "metrics.jsonl").write_text("\n".join(lines) + "\n")  # nothing to plot: fast

    result = CliRunner().invoke(app, ["report", str(root), "--quiet"])

    assert result.exit_code == 0, result.output
    assert result.stdout == f"{root.resolve()}\n"
    assert (root / "report.md").is_file() and (root / "report.html").is_file()


def test_run_report_prints_stages_and_eval_tables(tmp_path: Path, wide_terminal: None) -> None:
    root = write_run(tmp_path / "run", steps_per_stage=5)

    result = CliRunner().invoke(app, ["report", str(root)])

    assert result.exit_code == 0, result.output
    assert "cacl" in result.stdout and "reco" in result.stdout
    assert "linear_probe" in result.stdout and "+0.2900" in result.stdout
    assert f"report: {root.resolve() / 'report.html'}" in result.stdout
    assert "wrote" not in result.stdout  # progress messages go to stderr
    assert f"wrote {root.resolve() / 'loss.png'}" in result.stderr


def test_experiment_report_lists_trials_and_the_next_command(
    tmp_path: Path, wide_terminal: None
) -> None:
    root = write_experiment(tmp_path / "probe", STANDARD_TRIALS)
    (root / "best.yaml").write_text("name: best\n")

    result = CliRunner().invoke(app, ["report", str(root)])

    assert result.exit_code == 0, result.output
    for trial in STANDARD_TRIALS:
        assert trial.trial_id in result.stdout
    assert "f933e_00004 *" in result.stdout
    assert f"next: cseg pretrain {root.resolve() / 'best.yaml'}" in result.stdout


def test_bad_directory_is_one_line_on_stderr_with_exit_code_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["report", str(tmp_path)])

    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
