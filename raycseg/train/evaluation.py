"""Evaluate a run or checkpoint and merge the scores into the run's `eval.json`.

Every protocol scores the `val` split at the labels' own resolution; the model
sees the input its protocol names (`raycseg.eval.scoring`):

* ``linear-probe``, ``kmeans``, ``overcluster``, ``maskcontrast-kmeans``: each image
  resized to ``eval.image_size`` squared (MaskContrast: 512); ``overcluster`` also
  reads the train split;
* ``segmentation``: full resolution, reflect-padded as the ReCo stage validates
  (``data.val_pad_to``; 513 on VOC);
* ``davis``: the frames of VOS shards (``--vos``, ``eval.davis.data``) at a short side
  of ``eval.davis.resolution`` (`raycseg.eval.davis`).

Each protocol record gets a ``fingerprint`` (`raycseg.eval.scoring.protocol_fingerprint`).

The linear probe reads the 256-d decoder features of a MaskContrast checkpoint
and the backbone of any other. eval.json gets a top-level ``data`` record (the
shards, split, number of images and class names that were scored).

The random-init baseline is the exact initial backbone of the run: the
workers seed with `recipe.seed` right before building the model, and so does
`build_initial_backbone`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

from ..config import (
    DavisSection,
    EvalSection,
    Recipe,
    StageBase,
)
from ..errors import CsegError
from ..eval import evaluate_backbone, protocol_key
from ..eval.batches import data_record, evaluation_batches, num_classes_of, probe_training_epochs
from ..eval.cluster import KMEANS_SEED
from ..eval.davis import davis_record, run_davis_protocol
from ..eval.metrics import ProtocolSkipped
from ..eval.samples import write_eval_samples
from ..eval.scoring import protocol_fingerprint
from ..methods.common import checkpoint_stage
from ..methods.maskcontrast import load_query_encoder
from ..methods.reco import load_segmenter
from ..models import Backbone, DecoderFeatures, build_backbone, load_backbone_weights
from ..run_directory import DAVIS_STRIP, EVAL_FILE, merge_eval_json
from ..shards.manifest import read_manifest
from .checkpoint import load_state

EVAL_SPLIT = "val"
DAVIS = "davis"
SUITE_PROTOCOLS = (
    "linear-probe",
    "kmeans",
    "overcluster",
    "maskcontrast-kmeans",
    "segmentation",
    "davis",
)  # `cseg eval --suite paper`
SUITE_SEEDS = (0, 1, 2, 3, 4)  # its k-means seeds
OVERCLUSTER = "overcluster"
EVAL_SAMPLES = 4  # validation images kept for the report's pictures
MASKCONTRAST_KMEANS = "maskcontrast_kmeans"
SEGMENTATION = "segmentation"


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
    split: str = EVAL_SPLIT,
    num_classes: int | None = None,
    protocols: list[str] | None = None,
    baseline: str | None = None,
    vos: str | None = None,
    save_predictions: Path | None = None,
    suite: bool = False,
    on_message: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Score a checkpoint (and, if asked, the random-init baseline) on one split (`val`).

    Returns this evaluation's scores (eval.json, if written, also keeps earlier ones).

    Args:
        checkpoint: a raycseg checkpoint (state.pt or its folder) or torchvision weights.
        recipe: the recipe that trained it (its model and eval sections are used).
        run_dir: where eval.json is merged; None writes nothing.
        data: segmentation shards; default `recipe.eval.data`.
        split: the split to score; no other split stands in for a missing one.
        num_classes: C; default the eval section's for its own data, else the shards'.
        protocols: CLI names (`linear-probe`, `kmeans`, `maskcontrast-kmeans`, `segmentation`);
            default the recipe's.
        baseline: `random` to also score the initial weights, `none` not to; default the
            recipe's.
        vos: VOS shards for the davis protocol; default `recipe.eval.davis.data`.
        save_predictions: davis: write every frame's predicted mask under this folder.
        suite: run every protocol of `SUITE_PROTOCOLS` the checkpoint and data support
            (`protocols` is then ignored); k-means over the 5 seeds of `SUITE_SEEDS`.
        on_message: called with each progress note (what is evaluated, what is skipped
            and why).
    """
    data = data or (recipe.eval.data if recipe.eval else None)
    # without an eval section: the papers' protocols
    section = recipe.eval or EvalSection(data=data)
    names = SUITE_PROTOCOLS if suite else (protocols or section.protocols)
    keys = list(dict.fromkeys(map(protocol_key, names)))
    baseline = (baseline or section.baseline) if baseline != "none" else None
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    scores: dict[str, Any] = {}
    if DAVIS in keys:
        on_message(f"evaluating {checkpoint} with davis")
        settings = section.davis.model_copy(update={"data": vos or section.davis.data})
        scores = davis_scores(recipe, checkpoint, settings, split, baseline, device,
                              save_predictions, run_dir, on_message)  # fmt: skip
        keys.remove(DAVIS)
    if data is None and suite:
        reason = "no segmentation data: pass --data SEG_SHARDS"
        _merge(scores, {"skipped": dict.fromkeys(keys, reason)})
        keys = []
    if not keys:
        return _finish(scores, run_dir, on_message)
    if data is None:
        raise CsegError(
            "no evaluation data: pass --data SEG_SHARDS (built with `cseg shards build --kind segmentation`)"
        )
    on_message(f"evaluating {checkpoint} with {', '.join(keys)}")
    options = {"num_classes": num_classes, "baseline": baseline, "device": device,
               "kmeans_seeds": SUITE_SEEDS if suite else (KMEANS_SEED,)}  # fmt: skip
    _merge(scores, _image_scores(checkpoint, recipe, section, keys, data, split, run_dir,
                                 options, on_message))  # fmt: skip
    return _finish(scores, run_dir, on_message)


