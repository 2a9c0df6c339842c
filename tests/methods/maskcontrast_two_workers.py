"""One rank of the two-process MaskContrast check (run by tests/methods/test_maskcontrast.py).

Usage: python maskcontrast_two_workers.py RANK WORLD PORT OUT_DIR

Both ranks build the same method (same seed), join a gloo group on 127.0.0.1
and save what the parent test compares to a single process:

* ``queue_after_enqueue``: the queue after each rank enqueues known prototypes
  (rank r's rows are filled with r + 1);
* ``shuffled_eval`` / ``local_eval``: key embeddings of this rank's images
  through shuffle-BN and through a plain forward, both with BN in eval mode
  (per-image outputs, so they must agree when the un-shuffle is right);
* ``shuffled_train`` / ``local_train``: the same with BN in train mode (batch
  statistics: they differ when the key batch really was shuffled);
* ``queue_after_forward``, ``pointer_after_forward``: after one training forward.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

BATCH = 3
IMAGE = 16


def main(rank: int, world: int, port: int, out_dir: Path) -> None:
    """Run the checks of one rank and save them to OUT_DIR/rank<r>.pt."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from raycseg.config import load_recipe
    from raycseg.methods.maskcontrast import MaskContrast, _shuffled_forward
    from raycseg.models import normalize_images

    recipe = load_recipe(
        "maskcontrast/debug",
        [f"stages.maskcontrast.data.batch_size={BATCH}", "stages.maskcontrast.queue_size=12",
         f"stages.maskcontrast.data.image_size={IMAGE}", f"scaling.num_workers={world}"],
        check_files=False,
    )  # fmt: skip
    torch.manual_seed(0)
    method = MaskContrast(recipe.stages[0], recipe.model)
    results = {}

    prototypes = torch.full((BATCH, method.queue.shape[1]), float(rank + 1))
    method._enqueue(prototypes)
    results["queue_after_enqueue"] = method.queue.clone()
    results["pointer_after_enqueue"] = int(method.queue_pointer)

    generator = torch.Generator().manual_seed(100 + rank)
    images = torch.randint(0, 256, (BATCH, 3, IMAGE, IMAGE), dtype=torch.uint8, generator=generator)
    encoder = method.key_encoder
    with torch.no_grad():
        for mode in ("eval", "train"):
            encoder.train(mode == "train")
            torch.manual_seed(7)  # rank 0's permutation; dropout noise alike on both paths
            results[f"shuffled_{mode}"] = _shuffled_forward(encoder, images)
            torch.manual_seed(7)
            results[f"local_{mode}"] = encoder(normalize_images(images))[0]

    method.train()
    batch = {
        "query": images,
        "key": images.flip(-1),
        "query_mask": torch.rand(BATCH, IMAGE, IMAGE, generator=generator) > 0.5,
        "key_mask": torch.rand(BATCH, IMAGE, IMAGE, generator=generator) > 0.5,
    }
    output = method(batch)
    output["loss"].backward()
    results["queue_after_forward"] = method.queue.clone()
    results["pointer_after_forward"] = int(method.queue_pointer)
    torch.save(results, out_dir / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]))
