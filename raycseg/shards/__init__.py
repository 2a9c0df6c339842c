"""Shard sets: build them from a source, read and check them, split them for label scarcity.

* `build`: `build_shards`, a source (folder, CSV or dataset tree) into webdataset
  shards plus a manifest; `sources`, `samples` and `split_lists` find, prepare and
  select its inputs;
* `manifest`: what a shard set holds, read without touching a shard (no torch);
* `tars`: the shard files themselves, written and streamed;
* `verify`: a built set checked against its manifest, every sample decoded;
* `splits`: label-scarce splits of a segmentation set (ReCo's benchmarks).

The training and evaluation loaders that stream shard sets are `raycseg.data`.
"""
