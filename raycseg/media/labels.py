"""Class lists and valid mask ids of the segmentation layouts `cseg shards build` reads.

The tables are the public class definitions of each dataset:

* PASCAL VOC 2012: 21 classes (0 = background), 255 = void.
* ADE20K / SceneParsing: 150 classes plus 0 = "other" (unlabelled), kept as stored.
* Cityscapes: the 19 evaluation classes ("train ids"), 255 = ignore; `labelIds`
  masks are mapped to train ids with `CITYSCAPES_LABEL_TO_TRAIN`.
"""

from __future__ import annotations

import numpy as np

IGNORE_INDEX = 255

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

ADE20K_CLASSES = (
    "other", "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane",
    "grass", "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant",
    "curtain", "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror",
    "rug", "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub",
    "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter",
    "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs",
    "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier",
    "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track",
    "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer",
    "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag",
    "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave",
    "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate",
    "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)  # fmt: skip

# Cityscapes `labelIds` (0..33) -> train ids; every id not listed is ignored (255).
_CITYSCAPES_LABEL_TO_TRAIN_PAIRS = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
    24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip
CITYSCAPES_LABEL_TO_TRAIN = np.full(256, IGNORE_INDEX, dtype=np.uint8)
for _label_id, _train_id in _CITYSCAPES_LABEL_TO_TRAIN_PAIRS.items():
    CITYSCAPES_LABEL_TO_TRAIN[_label_id] = _train_id
CITYSCAPES_MAX_LABEL_ID = 33

SALIENCY_CLASSES = ("background", "foreground")


def valid_mask_ids(num_classes: int, *, ignore_index: int | None = IGNORE_INDEX) -> np.ndarray:
    """Return a boolean table over 0..255 that is True for the ids a mask may hold.

    Args:
        num_classes: Class ids 0..num_classes-1 are valid.
        ignore_index: Also valid (void / ignore), or None when the layout has none.
    """
    table = np.zeros(256, dtype=bool)
    table[:num_classes] = True
    if ignore_index is not None:
        table[ignore_index] = True
    return table


assert len(VOC_CLASSES) == 21 and len(ADE20K_CLASSES) == 151 and len(CITYSCAPES_CLASSES) == 19
