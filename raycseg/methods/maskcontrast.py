"""MaskContrast: salient query pixels contrasted with the key view's object prototypes.

Spec: docs/methods/maskcontrast.md (the code's layout: docs/maskcontrast.md). Per
step, with B images per worker and W workers:

    query, key            uint8 [B, 3, H, W]  two random views of each image
    query_mask, key_mask  bool  [B, H, W]     their saliency masks
    query encoder         backbone + DeepLabv3 head -> embeddings [B, D, h, w],
                          saliency logits [B, h, w]   (trained)
    key encoder           momentum copy of the query encoder (no gradient) -> [B, D, h, w]
    loss                  maskcontrast_loss(query embeddings, query mask, key embeddings,
                          key mask, queue [K, D]) + saliency_weight · saliency BCE
    queue                 FIFO of the prototypes of earlier steps, from every worker

`loss_resolution` picks where the loss is computed: ``full`` upsamples the
embeddings and saliency logits bilinearly to H×W and uses every salient input
pixel as an anchor (the official code); ``feature`` keeps them at h×w and
downsamples the masks instead (`downsample_mask`: a cell is salient when at
least half of it is), with 64× fewer anchors at stride 8. docs/maskcontrast.md
compares the two.

`freeze_early_layers` fixes the backbone's conv1, bn1, layer1 and layer2 in both
encoders (no gradient, BatchNorm kept in eval mode whatever `train()` is asked):
the official setting for an ImageNet-supervised init (spec §3); off for
self-supervised inits such as CACL's.

The key encoder. It is a deep copy of the query encoder held in this module (so
checkpoints carry it), synchronised from the query encoder on the first
training forward (the buffer ``key_synced`` says whether that happened). The
trainer loads ``init_from`` (e.g. CACL's checkpoint) into ``.backbone`` *after*
building the method, so a copy taken in ``__init__`` would hold the random
weights; the first forward copies the loaded weights instead, and a resumed run
restores the copy and the flag from its checkpoint. Every later training forward
first moves the copy by EMA, θ_k ← m·θ_k + (1 − m)·θ_q (parameters only), and
then encodes the key view (spec §4 step 3).

BatchNorm under DDP: shuffle-BN, as MoCo and the official code do. The query
encoder keeps ordinary per-worker BatchNorm (DDP's behaviour). The key views are
all-gathered (as uint8), permuted by one permutation that rank 0 draws and
broadcasts, and each worker encodes its slice of the permuted global batch; the
embeddings are all-gathered back and un-permuted. A worker's key batch statistics
then come from other images than its query batch's, so BN cannot leak which key
belongs with which query. SyncBatchNorm would also prevent the leak but
synchronises every BN layer of both encoders forward and backward; shuffle-BN
costs two all-gathers on the key path only and keeps parity with the official
code. With one worker (or no process group) there is nothing to shuffle with, and
the key batch is encoded as it is, as the official code does on one GPU.

The queue. A registered buffer [K, D] (so it is checkpointed), initialised with
random unit vectors. After the loss, the prototypes of every worker are
all-gathered [W·B, D] and written at the pointer, which advances by the global
batch modulo K (the recipe checks that K is a multiple of the global batch;
with elastic training a smaller world just wraps). A dropped image (empty mask)
enqueues a zero row, which the loss ignores. In-batch prototypes stay local.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..config import MaskContrastStage, ModelSection
from ..data.loaders import StreamShare, build_saliency_view_loader
from ..distributed import all_gather_no_grad, get_rank, get_world_size
from ..eval.batches import evaluation_batches, num_classes_of
from ..eval.cluster import run_kmeans_protocol, run_maskcontrast_kmeans
from ..eval.features import frozen
from ..eval.metrics import ProtocolSkipped
from ..losses.maskcontrast import downsample_mask, maskcontrast_loss, saliency_bce_loss
from ..models import (
    MaskContrastHead,
    build_backbone,
    build_ema_copy,
    normalize_images,
    scale_aspp_rates,
    update_ema,
)
from ..models.deeplab import MASKCONTRAST_ASPP_RATES
from .common import enqueue, method_from_checkpoint, training_urls
from .interface import StepOutput

# The official ASPP rates 12/24/36 are set for 28×28 feature maps (224 crops at stride 8).
REFERENCE_FEATURE_SIZE = 28
EARLY_LAYERS = ("conv1", "bn1", "layer1", "layer2")


class MaskContrast(nn.Module):
    """Query encoder (backbone + MaskContrast head), its momentum key copy and the queue.

    Args:
        stage: the stage section (temperature, queue_size, momentum, embedding_dim,
            saliency_weight, loss_resolution, data.image_size).
        model: the recipe's model section (backbone name, stride, width, init_from).

    Attributes:
        query_encoder: the trained `MaskContrastHead`.
        key_encoder: its momentum copy (parameters need no gradient).
        queue: float [K, D] buffer of earlier prototypes; queue_pointer: long 0-dim.
    """

    def __init__(self, stage: MaskContrastStage, model: ModelSection):
        super().__init__()
        self.stage = stage
        self.find_unused_parameters = False
        backbone = build_backbone(
            model.backbone,
            output_stride=model.output_stride,
            width=model.width,
            init_from=model.init_from,
        )
        feature_size = max(1, stage.data.image_size // backbone.output_stride)
        rates = scale_aspp_rates(MASKCONTRAST_ASPP_RATES, feature_size, REFERENCE_FEATURE_SIZE)
        self.query_encoder = MaskContrastHead(backbone, stage.embedding_dim, aspp_rates=rates)
        self.frozen_layers = EARLY_LAYERS if stage.freeze_early_layers else ()
        for name in self.frozen_layers:
            getattr(backbone, name).requires_grad_(False)
        self.key_encoder = build_ema_copy(self.query_encoder)
        self.temperature = stage.temperature
        self.momentum = stage.momentum
        self.loss_resolution = stage.loss_resolution
        self.queue_size = stage.queue_size
        self.register_buffer("key_synced", torch.zeros((), dtype=torch.bool))
        self._key_known_synced = False
        self.register_buffer(
            "queue", F.normalize(torch.randn(stage.queue_size, stage.embedding_dim), dim=1)
        )
        self.register_buffer("queue_pointer", torch.zeros((), dtype=torch.long))

    @property
    def backbone(self) -> nn.Module:
        """The query encoder's backbone (what `init_from` fills and checkpoints export)."""
        return self.query_encoder.backbone

    def train(self, mode: bool = True) -> MaskContrast:
        """As `nn.Module.train`, but frozen layers stay in eval mode (fixed BN statistics)."""
        super().train(mode)
        for encoder in (self.query_encoder, self.key_encoder):
            for name in self.frozen_layers:
                getattr(encoder.backbone, name).eval()
        return self

    def forward(self, batch: dict[str, torch.Tensor]) -> StepOutput:
        """One training step's loss.

        Args:
            batch: {"query", "key": uint8 [B, 3, H, W], "query_mask", "key_mask": bool [B, H, W]}.

        Returns:
            {"loss": 0-dim tensor, "terms": {"contrastive": 0-dim, "saliency": 0-dim}}.
        """
        query_mask, key_mask = batch["query_mask"].bool(), batch["key_mask"].bool()
        query, saliency_logits = self.query_encoder(normalize_images(batch["query"]))
        key = self._encode_keys(batch["key"])
        query, query_mask, saliency_logits = self._at_loss_resolution(
            query, query_mask, saliency_logits
        )
        key, key_mask, _ = self._at_loss_resolution(key, key_mask)
        saliency = saliency_bce_loss(saliency_logits, query_mask)
        contrastive, prototypes = maskcontrast_loss(
            query, query_mask, key, key_mask, self.queue.clone(), self.temperature
        )
        if self.training:
            self._enqueue(prototypes)
        loss = contrastive + self.stage.saliency_weight * saliency
        return {"loss": loss, "terms": {"contrastive": contrastive, "saliency": saliency}}

    def _at_loss_resolution(
        self, embeddings: torch.Tensor, mask: torch.Tensor, logits: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Bring embeddings [B, D, h, w], mask [B, H, W] (and logits [B, h, w]) to one grid."""
        if self.loss_resolution == "feature":
            return embeddings, downsample_mask(mask, tuple(embeddings.shape[-2:])), logits
        size = tuple(mask.shape[-2:])
        embeddings = F.interpolate(embeddings, size, mode="bilinear", align_corners=False)
        if logits is not None:
            logits = F.interpolate(logits[:, None], size, mode="bilinear", align_corners=False)
            logits = logits[:, 0]
        return embeddings, mask, logits

    @torch.no_grad()
    def _encode_keys(self, images: torch.Tensor) -> torch.Tensor:
        """Key embeddings [B, D, h, w] of uint8 key views: sync or EMA, then shuffle-BN forward."""
        if self.training:
            if not self._key_known_synced:  # the buffer is read once, not on every step
                self._key_known_synced = bool(self.key_synced)
            if not self._key_known_synced:
                self.sync_key_encoder()
                self._key_known_synced = True
            else:
                update_ema(self.key_encoder, self.query_encoder, self.momentum)
        if get_world_size() == 1:
            return self.key_encoder(normalize_images(images))[0]
        return _shuffled_forward(self.key_encoder, images)

    @torch.no_grad()
    def sync_key_encoder(self) -> None:
        """Make the key encoder an exact copy of the query encoder (parameters and buffers)."""
        self.key_encoder.load_state_dict(self.query_encoder.state_dict())
        self.key_synced.fill_(True)

    @torch.no_grad()
    def _enqueue(self, prototypes: torch.Tensor) -> None:
        """Write every worker's prototypes [W·B, D] at the pointer; advance it by W·B mod K."""
        if not self.queue_size:
            return
        gathered = all_gather_no_grad(prototypes, equal_shapes=True)  # full batches everywhere
        enqueue(self.queue, self.queue_pointer, gathered[-self.queue_size :])

    def after_step(self, step: int) -> None:
        """Nothing: the key encoder and the queue are updated in `forward`."""

    def training_loader(self, share: StreamShare):
        """Two views of each image with their saliency masks, split by rank."""
        return build_maskcontrast_loader(self.stage, share)

    def validation_metrics(self, device: torch.device) -> dict[str, float]:
        """Backbone pixel k-means (`val_miou`, as every stage) plus the prototype k-means.

        `val_maskcontrast_miou` is the official clustering protocol on the stage's
        val shards; it is left out when it cannot run (too few salient images).
        """
        data = self.stage.data
        batches = evaluation_batches(
            data.val, "val", input_policy="resize", input_size=data.image_size
        )
        num_classes = num_classes_of(data.val)
        scores = run_kmeans_protocol(self.backbone, batches, num_classes, device=device)
        metrics = {"val_miou": scores["miou"]}
        with frozen(self.query_encoder, device) as encoder:
            try:
                scores = run_maskcontrast_kmeans(encoder, batches, num_classes, device=device)
                metrics["val_maskcontrast_miou"] = scores["miou"]
            except ProtocolSkipped:
                pass
        return metrics

    def is_better(self, metrics: dict[str, float]) -> bool:
        """MaskContrast keeps no best checkpoint: its stage ends with its last one."""
        return False


@torch.no_grad()
def _shuffled_forward(encoder: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Shuffle-BN: encode a random slice of the global key batch, return this rank's embeddings.

    Every rank holds a full batch of the same size (the training streams drop the
    remainder), so no sizes are exchanged and nothing is read back to the host.
    Every rank must call this (it runs three collectives).
    """
    rank, local = get_rank(), images.shape[0]
    everything = all_gather_no_grad(images, equal_shapes=True)  # [N, 3, H, W], rank order
    start = rank * local
    order = torch.randperm(everything.shape[0], device=images.device)
    dist.broadcast(order, src=0)  # one permutation for every rank
    embeddings = encoder(normalize_images(everything[order[start : start + local]]))[0]
    encoded = all_gather_no_grad(embeddings, equal_shapes=True)  # row j holds image order[j]
    row_of_image = torch.argsort(order)
    return encoded[row_of_image[start : start + local]]


def build_maskcontrast_loader(stage: MaskContrastStage, share: StreamShare):
    """The stage's training stream: two views of each image with their saliency masks."""
    urls, samples_per_rank = training_urls(stage.data, share.world_size)
    return build_saliency_view_loader(urls, stage.data, share, samples_per_rank=samples_per_rank)


# ----------------------------------------------------------------------------- evaluation


def load_query_encoder(state: dict[str, Any]) -> MaskContrastHead:
    """The trained query encoder of a loaded maskcontrast checkpoint, in eval mode on the CPU.

    Args:
        state: a loaded checkpoint (`raycseg.train.checkpoint.load_state`) with keys
            "model" (the method's state dict), "recipe" and optionally "stage".

    Raises:
        ProtocolSkipped: the checkpoint is not of a maskcontrast stage.
        CsegError: its weights do not fit the architecture its recipe describes.
    """
    needs = "maskcontrast-kmeans needs the embedding and saliency heads"
    method = method_from_checkpoint(state, MaskContrast, "maskcontrast", needs)
    return method.query_encoder.eval()
