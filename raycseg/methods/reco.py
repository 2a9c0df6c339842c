"""ReCo: a few labels become a segmentation model (regional contrast + mean teacher).

Spec: docs/methods/reco.md (§1 network, §3 semi-supervised, §4 supervised and partial).
Per step, with B_l labelled and B_u unlabelled images per worker:

    image, label          uint8 [B_l, 3, H, W], long [B_l, H, W] (255 = void); rescaled,
                          cropped and flipped by the loader, then colour-jittered and
                          blurred here on the device (reco_mixing.photometric)
    unlabelled_image      uint8 [B_u, 3, H, W]                     (semi, partial)
    unlabelled_label      long [B_u, H, W], its sparse labels      (read in partial mode)
    student               DeepLabv3+ (or v2) -> logits [B, C, h, w], rep [B, D, h, w]
    teacher               EMA copy of the student (no gradient, train-mode BN):
                          pseudo-labels and confidences of the raw unlabelled batch,
                          upsampled (bilinear, align_corners) to H × W
    mixing                reco_mixing.augment_unlabelled: rescale-crop, ClassMix /
                          CutMix / CutOut, colour, blur, flip, jointly on image,
                          pseudo-label and confidence
    terms                 sup    CE(student logits on x_l upsampled, y_l), void ignored
                          unsup  CE on the mixed batch vs mixed pseudo-labels, each image
                                 weighted by its share of pixels with conf >= strong_threshold,
                                 averaged over the pixels with a positive loss (semi only)
                          reco   reco_loss on concat(rep_l, rep_u) with labels nearest-
                                 downsampled to h × w; unlabelled pixels count where
                                 conf >= weak_threshold; prob = softmax(student logits)
    loss                  sup + unsup + lambda_reco · reco

Supervised mode has no teacher: sup + lambda_reco · reco on the labelled batch.

Partial mode (spec §4, `train_semisup_partial.py`) is semi mode on sparsely labelled
images (`cseg shards split --partial`; both streams read them), with two changes:
on the unlabelled batch, the sparse labels (``unlabelled_label``) replace the
teacher's pseudo-labels where present, with confidence 1; on the labelled batch,
ReCo's label map is the student's own argmax with the labels overriding it, and
counts where the student's confidence is at least strong_threshold (the official
code hard-codes 0.97, the default) or a label exists. That map is built on the
representation grid (officially at crop size, then nearest-downsampled to it).

The teacher is a registered submodule (so checkpoints carry it) built as a copy of
the student in `__init__`, and synchronised from the student on the first training
forward (buffer ``teacher_synced``): the trainer loads ``init_from`` into
``.backbone`` (the student's) after building the method, so a copy taken in
`__init__` would hold other weights. `after_step(step)` moves it by EMA with decay
min(1 − 1/(step + 1), ema_decay), parameters only.

`validation_metrics` scores the teacher (semi) or the student (supervised) on the
stage's val shards and keeps the best score in the buffer ``best_val_miou``.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelSection, RecoStage
from ..data.loaders import StreamShare, build_segmentation_loader
from ..errors import CsegError, DataError
from ..eval.batches import evaluation_batches
from ..eval.features import frozen
from ..eval.metrics import IGNORE_INDEX
from ..eval.segmentation import run_segmentation_protocol
from ..losses.reco import reco_loss
from ..models import (
    DeepLabV2,
    DeepLabV3Plus,
    build_backbone,
    build_ema_copy,
    normalize_images,
    reco_ema_decay,
    update_ema,
)
from ..models.deeplab import DEEPLABV2_RATES, RECO_ASPP_RATES, scale_aspp_rates
from ..shards.manifest import count_samples, list_shard_urls
from .common import method_from_checkpoint, training_split, training_urls
from .interface import StepOutput
from .reco_mixing import augment_unlabelled, photometric

# Feature-map sizes the spec's rates were chosen for: a 321 crop at stride 16 (v3+) and at
# stride 8 (v2). The tiny CPU backbone's small maps get rates scaled down to their size.
_RATES_REFERENCE_SIZE = {"deeplabv3p": 21, "deeplabv2": 41}
_SPEC_RATES = {"deeplabv3p": RECO_ASPP_RATES, "deeplabv2": DEEPLABV2_RATES}


def build_segmenter(stage: RecoStage, model: ModelSection) -> nn.Module:
    """The student network: DeepLabv3+ or DeepLabv2 on the recipe's backbone.

    A ResNet gets the spec's rates (v3+: ASPP 6/12/18 at output stride 16; v2:
    6/12/18/24 at output stride 8, which the recipe schema enforces). The tiny
    backbone's rates shrink in proportion to its smaller feature maps
    (`scale_aspp_rates`), else most taps would land in the padding.
    """
    if stage.num_classes is None:
        raise CsegError(
            f"stages.{stage.name}.num_classes is not set; `cseg pretrain` takes it from the "
            "manifest of data.train (raycseg.train.preflight.check_run_data), or set it"
        )
    backbone = build_backbone(
        model.backbone,
        output_stride=model.output_stride,
        width=model.width,
        init_from=model.init_from,
    )
    rates = _SPEC_RATES[stage.decoder]
    feature_size = math.ceil(stage.data.image_size / backbone.output_stride)
    reference = _RATES_REFERENCE_SIZE[stage.decoder]
    if backbone.name == "tiny" and feature_size < reference:
        rates = scale_aspp_rates(rates, feature_size, reference)
    if stage.decoder == "deeplabv3p":
        return DeepLabV3Plus(backbone, stage.num_classes, stage.rep_dim, aspp_rates=rates)
    return DeepLabV2(backbone, stage.num_classes, stage.rep_dim, rates=rates)


class ReCo(nn.Module):
    """Student (+ EMA teacher in semi mode) trained with CE, confidence-weighted CE and ReCo."""

    def __init__(self, stage: RecoStage, model: ModelSection):
        super().__init__()
        self.stage = stage
        self.find_unused_parameters = False
        self.semi = stage.mode in ("semi", "partial")
        self.partial = stage.mode == "partial"
        self.student = build_segmenter(stage, model)
        if self.semi:
            self.teacher = build_ema_copy(self.student)
            self.register_buffer("teacher_synced", torch.zeros((), dtype=torch.bool))
            self._teacher_known_synced = False
        self.register_buffer("best_val_miou", torch.full((), -1.0, dtype=torch.float64))

    @property
    def backbone(self) -> nn.Module:
        """The student's backbone (what `init_from` fills and checkpoints save)."""
        return self.student.backbone

    # ------------------------------------------------------------------------- training

    def forward(self, batch: dict[str, torch.Tensor]) -> StepOutput:
        """One step's loss: {"loss": 0-dim, "terms": {"sup", ["unsup",] "reco"}}."""
        labels = batch["label"].long()
        images_l = photometric(batch["image"].float() / 255.0, self.stage.data.color_jitter)
        logits_l, rep_l = self.student(normalize_images(images_l))
        sup = F.cross_entropy(
            _upsample(logits_l, labels.shape[-2:]), labels, ignore_index=IGNORE_INDEX
        )
        small_l = _downsample_labels(labels, rep_l.shape[-2:])
        if not self.semi:
            reco = self._reco(rep_l, small_l, small_l != IGNORE_INDEX, logits_l)
            return {
                "loss": sup + self.stage.lambda_reco * reco,
                "terms": {"sup": sup, "reco": reco},
            }

        self._sync_teacher_once()
        sparse_u = batch["unlabelled_label"].long() if self.partial else None
        u_images, u_labels, u_confidence = self._mixed_pseudo_labels(
            batch["unlabelled_image"], sparse_u
        )
        logits_u, rep_u = self.student(normalize_images(u_images))
        unsup = confidence_weighted_ce(
            _upsample(logits_u, u_labels.shape[-2:]),
            u_labels,
            u_confidence,
            self.stage.strong_threshold,
        )
        small_u = _downsample_labels(u_labels, rep_u.shape[-2:])
        confident = _downsample_labels(u_confidence, rep_u.shape[-2:]) >= self.stage.weak_threshold
        if self.partial:
            small_l, valid_l = student_labels_under_sparse(
                logits_l, small_l, self.stage.strong_threshold
            )
        else:
            valid_l = small_l != IGNORE_INDEX
        reco = self._reco(
            torch.cat([rep_l, rep_u]),
            torch.cat([small_l, small_u]),
            torch.cat([valid_l, confident & (small_u != IGNORE_INDEX)]),
            torch.cat([logits_l, logits_u]),
        )
        loss = sup + unsup + self.stage.lambda_reco * reco
        return {"loss": loss, "terms": {"sup": sup, "unsup": unsup, "reco": reco}}

    def _reco(self, rep, labels, valid, logits) -> torch.Tensor:
        if self.stage.lambda_reco == 0:
            return rep.sum() * 0.0
        return reco_loss(
            rep,
            labels,
            valid,
            torch.softmax(logits.detach().float(), dim=1),
            strong_threshold=self.stage.strong_threshold,
            temperature=self.stage.temperature,
            num_queries=self.stage.num_queries,
            num_negatives=self.stage.num_negatives,
        )

    @torch.no_grad()
    def _mixed_pseudo_labels(self, images: torch.Tensor, sparse: torch.Tensor | None = None):
        """Teacher pseudo-labels of raw images (sparse labels win), then the joint augmentation."""
        logits, _ = self.teacher(normalize_images(images))
        prob = torch.softmax(_upsample(logits, images.shape[-2:]).float(), dim=1)
        confidence, pseudo = prob.max(dim=1)
        if sparse is not None:
            labelled = sparse != IGNORE_INDEX
            pseudo = torch.where(labelled, sparse, pseudo)
            confidence = confidence.masked_fill(labelled, 1.0)
        return augment_unlabelled(
            images.float() / 255.0,
            pseudo,
            confidence,
            mix=self.stage.mix,
            scale_range=self.stage.data.scale_range,
            color_jitter=self.stage.data.color_jitter,
        )

    @torch.no_grad()
    def _sync_teacher_once(self) -> None:
        """Copy the student (with its loaded weights) into the teacher before its first use."""
        if self._teacher_known_synced:  # the buffer is read once, not on every step
            return
        if not bool(self.teacher_synced):
            self.teacher.load_state_dict(self.student.state_dict())
            self.teacher_synced.fill_(True)
        self._teacher_known_synced = True

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        """EMA teacher update after the optimizer step (semi mode)."""
        if self.semi:
            self._sync_teacher_once()
            update_ema(self.teacher, self.student, reco_ema_decay(step, self.stage.ema_decay))

    def training_loader(self, share: StreamShare):
        """Labelled batches (and, semi-supervised, unlabelled ones beside them), split by rank."""
        return build_reco_loader(self.stage, share)

    # ------------------------------------------------------------------------- validation

    @torch.no_grad()
    def validation_metrics(self, device: torch.device) -> dict[str, float]:
        """Validation mIoU of the teacher (semi) or the student (supervised).

        Scored on the `val` split of the stage's val shards, at full resolution (no
        other split stands in for it).

        Returns:
            {"val_miou": this evaluation, "best_val_miou": the best so far}.
        """
        data = self.stage.data
        batches = evaluation_batches(  # full resolution, as the official code validates
            data.val, "val", input_policy="pad", input_size=data.val_pad_to
        )
        with frozen(self.segmenter, device) as network:
            logits = lambda images: network(images)[0]  # noqa: E731 (the network also returns rep)
            scores = run_segmentation_protocol(
                logits, batches, self.stage.num_classes, device=device
            )
        self.best_val_miou.fill_(max(float(self.best_val_miou), scores["miou"]))
        return {"val_miou": scores["miou"], "best_val_miou": float(self.best_val_miou)}

    def is_better(self, metrics: dict[str, float]) -> bool:
        """True when this validation is the best so far (`<stage>/best` keeps that model)."""
        return metrics["val_miou"] == metrics["best_val_miou"]

    @property
    def segmenter(self) -> nn.Module:
        """The network that is evaluated and kept: the teacher (semi, partial) or the student."""
        return self.teacher if self.semi else self.student


