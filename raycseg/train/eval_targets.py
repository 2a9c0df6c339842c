"""`cseg eval`'s targets: a run directory, a raycseg checkpoint or plain backbone weights.

`evaluate_target` finds the checkpoint and the recipe that trained it, applies the
`eval.KEY=VALUE` overrides, routes `--data VOS_SHARDS` to the davis protocol, and
calls `raycseg.train.evaluation.evaluate_checkpoint`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import Recipe, apply_overrides, load_recipe, resolve_paths, validate_recipe
from ..errors import CsegError
from ..run_directory import EVAL_FILE, is_run_directory, run_checkpoint
from ..shards.manifest import read_manifest
from .checkpoint import load_state
from .evaluation import DAVIS, EVAL_SPLIT, evaluate_checkpoint


def evaluate_target(
    target: Path,
    *,
    recipe: str | None = None,
    overrides: list[str] | None = None,
    data: str | None = None,
    split: str = EVAL_SPLIT,
    num_classes: int | None = None,
    protocols: list[str] | None = None,
    baseline: str | None = None,
    vos: str | None = None,
    save_predictions: Path | None = None,
    suite: bool = False,
    on_message: Callable[[str], None] = lambda _: None,
) -> tuple[dict[str, Any], Path]:
    """`cseg eval`: score a run directory, a raycseg checkpoint or plain backbone weights.

    A run directory is scored at its last stage; plain weights (a torchvision, MoCo or
    DenseCL file) with `recipe`'s model and eval sections. Returns the scores and the
    eval.json they were merged into (next to a file). `overrides` are `eval.KEY=VALUE`
    strings (`with_eval_overrides`); the other arguments are `evaluate_checkpoint`'s.
    """
    trained, checkpoint, run_dir = resolve_target(target, recipe)
    data, vos = _local_or_url(data), _local_or_url(vos)
    if data is not None and read_manifest(data).get("kind") == "vos":
        data, vos = None, vos or data  # --data VOS_SHARDS: the davis protocol's data
        protocols = protocols or [DAVIS]
    scores = evaluate_checkpoint(
        checkpoint,
        with_eval_overrides(trained, overrides or [], data),
        run_dir=run_dir,
        data=data,
        split=split,
        num_classes=num_classes,
        protocols=protocols,
        baseline=baseline,
        vos=vos,
        save_predictions=save_predictions,
        suite=suite,
        on_message=on_message,
    )
    return scores, run_dir / EVAL_FILE


def resolve_target(target: Path, recipe: str | None = None) -> tuple[Recipe, Path, Path]:
    """The recipe that trained `target`, its checkpoint and the folder eval.json goes in.

    `target` is a run directory (its last stage), a raycseg checkpoint, or plain
    weights with `recipe` naming the recipe whose model and eval sections apply.
    """
    target = Path(target).expanduser().resolve()
    if is_run_directory(target):
        trained, checkpoint = run_checkpoint(target)
        return trained, checkpoint, target
    if target.exists():
        folder = target if target.is_dir() else target.parent
        return _recipe_of_weights(target, recipe), target, folder
    raise CsegError(f"{target} does not exist; pass a run directory or a checkpoint")


def _local_or_url(path: str | None) -> str | None:
    return str(Path(path).expanduser().resolve()) if path and "://" not in path else path


def _recipe_of_weights(target: Path, recipe: str | None) -> Recipe:
    """The recipe stored in a raycseg checkpoint, else the one given for plain weights."""
    state = load_state(target)
    if "recipe" in state:
        return Recipe.model_validate(state["recipe"])
    if recipe is None:
        raise CsegError(
            f"{target} holds weights but no recipe; pass --recipe NAME (its model section "
            "describes the backbone, its eval section the protocols), or evaluate a run directory"
        )
    loaded = load_recipe(recipe, check_files=False)
    # the weights are the backbone: the recipe's own init is not read (the baseline is random)
    return loaded.model_copy(update={"model": loaded.model.model_copy(update={"init_from": None})})


def with_eval_overrides(recipe: Recipe, overrides: list[str], data: str | None) -> Recipe:
    """`recipe` with `eval.KEY=VALUE` overrides of its eval section (as in recipes).

    A recipe without an eval section gets one for `data`. Only `eval.` keys are taken
    (`raycseg.train.preflight.check_eval_inputs`): evaluation cannot change how a run
    trained.

    Raises:
        RecipeError: a value the schema refuses.
    """
    if not overrides:
        return recipe
    raw = recipe.model_dump(mode="json")
    if raw.get("eval") is None:
        raw["eval"] = {"data": data} if data else {}
    overridden = validate_recipe(apply_overrides(raw, overrides), source="cseg eval overrides")
    resolve_paths(overridden)
    return overridden
