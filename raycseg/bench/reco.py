"""ReCo benchmark: semi-supervised vs supervised on the same scarce labels, over seeds.

``benchmark_reco_semi(seeds=3, steps=600)`` builds the `reco/voc_60labels_debug` recipe's
generated segmentation data once, then for each seed ``s`` in ``0..seeds-1``:

1. splits it to one labelled pixel per class on every image (Partial Labels ``p0``,
   sampler seed ``s``);
2. trains the debug recipe (local mode, tiny backbone, 32 px) with ``seed=s`` on that
   split for ``steps`` steps, once with ``stages.reco.mode=supervised`` and once with
   ``mode`` (``semi``: the EMA teacher's pseudo-labels on the unlabelled stream; or
   ``partial``: the same with the sparse labels put into the pseudo-labels), the split's
   images serving as the unlabelled stream too;
3. records each run's best and final validation mIoU (validation every ``steps // 4``).

The report gives these per seed, their mean and sample standard deviation per mode, and
on how many seeds the semi-supervised run's best mIoU beat the supervised run's. Training
is deterministic per seed on a given machine and thread count, but the margin between the
two modes is small at this size, so one seed decides nothing: the figures are a
benchmark, not a test.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from raycseg.config import load_recipe
from raycseg.data.synthetic import prepare_data
from raycseg.errors import CsegError
from raycseg.run_directory import METRICS_FILE, MetricsLog
from raycseg.shards.splits import build_label_split
from raycseg.train.launch import run_pretrain

RECIPE = "reco/voc_60labels_debug"
MODES = ("semi", "partial")


def benchmark_reco_semi(
    seeds: int = 3,
    steps: int = 600,
    *,
    mode: str = "semi",
    workdir: Path | str | None = None,
    on_message: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Train supervised and `mode` ReCo on one labelled pixel per class for each seed.

    Args:
        seeds: how many seeds (0, 1, ... seeds-1): model, loader and split.
        steps: training steps per run (validation every steps // 4, at least 1).
        mode: the semi-supervised mode compared with supervised: `semi` or `partial`.
        workdir: where the data, splits and runs go (default: a temporary folder,
            removed afterwards).
        on_message: called with a line before each run.

    Returns:
        `{"recipe", "steps", "mode", "seeds": [per seed], "summary": {...}}`; see the
        module docstring.
    """
    if mode not in MODES:
        raise CsegError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    if seeds < 1 or steps < 1:
        raise CsegError("--seeds and --steps must be at least 1")
    if workdir is not None:
        return _benchmark(seeds, steps, mode, Path(workdir), on_message)
    with tempfile.TemporaryDirectory(prefix="cseg-bench-reco-") as folder:
        return _benchmark(seeds, steps, mode, Path(folder), on_message)


def _benchmark(
    seeds: int, steps: int, mode: str, root: Path, on_message: Callable[[str], None]
) -> dict[str, Any]:
    data = root / "data"
    recipe = load_recipe(RECIPE, [f"data.root={data}"], check_files=False)
    prepare_data(recipe, on_message)
    segmentation = data / recipe.data.synthetic.name / "segmentation"
    per_seed = []
    for seed in range(seeds):
        split = build_label_split(
            segmentation, root / f"p0-seed{seed}", partial="p0", seed=seed, overwrite=True
        )
        record: dict[str, Any] = {"seed": seed}
        for trained in ("supervised", mode):
            on_message(f"seed {seed}: {trained}, {steps} steps")
            record[trained] = _train(root, data, split.labelled, trained, seed, steps)
        record["semi_won"] = record[mode]["best_val_miou"] > record["supervised"]["best_val_miou"]
        per_seed.append(record)
    return {
        "recipe": RECIPE,
        "steps": steps,
        "mode": mode,
        "seeds": per_seed,
        "summary": _summary(per_seed, mode),
    }


def _train(root: Path, data: Path, labelled: Path, mode: str, seed: int, steps: int) -> dict:
    recipe = load_recipe(
        RECIPE,
        [
            f"data.root={data}",
            f"seed={seed}",
            f"storage.path={root / 'runs'}",
            f"storage.name={mode}-seed{seed}",
            f"stages.reco.mode={mode}",
            f"stages.reco.steps={steps}",
            f"stages.reco.val_every={max(steps // 4, 1)}",
            f"storage.checkpoint_every={steps}",
            "storage.log_every=50",
            f"stages.reco.data.train={labelled}",
            f"stages.reco.data.unlabelled={labelled}",
        ],
    )
    start = time.perf_counter()
    result = run_pretrain(recipe, new=True)
    seconds = time.perf_counter() - start
    records = MetricsLog(Path(result.run_dir, METRICS_FILE)).read()
    scored = [record for record in records if "val_miou" in record]
    if not scored:
        raise CsegError(f"run {result.run_dir} recorded no validation mIoU")
    return {
        "best_val_miou": max(record["val_miou"] for record in scored),
        "final_val_miou": scored[-1]["val_miou"],
        "seconds": seconds,
    }


def _summary(per_seed: list[dict], mode: str) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for trained in ("supervised", mode):
        best = [record[trained]["best_val_miou"] for record in per_seed]
        summary[trained] = {
            "best_val_miou_mean": statistics.fmean(best),
            "best_val_miou_std": statistics.stdev(best) if len(best) > 1 else None,
        }
    gains = [r[mode]["best_val_miou"] - r["supervised"]["best_val_miou"] for r in per_seed]
    summary["gain_mean"] = statistics.fmean(gains)
    summary["semi_wins"] = sum(record["semi_won"] for record in per_seed)
    summary["seeds"] = len(per_seed)
    return summary
