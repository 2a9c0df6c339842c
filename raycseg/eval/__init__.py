"""Evaluation of frozen dense features: mIoU, linear probe, k-means protocols."""

from raycseg.eval.cluster import (
    hungarian_match,
    kmeans,
    pca_whiten,
    run_kmeans_protocol,
    run_maskcontrast_kmeans,
)
from raycseg.eval.metrics import (
    IGNORE_INDEX,
    ProtocolSkipped,
    confusion_matrix,
    miou_from_confusion,
)
from raycseg.eval.probe import run_linear_probe
from raycseg.eval.protocols import PROTOCOLS, evaluate_backbone, protocol_key

__all__ = [
    "IGNORE_INDEX",
    "PROTOCOLS",
    "ProtocolSkipped",
    "confusion_matrix",
    "evaluate_backbone",
    "hungarian_match",
    "kmeans",
    "miou_from_confusion",
    "pca_whiten",
    "protocol_key",
    "run_kmeans_protocol",
    "run_linear_probe",
    "run_maskcontrast_kmeans",
]
