"""The procedural dataset: deterministic, masks consistent, classes not told apart by colour."""

from __future__ import annotations

import json

import numpy as np
import pytest

from raycseg.data.synthetic import build_synthetic
from raycseg.data.synthetic_clips import (
    SYNTHETIC_CLASSES,
    SyntheticConfig,
    _background,
    render_clip,
)
from raycseg.errors import DataError
from raycseg.media.images import decode_image, decode_mask
from raycseg.media.video import open_video
from raycseg.shards.manifest import list_shard_urls, read_manifest
from raycseg.shards.tars import iter_shard_samples

TINY = {"num_clips": 3, "val_clips": 2, "image_size": 32, "frames": 3, "num_procs": 1}


def samples_of(root, split):
    return {
        s["__key__"]: s for url in list_shard_urls(root, split) for s in iter_shard_samples(url)
    }


def test_three_shard_sets_with_the_expected_counts(tiny_synthetic):
    video, seg, sal = (
        read_manifest(tiny_synthetic / n) for n in ("video", "segmentation", "saliency")
    )
    assert {s: e["count"] for s, e in video["splits"].items()} == {"train": 6}
    assert {s: e["count"] for s, e in seg["splits"].items()} == {"train": 12, "val": 3}
    assert {s: e["count"] for s, e in sal["splits"].items()} == {"train": 12}
    assert video["mask_classes"] == list(SYNTHETIC_CLASSES) == seg["classes"]
    assert not (video["skipped"] or seg["skipped"] or sal["skipped"])
    info = json.loads((tiny_synthetic / "synthetic.json").read_text())
    assert info["seed"] == 3 and info["image_size"] == 32
    assert not (tiny_synthetic / ".source-tmp").exists()


def test_video_masks_match_frames_and_stills(tiny_synthetic):
    clips = samples_of(tiny_synthetic / "video", "train")
    stills = samples_of(tiny_synthetic / "segmentation", "train")
    saliency = samples_of(tiny_synthetic / "saliency", "train")
    for key, clip in clips.items():
        reader = open_video(clip["mp4"])
        assert len(reader) == 6 and reader[0].shape == (32, 32, 3) and reader.get_avg_fps() == 8
        strip = decode_mask(clip["masks.png"]).reshape(6, 32, 32)
        assert strip.max() < len(SYNTHETIC_CLASSES)
        assert key.startswith("train__clip_")  # keys come from the path under the source
        frames_kept = [k for k in stills if k.startswith(key.removeprefix("train__") + "_f")]
        assert len(frames_kept) == 2
        for still_key in frames_kept:
            t = int(still_key[-2:])
            np.testing.assert_array_equal(decode_mask(stills[still_key]["png"]), strip[t])
            np.testing.assert_array_equal(decode_mask(saliency[still_key]["png"]), strip[t] > 0)


def test_rendered_masks_mark_exactly_the_painted_pixels():
    cfg = SyntheticConfig(image_size=48, frames=4)
    for index in range(5):
        frames, masks = render_clip(np.random.default_rng([11, index]), cfg)
        background = np.clip(np.rint(_background(np.random.default_rng([11, index]), cfg)), 0, 255)
        untouched = (frames == background).all(axis=-1)
        assert (untouched[masks == 0]).all()
        assert (
            ~untouched[masks > 0]
        ).mean() > 0.95  # object colours hardly ever equal the background
        assert 0.3 < (masks == 0).mean() < 0.95


def test_objects_move_between_frames():
    frames, masks = render_clip(np.random.default_rng(5), SyntheticConfig(frames=8))
    assert (masks[0] != masks[-1]).mean() > 0.02


def test_colour_says_nothing_about_the_class():
    """Hue is random per instance, so a class's chroma vectors cancel out on average.

    With ~300 instances per class the mean chroma has about 1/sqrt(300) ~ 0.06
    of the pixels' chroma magnitude (the pixels of one instance share colours);
    a hue tied to the class would keep more than half of it.
    """
    cfg = SyntheticConfig(image_size=24, frames=1)
    chroma = {c: [] for c in range(1, 5)}
    for index in range(400):
        frames, masks = render_clip(np.random.default_rng([99, index]), cfg)
        rgb = frames[0].astype(np.float64)
        i = 0.596 * rgb[..., 0] - 0.274 * rgb[..., 1] - 0.322 * rgb[..., 2]
        q = 0.211 * rgb[..., 0] - 0.523 * rgb[..., 1] + 0.312 * rgb[..., 2]
        for cls in chroma:
            chroma[cls].append(np.stack([i[masks[0] == cls], q[masks[0] == cls]], axis=1))
    for cls, parts in chroma.items():
        values = np.concatenate(parts)
        magnitude = np.linalg.norm(values, axis=1).mean()
        assert magnitude > 30, cls  # the objects are coloured...
        assert np.linalg.norm(values.mean(axis=0)) < 0.25 * magnitude, cls  # ...but not by class


