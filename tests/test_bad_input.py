"""Bad input never gives a traceback: one line that names the fix, a non-zero exit.

Whatever a recipe file or an override holds, `load_recipe` returns a recipe or
raises `RecipeError`, and `cseg` exits 0, or 2 with one line on stderr naming
the fix. The property tests feed arbitrary bytes, text, YAML built from the
shipped recipes and override lists, 500 examples per target; the CLI runs in
process (`cseg pretrain ... --dry-run`, `cseg recipes validate`), so nothing
trains and nothing starts.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import typing

import pytest
import typer.main
import yaml
from cseg.main import app
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from typer.testing import CliRunner

from raycseg.config import (
    CACLStage,
    MaskContrastStage,
    Recipe,
    RecoStage,
    find_recipe,
    load_recipe,
    read_yaml,
    shipped_recipes,
)
from raycseg.errors import RecipeError

RUNNER = CliRunner()
COMMAND = typer.main.get_command(app)  # built once: Typer would rebuild it on every invoke
PROPERTY = settings(
    max_examples=500,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def run_cseg(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run `cseg ARGS` in process; return (exit code, stdout, stderr).

    Any exception other than the exit propagates, so a traceback fails the test.
    """
    code = 0
    with RUNNER.isolation(env=env) as (stdout, stderr, _):
        try:
            COMMAND.main(args=list(args), prog_name="cseg")
        except SystemExit as exit_:
            code = exit_.code or 0
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
        return code, stdout.getvalue().decode(), stderr.getvalue().decode()


def assert_success_or_one_line(code: int, stderr: str) -> None:
    """Exit 0, or exit 2 with exactly one `error: ...` line on stderr and no traceback."""
    assert code in (0, 2), (code, stderr)
    assert "Traceback" not in stderr, stderr
    if code == 2:
        assert stderr.startswith("error: ") and stderr.count("\n") == 1, repr(stderr)


# ----------------------------------------------------------------------------- examples


BAD_RECIPE_FILES = {
    "random bytes": bytes(range(128, 256)) * 2,
    "NUL bytes": b"name: x\x00\x01\x02\n",
    "UTF-16 without a BOM": "name: x\n".encode("utf-16-le"),
    "empty": b"",
    "a list": b"- name: x\n- stages: []\n",
    "a scalar": b"just words\n",
    "broken YAML": b"name: [x\nstages:\n",
    "a tab indent": b"name: x\nstages:\n\t- method: cacl\n",
    "two documents": b"name: x\n---\nname: y\n",
    "an unbuildable int": b"seed: !!int many\n",
    "an unbuildable timestamp": b"seed: !!timestamp now\n",
    "deep nesting": b"[" * 1100,
    "stages as a set": b"name: x\nstages: !!set {a, b}\n",
    "a recursive alias": b"name: x\nstages: &s [*s]\n",
    "non-string keys": b"1: x\n? [a, b]\n: c\n",
}


@pytest.mark.parametrize("content", BAD_RECIPE_FILES.values(), ids=BAD_RECIPE_FILES.keys())
def test_an_unreadable_recipe_file_is_one_recipe_error(tmp_path, content):
    path = tmp_path / "recipe.yaml"
    path.write_bytes(content)
    with pytest.raises(RecipeError) as caught:
        load_recipe(path, check_files=False)
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)