def _image_scores(
    checkpoint, recipe, section, keys, data, split, run_dir, options, on_message
) -> dict[str, Any]:
    """The image protocols' scores on one split of segmentation shards (and eval samples)."""
    num_classes, baseline, device = options["num_classes"], options["baseline"], options["device"]
    own_data = recipe.eval is not None and data == recipe.eval.data
    num_classes = num_classes or (section.num_classes if own_data else None)
    num_classes = num_classes or num_classes_of(data)
    workers = recipe.data.loader_workers
    resized = evaluation_batches(
        data, split, input_policy="resize", input_size=section.image_size, num_workers=workers
    )
    state = _raycseg_state(checkpoint)
    backbone = build_initial_backbone(recipe)
    initial = {k: v.clone() for k, v in backbone.state_dict().items()}
    load_backbone_weights(backbone, checkpoint)
    probe = _probe_epochs(data, section, workers) if "linear_probe" in keys else None
    train = _train_batches(data, section, workers) if OVERCLUSTER in keys else None
    common = {"num_classes": num_classes, "device": device, "probe": probe,
              "probe_settings": section.linear_probe, "seed": recipe.seed,
              "train_batches": train, "overcluster_ks": section.overcluster_ks,
              "kmeans_seeds": options["kmeans_seeds"]}  # fmt: skip
    backbone_keys = [key for key in keys if key in ("linear_probe", "kmeans", OVERCLUSTER)]
    keep = EVAL_SAMPLES if run_dir is not None else 0
    scores = _backbone_scores(
        backbone, state, resized, backbone_keys, {**common, "keep_samples": keep}
    )
    samples = {key: scores[key].pop("samples", []) for key in backbone_keys if key in scores}
    if MASKCONTRAST_KMEANS in keys:
        _merge(scores, _maskcontrast_kmeans(state, resized, common))
    if SEGMENTATION in keys:
        _merge(scores, _segmentation(state, data, split, workers, common))
    inputs = {key: _resize_input(section.image_size) for key in keys}
    if SEGMENTATION in scores:
        inputs[SEGMENTATION] = _pad_input(_reco_stage(state))
    if baseline == "random" and backbone_keys:
        backbone.load_state_dict(initial)
        on_message("evaluating the random-init baseline")
        if probe is not None:  # a fresh stream: the same images in the same order
            common["probe"] = _probe_epochs(data, section, workers)
        scores["baseline_random"] = evaluate_backbone(
            backbone, val_batches=resized, protocols=backbone_keys, **common
        )
        _add_inputs(scores["baseline_random"], inputs)
    _add_inputs(scores, inputs)
    scores["data"] = data_record(data, split)
    if run_dir is not None:
        write_eval_samples(Path(run_dir), samples, scores["data"]["classes"])
    return scores


