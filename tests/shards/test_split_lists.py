"""Reading split lists and finding a VOC tree's default (raycseg/shards/split_lists.py)."""

from __future__ import annotations

import pytest

from raycseg.errors import DataError
from raycseg.shards.split_lists import default_split_list, read_stem_list


def test_list_lines_give_stems_in_plain_and_deeplab_formats(tmp_path):
    path = tmp_path / "list.txt"
    path.write_text(
        "  2007_000032  \n\n/JPEGImages/2007_000039.jpg /SegmentationClassAug/2007_000039.png\n"
        "2008_000002 -1\nscan.v2\n"
    )
    assert read_stem_list(path, "--split-list") == {
        "2007_000032", "2007_000039", "2008_000002", "scan.v2",
    }  # fmt: skip


def test_voc_default_prefers_train_aug_and_never_takes_val(tmp_path):
    lists = tmp_path / "ImageSets" / "Segmentation"
    images = tmp_path / "JPEGImages"
    lists.mkdir(parents=True)
    images.mkdir()
    (lists / "val.txt").write_text("v\n")
    with pytest.raises(DataError, match="--split-list FILE"):
        default_split_list(images)
    for name in ("train.txt", "trainaug.txt", "train_aug.txt"):
        (lists / name).write_text("t\n")
        assert default_split_list(images) == lists / name
    assert default_split_list(tmp_path / "ImageSets") is None  # not a JPEGImages folder
