"""How a label-scarce split picks images and pixels (docs/methods/reco.md §6).

Two benchmark modes, as in ReCo's official code:

- **Partial Dataset, Full Labels** (`num_labels=N`): the seeded class-balanced
  sampler. The image list is shuffled with the seed and popped from the end.
  An image is accepted iff it has at least `min_classes` distinct non-void
  classes and (after the first acceptance) contains one of the classes seen in
  the fewest accepted images so far; rejected images are deferred and recycled
  when the list runs out. It stops at N images; every other image is unlabelled.
  One deliberate refinement: classes that no remaining candidate contains are
  left out of the least-seen set. The official sampler loops forever there;
  everywhere else both choose the same images. SUN RGB-D's sampler
  (`sampler="rarest-class"`, `select_by_rarest_class`) is class-driven instead:
  it takes the next image of the class seen in the fewest chosen images so far.
- **Partial Labels, Full Dataset** (`partial="p0" | "p1" | "p5" | "p25"`): every
  image keeps a sparse subset of its labels. Per class c present: one seed pixel
  drawn uniformly from c's pixels. `p0` keeps exactly that pixel. Otherwise the
  seed square is dilated by a 5×5 all-ones kernel until it holds at least
  T = ⌊p·|c|⌋ pixels of c; the kept pixels are c's pixels inside the final
  (4k+1)×(4k+1) window (which may overshoot T). After k dilations the square is
  the set of pixels at Chebyshev distance ≤ 2k from the seed (clipped at the
  border), so k is read off the T-th smallest distance instead of dilating.

These are pure functions on arrays; `raycseg.shards.splits` applies them to a shard set.
"""

from __future__ import annotations

import math
import zlib

import numpy as np

from ..errors import DataError
from ..media.labels import IGNORE_INDEX

PARTIAL_FRACTIONS = {"p0": 0.0, "p1": 0.01, "p5": 0.05, "p25": 0.25}
DILATION_KERNEL = 5


def select_labelled_images(
    presence: np.ndarray, num_labels: int, *, min_classes: int, seed: int
) -> list[int]:
    """The class-balanced sampler of the Partial Dataset, Full Labels mode.

    Args:
        presence: bool [N, C]; presence[i, c] says image i contains class c (void excluded).
        num_labels: how many images to choose.
        min_classes: an image needs at least this many distinct classes to be chosen.
        seed: shuffles the image order.

    Returns:
        The chosen image indices, in the order they were accepted.

    Raises:
        DataError: fewer than `num_labels` images have `min_classes` classes.
    """
    presence = np.asarray(presence, dtype=bool)
    eligible = presence.sum(axis=1) >= max(min_classes, 1)
    if num_labels < 1 or int(eligible.sum()) < num_labels:
        raise DataError(
            f"only {int(eligible.sum())} of {len(presence)} images have at least {min_classes} "
            f"classes, so {num_labels} labelled images cannot be chosen; lower --num-labels "
            "or --min-classes"
        )
    pending = np.random.default_rng(seed).permutation(len(presence)).tolist()
    deferred: list[int] = []
    chosen: list[int] = []
    counts = np.zeros(presence.shape[1], dtype=np.int64)
    remaining = presence[eligible].sum(axis=0)  # unchosen candidates containing each class
    least_seen = remaining > 0
    while len(chosen) < num_labels:
        if not pending:
            pending, deferred = deferred, []
        index = pending.pop()
        if not eligible[index]:
            continue  # can never be chosen: drop it instead of recycling it
        if not (presence[index] & least_seen).any():
            deferred.append(index)
            continue
        chosen.append(index)
        counts += presence[index]
        remaining -= presence[index]
        reachable = remaining > 0
        if reachable.any():
            least_seen = reachable & (counts == counts[reachable].min())
    return chosen


def select_by_rarest_class(presence: np.ndarray, num_labels: int, *, seed: int) -> list[int]:
    """SUN RGB-D's class-driven sampler of the Partial Dataset, Full Labels mode.

    Every class has a queue of the images that contain it, in one seeded shuffled
    order. Each pick takes the next image from the queue of the class seen in the
    fewest chosen images so far (the lowest class id among ties), skipping images
    already chosen; a class whose queue runs dry drops out of the count.

    Args:
        presence: bool [N, C]; presence[i, c] says image i contains class c (void excluded).
        num_labels: how many images to choose.
        seed: shuffles the image order.

    Returns:
        The chosen image indices, in the order they were chosen.

    Raises:
        DataError: fewer than `num_labels` images contain any class.
    """
    presence = np.asarray(presence, dtype=bool)
    candidates = int(presence.any(axis=1).sum())
    if num_labels < 1 or candidates < num_labels:
        raise DataError(
            f"only {candidates} of {len(presence)} images contain a labelled class, so "
            f"{num_labels} labelled images cannot be chosen; lower --num-labels"
        )
    order = np.random.default_rng(seed).permutation(len(presence))
    queues = [order[presence[order, c]].tolist() for c in range(presence.shape[1])]
    open_classes = np.ones(presence.shape[1], dtype=bool)
    counts = np.zeros(presence.shape[1], dtype=np.int64)
    chosen: list[int] = []
    taken: set[int] = set()
    while len(chosen) < num_labels:
        rarest = int(np.flatnonzero(open_classes & (counts == counts[open_classes].min()))[0])
        if not queues[rarest]:
            open_classes[rarest] = False
            continue
        index = queues[rarest].pop()
        if index not in taken:
            chosen.append(index)
            taken.add(index)
            counts += presence[index]
    return chosen


def sparsify_mask(
    mask: np.ndarray, mode: str, rng: np.random.Generator, *, ignore_index: int = IGNORE_INDEX
) -> np.ndarray:
    """The Partial Labels, Full Dataset mode on one mask.

    Args:
        mask: uint8 [H, W] class ids; `ignore_index` is void.
        mode: `p0` (one pixel per class) or `p1`, `p5`, `p25` (a grown square per class).
        rng: draws one seed pixel per class, in ascending class order.
        ignore_index: the void id, also written everywhere that loses its label.

    Returns:
        uint8 [H, W]: the kept labels, `ignore_index` elsewhere.
    """
    if mode not in PARTIAL_FRACTIONS:
        raise DataError(f"unknown partial mode {mode!r}; use one of {', '.join(PARTIAL_FRACTIONS)}")
    fraction = PARTIAL_FRACTIONS[mode]
    sparse = np.full_like(mask, ignore_index)
    for class_id in present_classes(mask, ignore_index):
        rows, cols = np.nonzero(mask == class_id)
        seed = int(rng.integers(rows.size))
        target = math.floor(fraction * rows.size)
        distance = np.maximum(np.abs(rows - rows[seed]), np.abs(cols - cols[seed]))
        radius = 0
        if mode != "p0" and target > 1:
            # the square after k dilations holds the pixels at distance <= 2k: the smallest
            # k that reaches `target` pixels covers the target-th smallest distance
            kth = int(np.partition(distance, target - 1)[target - 1])
            radius = (DILATION_KERNEL - 1) // 2 * math.ceil(kth / 2)
        keep = distance <= radius
        sparse[rows[keep], cols[keep]] = class_id
    return sparse


def present_classes(mask: np.ndarray, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Sorted class ids that occur in a uint8 mask, void excluded."""
    counts = np.bincount(mask.ravel(), minlength=256)
    counts[ignore_index] = 0
    return np.flatnonzero(counts)


def image_rng(seed: int, key: str) -> np.random.Generator:
    """A generator per (seed, sample key): the same draws whatever the reading order."""
    return np.random.default_rng([seed, zlib.crc32(key.encode())])
