"""The shipped Cityscapes ReCo recipe on Cityscapes-shaped data: both streams see one scale.

The official code resizes Cityscapes once to 512 x 1024 and then uses scale 1.0
for the labelled and the unlabelled stream. The recipe's shards are built with
`--resize-to 512x1024`; its unlabelled crops must then be real image pixels, not
padding (label 255, confidence 0).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from raycseg.config import load_recipe
from raycseg.data.loaders import StreamShare
from raycseg.methods.reco import build_reco_loader
from raycseg.methods.reco_mixing import augment_unlabelled
from raycseg.shards.build import build_shards


def _cityscapes_tree(root, count: int = 3) -> None:
    """`count` 2048 x 1024 training images with trainIds masks, in the Cityscapes layout."""
    images = root / "leftImg8bit" / "train" / "aachen"
    labels = root / "gtFine" / "train" / "aachen"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    rows, cols = np.mgrid[0:1024, 0:2048]
    for index in range(count):
        rgb = np.stack([(rows // 4 + 40 * index) % 256, cols // 8 % 256, (rows + cols) // 12 % 256],
                       axis=-1).astype(np.uint8)  # fmt: skip
        mask = ((rows // 256 + cols // 512 + index) % 19).astype(np.uint8)
        name = f"aachen_{index:06d}_000019"
        Image.fromarray(rgb).save(images / f"{name}_leftImg8bit.png", compress_level=1)
        Image.fromarray(mask).save(labels / f"{name}_gtFine_labelTrainIds.png")


def test_every_unlabelled_crop_of_the_cityscapes_recipe_is_real_image(tmp_path):
    _cityscapes_tree(tmp_path / "cityscapes")
    shards = tmp_path / "shards"
    build_shards("segmentation", tmp_path / "cityscapes", shards / "cs", layout="cityscapes",
                 resize_to=(512, 1024), num_procs=1)  # fmt: skip
    recipe = load_recipe(
        "reco/cityscapes_20labels",
        [f"data.root={shards}", "data.loader_workers=0", "stages.reco.data.train=cs",
         "stages.reco.data.unlabelled=cs", "stages.reco.data.val=cs"],
        check_files=False,
    )  # fmt: skip
    stage = recipe.stages[0]
    loader = build_reco_loader(stage, StreamShare())
    generator = torch.Generator().manual_seed(0)
    for step, batch in zip(range(3), loader, strict=False):
        images = batch["unlabelled_image"]
        assert images.shape[-2:] == (stage.data.image_size, stage.data.image_size)
        labels = torch.zeros(images.shape[0], *images.shape[-2:], dtype=torch.long)
        confidence = torch.ones(labels.shape)
        _, mixed_labels, mixed_confidence = augment_unlabelled(
            images.float() / 255, labels, confidence, mix=stage.mix,
            scale_range=stage.data.scale_range, color_jitter=stage.data.color_jitter,
            generator=generator,
        )  # fmt: skip
        real = (mixed_confidence > 0) & (mixed_labels != 255)
        shares = real.flatten(1).float().mean(1)
        assert bool((shares >= 0.99).all()), f"step {step}: real-pixel shares {shares.tolist()}"
        labelled = batch["label"]
        assert (labelled != 255).float().mean() >= 0.99  # the labelled crops too: no padding
