"""Paths of a recipe: made absolute, checked, and listed.

Shard paths resolve against `data.root`, other local paths against the working
directory; URLs (s3://, gs://) and torchvision weights names (`torchvision:resnet50`)
are kept as they are.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import RecipeError
from ..storage import is_url
from .schema import Recipe

TORCHVISION_WEIGHTS_PREFIX = "torchvision:"
TORCHVISION_WEIGHTS_NAMES = ("resnet18", "resnet50", "resnet101")


def is_torchvision_weights(value: str | Path) -> bool:
    """True for an init_from naming torchvision's ImageNet weights (``torchvision:resnet50``).

    Such a value is a weights name, not a path: it is never resolved or checked as a file.
    """
    return isinstance(value, str) and value.startswith(TORCHVISION_WEIGHTS_PREFIX)


def resolve_paths(recipe: Recipe) -> None:
    """Make every local path absolute: shard paths against `data.root`, others against cwd.

    An init_from that names torchvision weights (``torchvision:resnet50``) stays as it is.

    Raises:
        RecipeError: such a name is unknown, or its weights are of another backbone,
            or a local path is one the OS cannot use.
    """
    unusable = _unusable_local_paths(recipe)
    if unusable:
        raise RecipeError("; ".join(unusable))
    root = (
        recipe.data.root
        if is_url(recipe.data.root)
        else str(Path(recipe.data.root).expanduser().resolve())
    )
    recipe.data.root = root

    def under_root(value: str | None) -> str | None:
        if value is None or is_url(value) or Path(value).expanduser().is_absolute():
            return (
                None
                if value is None
                else (value if is_url(value) else str(Path(value).expanduser()))
            )
        return f"{root}/{value}" if is_url(root) else str(Path(root) / value)

    def from_cwd(value: str | None) -> str | None:
        if value is None or is_url(value) or is_torchvision_weights(value):
            return value
        return str(Path(value).expanduser().resolve())

    for stage in recipe.stages:
        stage.data.train = under_root(stage.data.train)
        stage.data.val = under_root(stage.data.val)
        stage.data.unlabelled = under_root(stage.data.unlabelled)
        stage.init_from = from_cwd(stage.init_from)
    if recipe.eval is not None:
        recipe.eval.data = under_root(recipe.eval.data)
        recipe.eval.davis.data = under_root(recipe.eval.davis.data)
    recipe.model.init_from = from_cwd(recipe.model.init_from)
    recipe.storage.path = from_cwd(recipe.storage.path)
    _check_torchvision_weights(recipe)


def _unusable_local_paths(recipe: Recipe) -> list[str]:
    """Local paths the OS cannot use, each with its key.

    A NUL byte, a character the file system cannot encode (a lone surrogate), or
    `~name` for a user that does not exist here.
    """
    values = {
        "data.root": recipe.data.root,
        "model.init_from": recipe.model.init_from,
        "storage.path": recipe.storage.path,
        **data_paths(recipe),
        **{f"stages.{stage.name}.init_from": stage.init_from for stage in recipe.stages},
    }
    problems = []
    for key, value in values.items():
        if value is None or is_url(value) or is_torchvision_weights(value):
            continue
        if "\x00" in value:
            problems.append(f"{key}: {value!r} holds a NUL byte; fix the path")
            continue
        try:
            os.fsencode(value)
        except UnicodeError:
            problems.append(f"{key}: {value!r} holds a character no path can; fix the path")
            continue
        try:
            Path(value).expanduser()
        except RuntimeError:
            problems.append(f"{key}: {value!r} names no user here after ~; write the path out")
    return problems


def _check_torchvision_weights(recipe: Recipe) -> None:
    """Every ``torchvision:`` init_from names known weights of the recipe's backbone."""
    model = recipe.model
    values = {f"stages.{stage.name}.init_from": stage.init_from for stage in recipe.stages}
    values["model.init_from"] = model.init_from
    names = ", ".join(TORCHVISION_WEIGHTS_PREFIX + name for name in TORCHVISION_WEIGHTS_NAMES)
    problems = []
    for key, value in values.items():
        if value is None or not is_torchvision_weights(value):
            continue
        name = value.removeprefix(TORCHVISION_WEIGHTS_PREFIX)
        tiny_fits = model.backbone == "tiny" and model.width == 64 and name == "resnet18"
        if name not in TORCHVISION_WEIGHTS_NAMES:
            problems.append(f"{key}: unknown weights {value}; use one of {names}")
        elif name != model.backbone and not tiny_fits:
            problems.append(
                f"{key}: {value} holds {name} weights but model.backbone is {model.backbone}; "
                f"set model.backbone: {name}"
            )
    if problems:
        raise RecipeError("; ".join(problems))


def data_paths(recipe: Recipe) -> dict[str, str]:
    """Every shard set the run reads, by key (`stages.cacl.data.train`, `eval.data`)."""
    paths = {}
    for stage in recipe.stages:
        for field in ("train", "val", "unlabelled"):
            value = getattr(stage.data, field)
            if value is not None:
                paths[f"stages.{stage.name}.data.{field}"] = value
    if recipe.eval is not None:
        paths["eval.data"] = recipe.eval.data
        if recipe.eval.davis.data is not None:
            paths["eval.davis.data"] = recipe.eval.davis.data
    return paths


def synthetic_dir(recipe: Recipe) -> str | None:
    """The folder of the recipe's generated data, when the run reads from it.

    Generated data is built only when a data path the run reads points into it: a
    recipe whose paths all point at the user's own shards never builds it, even with
    its `data.synthetic` section still there.
    """
    if recipe.data.synthetic is None:
        return None
    folder = f"{recipe.data.root}/{recipe.data.synthetic.name}"
    reads = any(
        path == folder or path.startswith(folder + "/") for path in data_paths(recipe).values()
    )
    return folder if reads else None


def missing_inputs(recipe: Recipe) -> list[str]:
    """Problems with local input paths, each with its key path (generated data excepted)."""
    generated = synthetic_dir(recipe)
    problems = []

    def check(key: str, value: str | None, fix: str) -> None:
        if value is None or is_url(value) or is_torchvision_weights(value):
            return
        if generated and value.startswith(generated):
            return
        if not Path(value).exists():
            problems.append(f"{key}: {value} does not exist; {fix}")

    shards_fix = "build shards with `cseg shards build` (or `cseg shards synthetic`)"
    weights_fix = "give an existing checkpoint file, or torchvision weights (torchvision:resnet50)"
    for key, path in data_paths(recipe).items():
        check(key, path, shards_fix)
    for stage in recipe.stages:
        check(f"stages.{stage.name}.init_from", stage.init_from, weights_fix)
    check("model.init_from", recipe.model.init_from, weights_fix)
    return problems
