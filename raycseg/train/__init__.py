"""`cseg pretrain` and `cseg eval`: Ray Train runs of a recipe's stages, and their evaluation.

`launch.py` is the driver (one `TorchTrainer` run per stage, in recipe order);
`worker.py` holds the training loop every Ray Train worker runs; `checkpoint.py`
the state files; `evaluation.py` scores a run or checkpoint into `eval.json`;
`export.py` writes a run's backbone as a torchvision state dict.
"""
