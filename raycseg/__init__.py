"""raycseg: dense contrastive pretraining for segmentation on Ray."""

__version__ = "0.1.0"