def _finish(scores: dict[str, Any], run_dir: Path | None, on_message) -> dict[str, Any]:
    """Fingerprint each protocol, say what was skipped, merge the scores into eval.json."""
    for entry in [*scores.values(), *scores.get("baseline_random", {}).values()]:
        if isinstance(entry, dict) and isinstance(entry.get("protocol"), dict):
            entry["protocol"]["fingerprint"] = protocol_fingerprint(entry["protocol"])
    for key, reason in scores.get("skipped", {}).items():
        on_message(f"{key} skipped: {reason}")
    if run_dir is not None:
        merge_eval_json(Path(run_dir) / EVAL_FILE, scores)
    return scores


def davis_scores(
    recipe: Recipe,
    checkpoint: str | Path,
    settings: DavisSection,
    split: str,
    baseline: str | None,
    device: torch.device,
    save_predictions: Path | None,
    run_dir: Path | None,
    on_message: Callable[[str], None],
) -> dict[str, Any]:
    """`{"davis": ...}` (and `{"baseline_random": {"davis": ...}}`), or `skipped` without data.

    With a `run_dir`, the first sequence's propagated masks are drawn into its `DAVIS_STRIP`.
    """
    if settings.data is None:
        reason = "davis needs VOS shards: pass --data VOS_SHARDS (`cseg shards build --kind vos`)"
        return {"skipped": {DAVIS: reason}}
    backbone = build_initial_backbone(recipe)
    initial = {k: v.clone() for k, v in backbone.state_dict().items()}
    load_backbone_weights(backbone, checkpoint)
    record = {**davis_record(settings, backbone.output_stride), "data": settings.data,
              "split": split}  # fmt: skip
    run = partial(run_davis_protocol, root=settings.data, split=split, settings=settings,
                  device=device, on_message=on_message)  # fmt: skip
    strip = Path(run_dir) / DAVIS_STRIP if run_dir is not None else None
    scores = {DAVIS: {**run(backbone, save_predictions=save_predictions, strip=strip),
                      "protocol": record}}  # fmt: skip
    if baseline == "random":
        on_message("evaluating the random-init baseline with davis")
        backbone.load_state_dict(initial)
        scores["baseline_random"] = {DAVIS: {**run(backbone), "protocol": record}}
    return scores


def _raycseg_state(checkpoint: str | Path) -> dict[str, Any] | None:
    """The checkpoint's state when it is a raycseg checkpoint (None for plain weights)."""
    try:
        state = load_state(checkpoint)
    except CsegError:
        return None
    return state if isinstance(state, dict) and state.get("format") == "raycseg" else None


def _probe_epochs(data: str, section: EvalSection, workers: int):
    """The probe's training epochs, or None when the shards have no `train` split."""
    if not _has_train_split(data):
        return None
    return probe_training_epochs(
        data,
        image_size=section.image_size,
        batch_size=section.linear_probe.batch_size,
        augment=section.linear_probe.augment,
        num_workers=workers,
    )


