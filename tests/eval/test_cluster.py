"""k-means, Hungarian matching and the two clustering protocols on data with a known answer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from eval_scenes import PoolingBackbone, as_batches, color_blocks

from raycseg.eval import (
    ProtocolSkipped,
    hungarian_match,
    kmeans,
    pca_whiten,
    run_kmeans_protocol,
    run_maskcontrast_kmeans,
)
from raycseg.eval.metrics import remap_confusion


def _blobs(per_cluster: int = 50, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    truth = torch.arange(4).repeat_interleave(per_cluster)
    points = centres[truth] + 0.5 * torch.randn(truth.shape[0], 2, generator=generator)
    return points, truth


def test_kmeans_recovers_separated_blobs_up_to_renaming():
    points, truth = _blobs()
    result = kmeans(points, 4, restarts=5, iters=50, seed=0)
    assert result.centroids.shape == (4, 2) and result.assignments.shape == truth.shape
    # each true blob maps to exactly one cluster, and the clusters are all distinct
    names = {int(result.assignments[truth == c].unique().item()) for c in range(4)}
    assert names == {0, 1, 2, 3}
    expected_inertia = float(((points - result.centroids[result.assignments]) ** 2).sum())
    assert result.inertia == pytest.approx(expected_inertia, rel=1e-5)


def test_kmeans_is_seeded_and_keeps_the_best_restart():
    generator = torch.Generator().manual_seed(3)
    points = torch.randn(300, 5, generator=generator)
    first = kmeans(points, 6, restarts=1, iters=30, seed=7)
    again = kmeans(points, 6, restarts=1, iters=30, seed=7)
    assert torch.equal(first.assignments, again.assignments)
    best = kmeans(points, 6, restarts=5, iters=30, seed=7)  # its first restart is `first`
    assert best.inertia <= first.inertia
    with pytest.raises(ValueError):
        kmeans(points[:3], 4)


def test_hungarian_match_undoes_a_permutation():
    confusion = torch.tensor([[0, 9, 1], [8, 0, 0], [1, 0, 7]])
    mapping = hungarian_match(confusion)
    assert mapping.tolist() == [1, 0, 2]  # cluster 0 is class 1, cluster 1 is class 0
    remapped = remap_confusion(confusion, mapping)
    assert remapped.tolist() == [[9, 0, 1], [0, 8, 0], [0, 1, 7]]
    with pytest.raises(ValueError, match="square"):
        hungarian_match(torch.zeros(2, 3))


@pytest.mark.parametrize("stride", [1, 4])
def test_kmeans_protocol_scores_one_on_colour_coded_classes(stride):
    images, labels = color_blocks(10, grid=4, block=4)
    result = run_kmeans_protocol(
        PoolingBackbone(stride), as_batches(images, labels, 4), 4, device="cpu"
    )
    assert result["seed"] == 0
    assert result["miou"] == pytest.approx(1.0)
    assert result["per_class_iou"] == pytest.approx([1.0, 1.0, 1.0, 1.0])


def test_kmeans_protocol_marks_a_class_absent_from_the_split_as_null():
    images, labels = color_blocks(10, grid=4, block=4, num_classes=3)
    result = run_kmeans_protocol(PoolingBackbone(4), as_batches(images, labels, 5), 4, device="cpu")
    # three colours, four clusters: the fourth centre duplicates a colour and stays
    # empty (ties go to the lower index), so it matches the absent class 3
    assert result["per_class_iou"] == pytest.approx([1.0, 1.0, 1.0, None])
    assert result["per_class_iou"][3] is None
    assert result["miou"] == pytest.approx(1.0)


def test_kmeans_protocol_skips_when_there_are_fewer_pixels_than_classes():
    images, labels = color_blocks(1, grid=1, block=4)
    with pytest.raises(ProtocolSkipped):
        run_kmeans_protocol(PoolingBackbone(4), as_batches(images, labels, 1), 4, device="cpu")


def test_pca_whiten_gives_unit_variance_and_clamps_to_the_data():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(200, 6, generator=generator) * torch.tensor([5.0, 3, 2, 1, 0.5, 0.1])
    whitened, notes = pca_whiten(x, 4)
    assert whitened.shape == (200, 4) and notes == []
    covariance = whitened.T @ whitened / 199
    torch.testing.assert_close(covariance, torch.eye(4), atol=1e-4, rtol=0)
    few, notes = pca_whiten(x[:5], 32)
    assert few.shape == (5, 4)
    assert "clamped to 4 components (asked 32)" in notes[0]


def _object_scenes(num_images: int, num_classes: int, dim: int = 8, seed: int = 0):
    """One square object per image on background 0; its class picks an embedding direction."""
    generator = torch.Generator().manual_seed(seed)
    classes = torch.arange(num_images) % (num_classes - 1) + 1
    labels = torch.zeros(num_images, 16, 16, dtype=torch.long)
    starts = torch.randint(0, 8, (num_images, 2), generator=generator)
    for i in range(num_images):  # builds the test data, not the code under test
        top, left = starts[i].tolist()
        labels[i, top : top + 8, left : left + 8] = classes[i]
    labels[:, 0, :] = 255
    images = torch.zeros(num_images, 3, 16, 16, dtype=torch.uint8)
    images[:, 0] = labels.clamp(max=num_classes).to(torch.uint8)  # the embed fn reads this back
    directions = F.normalize(torch.randn(num_classes, dim, generator=generator), dim=1)
    return images, labels, directions


def _scene_embedder(directions: torch.Tensor, num_classes: int):
    def embed(normalised: torch.Tensor):
        mean, std = 0.485, 0.229
        class_map = ((normalised[:, 0] * std + mean) * 255).round().long().clamp(0, num_classes - 1)
        embeddings = directions[class_map].permute(0, 3, 1, 2) * 3.0
        saliency = torch.where(class_map > 0, 4.0, -4.0)
        return embeddings, saliency

    return embed


def test_maskcontrast_kmeans_recovers_object_classes_over_five_seeds():
    num_classes = 4
    images, labels, directions = _object_scenes(12, num_classes)
    result = run_maskcontrast_kmeans(
        _scene_embedder(directions, num_classes),
        as_batches(images, labels, 5),
        num_classes,
        device="cpu",
    )
    assert result["seeds"] == [1234, 1235, 1236, 1237, 1238]
    assert result["miou_per_seed"] == pytest.approx([1.0] * 5)
    assert result["miou"] == pytest.approx(1.0)
    assert result["per_class_iou"] == pytest.approx([1.0] * 4)
    assert any("PCA clamped" in note for note in result["notes"])


def test_maskcontrast_kmeans_skips_without_enough_salient_images():
    num_classes = 4
    images, labels, directions = _object_scenes(2, num_classes)
    with pytest.raises(ProtocolSkipped, match="at least K-1 = 3 images"):
        run_maskcontrast_kmeans(
            _scene_embedder(directions, num_classes),
            as_batches(images, labels, 2),
            num_classes,
            device="cpu",
        )


def test_maskcontrast_kmeans_fits_pca_and_clusters_on_every_image_as_the_official_code():
    """Images without a salient pixel keep a zero prototype and still take part in the fit."""
    num_classes = 4
    images, labels, directions = _object_scenes(2, num_classes)  # 2 objects: fewer than K-1
    empty_images = torch.zeros(5, 3, 16, 16, dtype=torch.uint8)  # class 0: nothing salient
    empty_labels = torch.zeros(5, 16, 16, dtype=torch.long)
    result = run_maskcontrast_kmeans(
        _scene_embedder(directions, num_classes),
        as_batches(torch.cat([images, empty_images]), torch.cat([labels, empty_labels]), 3),
        num_classes,
        device="cpu",
    )
    assert any("7 images span at most 6 directions" in note for note in result["notes"])
    all_labels = torch.cat([labels, empty_labels])
    assert result["pixels_scored"] == int((all_labels != 255).sum())
    assert result["miou_std"] == pytest.approx(
        torch.tensor(result["miou_per_seed"]).std(unbiased=False).item()
    )
