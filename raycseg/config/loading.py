"""Load a recipe (`load_recipe`): read it, lay overlays over it, validate it.

`load_recipe` finds the recipe, reads its YAML, lays a cluster overlay and
`key=value` overrides over it, validates it and resolves its paths.

A cluster overlay (`--cluster gpu`, or a YAML path) is a partial recipe laid
over any recipe before the `key=value` overrides: recipe < overlay < overrides.

Every problem (unknown key, wrong type, missing file) is collected and raised
at once as one `RecipeError`, each with its key path, before Ray starts.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import Any

import yaml

from ..errors import RecipeError
from .paths import missing_inputs, resolve_paths
from .schema import Recipe
from .validation import did_you_mean, validate_recipe

RECIPE_SUFFIX = ".yaml"
OVERLAY_FOLDER = "clusters/overlays"


def shipped_recipes() -> list[str]:
    """Names of the recipes shipped with the package, e.g. `quickstart`, `cacl/debug`."""
    root = importlib.resources.files("raycseg.recipes")
    names = []
    for entry in _walk(root):
        rel = entry[0]
        if rel.endswith(RECIPE_SUFFIX) and not rel.startswith(("clusters/", "tune/")):
            names.append(rel[: -len(RECIPE_SUFFIX)])
    return sorted(names)


def shipped_files(folder: str = "") -> list[str]:
    """Relative paths of every shipped YAML file under `folder` (e.g. `tune`)."""
    root = importlib.resources.files("raycseg.recipes")
    return sorted(
        rel for rel, _ in _walk(root) if rel.endswith(RECIPE_SUFFIX) and rel.startswith(folder)
    )


def _walk(node, prefix: str = ""):
    for child in node.iterdir():
        rel = f"{prefix}{child.name}"
        if child.is_dir():
            if not child.name.startswith(("_", ".")):
                yield from _walk(child, rel + "/")
        else:
            yield rel, child


def find_recipe(name_or_path: str | Path) -> Path:
    """Resolve a file path or a shipped recipe name (`quickstart`, `cacl/debug`).

    Raises:
        RecipeError: neither exists; a shipped name close to it is suggested.
    """
    text = str(name_or_path)
    try:
        path = Path(name_or_path).expanduser()
    except RuntimeError:  # `~name` where no user is called name
        path = Path(name_or_path)
    if _is_file(path):
        return path.resolve()
    name = text.removeprefix("recipes/").removesuffix(RECIPE_SUFFIX)
    shipped = importlib.resources.files("raycseg.recipes").joinpath(name + RECIPE_SUFFIX)
    if _is_file(shipped):
        return Path(str(shipped))
    raise RecipeError(
        f"no recipe file or shipped recipe named {text!r}; "
        f"{did_you_mean(name, shipped_recipes())}list shipped recipes with `cseg recipes ls`"
    )


def _is_file(path: Any) -> bool:
    """`path.is_file()`, False for names the OS rejects (too long, NUL bytes, no access)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


MAX_YAML_BYTES = 10 << 20  # recipes, spaces and overlays are a few KiB


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping (a recipe, a space, an overlay).

    Raises:
        RecipeError: one line naming the fix when the file cannot be read, is not
            UTF-8 YAML text, or does not hold a mapping at the top level.
    """
    try:
        size = path.stat().st_size
        if size > MAX_YAML_BYTES:
            raise RecipeError(
                f"{path}: {size / 2**20:.0f} MiB is not a recipe; give a YAML file of key: value lines"
            )
        data = path.read_bytes()
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise RecipeError(f"{path}: cannot read it ({reason}); check the path") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise RecipeError(
            f"{path}: not UTF-8 text (byte {error.start}); give a YAML file saved as UTF-8"
        ) from None
    try:
        loaded = yaml.safe_load(text)
    except Exception as error:  # PyYAML raises ValueError, KeyError, RecursionError too
        raise RecipeError(f"{path}: invalid YAML{_yaml_problem(error)}; fix the syntax") from None
    if not isinstance(loaded, dict):
        found = "nothing" if loaded is None else f"a {type(loaded).__name__}"
        raise RecipeError(
            f"{path}: expected a mapping of key: value lines at the top level, found {found}"
        )
    return loaded


def _yaml_problem(error: Exception) -> str:
    """Where and what PyYAML found wrong, e.g. ` at line 3 (mapping values are not allowed here)`."""
    if isinstance(error, RecursionError):
        return " (nested too deeply)"
    if not isinstance(error, yaml.YAMLError):
        return f" ({type(error).__name__} while building a value)"
    mark = getattr(error, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(error, "problem", None) or getattr(error, "reason", None)
    return f"{where} ({problem})" if problem else where


def apply_overrides(raw: dict[str, Any], overrides: list[str] | dict[str, Any]) -> dict[str, Any]:
    """Apply `a.b=value` overrides (values parsed as YAML) to a raw recipe dict.

    Stages are addressed by name (`stages.cacl.lambda_cycle`) or index
    (`stages.0.steps`). Unknown keys are set anyway, so that validation
    reports them with their path alongside every other error.

    Raises:
        RecipeError: an override is not `key=value`, its value is not YAML, or
            its path runs through something that is not a section.
    """
    if isinstance(overrides, dict):
        pairs = [(str(key), value) for key, value in overrides.items()]
    else:
        pairs = [_parse_override(str(item)) for item in overrides]
    for key, value in pairs:
        _set_path(raw, key, value)
    return raw


def _parse_override(item: str) -> tuple[str, Any]:
    """Split `a.b=value` and read the value as YAML (empty: None)."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise RecipeError(f"override {item!r} is not key=value, e.g. stages.cacl.steps=100")
    if not all(part.strip() for part in key.split(".")):
        raise RecipeError(
            f"override {item!r}: {key!r} has an empty part; write keys like stages.cacl.steps"
        )
    if not text.strip():
        return key, None
    try:
        return key, yaml.safe_load(text)
    except Exception as error:  # PyYAML raises ValueError, KeyError, RecursionError too
        raise RecipeError(
            f"override {item!r}: the value is not YAML{_yaml_problem(error)}; "
            f"""quote a string value, e.g. {key}='"text"'"""
        ) from None