def load_segmenter(state: dict) -> nn.Module:
    """The evaluated network of a loaded reco checkpoint, in eval mode on the CPU.

    Args:
        state: a loaded checkpoint (`raycseg.train.checkpoint.load_state`) with keys
            "model", "recipe" and optionally "stage".

    Raises:
        ProtocolSkipped: the checkpoint is not of a reco stage.
        CsegError: its weights do not fit the architecture its recipe describes.
    """
    needs = "segmentation needs the trained classifier"
    method = method_from_checkpoint(state, ReCo, "reco", needs)
    return method.segmenter.eval()


def confidence_weighted_ce(
    logits: torch.Tensor, target: torch.Tensor, confidence: torch.Tensor, threshold: float
) -> torch.Tensor:
    """ReCo's unsupervised loss on the mixed batch.

    Args:
        logits: float [B, C, H, W].
        target: long [B, H, W] (255 = none).
        confidence: float [B, H, W].
        threshold: strong_threshold.

    Returns:
        0-dim: per-pixel CE times η_b = #(conf >= threshold) / #(valid) of its image,
        averaged over the pixels whose CE is positive (0, graph-connected, if none).
    """
    valid = (target != IGNORE_INDEX).flatten(1).sum(dim=1).clamp_min(1)
    weight = (confidence >= threshold).flatten(1).sum(dim=1) / valid
    loss = F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX, reduction="none")
    positive = loss > 0
    weighted = loss * weight.view(-1, 1, 1)
    return (weighted * positive).sum() / positive.sum().clamp_min(1)


