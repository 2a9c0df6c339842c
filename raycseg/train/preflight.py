"""Checks of a run's data that need the shards' manifests, made before Ray starts.

The recipe schema cannot see inside the data. What it cannot see, but a run
would trip over after training has started, is checked here from the
manifests (local or in a bucket) and reported at once as one `RecipeError`
(exit 2) that names each key and its fix:

* a ReCo stage that validates (`val_every`) reads the `val` split of
  `data.val`; no other split stands in for it, so training data is never
  reported as validation;
* the recipe's eval section scores the `val` split of `eval.data`.
"""

from __future__ import annotations

from ..config import Recipe, RecoStage
from ..data.shards import read_manifest
from ..errors import CsegError, RecipeError

EVAL_SPLIT = "val"


def check_run_data(recipe: Recipe) -> None:
    """Raise one RecipeError listing every data problem of `recipe`, or return."""
    problems = []
    for stage in recipe.stages:
        if isinstance(stage, RecoStage) and stage.val_every and stage.data.val:
            problems += _missing_split(f"stages.{stage.name}.data.val", stage.data.val)
    if recipe.eval is not None:
        problems += _missing_split("eval.data", recipe.eval.data)
    if problems:
        raise RecipeError("; ".join(problems))


def _missing_split(key: str, root: str) -> list[str]:
    try:
        splits = sorted(read_manifest(root).get("splits", {}))
    except CsegError as error:
        return [f"{key}: {error}"]
    if EVAL_SPLIT in splits:
        return []
    return [
        f"{key}: {root} has no {EVAL_SPLIT!r} split (it has {', '.join(splits) or 'none'}); point "
        f"it at segmentation shards with a {EVAL_SPLIT} split (`cseg shards build` makes one from "
        "the dataset's split lists) — training data is never scored as validation"
    ]
