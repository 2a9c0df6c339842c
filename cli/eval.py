"""`cseg eval RUN_OR_CHECKPOINT --data SEG_SHARDS`: score frozen features (CONTRACTS.md §3)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from .console import err, out


def evaluate(
    target: Path = typer.Argument(
        ...,
        help="A run directory, a checkpoint (state.pt or its folder), or plain backbone weights "
        "(torchvision, MoCo, DenseCL) with --recipe.",
    ),
    recipe: str = typer.Option(
        None, "--recipe", help="For plain weights: the recipe whose model and eval sections apply."
    ),
    data: str = typer.Option(
        None, "--data", help="Segmentation shards (default: the recipe's eval.data)."
    ),
    protocol: list[str] = typer.Option(
        None,
        "--protocol",
        "-p",
        help="Repeatable: linear-probe, kmeans, maskcontrast-kmeans, segmentation (a reco "
        "checkpoint's own predictions) (default: linear-probe and kmeans).",
    ),
    baseline: str = typer.Option(
        None, "--baseline", help="`random`: also score the random-init backbone."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the path of eval.json."),
) -> None:
    """Evaluate a pretrained backbone and merge the scores into eval.json."""
    from raycseg.train.evaluation import evaluate_target

    say = (lambda message: None) if quiet else (lambda message: err.print(message, markup=False))
    scores, path = evaluate_target(
        target, recipe=recipe, data=data, protocols=protocol or None, baseline=baseline,
        on_message=say,
    )  # fmt: skip
    if quiet:
        out.print(str(path.resolve()), markup=False)
        return
    print_eval_table(scores)
    out.print(f"wrote {path.resolve()}", markup=False)


def print_eval_table(scores: dict) -> None:
    """A protocol x (pretrained, random) mIoU table on stdout."""
    baseline = scores.get("baseline_random", {})
    table = Table("protocol", "pretrained mIoU", "random-init mIoU", "gain", title="evaluation")
    for name, result in scores.items():
        if not isinstance(result, dict) or "miou" not in result:
            continue
        random_miou = baseline.get(name, {}).get("miou")
        gain = "" if random_miou is None else f"{result['miou'] - random_miou:+.3f}"
        random_text = "" if random_miou is None else f"{random_miou:.3f}"
        table.add_row(name, f"{result['miou']:.3f}", random_text, gain)
    out.print(table)