def test_a_recipe_of_random_bytes_names_the_fix_from_the_cli(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_bytes(bytes(range(128, 256)))
    for args in (("pretrain", "--dry-run", str(path)), ("recipes", "validate", str(path))):
        code, _, stderr = run_cseg(*args)
        assert_success_or_one_line(code, stderr)
        assert code == 2 and str(path) in stderr
    assert "not UTF-8 text" in run_cseg("pretrain", "--dry-run", str(path))[2]


BAD_OVERRIDES = {
    "empty key": (["=x"], "not key=value"),
    "no value sign": (["optim.lr"], "not key=value"),
    "empty part": (["optim..lr=1"], "empty part"),
    "value YAML cannot parse": (["optim.lr=["], "the value is not YAML"),
    "a tab": (["seed=\t1"], "the value is not YAML"),
    "a NUL byte": (["seed=\x001"], "the value is not YAML"),
    "a tag it cannot build": (["seed=!!int many"], "the value is not YAML"),
    "deep nesting": (["seed=" + "[" * 1100], "nested too deeply"),
    "a stage out of range": (["stages.9.steps=1"], "no stage named '9'"),
    "stages not a list": (["stages=5", "stages.cacl.steps=1"], "stages is not a list"),
    "a stage not a mapping": (["stages=[5]", "stages.0.steps=1"], "no stages"),
    "a key with a newline": (["optim.l\nr=1"], "unknown key"),
    "an empty value": (["a.b.c="], "a: unknown key"),
    "a section set to a number": (["optim.lr=1", "optim=3"], "optim"),
}


@pytest.mark.parametrize(("overrides", "message"), BAD_OVERRIDES.values(), ids=BAD_OVERRIDES.keys())
def test_a_bad_override_is_one_recipe_error(overrides, message):
    with pytest.raises(RecipeError, match=message) as caught:
        load_recipe("quickstart", overrides, check_files=False)
    assert "\n" not in str(caught.value)
    code, _, stderr = run_cseg("pretrain", "--dry-run", "--", "quickstart", *overrides)
    assert_success_or_one_line(code, stderr)
    assert code == 2


def test_a_misspelt_key_gets_the_closest_field_at_its_path():
    cases = {
        "stages.cacl.lambda_cyle=1": "stages.cacl.lambda_cyle: unknown key; did you mean lambda_cycle?",
        "stages.cacl.data.bacth_size=4": "did you mean batch_size?",
        "optm.lr=0.1": "optm: unknown key; did you mean optim?",
        "eval.linear_probe.epoch=3": "did you mean epochs?",
        "data.synthetic.num_clip=8": "did you mean num_clips?",
    }
    for override, message in cases.items():
        with pytest.raises(RecipeError) as caught:
            load_recipe("quickstart", [override], check_files=False)
        assert message in str(caught.value), str(caught.value)
    with pytest.raises(RecipeError, match="did you mean strong_threshold?"):
        load_recipe(
            "reco/voc_60labels_debug", ["stages.reco.strong_treshold=0.9"], check_files=False
        )
    with pytest.raises(RecipeError, match=r"no stage named 'cacll'; did you mean cacl\?"):
        load_recipe("quickstart", ["stages.cacll.steps=3"], check_files=False)


def test_a_key_with_no_close_field_keeps_the_general_hint():
    with pytest.raises(RecipeError, match=r"zzz: unknown key \(check the spelling"):
        load_recipe("quickstart", ["zzz=1"], check_files=False)


def test_a_misspelt_recipe_name_gets_the_closest_shipped_name():
    for typo, name in (("quickstrat", "quickstart"), ("cacl/debgu", "cacl/debug")):
        with pytest.raises(RecipeError, match=f"did you mean {name}\\?"):
            find_recipe(typo)
    code, stdout, stderr = run_cseg("pretrain", "quickstrat", "--dry-run")
    assert code == 2 and stdout == "" and "did you mean quickstart?" in stderr
    assert stderr.count("\n") == 1


def test_recipe_names_the_os_rejects_are_recipe_errors():
    for name in ("a" * 5000, "~no-such-user-here/recipe.yaml", "recipe\x00.yaml"):
        with pytest.raises(RecipeError, match="no recipe file"):
            find_recipe(name)


@pytest.mark.parametrize(
    "key", ["data.root", "storage.path", "model.init_from", "stages.cacl.init_from"]
)
@pytest.mark.parametrize("value", ["~no-such-user-here/x", "a\x00b", "\ud800"])
def test_local_paths_the_os_cannot_use_are_recipe_errors(key, value):
    with pytest.raises(RecipeError, match=key.replace(".", r"\.")) as caught:
        load_recipe("quickstart", [f"{key}={flow_yaml(value)}"], check_files=False)
    assert "\n" not in str(caught.value)


def test_a_misspelt_command_gets_the_closest_command():
    code, _, stderr = run_cseg("pretrian")
    assert code == 2 and "Did you mean 'pretrain'?" in stderr and "Traceback" not in stderr
    code, _, stderr = run_cseg("recipes", "validat")
    assert code == 2 and "Did you mean 'validate'?" in stderr


def test_the_debug_switch_shows_the_traceback_in_process():
    code, _, stderr = run_cseg("recipes", "show", "no-such-recipe", env={"CSEG_DEBUG": "1"})
    assert (
        code == 2
        and "Traceback" in stderr
        and stderr.rstrip().endswith("list shipped recipes with `cseg recipes ls`")
    )


@pytest.mark.integration
def test_dry_run_and_bad_input_import_neither_torch_nor_ray(tmp_path):
    (tmp_path / "bad.yaml").write_bytes(b"\xff\xfe")
    script = f"""
import sys
from typer.testing import CliRunner
from cseg.main import app
for args in (["pretrain", "quickstart", "--dry-run"], ["pretrain", {str(tmp_path / "bad.yaml")!r}],
             ["pretrain", "quickstart", "x=["], ["recipes", "validate", "cacl/debug"]):
    result = CliRunner().invoke(app, args)
    assert result.exit_code in (0, 2), (args, result.output, result.exception)
print(sorted(name for name in ("torch", "ray") if name in sys.modules))
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


# ----------------------------------------------------------------------------- properties


def schema_paths(model: type[BaseModel] = Recipe, prefix: str = "") -> list[str]:
    """Every dotted key of the schema (stage fields under `stages.<method>.` and `stages.0.`)."""
    paths = []
    for name, field in model.model_fields.items():
        if name == "stages":
            for stage in (CACLStage, MaskContrastStage, RecoStage):
                method = typing.get_args(stage.model_fields["method"].annotation)[0]
                paths += schema_paths(stage, f"{prefix}stages.{method}.")
            paths += schema_paths(CACLStage, f"{prefix}stages.0.")
            continue
        paths.append(prefix + name)
        for arg in [field.annotation, *typing.get_args(field.annotation)]:
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                paths += schema_paths(arg, f"{prefix}{name}.")
    return paths


PATHS = sorted(set(schema_paths()))
BASES = [read_yaml(find_recipe(name)) for name in shipped_recipes() if "debug" in name]
BASES.append(read_yaml(find_recipe("quickstart")))
YAML_SNIPPETS = ["[", "]", "{", "{a: 1}", "[1, 2]", "!!int x", "!!timestamp x", "&a [*a]",
                 "*a", "'x", '"x', "~", "null", "true", "1e999", "-1", "0x1f", "\t", "\x00",
                 "- a", "a: b", "---", "...", "%YAML 1.1", "|", ">", "!!binary x", "?", "#"]  # fmt: skip


def typo(word: str, draw) -> str:
    """`word` with one character dropped, doubled or swapped."""
    if len(word) < 2:
        return word
    index = draw(st.integers(0, len(word) - 2))
    kind = draw(st.sampled_from(["drop", "double", "swap"]))
    if kind == "drop":
        return word[:index] + word[index + 1 :]
    if kind == "double":
        return word[:index] + word[index] + word[index:]
    return word[:index] + word[index + 1] + word[index] + word[index + 2 :]


values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=6,
)
# values a recipe field could hold, including paths the OS rejects
plausible = st.sampled_from(
    [0, 1, 2, -1, 0.5, 1e-3, 1e999, True, False, None, "", [], {}, [0.5, 1.0], [1, 2, 3, 4],
     "tiny", "resnet18", "cacl", "reco", "maskcontrast", "video", "val", "random", "kmeans",
     "torchvision:resnet18", "~no-such-user-here/x", "a\x00b", "/", ".", "data/x"]
)  # fmt: skip


PATH_KEYS = [p for p in PATHS if p.rsplit(".", 1)[-1] in ("root", "path", "init_from", "train")]
PATH_KEYS += ["eval.data", "stages.cacl.data.val"]


@st.composite
def keys(draw):
    """A dotted key: a schema path, a misspelt one, one too deep, or any text."""
    choice = draw(st.sampled_from([0, 1, 1, 1, 2, 3]))
    if choice == 0:
        return draw(st.text(max_size=20))
    path = draw(st.sampled_from(PATHS))
    if choice == 1:
        return path
    parts = path.split(".")
    index = draw(st.integers(0, len(parts) - 1))
    parts[index] = typo(parts[index], draw)
    return ".".join(parts) if choice == 2 else ".".join([*parts, draw(st.text(max_size=6))])


def flow_yaml(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True, allow_unicode=True).strip()


path_values = st.text(max_size=12) | st.sampled_from(
    ["~no-such-user-here/x", "a\x00b", "\ud800", "", "/", ".", "~", "data/x",
     "torchvision:resnet18", "torchvision:nope"]
)  # fmt: skip
assignments = st.tuples(st.sampled_from(PATH_KEYS), path_values) | st.tuples(
    keys(), plausible | values
)
override = st.builds(lambda pair: f"{pair[0]}={flow_yaml(pair[1])}", assignments) | st.builds(
    lambda key, text: f"{key}={text}", keys(), st.sampled_from(YAML_SNIPPETS) | st.text(max_size=20)
)
overrides = st.lists(override | override | override | st.text(max_size=30), max_size=3)


@st.composite
def recipe_files(draw):
    """Bytes of a recipe file: noise, text, YAML fragments or a mutated shipped recipe."""
    kind = draw(st.sampled_from(["bytes", "text", "fragments", "recipe", "recipe", "recipe"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "text":
        return draw(st.text(max_size=300)).encode("utf-8", "surrogatepass")
    if kind == "fragments":
        lines = st.sampled_from(
            ["name: x", "stages:", "- method: cacl", "  steps: 1", "  data: {train: v}",
             "  name: a", "model: {backbone: tiny, output_stride: 4}", *YAML_SNIPPETS]
        )  # fmt: skip
        return "\n".join(draw(st.lists(lines | st.text(max_size=10), max_size=12))).encode()
    raw = copy.deepcopy(draw(st.sampled_from(BASES)))
    for key, value in draw(st.lists(assignments, max_size=3)):
        set_dotted(raw, key, value)
    for key in draw(st.lists(st.sampled_from(sorted(raw, key=str)), max_size=1)):
        raw.pop(key, None)
    return yaml.safe_dump(raw, allow_unicode=draw(st.booleans())).encode("utf-8", "surrogatepass")


def outcome(error: RecipeError | None) -> str:
    """A coarse class of a load_recipe outcome, for `--hypothesis-show-statistics`."""
    if error is None:
        return "a valid recipe"
    text = str(error)
    for marker in ("not UTF-8", "invalid YAML", "expected a mapping", "not key=value",
                   "empty part", "the value is not YAML", "did you mean", "unknown key",
                   "stage", "Field required", "Input should"):  # fmt: skip
        if marker in text:
            return f"RecipeError: {marker}"
    return "RecipeError: other"


def set_dotted(raw: dict, dotted: str, value) -> None:
    """Set `dotted` in nested dicts and lists (a test's own plain walk, not the code under test)."""
    node = raw
    parts = dotted.split(".")
    for part in parts[:-1]:
        if isinstance(node, list):
            index = int(part) if part.isdecimal() and int(part) < len(node) else 0
            if not node:
                return
            node = node[index]
        elif isinstance(node, dict):
            node = node.setdefault(part, {})
        else:
            return
    if isinstance(node, dict):
        node[parts[-1]] = value


@pytest.fixture(scope="module")
def recipe_path(tmp_path_factory):
    return tmp_path_factory.mktemp("property") / "recipe.yaml"


def no_urls(content: bytes, extra: list[str]) -> bool:
    """Leave remote paths out of the CLI runs (their checks would reach for a bucket)."""
    return b"://" not in content and not any("://" in item for item in extra)


@PROPERTY
@given(content=recipe_files(), extra=overrides)
def test_load_recipe_returns_a_recipe_or_raises_a_recipe_error(recipe_path, content, extra):
    recipe_path.write_bytes(content)
    try:
        load_recipe(recipe_path, extra, check_files=False)
        event(outcome(None))
    except RecipeError as error:
        event(outcome(error))


@PROPERTY
@given(content=recipe_files(), extra=overrides)
def test_pretrain_dry_run_succeeds_or_exits_2_with_one_line(recipe_path, content, extra):
    if not no_urls(content, extra):
        return
    recipe_path.write_bytes(content)
    code, stdout, stderr = run_cseg("pretrain", "--dry-run", "--", str(recipe_path), *extra)
    event(f"exit {code}")
    assert_success_or_one_line(code, stderr)
    assert (stdout == "") == (code == 2)


@PROPERTY
@given(content=recipe_files())
def test_recipes_validate_succeeds_or_exits_2_with_one_line(recipe_path, content):
    recipe_path.write_bytes(content)
    code, _, stderr = run_cseg("recipes", "validate", "--", str(recipe_path))
    assert_success_or_one_line(code, stderr)


def test_the_property_tests_reach_valid_recipes_too(recipe_path):
    """The mutated-recipe strategy is not all noise: an unchanged base validates."""
    for base in BASES:
        recipe_path.write_text(yaml.safe_dump(base))
        assert load_recipe(recipe_path, check_files=False).stages
    assert os.path.getsize(recipe_path) > 0
