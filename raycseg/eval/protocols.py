"""Run the requested evaluation protocols on one backbone, in eval.json's shape.

CLI names are hyphenated (``linear-probe``, ``kmeans``, ``maskcontrast-kmeans``,
``segmentation``); the result keys are underscored (``linear_probe`` ...). Every
result holds ``pixels_scored`` and a ``protocol`` record of what ran (the
caller adds what the model saw, ``input``). A protocol that cannot run on the
given data is left out of the scores and its reason is listed under
``"skipped"`` (so merging into an existing eval.json never overwrites a score
with a skip).

Which protocol is whose:

* ``linear-probe``: MaskContrast's linear protocol (docs/methods/maskcontrast.md §6.1) by
  default; a recipe may shorten it, and ``protocol.differs_from_paper`` says how.
* ``kmeans``: the project's own pixel k-means
  (docs/methods/README.md#evaluation-protocols); no paper uses it.
* ``maskcontrast-kmeans``: MaskContrast's prototype k-means (docs/methods/maskcontrast.md §6.2).
* ``segmentation``: ReCo's evaluation of its own segmenter (reco.md §7).
* ``overcluster``: k-means with K in 100, 300, 500 matched many-to-one
  (`raycseg.eval.overcluster`), as unsupervised segmentation work reports it.
* ``davis``: CRW's label propagation scored with DAVIS-2017 J&F, on VOS shards
  (`raycseg.eval.davis`; not run by `evaluate_backbone`, which scores images).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from raycseg.config.eval_schema import DEFAULT_PROTOCOLS, LinearProbeSection
from raycseg.errors import CsegError
from raycseg.eval.batches import ProbeEpochs
from raycseg.eval.cluster import (
    KMEANS_ITERS,
    KMEANS_RESTARTS,
    KMEANS_SEED,
    MASKCONTRAST_KMEANS_ITERS,
    MASKCONTRAST_SEEDS,
    EmbedFn,
    run_kmeans_protocol,
    run_maskcontrast_kmeans,
)
from raycseg.eval.features import Batch, frozen, require_reiterable
from raycseg.eval.metrics import ProtocolSkipped
from raycseg.eval.overcluster import OVERCLUSTER_KS, OVERCLUSTER_SEEDS, run_overcluster_protocol
from raycseg.eval.probe import run_linear_probe
from raycseg.eval.scoring import package_versions
from raycseg.eval.segmentation import SegmentFn, run_segmentation_protocol

PROTOCOLS = {
    "linear-probe": "linear_probe",
    "kmeans": "kmeans",
    "maskcontrast-kmeans": "maskcontrast_kmeans",
    "segmentation": "segmentation",
    "overcluster": "overcluster",
    "davis": "davis",  # on video, not images: raycseg.eval.davis
}
PAPER_PROBE = LinearProbeSection()


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
    val_batches: Iterable[Batch],
    num_classes: int,
    device: str | torch.device,
    protocols: Sequence[str] = DEFAULT_PROTOCOLS,
    probe: ProbeEpochs | None = None,
    probe_settings: LinearProbeSection = PAPER_PROBE,
    seed: int = 0,
    probe_features: nn.Module | None = None,
    feature_source: str = "backbone",
    embed_fn: EmbedFn | None = None,
    segment_fn: SegmentFn | None = None,
    keep_samples: int = 0,
    train_batches: Iterable[Batch] | None = None,
    overcluster_ks: Sequence[int] = OVERCLUSTER_KS,
    kmeans_seeds: Sequence[int] = (KMEANS_SEED,),
) -> dict:
    """Score a frozen backbone with each protocol.

    Args:
        backbone: the frozen module (moved to `device`; its train flag is restored).
        val_batches: evaluation batches to score on (re-iterable; `raycseg.eval.scoring`).
        num_classes: C, background included.
        device: where features, k-means and the probe run.
        protocols: CLI names or eval.json keys.
        probe: the linear probe's training epochs; None skips the probe.
        probe_settings: the linear probe's settings (default: the paper's).
        seed: the linear probe's seed (k-means keeps its pinned seed 0).
        probe_features: a module inside `backbone` whose output the linear probe reads
            (default: the backbone's own output); MaskContrast gives its 256-d decoder
            features. Pixel k-means always clusters the backbone's output.
        feature_source: what the linear probe reads, for the protocol record.
        embed_fn: (embeddings, saliency logits) for ``maskcontrast-kmeans``; it
            runs with `backbone` frozen, so pass the module that owns it (e.g. a
            `MaskContrastHead` as both `backbone` and `embed_fn`).
        segment_fn: class logits of normalised images for ``segmentation`` (a trained
            segmenter); like `embed_fn`, it runs with `backbone` frozen.
        keep_samples: the linear probe and k-means also return their predictions of
            this many images under ``"samples"`` (not JSON: pop them before writing).
        train_batches: the train split at the same input (re-iterable), which
            ``overcluster`` fits on; None skips it.
        overcluster_ks: ``overcluster``'s cluster counts.
        kmeans_seeds: pixel k-means runs once per seed (the mean and std when several).

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
            probe,
            val_batches,
            num_classes,
            probe_settings,
            device,
            seed,
            probe_features,
            keep_samples,
        ),  # fmt: skip
        "kmeans": lambda: run_kmeans_protocol(
            backbone,
            val_batches,
            num_classes,
            device=device,
            seeds=kmeans_seeds,
            keep_samples=keep_samples,
        ),  # fmt: skip
        "maskcontrast_kmeans": lambda: _maskcontrast_kmeans(
            backbone, embed_fn, val_batches, num_classes, device
        ),
        "segmentation": lambda: _segmentation(
            backbone, segment_fn, val_batches, num_classes, device
        ),
        "overcluster": lambda: _overcluster(
            backbone, train_batches, val_batches, num_classes, device, overcluster_ks
        ),
    }
    records = {
        "linear_probe": lambda: linear_probe_record(probe_settings, feature_source, seed),
        "kmeans": lambda: kmeans_record(num_classes, kmeans_seeds),
        "maskcontrast_kmeans": lambda: maskcontrast_kmeans_record(num_classes),
        "segmentation": segmentation_record,
        "overcluster": overcluster_record,
    }
    scores: dict = {}
    skipped: dict[str, str] = {}
    for key in keys:
        try:
            scores[key] = {**runners[key](), "protocol": records[key]()}
        except ProtocolSkipped as reason:
            skipped[key] = str(reason)
    if skipped:
        scores["skipped"] = skipped
    return scores


