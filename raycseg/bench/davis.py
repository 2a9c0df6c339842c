"""DAVIS benchmark: a checkpoint's J&F against its random init on generated sequences.

``benchmark_davis(checkpoint, seeds=5)`` draws, for each seed ``s`` in ``0..seeds-1``, a
set of generated multi-object sequences (`raycseg.data.synthetic_vos`: the procedural
shapes of the quickstart's data, moving over a panning background, with known masks),
builds their VOS shards and runs the davis protocol (`raycseg.eval.davis`) twice: on the
checkpoint's backbone and on the run's exact initial weights. The report gives both
J&F per seed, the gain, its mean and sample standard deviation, and on how many seeds
the checkpoint won. The sequences are drawn at the size the quickstart trains at
(64 px) and scored there (`eval.davis.resolution` = the frame size), so nothing is
resized. It is a benchmark and not a test: the margin depends on the training run.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from raycseg.data.synthetic_vos import write_davis_tree
from raycseg.shards.build import build_shards
from raycseg.train.eval_targets import resolve_target, with_eval_overrides
from raycseg.train.evaluation import evaluate_checkpoint


def benchmark_davis(
    checkpoint: Path,
    seeds: int = 5,
    *,
    sequences: int = 4,
    frames: int = 24,
    image_size: int = 64,
    overrides: list[str] | None = None,
    on_message: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Pretrained vs random-init J&F per seed of generated sequences (see the module doc)."""
    trained, weights, _ = resolve_target(checkpoint)
    resolution = [f"eval.davis.resolution={image_size}", *(overrides or [])]
    recipe = with_eval_overrides(trained, resolution, None)
    rounds = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="raycseg-bench-davis-") as scratch:
        for seed in range(seeds):
            tree = write_davis_tree(Path(scratch) / f"tree-{seed}", sequences=sequences,
                                    frames=frames, image_size=image_size, seed=seed)  # fmt: skip
            shards = Path(scratch) / f"vos-{seed}"
            build_shards("vos", tree, shards, layout="davis", num_procs=1)
            scores = evaluate_checkpoint(
                weights, recipe, vos=str(shards), protocols=["davis"], baseline="random"
            )  # run_dir None: the run's own eval.json is left alone
            pretrained = scores["davis"]["jf_mean"]
            random_init = scores["baseline_random"]["davis"]["jf_mean"]
            rounds.append({"seed": seed, "pretrained_jf": round(pretrained, 4),
                           "random_init_jf": round(random_init, 4),
                           "gain": round(pretrained - random_init, 4),
                           "objects": scores["davis"]["objects"]})  # fmt: skip
            on_message(f"seed {seed}: J&F {pretrained:.4f} vs random init {random_init:.4f}")
    gains = [r["gain"] for r in rounds]
    return {
        "checkpoint": str(checkpoint),
        "sequences_per_seed": sequences,
        "frames": frames,
        "image_size": image_size,
        "mean_pretrained_jf": round(statistics.mean(r["pretrained_jf"] for r in rounds), 4),
        "mean_random_init_jf": round(statistics.mean(r["random_init_jf"] for r in rounds), 4),
        "mean_gain": round(statistics.mean(gains), 4),
        "std_gain": round(statistics.stdev(gains), 4) if len(gains) > 1 else None,
        "seeds_won": sum(gain > 0 for gain in gains),
        "seconds": round(time.perf_counter() - started, 1),
        "rounds": rounds,
    }