def _train_batches(data: str, section: EvalSection, workers: int):
    """The train split at the resize input (overcluster fits on it), or None without one."""
    if not _has_train_split(data):
        return None
    return evaluation_batches(data, "train", input_policy="resize",
                              input_size=section.image_size, num_workers=workers)  # fmt: skip


def _has_train_split(data: str) -> bool:
    return "train" in read_manifest(data).get("splits", {})


def _backbone_scores(backbone, state, batches, keys, common) -> dict[str, Any]:
    """linear-probe, kmeans and overcluster (a MaskContrast checkpoint's probe: its decoder)."""
    if not keys:
        return {}
    encoder = _maskcontrast_encoder(state) if "linear_probe" in keys else None
    if encoder is None:
        return evaluate_backbone(backbone, val_batches=batches, protocols=keys, **common)
    scores = evaluate_backbone(
        encoder,
        val_batches=batches,
        protocols=["linear_probe"],
        probe_features=DecoderFeatures(encoder),
        feature_source="MaskContrast decoder features (256-d)",
        **common,
    )
    rest = [key for key in keys if key != "linear_probe"]
    if rest:
        _merge(scores, evaluate_backbone(backbone, val_batches=batches, protocols=rest, **common))
    return scores


def _maskcontrast_encoder(state):
    """A maskcontrast checkpoint's query encoder, else None."""
    if state is None:
        return None
    try:
        return load_query_encoder(state)
    except ProtocolSkipped:
        return None


def _maskcontrast_kmeans(state, batches, common) -> dict[str, Any]:
    try:
        encoder = load_query_encoder(_require_state(state, MASKCONTRAST_KMEANS))
    except ProtocolSkipped as reason:
        return {"skipped": {MASKCONTRAST_KMEANS: str(reason)}}
    return evaluate_backbone(
        encoder, val_batches=batches, protocols=[MASKCONTRAST_KMEANS], embed_fn=encoder,
        **{**common, "probe": None},
    )  # fmt: skip


def _segmentation(state, data, split, workers, common) -> dict[str, Any]:
    """ReCo's segmentation protocol on full-resolution, padded inputs."""
    try:
        segmenter = load_segmenter(_require_state(state, SEGMENTATION))
    except ProtocolSkipped as reason:
        return {"skipped": {SEGMENTATION: str(reason)}}
    batches = evaluation_batches(
        data, split, input_policy="pad", input_size=_reco_stage(state).data.val_pad_to,
        num_workers=workers,
    )  # fmt: skip
    return evaluate_backbone(
        segmenter, val_batches=batches, protocols=[SEGMENTATION],
        segment_fn=lambda images: segmenter(images)[0], **{**common, "probe": None},
    )  # fmt: skip


def _require_state(state, key: str) -> dict[str, Any]:
    if state is None:
        raise ProtocolSkipped(f"{key} needs a raycseg checkpoint, not plain backbone weights")
    return state


def _reco_stage(state) -> StageBase:
    return checkpoint_stage(state, "reco")


def _resize_input(size: int) -> str:
    return f"each image resized to {size}x{size} (bicubic); scored at each mask's own size"


def _pad_input(stage: StageBase) -> str:
    pad = stage.data.val_pad_to
    target = f"at least {pad}x{pad}" if pad else "the batch's largest image"
    return (
        f"each image at full resolution, reflect-padded bottom/right to {target}; "
        "scored at each mask's own size"
    )


def _add_inputs(scores: dict[str, Any], inputs: dict[str, str]) -> None:
    for key, value in scores.items():
        if key in inputs and isinstance(value, dict) and "protocol" in value:
            value["protocol"]["input"] = inputs[key]


def _merge(scores: dict[str, Any], more: dict[str, Any]) -> None:
    skipped = {**scores.get("skipped", {}), **more.pop("skipped", {})}
    baseline = {**scores.get("baseline_random", {}), **more.pop("baseline_random", {})}
    scores.update(more)
    if baseline:
        scores["baseline_random"] = baseline
    if skipped:
        scores["skipped"] = skipped