def test_builds_are_deterministic_from_the_seed(tmp_path):
    def digests(out):
        return [
            shard["sha256"]
            for name in ("video", "segmentation", "saliency")
            for entry in read_manifest(out / name)["splits"].values()
            for shard in entry["shards"]
        ]

    first = digests(build_synthetic(tmp_path / "a", seed=1, **TINY))
    again = digests(build_synthetic(tmp_path / "b", seed=1, **TINY))
    other = digests(build_synthetic(tmp_path / "c", seed=2, **TINY))
    assert first == again
    assert all(x != y for x, y in zip(first, other, strict=True))


def test_existing_dataset_needs_overwrite(tmp_path):
    build_synthetic(tmp_path / "d", seed=0, **TINY)
    with pytest.raises(DataError, match="--overwrite"):
        build_synthetic(tmp_path / "d", seed=0, **TINY)
    build_synthetic(tmp_path / "d", seed=4, overwrite=True, **TINY)
    assert json.loads((tmp_path / "d" / "synthetic.json").read_text())["seed"] == 4


def test_inconsistent_or_undecodable_sizes_are_refused(tmp_path):
    with pytest.raises(DataError, match="min_objects"):
        build_synthetic(tmp_path / "e", min_objects=3, max_objects=2)
    with pytest.raises(DataError, match="image-size"):
        build_synthetic(tmp_path / "e", **{**TINY, "image_size": 48})
    assert not (tmp_path / "e").exists()


def test_stills_are_real_jpeg_frames(tiny_synthetic):
    still = next(iter(samples_of(tiny_synthetic / "segmentation", "val").values()))
    assert still["jpg"][:3] == b"\xff\xd8\xff" and decode_image(still["jpg"]).shape == (32, 32, 3)


def recipe_with_generated_data(root, **synthetic):
    from raycseg.config import load_recipe

    spec = {"name": "gen", "seed": 0, "num_clips": 4, "val_clips": 2, "image_size": 32,
            "frames": 3, **synthetic}  # fmt: skip
    overrides = [
        f"data.root={root}",
        f"data.synthetic={json.dumps(spec)}",
        "stages.cacl.data.train=gen/video",
        "stages.cacl.data.val=gen/segmentation",
        "eval.data=gen/segmentation",
    ]  # fmt: skip  (generated data is built when read)
    return load_recipe("cacl/debug", overrides, check_files=False)


def test_a_recipe_data_is_built_once_in_place_and_rebuilt_when_its_spec_changes(tmp_path):
    from raycseg.data.synthetic import prepare_data

    messages: list[str] = []
    prepare_data(recipe_with_generated_data(tmp_path), messages.append)
    manifest = tmp_path / "gen" / "video" / "manifest.json"
    built = manifest.stat().st_mtime_ns
    assert read_manifest(tmp_path / "gen" / "video")["kind"] == "video"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gen"], "no staging folder left"

    prepare_data(recipe_with_generated_data(tmp_path), messages.append)
    assert manifest.stat().st_mtime_ns == built and len(messages) == 2, "the same spec: kept"

    prepare_data(recipe_with_generated_data(tmp_path, seed=1), messages.append)
    assert json.loads((tmp_path / "gen" / "spec.json").read_text())["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gen"], "the stale build is gone"


def test_a_build_that_lost_the_race_to_another_node_process_is_dropped(tmp_path, monkeypatch):
    """Two builders on one node: the one renaming second keeps the first one's data."""
    from raycseg.data import synthetic

    recipe = recipe_with_generated_data(tmp_path)
    real_build = synthetic.build_synthetic

    def build_while_another_finishes(out, **spec):
        real_build(out, **spec)
        monkeypatch.setattr(synthetic, "build_synthetic", real_build)
        synthetic.prepare_data(recipe)  # the other builder, finishing first

    monkeypatch.setattr(synthetic, "build_synthetic", build_while_another_finishes)
    synthetic.prepare_data(recipe)
    assert synthetic._built_with(
        tmp_path / "gen", recipe.data.synthetic.model_dump(exclude={"name"})
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gen"]
