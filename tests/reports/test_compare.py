"""`cseg report A B --out DIR`: recipes' differences, overlaid losses, scores side by side."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cseg.main import app
from typer.testing import CliRunner

from raycseg.errors import CsegError
from raycseg.reports.compare import recipe_differences, write_comparison_report

from .conftest import PNG_MAGIC, section, write_run


def test_only_the_keys_that_differ_are_listed_and_stages_go_by_name():
    first = {"seed": 0, "optim": {"lr": 0.1}, "stages": [{"name": "cacl", "steps": 20}]}
    second = {"seed": 0, "optim": {"lr": 0.2}, "stages": [{"name": "cacl", "steps": 20}],
              "eval": {"image_size": 64}}  # fmt: skip
    assert recipe_differences([first, second]) == [
        ["eval.image_size", "-", "64"],
        ["optim.lr", "0.1", "0.2"],
    ]
    assert recipe_differences([first, first]) == []


def test_two_runs_compare_in_one_report(tmp_path: Path):
    a, b = write_run(tmp_path / "a"), write_run(tmp_path / "b", with_eval=False)
    (b / "config.yaml").write_text(
        (a / "config.yaml").read_text().replace("fixture-run", "other-run")
    )
    scores = json.loads((a / "eval.json").read_text())
    scores["kmeans"]["protocol"] = {"name": "k-means", "fingerprint": "0123456789ab"}
    (a / "eval.json").write_text(json.dumps(scores))
    result = CliRunner().invoke(app, ["report", str(a), str(b), "--out", str(tmp_path / "ab")])
    assert result.exit_code == 0, result.stderr
    text = (tmp_path / "ab" / "report.md").read_text()
    assert "| name | fixture-run | other-run |" in section(text, "Recipe differences")
    assert (tmp_path / "ab" / "compare_loss.png").read_bytes().startswith(PNG_MAGIC)
    evaluation = section(text, "Evaluation")
    assert "| kmeans | 0.33 | - | 0123456789ab |" in evaluation
    assert "| linear_probe | 0.41 | - | - |" in evaluation
    assert (tmp_path / "ab" / "report.html").exists()


def test_a_comparison_needs_two_directories_of_a_known_kind(tmp_path: Path):
    run = write_run(tmp_path / "run")
    with pytest.raises(CsegError, match="two or more"):
        write_comparison_report([run], tmp_path / "out")
    with pytest.raises(CsegError, match="neither a run directory"):
        write_comparison_report([run, tmp_path], tmp_path / "out")
