"""`VideoPairDecoder`: the frames it decodes reach the transform without a copy, unchanged."""

from __future__ import annotations

import weakref

import numpy as np
import torch

from raycseg.data.decoders import VideoPairDecoder, frame_view, image_tensor, video_member
from raycseg.data.transforms import PairViewTransform
from raycseg.media.video import decode_frames, open_video, sample_pair_indices
from raycseg.shards.manifest import list_shard_urls
from raycseg.shards.tars import iter_shard_samples


def test_frame_view_is_the_decoded_array_as_channels_first_without_a_copy():
    rgb = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    view = frame_view(rgb)
    assert view.shape == (3, 4, 5) and torch.equal(view, image_tensor(rgb))
    rgb[0, 0, 1] = 200  # same memory
    assert view[1, 0, 0] == 200


def test_pair_views_equal_the_transform_of_the_decoded_frames(tiny_synthetic):
    (url, *_) = list_shard_urls(tiny_synthetic / "video", "train")
    transform = PairViewTransform(24, hue_full_range=True)
    decoder = VideoPairDecoder(transform, (0.1, 0.3))
    for seed, sample in enumerate(iter_shard_samples(url)):
        item = decoder(sample, np.random.default_rng(seed))
        rng = np.random.default_rng(seed)  # the same draws, by hand, from contiguous copies
        reader = open_video(video_member(sample))
        indices = sample_pair_indices(len(reader), reader.get_avg_fps(), (0.1, 0.3), rng)
        frames = decode_frames(reader, list(indices))
        assert item["frame_indices"].tolist() == list(indices)
        assert torch.equal(item["view_a"], transform(image_tensor(frames[0]), rng))
        assert torch.equal(item["view_b"], transform(image_tensor(frames[1]), rng))


def test_the_reader_is_freed_before_the_frames_are_augmented(tiny_synthetic, monkeypatch):
    # decord's decoding thread keeps decoding read-ahead packets while its reader lives
    from raycseg.data import decoders

    readers = []

    def open_and_watch(data):
        reader = open_video(data)
        readers.append(weakref.ref(reader))
        return reader

    def transform(image, rng):
        assert readers[-1]() is None  # freed: its thread is stopped
        return image

    monkeypatch.setattr(decoders, "open_video", open_and_watch)
    (url, *_) = list_shard_urls(tiny_synthetic / "video", "train")
    sample = next(iter(iter_shard_samples(url)))
    item = VideoPairDecoder(transform, (0.1, 0.3))(sample, np.random.default_rng(0))
    assert item["view_a"].shape == (3, 32, 32) and len(readers) == 1
