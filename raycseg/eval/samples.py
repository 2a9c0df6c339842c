"""A few scored validation images, saved for the report's pictures (`<run>/eval_samples/`).

Layout, written whole through a temporary folder and a rename:

    eval_samples/index.json       {"classes": [...], "protocols": ["linear_probe", "kmeans"],
                                   "samples": [{"key": ..., "image": "0-image.png",
                                                "label": "0-label.png",
                                                "linear_probe": "0-linear_probe.png", ...}]}
    eval_samples/<i>-image.png    RGB, the model's input brought back to the mask's size
    eval_samples/<i>-label.png    the mask, class ids (255 = ignore), 8-bit grey
    eval_samples/<i>-<key>.png    each protocol's prediction, class ids, 8-bit grey

Every picture of a sample has the mask's own size. The report colours the ids.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from raycseg.eval.scoring import EvalSample
from raycseg.run_directory import SAMPLES_DIR

INDEX_FILE = "index.json"


def write_eval_samples(
    run_dir: Path, samples: dict[str, list[EvalSample]], classes: list[str]
) -> Path | None:
    """Save the samples of each protocol (the same images, in order) under `run_dir`.

    Args:
        run_dir: the run directory (or the folder of the evaluated checkpoint).
        samples: protocol key (eval.json's) -> its `EvalSample`s.
        classes: class names, in id order.

    Returns:
        The folder written, or None when there is nothing to save.
    """
    protocols = [key for key, kept in samples.items() if kept]
    if not protocols:
        return None
    first = samples[protocols[0]]
    run_dir = Path(run_dir)
    staging = Path(tempfile.mkdtemp(prefix=f".{SAMPLES_DIR}-", dir=run_dir))
    entries = []
    for index, sample in enumerate(first):
        entry = {"key": sample.key, "image": f"{index}-image.png", "label": f"{index}-label.png"}
        _save(staging / entry["image"], sample.image.permute(1, 2, 0))
        _save(staging / entry["label"], sample.label)
        for key in protocols:
            if index < len(samples[key]) and samples[key][index].key == sample.key:
                entry[key] = f"{index}-{key}.png"
                _save(staging / entry[key], samples[key][index].prediction)
        entries.append(entry)
    index = {"classes": list(classes), "protocols": protocols, "samples": entries}
    (staging / INDEX_FILE).write_text(json.dumps(index, indent=1))
    target = run_dir / SAMPLES_DIR
    if target.exists():
        stale = Path(tempfile.mkdtemp(prefix=f".{SAMPLES_DIR}-stale-", dir=run_dir))
        os.replace(target, stale / SAMPLES_DIR)
        shutil.rmtree(stale, ignore_errors=True)
    os.replace(staging, target)
    return target


def _save(path: Path, pixels) -> None:
    Image.fromarray(np.ascontiguousarray(pixels.numpy())).save(path)
