"""VOS shards of the DAVIS-2017 layout: one sample per sequence, broken frames left out."""

from __future__ import annotations

import json

import numpy as np
import pytest

from raycseg.data.synthetic_vos import write_davis_tree
from raycseg.errors import DataError
from raycseg.media.images import decode_mask, encode_mask_png
from raycseg.shards.build import build_shards
from raycseg.shards.manifest import list_shard_urls, read_manifest
from raycseg.shards.tars import iter_shard_samples
from raycseg.shards.verify import verify_shards


def stored_sequences(root) -> dict[str, dict]:
    return {
        sample["__key__"]: sample
        for url in list_shard_urls(root, "val")
        for sample in iter_shard_samples(url)
    }


@pytest.mark.real_data
def test_the_real_davis_sequences_become_one_sample_each(real_data, tmp_path):
    report = build_shards("vos", real_data / "davis", tmp_path / "vos", layout="davis")
    assert report.counts == {"val": 3} and not report.skipped
    sequences = stored_sequences(tmp_path / "vos")
    frames = {key: json.loads(s["json"])["num_frames"] for key, s in sequences.items()}
    assert frames == {"blackswan": 30, "car-shadow": 30, "chair": 40}
    chair = sequences["chair"]
    meta = json.loads(chair["json"])
    assert meta["num_objects"] == 1 and meta["annotated"] == meta["frames"]
    assert (meta["height"], meta["width"]) == (480, 720)
    original = (real_data / "davis" / "Annotations" / "480p" / "chair" / "00005.png").read_bytes()
    assert chair["00005.png"] == original  # stored as given
    assert verify_shards(tmp_path / "vos").ok


def test_generated_sequences_hold_several_objects_and_broken_frames_are_left_out(tmp_path):
    tree = write_davis_tree(tmp_path / "davis", sequences=3, frames=6, image_size=32, seed=1)
    frames = tree / "JPEGImages" / "480p"
    masks = tree / "Annotations" / "480p"
    (frames / "shapes-00" / "00002.jpg").write_bytes(b"not a jpeg")
    bad = decode_mask((masks / "shapes-01" / "00003.png").read_bytes()).copy()
    bad[0, 0] = 9  # an object the first frame does not have
    (masks / "shapes-01" / "00003.png").write_bytes(encode_mask_png(bad))
    (masks / "shapes-02" / "00000.png").unlink()  # no first mask: the sequence is unusable

    report = build_shards("vos", tree, tmp_path / "vos", layout="davis")
    reasons = {entry["path"]: entry["reason"] for entry in report.skipped}
    images = "JPEGImages/480p"
    assert set(reasons) == {
        f"{images}/shapes-00/00002.jpg", f"{images}/shapes-01/00003.jpg", f"{images}/shapes-02"
    }, reasons  # fmt: skip
    assert "object ids 9" in reasons[f"{images}/shapes-01/00003.jpg"]
    assert "no mask" in reasons[f"{images}/shapes-02"]
    sequences = stored_sequences(tmp_path / "vos")
    assert set(sequences) == {"shapes-00", "shapes-01"}
    meta = json.loads(sequences["shapes-00"]["json"])
    assert meta["frames"] == ["00000", "00001", "00003", "00004", "00005"]
    assert meta["skipped_frames"] == ["00002"] and "00002.jpg" not in sequences["shapes-00"]
    assert json.loads(sequences["shapes-01"]["json"])["annotated"] == [
        "00000", "00001", "00002", "00004", "00005"
    ]  # fmt: skip
    first = decode_mask(sequences["shapes-00"]["00000.png"])
    assert meta["num_objects"] == int(first[first != 255].max()) >= 2
    assert read_manifest(tmp_path / "vos")["kind"] == "vos"
    assert verify_shards(tmp_path / "vos").ok


def test_a_tree_that_is_not_davis_names_the_layout_it_needs(tmp_path):
    with pytest.raises(DataError, match="not a DAVIS tree"):
        build_shards("vos", tmp_path, tmp_path / "out", layout="davis")
    with pytest.raises(DataError, match="--layout davis"):
        build_shards("vos", tmp_path, tmp_path / "out", layout="voc")


def test_hidden_objects_of_generated_sequences_are_void(tmp_path):
    tree = write_davis_tree(tmp_path, sequences=6, frames=8, image_size=32, objects=(3, 4))
    for mask_dir in sorted((tree / "Annotations" / "480p").iterdir()):
        first = decode_mask((mask_dir / "00000.png").read_bytes())
        count = int(first[first != 255].max())
        assert set(np.unique(first)) - {255} == set(range(count + 1))  # 0..N, all present
        for path in mask_dir.iterdir():
            ids = set(np.unique(decode_mask(path.read_bytes())))
            assert ids <= set(range(count + 1)) | {255}
