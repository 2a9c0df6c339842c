"""DAVIS-2017 semi-supervised scores: region similarity J and boundary F-measure.

Written from the definitions of the official `davis2017-evaluation` code
(`davis2017/metrics.py`, `evaluation.py`, `davis.py`), which the tests check on
hand-made masks:

* masks hold 0 = background, 1..N = objects, 255 = void. The official reader sets
  void to 0 before it splits the objects, and then takes the void mask from the
  split (boolean) masks, where it is always empty: void pixels count as background
  and nothing is excluded. We do the same, so scores match the official numbers;
* N is the largest id of the first frame's mask;
* J = |P ∩ G| / |P ∪ G| per object and frame, 1 where both are empty;
* F = 2PR / (P + R) of boundary precision and recall: boundaries are one-pixel maps
  (`boundary_map`, Martin's seg2bmap), matched within a disk of radius
  ceil(0.008 · image diagonal) pixels; an empty predicted boundary against a
  non-empty truth gives P = 1, R = 0 (so F = 0), the reverse P = 0, R = 1, and both
  empty P = R = 1;
* the first and last frames are not scored;
* per object, the mean over its scored frames; `j_mean` and `f_mean` are the means
  over every object of every sequence (the official averages objects, not
  sequences), and `jf_mean` is their mean.

Shapes: masks are uint8 [H, W] numpy arrays; boolean object masks [H, W].
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

VOID = 255
BOUNDARY_TOLERANCE = 0.008  # of the image diagonal, as the official code


def region_similarity(truth: np.ndarray, prediction: np.ndarray) -> float:
    """J: the IoU of two boolean masks [H, W]; 1.0 when both are empty."""
    union = np.count_nonzero(truth | prediction)
    if union == 0:
        return 1.0
    return np.count_nonzero(truth & prediction) / union


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """One-pixel boundaries [H, W] of a boolean mask, offset half a pixel towards the origin.

    A pixel is on the boundary when it differs from its right, lower or lower-right
    neighbour (the last row and column compare along themselves; the corner is never).
    """
    mask = mask.astype(bool)
    right = np.zeros_like(mask)
    below = np.zeros_like(mask)
    diagonal = np.zeros_like(mask)
    right[:, :-1] = mask[:, 1:]
    below[:-1, :] = mask[1:, :]
    diagonal[:-1, :-1] = mask[1:, 1:]
    boundary = (mask ^ right) | (mask ^ below) | (mask ^ diagonal)
    boundary[-1, :] = mask[-1, :] ^ right[-1, :]
    boundary[:, -1] = mask[:, -1] ^ below[:, -1]
    boundary[-1, -1] = False
    return boundary


def _within(boundary: np.ndarray, radius: int) -> np.ndarray:
    """Pixels within `radius` of a boundary pixel.

    The dilation by the disk dy² + dx² <= radius² (the official cv2.dilate with skimage's
    disk), through the Euclidean distance transform.
    """
    return ndimage.distance_transform_edt(~boundary) <= radius


def boundary_f_measure(truth: np.ndarray, prediction: np.ndarray) -> float:
    """F: the boundary F-measure of two boolean masks [H, W] (tolerance 0.008 of the diagonal)."""
    radius = math.ceil(BOUNDARY_TOLERANCE * math.hypot(*truth.shape))
    predicted, true = boundary_map(prediction), boundary_map(truth)
    n_predicted, n_true = np.count_nonzero(predicted), np.count_nonzero(true)
    if n_predicted == 0 or n_true == 0:
        precision = 1.0 if n_predicted == 0 else 0.0
        recall = 1.0 if n_true == 0 else 0.0
    else:
        precision = np.count_nonzero(predicted & _within(true, radius)) / n_predicted
        recall = np.count_nonzero(true & _within(predicted, radius)) / n_true
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def score_sequence(truths: Sequence[np.ndarray], predictions: Sequence[np.ndarray]) -> dict:
    """Per-object J and F means of one sequence.

    Args:
        truths: the annotated frames' masks uint8 [H, W] in order, the first frame first.
        predictions: the predicted masks (object ids) of the same frames.

    Returns:
        ``{"objects": N, "frames_scored": T - 2, "j": [per object], "f": [per object]}``.
    """
    num_objects = int(np.where(truths[0] == VOID, 0, truths[0]).max())
    scored = range(1, len(truths) - 1)  # the first and last frames are not scored
    j = np.zeros((num_objects, len(scored)))
    f = np.zeros_like(j)
    for column, t in enumerate(scored):
        truth = np.where(truths[t] == VOID, 0, truths[t])
        for obj in range(num_objects):
            true_mask, predicted_mask = truth == obj + 1, predictions[t] == obj + 1
            j[obj, column] = region_similarity(true_mask, predicted_mask)
            f[obj, column] = boundary_f_measure(true_mask, predicted_mask)
    return {
        "objects": num_objects,
        "frames_scored": len(scored),
        "j": j.mean(axis=1).tolist(),
        "f": f.mean(axis=1).tolist(),
    }


def summarise(sequences: dict[str, dict]) -> dict:
    """eval.json's `davis` scores from `score_sequence` results, by sequence name."""
    j = [value for result in sequences.values() for value in result["j"]]
    f = [value for result in sequences.values() for value in result["f"]]
    per_sequence = {
        name: {
            "j_mean": float(np.mean(result["j"])),
            "f_mean": float(np.mean(result["f"])),
            "jf_mean": float((np.mean(result["j"]) + np.mean(result["f"])) / 2),
            "objects": result["objects"],
            "frames_scored": result["frames_scored"],
        }
        for name, result in sequences.items()
    }
    return {
        "j_mean": float(np.mean(j)),
        "f_mean": float(np.mean(f)),
        "jf_mean": float((np.mean(j) + np.mean(f)) / 2),
        "sequences": per_sequence,
        "objects": len(j),
        "frames_scored": sum(result["frames_scored"] for result in sequences.values()),
    }
