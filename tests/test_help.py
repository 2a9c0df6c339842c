"""Help that teaches: examples that run, choices that are listed, shell completion.

Every `cseg` command and group ends its `--help` with two or three examples.
The examples are checked here as the CLI would read them: the command path
exists, options and choices parse, and the shipped recipes, spaces and
overlays they name exist (with their overrides valid).
"""

from __future__ import annotations

import shlex

import pytest
import typer.main
from cseg.main import app
from typer.testing import CliRunner

from raycseg.config import find_cluster_overlay, find_recipe, load_recipe
from raycseg.tune.spaces import find_space

RUNNER = CliRunner()
ROOT = typer.main.get_command(app)


def all_commands(command=ROOT, path=("cseg",)):
    """(path, command) of every command and group, the root included."""
    yield path, command
    for name, child in getattr(command, "commands", {}).items():
        yield from all_commands(child, (*path, name))


COMMANDS = dict(all_commands())


def examples(command) -> list[str]:
    """The example command lines of a command's epilog (comments dropped)."""
    epilog = command.epilog or ""
    if not epilog.startswith("Examples:\n\n"):
        return []
    return [line for line in epilog.split("\n\n", 1)[1].splitlines() if line.strip()]


def help_text(path: tuple[str, ...], columns: int = 80) -> str:
    env = {"COLUMNS": str(columns)}
    result = RUNNER.invoke(app, [*path[1:], "--help"], prog_name="cseg", env=env)
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_every_help_ends_with_two_or_three_examples_of_that_command(path):
    lines = examples(COMMANDS[path])
    assert 2 <= len(lines) <= 3, lines
    for line in lines:
        assert len(line) <= 76, f"{line!r} wraps at 80 columns"
    # the first example runs this command (or one of this group's); others may show a next step
    assert tuple(shlex.split(lines[0], comments=True)[: len(path)]) == path, lines[0]
    shown = [line.strip() for line in help_text(path).splitlines() if line.strip()]
    assert shown[-len(lines) :] == lines


def parse_example(line: str):
    """Parse an example as `cseg` would, without running it; return (command path, params)."""
    words = shlex.split(line, comments=True)
    assert words[0] == "cseg", line
    command, index = ROOT, 1
    parent = ROOT.make_context("cseg", [], resilient_parsing=True)
    while index < len(words) and words[index] in getattr(command, "commands", {}):
        command = command.commands[words[index]]
        index += 1
        if getattr(command, "commands", None):
            parent = command.make_context(
                words[index - 1], [], parent=parent, resilient_parsing=True
            )
    assert not getattr(command, "commands", None), f"{line}: names a group, not a command"
    context = command.make_context(words[index - 1], words[index:], parent=parent)
    return words[1:index], context.params


EXAMPLES = sorted({line for _, command in COMMANDS.items() for line in examples(command)})


@pytest.mark.parametrize("line", EXAMPLES)
def test_every_example_parses_and_names_what_ships(line):
    path, params = parse_example(line)
    recipe = params.get("recipe")
    overrides = params.get("overrides") or []
    if path[-1] == "tune" and recipe and "=" in recipe:  # `cseg tune --space S a.b=1`
        recipe, overrides = None, [recipe, *overrides]
    if params.get("space"):
        find_space(params["space"])
    if params.get("cluster"):
        find_cluster_overlay(params["cluster"])
    if recipe and not recipe.endswith(".yaml"):  # a shipped name, with valid overrides
        find_recipe(recipe)
        load_recipe(recipe, overrides, check_files=False)
    for name in params.get("recipes") or []:
        assert name.endswith(".yaml") or find_recipe(name)


def test_flags_show_no_type_in_help():
    for path in COMMANDS:
        text = help_text(path)
        assert "<bool>" not in text, path


CHOICES = {
    ("cseg", "shards", "build"): ["video|image|segmentation|saliency", "voc|cityscapes|ade20k"],
    ("cseg", "shards", "split"): ["p0|p1|p5|p25", "class-balanced|rarest-class"],
    ("cseg", "eval"): ["random|none", "linear-probe|kmeans|maskcontrast-kmeans|segmentation"],
    ("cseg", "cluster", "render"): ["aws|gcp|kuberay"],
    ("cseg", "report"): ["max|min"],
    ("cseg", "bench", "loss"): ["cacl|cacl-global|cacl-pixel|cacl-cycle|crw-walk|maskcontrast|"],
}


@pytest.mark.parametrize("path", CHOICES, ids=" ".join)
def test_choices_are_listed_in_help(path):
    text = help_text(path, columns=200)
    for choices in CHOICES[path]:
        assert choices in text, (path, choices)


@pytest.mark.parametrize(
    ("args", "choices"),
    [
        (["shards", "build", "--kind", "vidoe", "src", "out"], ["'video'", "'saliency'"]),
        (["shards", "build", "--kind", "segmentation", "--layout", "coco", "s", "o"], ["'ade20k'"]),
        (["eval", "runs/x", "--baseline", "randm"], ["'random'", "'none'"]),
        (["eval", "runs/x", "--protocol", "knn"], ["'kmeans'"]),
        (["shards", "split", "a", "b", "--partial", "p2"], ["'p1'"]),
        (["cluster", "render", "--provider", "azure"], ["'aws'", "'kuberay'"]),
        (["report", "runs/x", "--mode", "best"], ["'max'", "'min'"]),
    ],
)
def test_a_bad_choice_exits_2_listing_the_choices(args, choices):
    result = RUNNER.invoke(app, args, prog_name="cseg")
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.stderr
    flat = " ".join(result.stderr.split())
    for choice in choices:
        assert choice in flat, flat


def test_shell_completion_is_installed_and_shown(monkeypatch):
    assert "--install-completion" in help_text(("cseg",))
    # with detection off (as in CI, where there is no interactive shell) the shell is named
    monkeypatch.setenv("_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION", "1")
    result = RUNNER.invoke(app, ["--show-completion", "bash"], prog_name="cseg")
    assert result.exit_code == 0, result.output
    assert (
        "_CSEG_COMPLETE=complete_bash" in result.stdout and "complete -o default" in result.stdout
    )


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        ("cseg pre", ["pretrain"]),
        ("cseg shards b", ["build"]),
        ("cseg shards build --kind ", ["video", "image", "segmentation", "saliency", "vos"]),
        ("cseg eval runs/x --baseline ", ["random", "none"]),
    ],
)
def test_the_completion_protocol_completes_commands_and_choices(words, expected):
    env = {
        "_CSEG_COMPLETE": "complete_bash",
        "COMP_WORDS": words,
        "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1)),
    }
    result = RUNNER.invoke(app, [], prog_name="cseg", env=env)
    assert result.exit_code == 0, result.output
    assert result.stdout.split() == expected
