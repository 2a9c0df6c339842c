"""Generated multi-object sequences in the DAVIS-2017 layout, with known masks.

`write_davis_tree(root, ...)` draws sequences of the procedural clips
(`raycseg.data.synthetic_clips`: textured shapes moving over a textured, panning
background) and writes what `cseg shards build --kind vos --layout davis` reads::

    root/JPEGImages/480p/<seq>/NNNNN.jpg
    root/Annotations/480p/<seq>/NNNNN.png   VOC-palette PNGs, 1..N = objects
    root/ImageSets/2017/val.txt

Objects are numbered 1..N by their order in the first frame; an object hidden there
(fully occluded) is marked void (255) in every frame, as DAVIS marks what it does not
score. Real DAVIS sequences are 480 px high; these are small squares, which the
evaluation resizes like any other frame.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..media.images import encode_jpeg, encode_mask_png, voc_palette
from ..media.labels import IGNORE_INDEX
from .synthetic_clips import SyntheticConfig, render_clip_objects


def write_davis_tree(
    root: Path,
    *,
    sequences: int = 4,
    frames: int = 24,
    image_size: int = 96,
    objects: tuple[int, int] = (2, 3),
    seed: int = 0,
) -> Path:
    """Write `sequences` generated sequences under `root` (DAVIS layout); return `root`."""
    root = Path(root)
    cfg = SyntheticConfig(image_size=image_size, frames=frames, min_objects=objects[0],
                          max_objects=objects[1])  # fmt: skip
    names = [f"shapes-{index:02d}" for index in range(sequences)]
    palette = voc_palette()
    for index, name in enumerate(names):
        video, _, ids = render_clip_objects(np.random.default_rng([seed, index]), cfg)
        ids = _numbered_by_first_frame(ids)
        image_dir = root / "JPEGImages" / "480p" / name
        mask_dir = root / "Annotations" / "480p" / name
        image_dir.mkdir(parents=True, exist_ok=True)
        mask_dir.mkdir(parents=True, exist_ok=True)
        for t in range(frames):
            (image_dir / f"{t:05d}.jpg").write_bytes(encode_jpeg(video[t]))
            (mask_dir / f"{t:05d}.png").write_bytes(encode_mask_png(ids[t], palette))
    lists = root / "ImageSets" / "2017"
    lists.mkdir(parents=True, exist_ok=True)
    (lists / "val.txt").write_text("".join(f"{name}\n" for name in names))
    return root


def _numbered_by_first_frame(ids: np.ndarray) -> np.ndarray:
    """Object ids renumbered 1..N in order of appearance in frame 0; hidden objects void."""
    visible = [int(i) for i in np.unique(ids[0]) if i != 0]
    table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    table[0] = 0
    for new, old in enumerate(visible, start=1):
        table[old] = new
    return table[ids]
