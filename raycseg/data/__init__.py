"""Training and evaluation data streamed from shard sets.

* `streams`: `ShardStream`, split by rank and loader worker, shuffled, resumable,
  skipping corrupt samples;
* `transforms`: the views' augmentations on uint8 tensors;
* `decoders`: one shard sample into one training or evaluation item;
* `loaders`: one DataLoader builder per kind of stage stream;
* `synthetic` / `synthetic_clips`: the generated datasets of the quickstart and tests.

Decoding media lives in `raycseg.media`; building and checking shard sets in `raycseg.shards`.
"""
