"""Scoring at the labels' own resolution: eval batches, predictions brought to each mask, counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from raycseg.data.loaders import build_segmentation_eval_loader
from raycseg.eval.scoring import SplitScore, predictions_on_labels, upsampled_argmax
from raycseg.eval.segmentation import run_segmentation_protocol
from raycseg.media.images import decode_image
from raycseg.models import normalize_images
from raycseg.shards.build import build_shards
from raycseg.shards.manifest import list_shard_urls
from raycseg.shards.tars import iter_shard_samples


def _nearest_reference(prediction: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Pixel (y, x) of a mask reads cell (⌊y·h/H⌋, ⌊x·w/W⌋): the obvious loop."""
    height, width = prediction.shape
    out = torch.empty(size, dtype=torch.long)
    for y in range(size[0]):
        for x in range(size[1]):
            out[y, x] = prediction[y * height // size[0], x * width // size[1]]
    return out


def test_resized_inputs_map_predictions_to_each_masks_own_size():
    labels = torch.full((2, 7, 9), 255, dtype=torch.long)
    labels[0, :7, :5] = 1  # mask 0 is 7 x 5, mask 1 is 6 x 9
    labels[1, :6, :9] = 2
    batch = {
        "image": torch.zeros(2, 3, 8, 8, dtype=torch.uint8),
        "label": labels,
        "label_size": torch.tensor([[7, 5], [6, 9]]),
        "input_region": torch.tensor([[8, 8], [8, 8]]),  # resize policy: the whole input
    }
    coarse = torch.randint(0, 3, (2, 4, 4), generator=torch.Generator().manual_seed(0))
    mapped = predictions_on_labels(coarse, batch)
    assert mapped.shape == (2, 7, 9)
    assert torch.equal(mapped[0, :7, :5], _nearest_reference(coarse[0], (7, 5)))
    assert torch.equal(mapped[1, :6, :9], _nearest_reference(coarse[1], (6, 9)))


def test_padded_inputs_crop_predictions_without_moving_a_pixel():
    batch = {
        "image": torch.zeros(2, 3, 10, 12, dtype=torch.uint8),
        "label": torch.zeros(2, 7, 9, dtype=torch.long),
        "label_size": torch.tensor([[7, 5], [6, 9]]),
        "input_region": torch.tensor([[7, 5], [6, 9]]),  # pad policy: the image's own size
    }
    full = torch.arange(2 * 10 * 12).view(2, 10, 12)
    mapped = predictions_on_labels(full, batch)
    assert torch.equal(mapped[0, :7, :5], full[0, :7, :5])
    assert torch.equal(mapped[1, :6, :9], full[1, :6, :9])


def test_split_score_counts_labelled_pixels_and_ignores_padding():
    score = SplitScore(3, "cpu")
    labels = torch.tensor([[[0, 1, 255], [2, 2, 255]]])
    score.add(torch.tensor([[[0, 1, 0], [2, 1, 0]]]), labels)
    result = score.result()
    assert result["pixels_scored"] == 4
    assert result["per_class_iou"] == pytest.approx([1.0, 0.5, 0.5])


def test_upsampled_argmax_follows_the_corner_convention():
    logits = torch.tensor([[[[0.0, 1.0]], [[1.0, 0.0]]]])  # [1, 2, 1, 2]
    assert upsampled_argmax(logits, (1, 4), align_corners=True).tolist() == [[[1, 1, 0, 0]]]


def _original_masks(folder) -> dict[str, np.ndarray]:
    return {path.stem: np.array(Image.open(path)) for path in sorted(folder.glob("*.png"))}


class _Oracle(torch.nn.Module):
    """Logits that reproduce each original mask: it recognises its image in the padded input."""

    def __init__(self, images: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], classes):
        super().__init__()
        self.pairs = [(images[key], masks[key]) for key in images]
        self.classes = classes

    def forward(self, normalised: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(normalised.shape[0], self.classes, *normalised.shape[-2:])
        for index, x in enumerate(normalised):
            for image, mask in self.pairs:
                height, width = mask.shape
                fits = x.shape[-2] >= height and x.shape[-1] >= width
                if fits and torch.allclose(
                    x[:, :height, :width], normalize_images(image[None])[0], atol=1e-4
                ):
                    one_hot = torch.nn.functional.one_hot(mask.clamp(max=self.classes - 1),
                                                          self.classes)  # fmt: skip
                    logits[index, :, :height, :width] = one_hot.permute(2, 0, 1).float()
        return logits


@pytest.mark.real_data
@pytest.mark.parametrize(
    ("dataset", "layout", "split", "masks", "classes"),
    [
        ("voc", "voc", "train", "SegmentationClass", 21),
        ("ade20k", "ade20k", "all", "annotations", 151),
    ],
)
def test_a_perfect_prediction_of_real_masks_scores_one_at_their_own_size(
    real_data, tmp_path, dataset, layout, split, masks, classes
):
    out = tmp_path / dataset
    build_shards("segmentation", real_data / dataset, out, layout=layout, num_procs=1)
    urls = list_shard_urls(out, split)
    originals = _original_masks(real_data / dataset / masks)
    loader = build_segmentation_eval_loader(urls, input_policy="pad", input_size=513, batch_size=2)
    images, labels, expected_pixels = {}, {}, 0
    for batch in loader:
        height, width = batch["label"].shape[-2:]
        assert batch["image"].shape[-2:] == (max(513, height), max(513, width))
        for key, size, label in zip(batch["key"], batch["label_size"], batch["label"], strict=True):
            original = originals[key]
            assert tuple(size.tolist()) == original.shape  # never resized
            mask = torch.from_numpy(original.astype(np.int64))
            assert torch.equal(label[: mask.shape[0], : mask.shape[1]], mask)
            labels[key] = mask
            expected_pixels += int((mask != 255).sum())
    for url in urls:
        for sample in iter_shard_samples(url):
            images[sample["__key__"]] = torch.from_numpy(decode_image(sample["jpg"])).permute(
                2, 0, 1
            )
    assert any(h != w for h, w in (mask.shape for mask in labels.values()))  # non-square ones
    result = run_segmentation_protocol(
        _Oracle(images, labels, classes), loader, classes, device="cpu"
    )
    assert result["miou"] == pytest.approx(1.0)
    assert result["pixels_scored"] == expected_pixels > 0


@pytest.mark.real_data
def test_resized_inputs_still_score_every_original_pixel(real_data, tmp_path):
    out = tmp_path / "voc"
    build_shards("segmentation", real_data / "voc", out, layout="voc", num_procs=1)
    urls = list_shard_urls(out, "val")
    loader = build_segmentation_eval_loader(
        urls, input_policy="resize", input_size=64, batch_size=3
    )
    originals = _original_masks(real_data / "voc" / "SegmentationClass")
    score = SplitScore(21, "cpu")
    for batch in loader:
        assert batch["image"].shape[-2:] == (64, 64)
        score.add_batch(torch.zeros(batch["image"].shape[0], 8, 8, dtype=torch.long), batch)
    expected = sum(int((originals[k] != 255).sum()) for k in _val_ids(real_data))
    assert score.result()["pixels_scored"] == expected


def _val_ids(real_data) -> list[str]:
    return (real_data / "voc" / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