def linear_probe_record(settings: LinearProbeSection, features: str, seed: int) -> dict:
    """What the linear probe ran, and where it differs from MaskContrast's protocol."""
    ran = settings.model_dump()
    paper = PAPER_PROBE.model_dump()
    return {
        "name": "MaskContrast linear protocol (maskcontrast.md §6.1)",
        "features": features,
        "classifier": "1x1 conv, N(0, 0.01), frozen BatchNorm and dropout upstream",
        "optimizer": f"SGD lr {settings.lr}, momentum {settings.momentum}, "
        f"weight decay {settings.weight_decay}, lr x0.1 after epochs {settings.lr_decay_epochs}",
        **ran,
        "selection": "best epoch on the scored split, as the official code"
        if settings.select_best
        else "last epoch",
        "seed": seed,
        "differs_from_paper": {
            key: {"ran": value, "paper": paper[key]}
            for key, value in ran.items()
            if value != paper[key]
        },
        "versions": package_versions(),
    }


def kmeans_record(num_classes: int, seeds: Sequence[int] = (KMEANS_SEED,)) -> dict:
    """What the project's pixel k-means ran, for eval.json's `protocol` record."""
    return {
        "name": "raycseg pixel k-means (the project's own protocol, not a paper's)",
        "features": "backbone, L2-normalised per pixel, not centred, at the feature grid",
        "k": num_classes,
        "init": "k-means++",
        "restarts": KMEANS_RESTARTS,
        "iterations": KMEANS_ITERS,
        "seeds": list(seeds),
        "matching": "Hungarian on the split's pixel counts, ids nearest-resized to each mask",
        "versions": package_versions(),
    }


def maskcontrast_kmeans_record(num_classes: int) -> dict:
    """What MaskContrast's prototype k-means ran (docs/methods/maskcontrast.md §6.2)."""
    return {
        "name": "MaskContrast prototype k-means (maskcontrast.md §6.2)",
        "features": "one prototype per image: saliency-logit-weighted raw embeddings",
        "pca": "32 whitened components, fit on every image's prototype",
        "k": num_classes - 1,
        "init": "k-means++ (official: scikit-learn MiniBatchKMeans)",
        "restarts": KMEANS_RESTARTS,
        "iterations": MASKCONTRAST_KMEANS_ITERS,
        "seeds": list(MASKCONTRAST_SEEDS),
        "matching": "Hungarian on the split's IoU matrix, background included",
        "versions": package_versions(),
    }


def overcluster_record() -> dict:
    """What overclustering ran (raycseg.eval.overcluster)."""
    return {
        "name": "overclustering: k-means with K >> classes, many-to-one (as Leopart reports it)",
        "features": "backbone, L2-normalised per pixel, not centred, at the feature grid",
        "fit": "k-means++ with one seeding per seed, on every train-split feature pixel",
        "iterations": KMEANS_ITERS,
        "seeds": list(OVERCLUSTER_SEEDS),
        "matching": "each cluster to the class it overlaps most on the train split, at each "
        "mask's own size; val scored at each mask's own size",
        "versions": package_versions(),
    }


def segmentation_record() -> dict:
    """What ReCo's segmentation protocol ran (reco.md §7)."""
    return {
        "name": "ReCo segmentation (the model's own predictions, reco.md §7)",
        "network": "the teacher in semi/partial mode, the student in supervised mode",
        "upsampling": "bilinear (align_corners) to the input size, argmax, cropped to each mask",
        "versions": package_versions(),
    }


def _linear_probe(
    backbone, probe, val_batches, num_classes, settings, device, seed, features, keep_samples
):
    if probe is None:
        raise ProtocolSkipped("the linear probe needs a labelled training split")
    return run_linear_probe(
        backbone,
        probe,
        val_batches,
        num_classes,
        settings=settings,
        device=device,
        seed=seed,
        feature_fn=features,
        keep_samples=keep_samples,
    )


def _overcluster(backbone, train_batches, val_batches, num_classes, device, ks) -> dict:
    if train_batches is None:
        raise ProtocolSkipped("overcluster fits its clusters on a train split; the data has none")
    return run_overcluster_protocol(
        backbone, train_batches, val_batches, num_classes, device=device, ks=ks
    )


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
