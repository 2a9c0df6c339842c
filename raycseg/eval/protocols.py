"""Run the requested evaluation protocols on one backbone, in eval.json's shape (CONTRACTS.md §3).

CLI names are hyphenated (``linear-probe``, ``kmeans``, ``maskcontrast-kmeans``,
``segmentation``); the result keys are underscored (``linear_probe`` ...). A protocol that cannot
run on the given data is left out of the scores and its reason is listed under
``"skipped"`` (so merging into an existing eval.json never overwrites a score
with a skip).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from raycseg.errors import CsegError
from raycseg.eval.cluster import EmbedFn, run_kmeans_protocol, run_maskcontrast_kmeans
from raycseg.eval.features import Batch, FeatureFn, frozen, require_reiterable
from raycseg.eval.metrics import ProtocolSkipped
from raycseg.eval.probe import run_linear_probe
from raycseg.eval.segmentation import SegmentFn, run_segmentation_protocol

PROTOCOLS = {
    "linear-probe": "linear_probe",
    "kmeans": "kmeans",
    "maskcontrast-kmeans": "maskcontrast_kmeans",
    "segmentation": "segmentation",
}
DEFAULT_PROTOCOLS = ("linear-probe", "kmeans")


def protocol_key(name: str) -> str:
    """The eval.json key of a protocol given by its CLI name (or already by its key).

    Raises:
        CsegError: unknown protocol.
    """
    if name in PROTOCOLS:
        return PROTOCOLS[name]
    if name in PROTOCOLS.values():
        return name
    raise CsegError(f"unknown evaluation protocol {name!r}; use one of {', '.join(PROTOCOLS)}")


def evaluate_backbone(
    backbone: nn.Module,
    *,
    train_batches: Iterable[Batch] | None,
    val_batches: Iterable[Batch],
    num_classes: int,
    device: str | torch.device,
    protocols: Sequence[str] = DEFAULT_PROTOCOLS,
    probe_steps: int = 300,
    probe_lr: float = 1e-2,
    probe_batch_size: int = 128,
    seed: int = 0,
    feature_fn: FeatureFn | None = None,
    embed_fn: EmbedFn | None = None,
    segment_fn: SegmentFn | None = None,
) -> dict:
    """Score a frozen backbone with each protocol.

    Args:
        backbone: the frozen module (moved to `device`; its train flag is restored).
        train_batches: labelled batches for the linear probe (re-iterable); None
            skips the probe.
        val_batches: labelled batches to score on (re-iterable).
        num_classes: C, background included.
        device: where features, k-means and the probe run.
        protocols: CLI names or eval.json keys.
        probe_steps: Adam steps of the linear probe.
        probe_lr: its learning rate.
        probe_batch_size: its images per step.
        seed: the linear probe's seed (k-means keeps its pinned seed 0).
        feature_fn: features to probe and cluster (default: the backbone output);
            MaskContrast passes its 256-d decoder features.
        embed_fn: (embeddings, saliency logits) for ``maskcontrast-kmeans``; it
            runs with `backbone` frozen, so pass the module that owns it (e.g. a
            `MaskContrastHead` as both `backbone` and `embed_fn`).
        segment_fn: class logits of normalised images for ``segmentation`` (a trained
            segmenter); like `embed_fn`, it runs with `backbone` frozen.

    Returns:
        ``{"linear_probe": {...}, "kmeans": {...}, ...}`` plus ``"skipped":
        {key: reason}`` when a protocol could not run.
    """
    keys = list(dict.fromkeys(protocol_key(name) for name in protocols))
    require_reiterable(val_batches, "val_batches")
    device = torch.device(device)
    runners = {
        "linear_probe": lambda: _linear_probe(
            backbone,
            train_batches,
            val_batches,
            num_classes,
            steps=probe_steps,
            lr=probe_lr,
            device=device,
            seed=seed,
            batch_size=probe_batch_size,
            feature_fn=feature_fn,
        ),
        "kmeans": lambda: run_kmeans_protocol(
            backbone, val_batches, num_classes, device=device, feature_fn=feature_fn
        ),
        "maskcontrast_kmeans": lambda: _maskcontrast_kmeans(
            backbone, embed_fn, val_batches, num_classes, device
        ),
        "segmentation": lambda: _segmentation(
            backbone, segment_fn, val_batches, num_classes, device
        ),
    }
    scores: dict = {}
    skipped: dict[str, str] = {}
    for key in keys:
        try:
            scores[key] = runners[key]()
        except ProtocolSkipped as reason:
            skipped[key] = str(reason)
    if skipped:
        scores["skipped"] = skipped
    return scores


def _linear_probe(backbone, train_batches, *args, **kwargs) -> dict:
    if train_batches is None:
        raise ProtocolSkipped("the linear probe needs a labelled training split")
    return run_linear_probe(backbone, train_batches, *args, **kwargs)


def _maskcontrast_kmeans(backbone, embed_fn, val_batches, num_classes, device) -> dict:
    if embed_fn is None:
        raise ProtocolSkipped(
            "maskcontrast-kmeans needs the MaskContrast embedding and saliency heads; "
            "evaluate a checkpoint of a maskcontrast stage"
        )
    with frozen(backbone, device):
        return run_maskcontrast_kmeans(embed_fn, val_batches, num_classes, device=device)


def _segmentation(backbone, segment_fn, val_batches, num_classes, device) -> dict:
    if segment_fn is None:
        raise ProtocolSkipped(
            "segmentation needs a trained classifier; evaluate a checkpoint of a reco stage"
        )
    with frozen(backbone, device):
        return run_segmentation_protocol(segment_fn, val_batches, num_classes, device=device)
