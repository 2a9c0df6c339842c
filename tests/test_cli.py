"""The `cseg` entry point: exit codes, one-line errors, stdout vs stderr."""

from __future__ import annotations

import os
import subprocess
import sys

CSEG = [sys.executable, "-c", "from cseg.main import run; run()"]


def cseg(*args, env=None):
    return subprocess.run(
        [*CSEG, *args], capture_output=True, text=True, env={**os.environ, **(env or {})}
    )


def test_version_and_help():
    assert cseg("--version").stdout.startswith("cseg ")
    help_text = cseg("--help").stdout
    for command in ("pretrain", "eval", "recipes"):
        assert command in help_text


def test_bad_override_is_one_line_on_stderr_with_exit_code_2():
    result = cseg("pretrain", "quickstart", "stages.cacl.lambda_cyle=1", "--dry-run")
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "stages.cacl.lambda_cyle: unknown key" in lines[0]
    assert "Traceback" not in result.stderr


def test_eval_of_something_that_is_not_a_checkpoint_is_one_line_with_exit_code_2(tmp_path):
    not_a_checkpoint = tmp_path / "notes.yaml"
    not_a_checkpoint.write_text("x: 1\n")
    for target, message in ((tmp_path, "no state.pt at"), (not_a_checkpoint, "cannot read")):
        result = cseg("eval", str(target))
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and message in lines[0], result.stderr
        assert not (tmp_path / "eval.json").exists()


def test_split_of_a_folder_without_shards_is_one_line_with_exit_code_2(tmp_path):
    result = cseg("shards", "split", str(tmp_path), str(tmp_path / "out"), "-n", "3")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "no manifest.json" in lines[0], lines
    assert not (tmp_path / "out").exists()


def test_debug_switch_shows_the_traceback():
    result = cseg("recipes", "show", "no-such-recipe", env={"CSEG_DEBUG": "1"})
    assert result.returncode == 2 and "Traceback" in result.stderr


def test_dry_run_prints_the_resolved_recipe_on_stdout():
    result = cseg("pretrain", "cacl/debug", "stages.cacl.steps=3", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "steps: 3" in result.stdout and "method: cacl" in result.stdout


def test_recipes_validate_and_copy(tmp_path):
    assert cseg("recipes", "validate").returncode == 0
    copied = cseg("recipes", "cp", "quickstart", str(tmp_path))
    assert copied.returncode == 0 and (tmp_path / "quickstart.yaml").exists()
    assert copied.stdout.strip() == str((tmp_path / "quickstart.yaml").resolve())
    again = cseg("recipes", "cp", "quickstart", str(tmp_path))
    assert again.returncode == 2 and "--force" in again.stderr
