"""The saved validation images of a run, read back and coloured for the report's picture.

`cseg eval` keeps a few scored validation images under `<run>/eval_samples/`
(see `raycseg.eval.samples`): per image an RGB PNG, the label and each
protocol's prediction as 8-bit class ids (255 = ignore), all at the mask's own
size. This module reads them (`load_samples`), colours the ids (`colour_ids`)
and writes the caption; `run_plots.plot_eval_samples` draws the grid.

One palette serves every dataset: the PASCAL VOC colour map. Class c's colour
spreads c's bits over the top bits of the channels: bit 0 goes to the top bit of
R, bit 1 to G, bit 2 to B, bits 3-5 to the next bit down, and so on. The map
gives 256 distinct colours, so it covers Cityscapes' 19 and ADE20K's 151
classes as well as VOC's 21: 0 is black and 255 (ignore) is VOC's light grey
(224, 224, 192).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from .run import EvalSamples

IGNORE_ID = 255
MAX_SAMPLES = 4  # rows in the picture
MAX_NAMED_CLASSES = 30  # in the legend and the caption; the rest are counted
PROTOCOL_TITLES = {
    "linear_probe": "linear-probe prediction",
    "kmeans": "k-means clusters",
    "maskcontrast_kmeans": "MaskContrast k-means clusters",
    "segmentation": "segmentation head",
}


@dataclass(frozen=True)
class LoadedSample:
    """One saved validation image as arrays; None where its PNG is missing.

    Attributes:
        key: The sample's key in the shards.
        image: uint8 [H, W, 3].
        label: uint8 [H, W] class ids, 255 = ignore.
        predictions: Protocol key -> uint8 [H, W] class ids, in the index's order.
    """

    key: str
    image: np.ndarray | None
    label: np.ndarray | None
    predictions: dict[str, np.ndarray | None]


def voc_palette() -> np.ndarray:
    """The PASCAL VOC colour map: uint8 [256, 3], row c = class c's RGB."""
    ids = np.arange(256)
    palette = np.zeros((256, 3), dtype=np.uint8)
    for level in range(8):  # c's bits in triples, lowest first, fill R, G, B from the top bit
        for channel in range(3):
            bit = (ids >> (3 * level + channel)) & 1
            palette[:, channel] |= (bit << (7 - level)).astype(np.uint8)
    return palette


PALETTE = voc_palette()


def colour_ids(ids: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3]: each class id of `ids` (uint8 [H, W]) in its palette colour."""
    return PALETTE[ids]


def protocol_title(key: str) -> str:
    """The column title for an eval.json protocol key."""
    return PROTOCOL_TITLES.get(key, key)


def load_samples(samples: EvalSamples, limit: int = MAX_SAMPLES) -> list[LoadedSample]:
    """Read the first `limit` samples' PNGs."""
    loaded = []
    for sample in samples.samples[:limit]:
        loaded.append(
            LoadedSample(
                key=sample.key,
                image=_read_png(samples.directory, sample.image, ids=False),
                label=_read_png(samples.directory, sample.label, ids=True),
                predictions={
                    key: _read_png(samples.directory, name, ids=True)
                    for key, name in sample.predictions.items()
                },
            )
        )
    return loaded


def _read_png(directory: Path, name: str | None, *, ids: bool) -> np.ndarray | None:
    """An RGB image, or a class-id map kept as stored (8-bit grey or palette indices)."""
    if not name or not (directory / name).is_file():
        return None
    with PILImage.open(directory / name) as picture:
        if not ids:
            return np.asarray(picture.convert("RGB"))
        grey = picture if picture.mode in ("L", "P") else picture.convert("L")
        return np.asarray(grey, dtype=np.uint8)


def classes_present(loaded: list[LoadedSample]) -> list[int]:
    """The class ids (not ignore) in any label or prediction, ascending."""
    maps = [s.label for s in loaded] + [p for s in loaded for p in s.predictions.values()]
    present: set[int] = set()
    for ids in maps:
        if ids is not None:
            present.update(int(value) for value in np.unique(ids))
    present.discard(IGNORE_ID)
    return sorted(present)


def has_ignore(loaded: list[LoadedSample]) -> bool:
    """True when some label marks pixels as ignore (255)."""
    return any(s.label is not None and bool((s.label == IGNORE_ID).any()) for s in loaded)


def class_name(index: int, classes: list[str]) -> str:
    """`classes[index]`, or `class <index>` past the end of the list."""
    return classes[index] if index < len(classes) else f"class {index}"


def sample_caption(samples: EvalSamples, loaded: list[LoadedSample], classes: list[str]) -> str:
    """The picture's caption: what each column shows and the classes present.

    Plain text: it becomes Markdown alt text, so it avoids brackets and markup.
    """
    columns = ["image", "ground truth", *samples.protocols]
    present = classes_present(loaded)
    shown = present[:MAX_NAMED_CLASSES]
    named = ", ".join(f"{index} {class_name(index, classes)}" for index in shown)
    if len(present) > len(shown):
        named += f" and {len(present) - len(shown)} more"
    caption = f"{len(loaded)} scored validation image(s), one per row: {' | '.join(columns)}"
    if any("kmeans" in key for key in samples.protocols):
        caption += " (k-means clusters matched to classes by the Hungarian assignment)"
    caption += f", in the PASCAL VOC palette. Classes present: {named or 'none'}"
    if has_ignore(loaded):
        caption += "; light grey = ignore (255)"
    return caption + "."
