"""Label-scarce splits (reco.md §6): the two image samplers and the grown squares."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import binary_dilation
from typer.testing import CliRunner

from raycseg.errors import DataError
from raycseg.media.images import decode_mask, encode_jpeg, encode_mask_png
from raycseg.shards.build import build_shards
from raycseg.shards.label_sampling import (
    image_rng,
    present_classes,
    select_by_rarest_class,
    select_labelled_images,
    sparsify_mask,
)
from raycseg.shards.manifest import list_shard_urls, read_manifest
from raycseg.shards.splits import SPLIT_FILE, build_label_split
from raycseg.shards.tars import iter_shard_samples

# ----------------------------------------------------------------------------- references


def reference_sampler(presence: np.ndarray, num_labels: int, min_classes: int, seed: int):
    """§6 as written: pop from the shuffled list, defer rejects, recycle, L_min over all classes."""
    pending = np.random.default_rng(seed).permutation(len(presence)).tolist()
    deferred, chosen = [], []
    counts = np.zeros(presence.shape[1], dtype=int)
    least_seen = np.ones(presence.shape[1], dtype=bool)
    while len(chosen) < num_labels:
        if not pending:
            pending, deferred = deferred, []
        index = pending.pop()
        enough = presence[index].sum() >= min_classes
        if enough and (not chosen or (presence[index] & least_seen).any()):
            chosen.append(index)
            counts += presence[index]
            least_seen = counts == counts.min()
        else:
            deferred.append(index)
    return chosen


def reference_rarest_class(presence: np.ndarray, num_labels: int, seed: int) -> list[int]:
    """§6's SUN sampler as written: the next shuffled image of the least-frequent class."""
    order = np.random.default_rng(seed).permutation(len(presence)).tolist()
    images_of = [[i for i in order if presence[i, c]] for c in range(presence.shape[1])]
    counts = [0] * presence.shape[1]
    dry: set[int] = set()
    chosen: list[int] = []
    while len(chosen) < num_labels:
        live = [c for c in range(presence.shape[1]) if c not in dry]
        rarest = next(c for c in live if counts[c] == min(counts[k] for k in live))
        if not images_of[rarest]:
            dry.add(rarest)
            continue
        index = images_of[rarest].pop()
        if index not in chosen:
            chosen.append(index)
            counts = [n + int(presence[index, c]) for c, n in enumerate(counts)]
    return chosen


def reference_sparsify(mask: np.ndarray, mode: str, rng: np.random.Generator) -> np.ndarray:
    """§6 as written: a seed pixel per class, then repeated 5×5 dilations of the square."""
    fraction = {"p0": 0.0, "p1": 0.01, "p5": 0.05, "p25": 0.25}[mode]
    out = np.full_like(mask, 255)
    for class_id in [c for c in np.unique(mask) if c != 255]:
        of_class = mask == class_id
        rows, cols = np.nonzero(of_class)
        seed = int(rng.integers(rows.size))
        square = np.zeros_like(of_class)
        square[rows[seed], cols[seed]] = True
        target = int(fraction * of_class.sum())
        while (square & of_class).sum() < target:
            square = binary_dilation(square, structure=np.ones((5, 5), dtype=bool))
        out[square & of_class] = class_id
    return out


def blob_mask(rng: np.random.Generator, size=(40, 56), num_classes=6) -> np.ndarray:
    """A mask of nearest-centre regions with a few void pixels."""
    centres = rng.integers(0, size, size=(5, 2))
    ids = rng.integers(0, num_classes, size=5)
    yy, xx = np.mgrid[: size[0], : size[1]]
    nearest = np.argmin(
        (yy[..., None] - centres[:, 0]) ** 2 + (xx[..., None] - centres[:, 1]) ** 2, axis=-1
    )
    mask = ids[nearest].astype(np.uint8)
    mask[rng.random(size) < 0.02] = 255
    return mask


# ----------------------------------------------------------------------------- the sampler


def test_sampler_matches_the_spec_loop_when_every_class_stays_reachable():
    rng = np.random.default_rng(0)
    presence = rng.random((120, 6)) < 0.45
    for seed in range(4):
        ours = select_labelled_images(presence, 15, min_classes=3, seed=seed)
        assert ours == reference_sampler(presence, 15, 3, seed)


def test_sampler_rules_hold_for_every_accepted_image():
    rng = np.random.default_rng(1)
    presence = rng.random((200, 8)) < np.linspace(0.05, 0.8, 8)  # class 0 is rare
    chosen = select_labelled_images(presence, 30, min_classes=2, seed=3)
    assert len(set(chosen)) == 30
    assert (presence[chosen].sum(axis=1) >= 2).all()
    counts = np.zeros(8, dtype=int)
    eligible = presence.sum(axis=1) >= 2
    for step, index in enumerate(chosen):
        if step:
            unchosen = eligible.copy()
            unchosen[chosen[:step]] = False
            reachable = presence[unchosen].any(axis=0)
            least = reachable & (counts == counts[reachable].min())
            assert (presence[index] & least).any(), f"image {step} has no least-seen class"
        counts += presence[index]


