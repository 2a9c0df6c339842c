"""`cseg shards build|synthetic|inspect|verify` in process on the root app (cli/shards.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cseg.main import app
from cseg.shards import parse_size
from typer.testing import CliRunner

from raycseg.media.images import encode_jpeg

runner = CliRunner()


def invoke(*args):
    """`cseg shards ARGS`; a known error is one line on stderr and its exit code."""
    return runner.invoke(app, ["shards", *(str(a) for a in args)])


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        (folder / f"im{i}.jpg").write_bytes(encode_jpeg(np.full((8, 8, 3), 60 * i, np.uint8)))
    return folder


def test_build_prints_the_table_and_quiet_prints_only_the_path(images, tmp_path):
    result = invoke("build", "--kind", "image", images, tmp_path / "out", "--procs", "1")
    assert result.exit_code == 0, result.output
    assert "all" in result.stdout and "manifest.json" in result.stdout
    result = invoke("build", "--kind", "image", images, tmp_path / "q", "--quiet", "--procs", "1")
    assert result.exit_code == 0 and result.stdout.strip() == str((tmp_path / "q").resolve())


@pytest.mark.real_data
def test_build_with_broken_inputs_exits_1_and_lists_them(real_data, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "good.mp4").symlink_to(real_data / "videos" / "imageio_realshort.mp4")
    (src / "empty.mp4").symlink_to(real_data / "broken" / "empty.mp4")
    result = invoke("build", "--kind", "video", src, tmp_path / "out", "--procs", "1")
    assert result.exit_code == 1 and "1 inputs were skipped" in result.stderr
    assert (
        json.loads((tmp_path / "out" / "manifest.json").read_text())["skipped"][0]["path"]
        == "empty.mp4"
    )


def test_usage_and_data_errors_exit_2(images, tmp_path):
    result = invoke("build", "--kind", "image", tmp_path / "missing", tmp_path / "out")
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    invoke("build", "--kind", "image", images, tmp_path / "out", "--procs", "1")
    result = invoke("build", "--kind", "image", images, tmp_path / "out")
    assert result.exit_code == 2 and "--overwrite" in result.stderr
    result = invoke("build", "--kind", "image", images)
    assert result.exit_code == 2 and "SRC and OUT" in result.stderr
    result = invoke("build", "--kind", "image", images, tmp_path / "o2", "--max-size", "lots")
    assert result.exit_code == 2 and "lots" in result.stderr


def test_parse_size_units():
    assert parse_size("1GB") == 1 << 30 and parse_size("500mb") == 500 << 20
    assert parse_size("4096") == 4096 and parse_size("1.5k") == 1536


def test_saliency_build_takes_images_and_masks_options(tmp_path):
    images, masks = tmp_path / "img", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    (images / "a.jpg").write_bytes(encode_jpeg(np.zeros((8, 8, 3), np.uint8)))
    from raycseg.media.images import encode_mask_png

    (masks / "a.png").write_bytes(encode_mask_png(np.eye(8, dtype=np.uint8) * 255))
    result = invoke(
        "build", "--kind", "saliency", "--images", images, "--masks", masks, tmp_path / "s"
    )
    assert result.exit_code == 0, result.output


def test_synthetic_inspect_and_verify(tmp_path):
    out = tmp_path / "syn"
    result = invoke("synthetic", out, "--num-clips", 2, "--val-clips", 1, "--image-size", 32,
                    "--frames", 3, "--procs", 1)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "segmentation" in result.stdout and "saliency" in result.stdout
    result = invoke("inspect", out / "video")
    assert (
        result.exit_code == 0 and "mask classes" in result.stdout and "duration_s" in result.stdout
    )
    summary = json.loads(invoke("inspect", out / "segmentation", "--json").stdout)
    assert summary["splits"]["val"]["samples"] == 1 and len(summary["classes"]) == 5
    result = invoke("verify", out / "video", "--procs", 1)
    assert result.exit_code == 0 and "ok:" in result.stdout
    shard = next((out / "video" / "train").glob("*.tar"))
    shard.write_bytes(shard.read_bytes()[:-1024] + b"\x01" * 1024)
    result = invoke("verify", out / "video", "--procs", 1)
    assert result.exit_code == 1


def test_saliency_build_in_a_voc_tree_names_its_default_list_on_stderr(voc_saliency_tree, tmp_path):
    images, masks = voc_saliency_tree(tmp_path, ["t1", "t2"], ["v1"])
    result = invoke("build", "--kind", "saliency", images, tmp_path / "s", "--masks", masks,
                    "--procs", 1)  # fmt: skip
    assert result.exit_code == 0, result.output
    default_lines = [line for line in result.stderr.splitlines() if "VOC default" in line]
    assert len(default_lines) == 1 and "ImageSets/Segmentation/train.txt" in default_lines[0]
    assert "VOC default" not in result.stdout
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["splits"]["all"]["count"] == 2 and manifest["selection"]["not_in_list"] == 1


def test_saliency_split_list_and_exclude_options_and_a_missing_list_exit_2(
    voc_saliency_tree, tmp_path
):
    images, masks = voc_saliency_tree(tmp_path, ["t1", "t2"], ["v1"])
    (tmp_path / "keep.txt").write_text("t1\nt2\nv1\nghost\n")
    (tmp_path / "drop.txt").write_text("t2\n")
    result = invoke("build", "--kind", "saliency", "--images", images, "--masks", masks,
                    "--split-list", tmp_path / "keep.txt", "--exclude", tmp_path / "drop.txt",
                    tmp_path / "s", "--procs", 1)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "VOC default" not in result.stderr
    assert "1 listed stems have no image/mask pair (e.g. ghost;" in result.stderr
    selection = json.loads((tmp_path / "s" / "manifest.json").read_text())["selection"]
    assert (selection["kept"], selection["excluded"], selection["listed_without_pair"]) == (2, 1, 1)
    result = invoke("build", "--kind", "saliency", "--images", images, "--masks", masks,
                    "--split-list", tmp_path / "nowhere.txt", tmp_path / "x")  # fmt: skip
    assert result.exit_code == 2 and "nowhere.txt does not exist" in result.stderr
    assert not (tmp_path / "x").exists()


def test_video_builds_transcode_by_default_and_none_keeps_the_original(tmp_path):
    from raycseg.data.synthetic_clips import encode_mp4

    clips = tmp_path / "clips"
    clips.mkdir()
    frames = np.random.default_rng(0).integers(0, 255, (4, 64, 128, 3), np.uint8)
    (clips / "a.mp4").write_bytes(encode_mp4(frames, fps=8))
    result = invoke("build", "--kind", "video", clips, tmp_path / "t", "--short-side", "32",
                    "--procs", "1")  # fmt: skip
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "t" / "manifest.json").read_text())
    assert manifest["transcode"] == {"codec": "h264", "short_side": 32, "gop": 8, "crf": 23,
                                     "bframes": 0, "fast_decode": True}  # fmt: skip
    assert manifest["stats"]["all"]["width"]["max"] == 64
    result = invoke("build", "--kind", "video", clips, tmp_path / "o", "--transcode", "none",
                    "--procs", "1")  # fmt: skip
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["transcode"] is None and manifest["stats"]["all"]["width"]["max"] == 128


def test_a_ray_address_nobody_answers_at_is_one_line_before_ray_starts(images, tmp_path):
    import socket
    import sys

    with socket.socket() as probe:  # a port that was free a moment ago: nobody listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for address, fix in [(f"127.0.0.1:{port}", "ray start --head"), ("nohost", "HOST:PORT")]:
        result = invoke("build", "--kind", "image", images, tmp_path / "o", "--address", address)
        assert result.exit_code == 2 and fix in result.stderr, result.output
        assert len(result.stderr.strip().splitlines()) == 1
    result = invoke(
        "build", "--kind", "image", images, tmp_path / "o", "--address", "x:1", "--procs", "2"
    )
    assert result.exit_code == 2 and "drop one" in result.stderr
    assert not (tmp_path / "o").exists()
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()