def _set_path(raw: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node: Any = raw
    for depth, part in enumerate(parts[:-1]):
        if depth == 0 and part == "stages":
            node = raw.setdefault("stages", [])
            if not isinstance(node, list):
                raise RecipeError(
                    f"override {dotted}: the recipe's stages is not a list; "
                    "write stages as a list of `- method: ...` entries"
                )
            continue
        if isinstance(node, list):
            node = node[_stage_index(node, part, dotted)]
            continue
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    last = parts[-1]
    if isinstance(node, list):
        raise RecipeError(f"override {dotted}: name a stage field, e.g. stages.cacl.steps")
    node[last] = value


def _stage_index(stages: list[Any], part: str, dotted: str) -> int:
    """The index of the stage named (or numbered) `part`; only mappings count as stages."""
    if part.isascii() and part.isdigit() and int(part) < len(stages):
        index = int(part)
        if isinstance(stages[index], dict):
            return index
    for index, stage in enumerate(stages):
        if isinstance(stage, dict) and (stage.get("name") or stage.get("method")) == part:
            return index
    known = [str(s.get("name") or s.get("method")) for s in stages if isinstance(s, dict)]
    if not known:
        raise RecipeError(f"override {dotted}: the recipe has no stages; add one under `stages:`")
    raise RecipeError(
        f"override {dotted}: no stage named {part!r}; {did_you_mean(part, known)}"
        f"stages are {known} (or their indexes from 0)"
    )


def find_cluster_overlay(name_or_path: str | Path) -> Path:
    """Resolve a cluster overlay: a YAML path, or a shipped name (`gpu`)."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path.resolve()
    shipped = importlib.resources.files("raycseg.recipes").joinpath(
        f"{OVERLAY_FOLDER}/{name_or_path}{RECIPE_SUFFIX}"
    )
    if shipped.is_file():
        return Path(str(shipped))
    raise RecipeError(
        f"no cluster overlay file or shipped overlay named {str(name_or_path)!r}; "
        f"shipped overlays: {', '.join(shipped_cluster_overlays())}"
    )


def shipped_cluster_overlays() -> list[str]:
    """Names of the cluster overlays shipped with the package, e.g. `gpu`."""
    return [Path(rel).stem for rel in shipped_files(OVERLAY_FOLDER)]


def cluster_overlay(name_or_path: str | Path) -> dict[str, Any]:
    """A cluster overlay as dotted overrides, merged key by key (`scaling.use_gpu: true`)."""
    return dict(_dotted_leaves(read_yaml(find_cluster_overlay(name_or_path))))


def _dotted_leaves(node: dict[str, Any], prefix: str = ""):
    for key, value in node.items():
        if isinstance(value, dict) and value:
            yield from _dotted_leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def load_recipe(
    path: str | Path,
    overrides: list[str] | dict[str, Any] | None = None,
    *,
    cluster: str | Path | None = None,
    check_files: bool = True,
) -> Recipe:
    """Load, override and validate a recipe, then resolve its paths.

    Args:
        path: a YAML file or the name of a shipped recipe (`quickstart`, `cacl/debug`).
        overrides: `a.b=value` strings (or a dict of dotted path -> value).
        cluster: a cluster overlay (a shipped name such as `gpu`, or a YAML path),
            applied before the overrides.
        check_files: also report missing shard folders and checkpoints.

    Returns:
        The validated recipe with `data.root`, shard paths, checkpoints and
        `storage.path` made absolute (URLs such as s3:// are kept as they are).

    Raises:
        RecipeError: listing every problem at once, each with its key path.
    """
    file = find_recipe(path)
    raw = read_yaml(file)
    if cluster is not None:
        apply_overrides(raw, cluster_overlay(cluster))
    raw = apply_overrides(raw, overrides or [])
    source = str(path) if cluster is None else f"{path} with cluster overlay {cluster}"
    recipe = validate_recipe(raw, source=source)
    resolve_paths(recipe)
    if check_files:
        missing = missing_inputs(recipe)
        if missing:
            raise RecipeError(f"{path}: " + "; ".join(missing))
    return recipe


def recipe_to_yaml(recipe: Recipe) -> str:
    """The resolved recipe as YAML (what `--print-config` shows and runs store)."""
    return yaml.safe_dump(_integer_steps(recipe.model_dump(mode="json")), sort_keys=False)


def _integer_steps(node: Any) -> Any:
    """Step schedules' keys as the integers they are (JSON mode made them strings)."""
    if isinstance(node, list):
        return [_integer_steps(item) for item in node]
    if not isinstance(node, dict):
        return node
    return {
        key: {int(step): v for step, v in value.items()}
        if key == "from_step" and isinstance(value, dict)
        else _integer_steps(value)
        for key, value in node.items()
    }