def test_sampler_picks_a_rare_class_that_random_sampling_would_miss():
    presence = np.zeros((105, 4), dtype=bool)
    presence[:100, :3] = True  # common images: classes 0, 1, 2
    presence[100:, [0, 1, 3]] = True  # five rare images: classes 0, 1, 3
    for seed in range(10):
        chosen = select_labelled_images(presence, 10, min_classes=3, seed=seed)
        assert presence[chosen, 3].sum() >= 4  # least-seen rule keeps class 3 balanced


def test_sampler_terminates_when_a_class_is_absent_or_exhausted():
    presence = np.zeros((30, 5), dtype=bool)
    presence[:, :2] = True
    presence[:2, 2] = True  # class 2 in two images only; class 4 never appears
    presence[::3, 3] = True
    chosen = select_labelled_images(presence, 12, min_classes=2, seed=0)
    assert len(set(chosen)) == 12 and {0, 1} <= set(chosen)


def test_sampler_is_seeded_and_rejects_impossible_budgets():
    presence = np.random.default_rng(2).random((50, 5)) < 0.5
    first = select_labelled_images(presence, 8, min_classes=2, seed=7)
    assert first == select_labelled_images(presence, 8, min_classes=2, seed=7)
    assert first != select_labelled_images(presence, 8, min_classes=2, seed=8)
    with pytest.raises(DataError, match="--min-classes"):
        select_labelled_images(presence, 8, min_classes=6, seed=0)


def test_rarest_class_sampler_matches_the_spec_loop():
    rng = np.random.default_rng(4)
    presence = rng.random((150, 7)) < np.linspace(0.02, 0.6, 7)
    presence[:5, 6] = False
    for seed in range(4):
        ours = select_by_rarest_class(presence, 25, seed=seed)
        assert ours == reference_rarest_class(presence, 25, seed)
        assert len(set(ours)) == 25


def test_rarest_class_sampler_keeps_taking_the_rare_class_until_it_runs_dry():
    presence = np.zeros((60, 3), dtype=bool)
    presence[:, 1] = True
    presence[:4, 0] = True  # class 0 in four images only; class 2 never appears
    chosen = select_by_rarest_class(presence, 10, seed=0)
    assert set(chosen[:4]) == {0, 1, 2, 3} and len(set(chosen)) == 10
    with pytest.raises(DataError, match="--num-labels"):
        select_by_rarest_class(presence, 61, seed=0)


# ----------------------------------------------------------------------------- the squares


@pytest.mark.parametrize("mode", ["p0", "p1", "p5", "p25"])
def test_sparse_masks_equal_repeated_dilation(mode):
    for index in range(6):
        mask = blob_mask(np.random.default_rng(index))
        ours = sparsify_mask(mask, mode, np.random.default_rng(100 + index))
        expected = reference_sparsify(mask, mode, np.random.default_rng(100 + index))
        np.testing.assert_array_equal(ours, expected)


def test_sparse_mask_squares_p0_and_targets():
    mask = blob_mask(np.random.default_rng(5), size=(64, 64), num_classes=4)
    single = sparsify_mask(mask, "p0", np.random.default_rng(0))
    for class_id in present_classes(mask):
        assert (single == class_id).sum() == 1
        assert mask[single == class_id][0] == class_id
    assert set(present_classes(single)) == set(present_classes(mask))
    for mode, fraction in (("p5", 0.05), ("p25", 0.25)):
        sparse = sparsify_mask(mask, mode, np.random.default_rng(0))
        for class_id in present_classes(mask):
            kept = sparse == class_id
            target = int(fraction * (mask == class_id).sum())
            assert (mask[kept] == class_id).all() and kept.sum() >= target
            assert is_smallest_grown_square(kept, mask == class_id, target)


def is_smallest_grown_square(kept: np.ndarray, of_class: np.ndarray, target: int) -> bool:
    """Kept = the class pixels of a (4k+1)-wide window around one kept pixel, k minimal."""
    rows, cols = np.nonzero(kept)
    all_rows, all_cols = np.nonzero(of_class)
    reach = np.maximum.reduce(
        [rows - rows.min(), rows.max() - rows, cols - cols.min(), cols.max() - cols]
    )  # each kept pixel's distance to the farthest kept pixel: the seed's is about k
    for index in np.argsort(reach, kind="stable"):
        r, c, half = rows[index], cols[index], 2 * int(np.ceil(reach[index] / 2))
        distance = np.maximum(np.abs(all_rows - r), np.abs(all_cols - c))
        if (distance <= half).sum() == kept.sum() and (
            half == 0 or (distance <= half - 2).sum() < target
        ):
            return True
    return False


# ----------------------------------------------------------------------------- shard sets


