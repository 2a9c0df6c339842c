"""Checks of a run's data that need the shards' manifests, made before Ray starts.

The recipe schema cannot see inside the data; a run would trip over what it
cannot see only after training has started. `check_run_data` reads the
manifest of every shard set the run will read (local or in a bucket; it needs
neither torch nor Ray) and reports every problem at once as one `RecipeError`
(exit 2) that names the key, what was found and the fix:

* every data path holds a shard set of the kind its field needs: a stage's
  `train` video for `cacl` in video mode, image, segmentation or saliency in
  image mode, saliency for `maskcontrast`, segmentation for `reco`; ReCo's
  `unlabelled` segmentation (or image, outside partial mode); every `val` and
  `eval.data` segmentation;
* what is scored has a `val` split: a ReCo stage that validates (`val_every`)
  and the eval section (no other split stands in for it, so training data is
  never reported as validation);
* the number of classes comes from the manifests: a ReCo stage's
  `num_classes` and `eval.num_classes`, when the recipe leaves them out, are
  filled in from them, and a value that disagrees with them is an error.

Generated data that is not built yet (`--dry-run` before a first run) is
skipped: it is built to match.
"""

from __future__ import annotations

from pathlib import Path

from ..config import CACLStage, MaskContrastStage, Recipe, RecoStage, StageBase, synthetic_dir
from ..errors import CsegError, DataError, RecipeError
from ..shards.manifest import MANIFEST, read_manifest

EVAL_SPLIT = "val"
SEGMENTATION = ("segmentation",)


def check_run_data(recipe: Recipe) -> None:
    """Check (and complete) `recipe`'s data fields against their manifests.

    Fills a ReCo stage's `num_classes` and `eval.num_classes` from the manifests
    when they are None.

    Raises:
        RecipeError: listing every problem, each with its key.
    """
    problems: list[str] = []
    manifests = _Manifests(recipe, problems)
    for stage in recipe.stages:
        for field, kinds in _needed_kinds(stage).items():
            manifests.check_kind(
                f"stages.{stage.name}.data.{field}", getattr(stage.data, field), kinds
            )
        if isinstance(stage, RecoStage):
            key = f"stages.{stage.name}"
            stage.num_classes = manifests.classes(f"{key}.num_classes", stage.num_classes,
                                                  stage.data.train, f"{key}.data.train")  # fmt: skip
            if stage.val_every and stage.data.val:
                manifests.check_split(f"{key}.data.val", stage.data.val)
    if recipe.eval is not None:
        manifests.check_kind("eval.data", recipe.eval.data, SEGMENTATION)
        manifests.check_split("eval.data", recipe.eval.data)
        recipe.eval.num_classes = manifests.classes(
            "eval.num_classes", recipe.eval.num_classes, recipe.eval.data, "eval.data"
        )
        if recipe.eval.davis.data is not None:
            manifests.check_kind("eval.davis.data", recipe.eval.davis.data, ("vos",))
            manifests.check_split("eval.davis.data", recipe.eval.davis.data)
    if problems:
        raise RecipeError("; ".join(dict.fromkeys(problems)))


def check_eval_inputs(
    target: Path, overrides: list[str], data: str | None, split: str, vos: str | None = None
) -> None:
    """`cseg eval`'s arguments, checked before torch is imported (fast failures).

    Raises:
        CsegError: the target does not exist, an override is not of the eval section,
            `data` is not segmentation (or vos) shards with `split`, or `vos` not vos shards.
    """
    if not Path(target).expanduser().exists():
        raise CsegError(f"{target} does not exist; pass a run directory or a checkpoint")
    outside = [item for item in overrides if not item.startswith("eval.")]
    if outside:
        raise RecipeError(
            f"cseg eval takes overrides of the eval section only (eval.KEY=VALUE), not "
            f"{outside[0]!r}; e.g. eval.image_size=256 eval.linear_probe.epochs=10"
        )
    for option, path, kinds in (
        ("--data", data, ("segmentation", "vos")),
        ("--vos", vos, ("vos",)),
    ):
        if path is None:
            continue
        manifest = read_manifest(path)
        if manifest.get("kind") not in kinds:
            raise DataError(
                f"{option} {path} holds {manifest.get('kind')} shards; evaluation needs "
                f"{' or '.join(kinds)} shards (`cseg shards build --kind {kinds[0]}`)"
            )
        splits = sorted(manifest.get("splits", {}))
        if split not in splits:
            raise DataError(
                f"{path} has no {split!r} split (it has {', '.join(splits) or 'none'}); choose "
                "one with --split"
            )


def _needed_kinds(stage: StageBase) -> dict[str, tuple[str, ...]]:
    """The shard kinds each data field of `stage` may hold."""
    if isinstance(stage, CACLStage):
        train = ("video",) if stage.mode == "video" else ("image", "segmentation", "saliency")
    elif isinstance(stage, MaskContrastStage):
        train = ("saliency",)
    else:
        train = SEGMENTATION
    kinds = {"train": train, "val": SEGMENTATION}
    if isinstance(stage, RecoStage):
        partial = stage.mode == "partial"  # reads the unlabelled images' sparse labels
        kinds["unlabelled"] = SEGMENTATION if partial else ("segmentation", "image")
    return kinds


class _Manifests:
    """Reads each shard set's manifest once; records problems instead of raising."""

    def __init__(self, recipe: Recipe, problems: list[str]):
        self.generated = synthetic_dir(recipe)
        self.problems = problems
        self.cache: dict[str, dict | None] = {}

    def read(self, key: str, root: str | None) -> dict | None:
        if root is None or self._not_built_yet(root):
            return None
        if root not in self.cache:
            try:
                self.cache[root] = read_manifest(root)
            except CsegError as error:
                self.cache[root] = None
                self.problems.append(f"{key}: {error}")
        return self.cache[root]

    def _not_built_yet(self, root: str) -> bool:
        return bool(self.generated) and root.startswith(self.generated) and not _exists(root)

    def check_kind(self, key: str, root: str | None, kinds: tuple[str, ...]) -> None:
        manifest = self.read(key, root)
        if manifest is None or manifest.get("kind") in kinds:
            return
        self.problems.append(
            f"{key}: {root} holds {manifest.get('kind')} shards, and this field needs "
            f"{' or '.join(kinds)} shards; point it at shards built with "
            f"`cseg shards build --kind {kinds[0]}`"
        )

    def check_split(self, key: str, root: str) -> None:
        manifest = self.read(key, root)
        if manifest is None:
            return
        splits = sorted(manifest.get("splits", {}))
        if EVAL_SPLIT not in splits:
            self.problems.append(
                f"{key}: {root} has no {EVAL_SPLIT!r} split (it has {', '.join(splits) or 'none'}); "
                f"point it at segmentation shards with a {EVAL_SPLIT} split (`cseg shards build` "
                "makes one from the dataset's split lists); training data is never scored as "
                "validation"
            )

    def classes(self, key: str, value: int | None, root: str, data_key: str) -> int | None:
        """The class count `key` should hold: the manifest's, checked against `value`."""
        manifest = self.read(data_key, root)
        names = (manifest or {}).get("classes") or []
        if not names:
            if value is None and manifest is not None:
                self.problems.append(f"{key}: {root}'s manifest lists no classes; set {key}")
            return value
        if value is not None and value != len(names):
            self.problems.append(
                f"{key}={value}, but {root} has {len(names)} classes ({', '.join(names[:4])}, ...); "
                f"drop {key} to take the shards' count, or point {data_key} at the right shards"
            )
        return len(names)


def _exists(root: str) -> bool:
    return (Path(root) / MANIFEST).exists()
