"""Cloud storage without Ray, against a local S3 server (moto on 127.0.0.1).

`raycseg.storage` on a local folder and on s3://, shard sets read from a
bucket (manifest, shard lists, samples, a multi-process loader), the staged
`metrics.jsonl` of a run in a bucket, and run directories named and resumed
there. The Ray-level S3 run is in tests/train/test_fake_cluster.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import torch

from raycseg import storage
from raycseg.config import load_recipe
from raycseg.data.loaders import build_segmentation_eval_loader
from raycseg.data.synthetic import build_synthetic
from raycseg.errors import CsegError, DataError, RecipeError
from raycseg.run_directory import MetricsLog
from raycseg.shards.manifest import count_samples, list_shard_urls, read_manifest
from raycseg.shards.tars import iter_shard_samples
from raycseg.train.checkpoint import load_state, save_state
from raycseg.train.launch import choose_run_dir, prepare_data, run_pretrain


@pytest.fixture(params=["local", "s3"])
def base(request, tmp_path, s3_bucket) -> str | Path:
    """A folder to work in: local, or a prefix in the test bucket."""
    if request.param == "local":
        return tmp_path
    return f"{s3_bucket.url}/{request.node.name}"


@pytest.fixture(scope="module")
def shard_sets(tmp_path_factory, s3_bucket) -> tuple[Path, str]:
    """Tiny generated shard sets, on disk and copied to the bucket."""
    local = build_synthetic(
        tmp_path_factory.mktemp("s3data") / "data",
        seed=3, num_clips=4, val_clips=3, image_size=32, frames=6, num_procs=1,
    )  # fmt: skip
    url = f"{s3_bucket.url}/shards"
    s3_bucket.upload_folder(local, url)
    return local, url


def test_remote_files_round_trip_on_disk_and_in_a_bucket(base):
    folder = storage.join(base, "run")
    note, blob = storage.join(folder, "note.txt"), storage.join(folder, "sub", "blob.bin")
    storage.make_dirs(folder)
    assert not storage.exists(note) and not storage.is_file(note)

    storage.write_text(note, "one\n")
    storage.write_bytes(blob, b"\x00\x01")
    storage.write_text(note, "two\n")  # a write replaces the whole file
    assert storage.read_text(note) == "two\n"
    assert storage.is_file(note) and storage.exists(folder) and not storage.is_file(folder)
    assert storage.list_names(folder) == ["note.txt", "sub"]  # no partial files left behind
    assert storage.list_names(storage.join(base, "missing")) == []
    assert abs(storage.modified_time(note) - time.time()) < 600

    with storage.local_copy(note) as copy:
        assert copy.read_text() == "two\n"
    with storage.local_copy(folder) as copy:
        assert (copy / "sub" / "blob.bin").read_bytes() == b"\x00\x01"
    downloaded = isinstance(folder, str)  # a URL; a local folder is used in place
    assert copy.exists() != downloaded, "a download is removed after use, a local folder kept"


def test_url_of_names_the_scheme_of_the_filesystem():
    assert storage.url_of(pafs.LocalFileSystem(), "/runs/a") == "/runs/a"
    s3 = pafs.S3FileSystem(region="us-east-1")
    assert storage.url_of(s3, "bucket/runs/a/checkpoint_000005") == (
        "s3://bucket/runs/a/checkpoint_000005"
    )
    assert storage.join("s3://bucket/runs/", "a", "state.pt") == "s3://bucket/runs/a/state.pt"


def test_shard_sets_in_a_bucket_read_like_local_ones(shard_sets):
    local, url = shard_sets
    for kind in ("video", "segmentation"):
        manifest = read_manifest(f"{url}/{kind}")
        assert manifest == read_manifest(local / kind)
        for split in manifest["splits"]:
            urls = list_shard_urls(f"{url}/{kind}", split)
            paths = list_shard_urls(local / kind, split)
            assert [u.removeprefix(f"{url}/") for u in urls] == [
                str(Path(p).relative_to(local)) for p in paths
            ]
            assert count_samples(f"{url}/{kind}", split) == count_samples(local / kind, split)
            for shard_url, shard_path in zip(urls, paths, strict=True):
                remote_samples = list(iter_shard_samples(shard_url))
                local_samples = list(iter_shard_samples(shard_path))
                assert [s["__url__"] for s in remote_samples] == [shard_url] * len(remote_samples)
                strip = lambda samples: [  # noqa: E731
                    {k: v for k, v in s.items() if k != "__url__"} for s in samples
                ]
                assert strip(remote_samples) == strip(local_samples)


def test_a_bucket_without_a_manifest_names_the_fix(s3_bucket):
    with pytest.raises(DataError, match="cseg shards build"):
        read_manifest(f"{s3_bucket.url}/no-such-shards")


def test_loader_workers_stream_shards_from_the_bucket(shard_sets):
    local, url = shard_sets

    def batches(root, workers):
        urls = list_shard_urls(f"{root}/segmentation", "val")
        loader = build_segmentation_eval_loader(
            urls, input_policy="resize", input_size=32, batch_size=2, num_workers=workers
        )
        items = [(k, b["image"][i]) for b in loader for i, k in enumerate(b["key"])]
        return sorted(items, key=lambda item: item[0])

    from_bucket, from_disk = batches(url, workers=2), batches(str(local), workers=0)
    assert [k for k, _ in from_bucket] == [k for k, _ in from_disk] and len(from_disk) == 3
    for (_, a), (_, b) in zip(from_bucket, from_disk, strict=True):
        assert torch.equal(a, b)


def test_metrics_log_in_a_bucket_keeps_every_step_once_when_rank_0_is_lost(s3_bucket):
    location = f"{s3_bucket.url}/runs/lost/metrics.jsonl"
    first = MetricsLog(location)
    assert first.truncate_after(0) == 0
    for step in range(1, 8):
        first.append({"step": step})
        if step == 5:
            first.sync()  # the worker syncs before reporting the checkpoint of step 5
    # Rank 0 dies here: steps 6 and 7 were only in its staging file.
    assert [r["step"] for r in MetricsLog(location).read()] == [1, 2, 3, 4, 5]

    resumed = MetricsLog(location)  # a new rank 0, perhaps on another node
    assert resumed.truncate_after(5) == 0
    for step in range(6, 11):
        resumed.append({"step": step})
    resumed.close()
    assert [r["step"] for r in MetricsLog(location).read()] == list(range(1, 11))


def test_metrics_log_in_a_bucket_drops_steps_past_an_older_checkpoint(s3_bucket):
    location = f"{s3_bucket.url}/runs/older/metrics.jsonl"
    log = MetricsLog(location)
    for step in range(1, 11):
        log.append({"step": step})
    log.sync()
    # Ray restored the checkpoint of step 5, not the last one reported
    # (Ray Train resumes from the latest checkpoint it committed).
    assert MetricsLog(location).truncate_after(5) == 5
    assert [r["step"] for r in MetricsLog(location).read()] == [1, 2, 3, 4, 5]


def test_run_directories_in_a_bucket_are_named_resumed_and_fresh(s3_bucket):
    runs = f"{s3_bucket.url}/runs-choose"
    named = load_recipe("cacl/debug", [f"storage.path={runs}", "storage.name=exp"])
    assert choose_run_dir(named) == (f"{runs}/exp", False)
    with pytest.raises(CsegError, match="nothing to resume"):
        choose_run_dir(named, resume=True)
    storage.write_text(f"{runs}/exp/config.yaml", "name: x\n")
    assert choose_run_dir(named) == (f"{runs}/exp", True)

    unnamed = load_recipe("cacl/debug", [f"storage.path={runs}"])
    for stamp in ("20260101-000000", "20260102-000000"):
        storage.write_text(f"{runs}/cacl-debug-{stamp}/config.yaml", "name: x\n")
        time.sleep(1.1)  # object stores keep whole-second modification times
    storage.write_text(f"{runs}/other-20270101-000000/config.yaml", "name: y\n")
    assert choose_run_dir(unnamed, resume=True) == (f"{runs}/cacl-debug-20260102-000000", True)
    fresh, resumed = choose_run_dir(unnamed)
    assert fresh.startswith(f"{runs}/cacl-debug-") and not resumed and not storage.exists(fresh)


def test_bucket_storage_needs_train_workers_and_local_generated_data(s3_bucket):
    runs = f"{s3_bucket.url}/runs-refused"
    local_mode = load_recipe("cacl/debug", [f"storage.path={runs}", "scaling.num_workers=0"])
    with pytest.raises(RecipeError, match="num_workers"):
        run_pretrain(local_mode)
    assert not storage.exists(runs), "nothing is written before the error"
    generated_in_bucket = load_recipe("cacl/debug", [f"data.root={s3_bucket.url}/data"])
    with pytest.raises(RecipeError, match="data.root"):
        prepare_data(generated_in_bucket)


def test_checkpoint_state_loads_from_a_bucket(tmp_path, s3_bucket):
    state = {"step": 7, "model": {"w": torch.arange(4.0)}}
    save_state(tmp_path / "checkpoint_000007", state)
    url = f"{s3_bucket.url}/runs/ck/cacl/checkpoint_000007"
    s3_bucket.upload_folder(tmp_path / "checkpoint_000007", url)
    for location in (url, f"{url}/state.pt"):
        loaded = load_state(location)
        assert loaded["step"] == 7 and torch.equal(loaded["model"]["w"], torch.arange(4.0))
