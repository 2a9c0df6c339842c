"""Media: decode and encode images, masks and video, and the label and saliency rules.

* `images`: JPEG / PNG bytes to uint8 arrays and back (Pillow);
* `video`: clips decoded by decord from in-memory bytes, and frame-pair sampling;
* `labels`: the class lists and valid mask ids of each segmentation layout (255 = ignore);
* `saliency`: a weight-free saliency detector and MaskContrast's mask post-processing.

Nothing here knows about shards or training; `raycseg.shards` and `raycseg.data` build on it.
"""