def make_segmentation_shards(tmp_path: Path, count: int = 24) -> Path:
    """A tiny VOC tree (random blob masks, 21-class ids) built into shards."""
    source = tmp_path / "voc"
    (source / "JPEGImages").mkdir(parents=True)
    (source / "SegmentationClass").mkdir()
    for index in range(count):
        rng = np.random.default_rng(index)
        mask = blob_mask(rng, size=(24, 32))
        image = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
        (source / "JPEGImages" / f"im{index:03d}.jpg").write_bytes(encode_jpeg(image))
        (source / "SegmentationClass" / f"im{index:03d}.png").write_bytes(encode_mask_png(mask))
    build_shards("segmentation", source, tmp_path / "shards", num_procs=1, max_count=10)
    return tmp_path / "shards"


def stored(root: Path) -> dict[str, dict]:
    manifest = read_manifest(root)
    split = "train" if "train" in manifest["splits"] else "all"
    return {s["__key__"]: s for u in list_shard_urls(root, split) for s in iter_shard_samples(u)}


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return make_segmentation_shards(tmp_path_factory.mktemp("splits"))


def test_num_labels_split_writes_disjoint_shard_sets(shards, tmp_path):
    report = build_label_split(shards, tmp_path / "s", num_labels=6, min_classes=2, seed=1)
    source = stored(shards)
    labelled, unlabelled = stored(report.labelled), stored(report.unlabelled)
    assert len(labelled) == report.num_labelled == 6
    assert len(unlabelled) == report.num_unlabelled == len(source) - 6
    assert set(labelled) | set(unlabelled) == set(source) and not set(labelled) & set(unlabelled)
    for key, sample in labelled.items():
        assert sample["png"] == source[key]["png"] and sample["jpg"] == source[key]["jpg"]
    record = json.loads((tmp_path / "s" / SPLIT_FILE).read_text())
    assert record["mode"] == "num_labels" and record["seed"] == 1
    assert set(record["labelled"]) == set(labelled)
    assert read_manifest(report.labelled)["classes"] == read_manifest(shards)["classes"]
    assert [p.name for p in tmp_path.iterdir()] == ["s"]  # no temporary folder left
    again = build_label_split(shards, tmp_path / "t", num_labels=6, min_classes=2, seed=1)
    assert set(stored(again.labelled)) == set(labelled)
    rarest = build_label_split(shards, tmp_path / "r", num_labels=6, sampler="rarest-class")
    record = json.loads((tmp_path / "r" / SPLIT_FILE).read_text())
    assert record["sampler"] == "rarest-class" and rarest.num_labelled == 6
    with pytest.raises(DataError, match="--sampler"):
        build_label_split(shards, tmp_path / "q", num_labels=6, sampler="random")


def test_partial_split_keeps_images_and_sparsifies_masks(shards, tmp_path):
    report = build_label_split(shards, tmp_path / "p", partial="p5", seed=3)
    source = stored(shards)
    labelled = stored(report.labelled)
    assert report.unlabelled is None and set(labelled) == set(source)
    for key, sample in labelled.items():
        assert sample["jpg"] == source[key]["jpg"]
        expected = sparsify_mask(decode_mask(source[key]["png"]), "p5", image_rng(3, key))
        np.testing.assert_array_equal(decode_mask(sample["png"]), expected)


def test_split_refuses_bad_requests(shards, tmp_path):
    with pytest.raises(DataError, match="exactly one"):
        build_label_split(shards, tmp_path / "x", num_labels=3, partial="p0")
    with pytest.raises(DataError, match="p0"):
        build_label_split(shards, tmp_path / "x", partial="p3")
    build_label_split(shards, tmp_path / "x", partial="p0")
    with pytest.raises(DataError, match="--overwrite"):
        build_label_split(shards, tmp_path / "x", partial="p0")
    build_label_split(shards, tmp_path / "x", num_labels=4, min_classes=1, overwrite=True)
    assert json.loads((tmp_path / "x" / SPLIT_FILE).read_text())["mode"] == "num_labels"


def test_split_command(shards, tmp_path):
    from cseg.main import app

    runner = CliRunner()
    result = runner.invoke(
        app, ["shards", "split", str(shards), str(tmp_path / "c"), "-n", "5", "-q"]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str((tmp_path / "c").resolve())
    assert len(stored(tmp_path / "c" / "labelled")) == 5


def test_real_voc_masks_split_by_both_rules(real_data, tmp_path):
    shards = tmp_path / "voc"
    build_shards("segmentation", real_data / "voc", shards, num_procs=1)
    chosen = build_label_split(shards, tmp_path / "n", num_labels=3, seed=0)
    for sample in stored(chosen.labelled).values():
        assert present_classes(decode_mask(sample["png"])).size >= 3  # the VOC default rule
    partial = build_label_split(shards, tmp_path / "p", partial="p1", seed=0)
    source = stored(shards)
    for key, sample in stored(partial.labelled).items():
        full, sparse = decode_mask(source[key]["png"]), decode_mask(sample["png"])
        for class_id in present_classes(full):
            target = int(0.01 * (full == class_id).sum())
            assert is_smallest_grown_square(sparse == class_id, full == class_id, target)
