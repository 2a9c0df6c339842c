"""`cseg`: exit codes, one-line errors, stdout vs stderr.

The commands run in process on the root app (Typer's CliRunner); the console-script entry
point and import-time behaviour run in a fresh interpreter.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torchvision
import yaml
from cseg.main import app
from typer.testing import CliRunner

from raycseg.config import find_recipe, load_recipe
from raycseg.models import build_backbone
from raycseg.train.checkpoint import save_state

CSEG = [sys.executable, "-c", "from cseg.main import run; run()"]
RUNNER = CliRunner()


def cseg(*args):
    """`cseg ARGS` in process; the result has exit_code, stdout and stderr."""
    return RUNNER.invoke(app, [str(arg) for arg in args])


def test_version_and_help():
    assert cseg("--version").stdout.startswith("cseg ")
    help_text = cseg("--help").stdout
    for command in ("pretrain", "eval", "recipes"):
        assert command in help_text


@pytest.mark.integration
def test_the_entry_point_prints_a_bad_override_as_one_line_with_exit_code_2():
    result = subprocess.run(
        [*CSEG, "pretrain", "quickstart", "stages.cacl.lambda_cyle=1", "--dry-run"],
        capture_output=True,
        text=True,
        env=dict(os.environ),
    )
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
        assert result.exit_code == 2 and len(lines) == 1 and message in lines[0], result.stderr
        assert not (tmp_path / "eval.json").exists()


def test_split_of_a_folder_without_shards_is_one_line_with_exit_code_2(tmp_path):
    result = cseg("shards", "split", str(tmp_path), str(tmp_path / "out"), "-n", "3")
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and "no manifest.json" in lines[0], lines
    assert not (tmp_path / "out").exists()


def test_dry_run_prints_the_resolved_recipe_on_stdout():
    result = cseg("pretrain", "cacl/debug", "stages.cacl.steps=3", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "steps: 3" in result.stdout and "method: cacl" in result.stdout


def test_recipes_validate_and_copy(tmp_path):
    assert cseg("recipes", "validate").exit_code == 0
    copied = cseg("recipes", "cp", "quickstart", str(tmp_path))
    assert copied.exit_code == 0 and (tmp_path / "quickstart.yaml").exists()
    assert copied.stdout.strip() == str((tmp_path / "quickstart.yaml").resolve())
    again = cseg("recipes", "cp", "quickstart", str(tmp_path))
    assert again.exit_code == 2 and "--force" in again.stderr


def save_backbone_checkpoint(tmp_path, backbone, output_stride, width=64):
    """A raycseg checkpoint folder holding a randomly initialised backbone and its recipe."""
    model = {"backbone": backbone, "output_stride": output_stride, "width": width}
    stage = {"method": "cacl", "steps": 1, "data": {"train": "video"}}
    raw = {"name": "export", "data": {"root": str(tmp_path)}, "model": model, "stages": [stage]}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(raw))
    recipe = load_recipe(tmp_path / "recipe.yaml", check_files=False)
    torch.manual_seed(0)
    weights = build_backbone(backbone, output_stride=output_stride, width=width).state_dict()
    state = {"backbone": weights, "recipe": recipe.model_dump(mode="json"), "stage": "cacl"}
    save_state(tmp_path / "checkpoint", state)
    return weights


def test_export_quiet_prints_only_the_path_of_a_torchvision_state_dict(tmp_path):
    weights = save_backbone_checkpoint(tmp_path, "resnet18", output_stride=8)
    result = cseg("export", str(tmp_path / "checkpoint"), "--out", str(tmp_path / "r18.pth"), "-q")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{tmp_path / 'r18.pth'}\n" and result.stderr == ""
    exported = torch.load(tmp_path / "r18.pth", weights_only=True)
    resnet = torchvision.models.resnet18()
    loaded = resnet.load_state_dict(exported, strict=False)
    assert loaded.missing_keys == ["fc.weight", "fc.bias"] and loaded.unexpected_keys == []
    assert torch.equal(resnet.layer4[1].conv2.weight, weights["layer4.1.conv2.weight"])


def test_export_of_the_tiny_backbone_is_one_line_with_exit_code_2(tmp_path):
    save_backbone_checkpoint(tmp_path, "tiny", output_stride=4, width=16)
    result = cseg("export", str(tmp_path / "checkpoint"), "--out", str(tmp_path / "tiny.pth"))
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.stderr
    assert "tiny backbone is not a torchvision ResNet" in lines[0]
    assert result.stdout == "" and not (tmp_path / "tiny.pth").exists()


def test_frozen_random_layers_are_refused_by_validate_and_dry_run(tmp_path):
    recipe = tmp_path / "frozen.yaml"
    shipped = yaml.safe_load(find_recipe("maskcontrast/voc").read_text())
    shipped["model"]["init_from"] = None
    recipe.write_text(yaml.safe_dump(shipped))
    for args in (("recipes", "validate", str(recipe)), ("pretrain", str(recipe), "--dry-run")):
        result = cseg(*args)
        assert result.exit_code == 2, args
        assert "model.init_from" in result.stdout + result.stderr
        assert "Traceback" not in result.stderr


@pytest.mark.integration
def test_eval_and_inspect_fail_fast_without_importing_torch(tmp_path):
    """Their argument errors come before torch or Ray is imported (seconds, not tens)."""
    script = (
        "import sys\n"
        "from cseg.main import run\n"
        "try:\n    run()\n"
        "except SystemExit as exit:\n"
        "    print(exit.code, 'torch' in sys.modules, 'ray' in sys.modules)\n"
    )
    for args in (["eval", str(tmp_path / "missing")], ["shards", "inspect", str(tmp_path)]):
        result = subprocess.run(
            [sys.executable, "-c", script, *args], capture_output=True, text=True
        )
        assert result.stdout.split() == ["2", "False", "False"], (args, result.stderr)