@torch.no_grad()
def student_labels_under_sparse(
    logits: torch.Tensor, sparse: torch.Tensor, threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Partial mode's ReCo labels of the labelled batch.

    Args:
        logits: float [B, C, h, w], the student's.
        sparse: long [B, h, w] (255 = no label).
        threshold: strong_threshold.

    Returns:
        labels long [B, h, w]: the sparse label where there is one, else the student's
        argmax; valid bool [B, h, w]: a label, or the student's confidence >= threshold.
    """
    confidence, argmax = torch.softmax(logits.float(), dim=1).max(dim=1)
    labelled = sparse != IGNORE_INDEX
    return torch.where(labelled, sparse, argmax), labelled | (confidence >= threshold)


def _upsample(logits: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=True)


def _downsample_labels(values: torch.Tensor, size) -> torch.Tensor:
    """Nearest-neighbour resize of [B, H, W] labels or confidences to [B, *size]."""
    resized = F.interpolate(values[:, None].float(), size=tuple(size), mode="nearest")[:, 0]
    return resized.to(values.dtype)


# ----------------------------------------------------------------------------- data


class SemiSupervisedStream:
    """Zip the labelled and unlabelled loaders into one batch dict per step."""

    def __init__(self, labelled, unlabelled):
        self.labelled, self.unlabelled = labelled, unlabelled

    def __iter__(self):
        for labelled, unlabelled in zip(self.labelled, self.unlabelled, strict=False):
            yield {
                "image": labelled["image"],
                "label": labelled["label"],
                "unlabelled_image": unlabelled["image"],
                "unlabelled_label": unlabelled["label"],  # used in partial mode
                "skipped_corrupt": int(labelled.get("skipped_corrupt", 0))
                + int(unlabelled.get("skipped_corrupt", 0)),
            }


def build_reco_loader(stage: RecoStage, share: StreamShare):
    """The stage's training stream.

    Supervised: {"image", "label"} batches of `data.train` (strong augmentation:
    random rescale in `scale_range`, crop, flip). Semi and partial: the same, zipped
    with `data.unlabelled` batches (crop only; the method augments them after the
    teacher has labelled them) as {"image", "label", "unlabelled_image",
    "unlabelled_label", "skipped_corrupt"}. Both streams are split by rank, then by
    loader worker.
    """
    urls, per_rank = training_urls(stage.data, share.world_size)
    sizes = {"batch_size": stage.data.batch_size, "crop_size": stage.data.image_size}
    labelled = build_segmentation_loader(
        urls,
        share,
        scale_range=stage.data.scale_range,
        photometric=False,  # on the device, in forward()
        samples_per_rank=per_rank,
        **sizes,
    )
    if stage.mode == "supervised":
        return labelled
    if stage.data.unlabelled is None:
        raise DataError(
            f"stages.{stage.name}.data.unlabelled is not set; point it at segmentation shards "
            f"(e.g. the unlabelled/ set of `cseg shards split`, or in partial mode the same "
            f"labelled/ set as data.train) or set mode: supervised"
        )
    split = training_split(stage.data.unlabelled)
    unlabelled_count = count_samples(stage.data.unlabelled, split)
    unlabelled = build_segmentation_loader(
        list_shard_urls(stage.data.unlabelled, split),
        replace(share, seed=share.seed + 1),
        crop_only=True,
        samples_per_rank=max(unlabelled_count // share.world_size, 1),
        **sizes,
    )
    return SemiSupervisedStream(labelled, unlabelled)
