"""Evaluate a run or checkpoint and merge the scores into `eval.json` (CONTRACTS.md §3).

The random-init baseline is the exact initial backbone of the run: the
workers seed with `recipe.seed` right before building the model, and so does
`build_initial_backbone`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..config import Recipe, StageBase
from ..errors import CsegError
from ..eval import evaluate_backbone, protocol_key
from ..eval.batches import num_classes_of, segmentation_batches
from ..eval.cluster import run_kmeans_protocol
from ..eval.metrics import ProtocolSkipped
from ..models import Backbone, build_backbone, load_backbone_weights

EVAL_FILE = "eval.json"
DEFAULT_PROTOCOLS = ("linear-probe", "kmeans")
MASKCONTRAST_KMEANS = "maskcontrast_kmeans"
SEGMENTATION = "segmentation"
HEAD_PROTOCOLS = (MASKCONTRAST_KMEANS, SEGMENTATION)


def build_initial_backbone(recipe: Recipe) -> Backbone:
    """The backbone exactly as the run's workers initialised it."""
    model = recipe.model
    torch.manual_seed(recipe.seed)
    return build_backbone(
        model.backbone,
        output_stride=model.output_stride,
        width=model.width,
        init_from=model.init_from,
    )


def evaluate_checkpoint(
    checkpoint: str | Path,
    recipe: Recipe,
    *,
    run_dir: Path | None = None,
    data: str | None = None,
    protocols: list[str] | None = None,
    baseline: str | None = None,
    on_message: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Score a checkpoint's backbone (and, if asked, the random-init baseline).

    Args:
        checkpoint: a raycseg checkpoint (state.pt or its folder) or torchvision weights.
        recipe: the recipe that trained it (its model and eval sections are used).
        run_dir: where eval.json is merged; None writes nothing.
        data: segmentation shards; default `recipe.eval.data`.
        protocols: CLI names (`linear-probe`, `kmeans`, `maskcontrast-kmeans`, `segmentation`);
            default the recipe's.
        baseline: `random` to also score the initial weights; default the recipe's.
    """
    section = recipe.eval
    data = data or (section.data if section else None)
    if data is None:
        raise CsegError(
            "no evaluation data: pass --data SEG_SHARDS (built with `cseg shards build --kind segmentation`)"
        )
    protocols = list(protocols or (section.protocols if section else DEFAULT_PROTOCOLS))
    baseline = baseline or (section.baseline if section else None)
    image_size = section.image_size if section else recipe.stages[0].data.image_size
    num_classes = section.num_classes if section else num_classes_of(data)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    options = {
        "train_batches": segmentation_batches(
            data,
            "train",
            image_size=image_size,
            limit=section.max_train_images if section else None,
        ),
        "val_batches": segmentation_batches(data, "val", image_size=image_size),
        "num_classes": num_classes,
        "protocols": protocols,
        "device": device,
        "probe_steps": section.probe_steps if section else 300,
        "probe_lr": section.probe_lr if section else 0.01,
    }
    # protocols that read the checkpoint's heads, not only its backbone
    keys = dict.fromkeys(map(protocol_key, protocols))
    head_protocols = [key for key in keys if key in HEAD_PROTOCOLS]
    options["protocols"] = [p for p in protocols if protocol_key(p) not in HEAD_PROTOCOLS]
    on_message(f"evaluating {checkpoint} with {', '.join(protocols)}")
    backbone = build_initial_backbone(recipe)
    initial = {k: v.clone() for k, v in backbone.state_dict().items()}
    load_backbone_weights(backbone, checkpoint)
    scores = evaluate_backbone(backbone, **options) if options["protocols"] else {}
    for key in head_protocols:
        _merge_scores(scores, _head_scores(key, checkpoint, options))
    if baseline == "random" and options["protocols"]:
        backbone.load_state_dict(initial)
        on_message("evaluating the random-init baseline")
        scores["baseline_random"] = evaluate_backbone(backbone, **options)
    for key, reason in scores.get("skipped", {}).items():
        on_message(f"{key} skipped: {reason}")
    if run_dir is not None:
        scores = merge_eval_json(Path(run_dir) / EVAL_FILE, scores)
    return scores


def _head_scores(key: str, checkpoint: str | Path, options: dict[str, Any]) -> dict[str, Any]:
    """A protocol that reads the checkpoint's trained heads: MaskContrast's embedding and
    saliency heads, or a ReCo model's classifier (teacher or student, as it validated)."""
    from ..methods.maskcontrast import load_query_encoder
    from ..methods.reco import load_segmenter
    from .checkpoint import load_state

    try:
        if key == MASKCONTRAST_KMEANS:
            module = load_query_encoder(load_state(checkpoint))
            heads = {"embed_fn": module}
        else:
            module = load_segmenter(load_state(checkpoint))
            heads = {"segment_fn": lambda images: module(images)[0]}
    except ProtocolSkipped as reason:
        return {"skipped": {key: str(reason)}}
    head_options = {**options, "protocols": [key], "train_batches": None}
    return evaluate_backbone(module, **heads, **head_options)


def _merge_scores(scores: dict[str, Any], more: dict[str, Any]) -> None:
    skipped = {**scores.get("skipped", {}), **more.pop("skipped", {})}
    scores.update(more)
    if skipped:
        scores["skipped"] = skipped


def evaluate_target(
    target: Path,
    *,
    data: str | None = None,
    protocols: list[str] | None = None,
    baseline: str | None = None,
    on_message: Callable[[str], None] = lambda _: None,
) -> tuple[dict[str, Any], Path]:
    """`cseg eval`: evaluate a run directory (its last stage) or a checkpoint; return scores and eval.json."""
    from ..config import Recipe as RecipeModel
    from ..train.checkpoint import load_state
    from ..train.launch import STAGES_FILE

    target = Path(target).expanduser().resolve()
    if (target / STAGES_FILE).exists():
        stages = json.loads((target / STAGES_FILE).read_text())
        recipe = RecipeModel.model_validate(_yaml(target / "config.yaml"))
        checkpoint = (
            stages[recipe.stages[-1].name]["checkpoint"]
            if recipe.stages[-1].name in stages
            else None
        )
        if checkpoint is None:
            raise CsegError(
                f"{target} has no finished stage yet; finish it with `cseg pretrain --resume`"
            )
        run_dir = target
    elif target.exists():
        state = load_state(target)
        if "recipe" not in state:
            raise CsegError(
                f"{target} is not a raycseg checkpoint (no recipe inside); evaluate its run directory"
            )
        recipe = RecipeModel.model_validate(state["recipe"])
        checkpoint = target
        run_dir = target if target.is_dir() else target.parent
    else:
        raise CsegError(f"{target} does not exist; pass a run directory or a checkpoint")
    data = str(Path(data).expanduser().resolve()) if data and "://" not in data else data
    scores = evaluate_checkpoint(
        checkpoint,
        recipe,
        run_dir=run_dir,
        data=data,
        protocols=protocols,
        baseline=baseline,
        on_message=on_message,
    )
    return scores, run_dir / EVAL_FILE


def merge_eval_json(path: Path, scores: dict[str, Any]) -> dict[str, Any]:
    """Merge new scores into eval.json (a later eval adds or replaces keys), atomically."""
    merged = json.loads(path.read_text()) if path.exists() else {}
    for key, value in scores.items():
        if key == "baseline_random" and isinstance(merged.get(key), dict):
            merged[key].update(value)
        else:
            merged[key] = value
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(merged, indent=2))
    os.replace(partial, path)
    return merged


def validation_miou(
    method, stage: StageBase, recipe: Recipe, device: torch.device
) -> dict[str, float]:
    """The periodic validation metric: k-means mIoU of the backbone on the stage's val shards."""
    if hasattr(method, "validation_metrics"):
        return method.validation_metrics(stage, recipe, device)
    batches = segmentation_batches(stage.data.val, "val", image_size=stage.data.image_size)
    num_classes = num_classes_of(stage.data.val)
    scores = run_kmeans_protocol(method.backbone, batches, num_classes, seed=0, device=device)
    return {"val_miou": scores["miou"]}


def _yaml(path: Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(path.read_text())
