"""`cseg eval RUN_OR_CHECKPOINT [eval.KEY=VALUE ...]`: score frozen features."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path

import typer
from rich.table import Table

from raycseg.config import EVAL_PROTOCOLS
from raycseg.errors import FoundProblems

from .console import err, out

Protocol = Enum("Protocol", {name: name for name in EVAL_PROTOCOLS}, type=str)
Baseline = Enum("Baseline", {name: name for name in ("random", "none")}, type=str)
Suite = Enum("Suite", {"paper": "paper"}, type=str)


def evaluate(
    target: Path = typer.Argument(
        ...,
        help="A run directory, a checkpoint (state.pt or its folder), or plain backbone weights "
        "(torchvision, MoCo, DenseCL) with --recipe.",
    ),
    overrides: list[str] = typer.Argument(
        None,
        metavar="[eval.KEY=VALUE]...",
        help="Overrides of the run's eval section, as in recipes: eval.image_size=256 "
        "eval.linear_probe.epochs=10.",
    ),
    recipe: str = typer.Option(
        None, "--recipe", help="For plain weights: the recipe whose model and eval sections apply."
    ),
    data: str = typer.Option(
        None,
        "--data",
        help="Segmentation shards (default: the recipe's eval.data), or vos shards for davis.",
    ),
    vos: str = typer.Option(
        None, "--vos", help="VOS shards for the davis protocol (default: eval.davis.data)."
    ),
    save_predictions: Path = typer.Option(
        None,
        "--save-predictions",
        metavar="DIR",
        help="davis: write DIR/<sequence>/<frame>.png, DAVIS palette PNGs of every frame.",
    ),
    split: str = typer.Option("val", "--split", help="The split to score (no other stands in)."),
    num_classes: int = typer.Option(
        None,
        "--num-classes",
        min=2,
        help="Classes (default: the eval section's, else the shards').",
    ),
    protocol: list[Protocol] = typer.Option(
        None,
        "--protocol",
        "-p",
        help="Repeatable; segmentation scores a reco checkpoint's own predictions "
        "(default: the eval section's, else linear-probe and kmeans).",
    ),
    baseline: Baseline = typer.Option(
        None,
        "--baseline",
        help="random: also score the random-init backbone; none: do not (default: the recipe's).",
    ),
    suite: Suite = typer.Option(
        None,
        "--suite",
        help="paper: every protocol the checkpoint and data support, in one eval.json "
        "(k-means over 5 seeds); the others are listed as skipped.",
    ),
    json_output: bool = typer.Option(
        False, "--json", help="Print this evaluation's scores as JSON on stdout."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the path of eval.json."),
) -> None:
    """Evaluate a pretrained backbone and merge the scores into eval.json.

    A requested protocol that cannot run on the data says why and exits 1.
    """
    from raycseg.train.preflight import check_eval_inputs

    check_eval_inputs(target, overrides or [], data, split, vos)  # before torch: fast failures
    from raycseg.train.eval_targets import evaluate_target

    say = (lambda message: None) if quiet else (lambda message: err.print(message, markup=False))
    scores, path = evaluate_target(
        target, recipe=recipe, overrides=overrides or [], data=data, split=split,
        num_classes=num_classes, protocols=[p.value for p in protocol or []] or None,
        baseline=baseline.value if baseline else None, vos=vos,
        save_predictions=save_predictions, suite=suite is not None, on_message=say,
    )  # fmt: skip
    if quiet:
        out.print(str(path.resolve()), markup=False)
    elif json_output:
        out.print_json(json.dumps(scores))
    else:
        print_eval_table(scores)
        out.print(f"wrote {path.resolve()}", markup=False)
    if suite is None:  # a suite runs what can run; the rest is listed as skipped
        raise_if_skipped(scores)


def print_eval_table(scores: dict) -> None:
    """A protocol x (pretrained, random) mIoU table on stdout, and the data that was scored."""
    baseline = scores.get("baseline_random", {})
    table = Table("protocol", "pretrained mIoU", "random-init mIoU", "gain", title="evaluation")
    for name, result, random_init in miou_rows(scores, baseline):
        random_miou = (random_init or {}).get("miou")
        gain = "" if random_miou is None else f"{result['miou'] - random_miou:+.3f}"
        random_text = "" if random_miou is None else f"{random_miou:.3f}"
        table.add_row(name, _miou_text(result), random_text, gain)
    if table.row_count:
        out.print(table)
    if "davis" in scores:
        out.print(davis_line(scores["davis"], baseline.get("davis")), markup=False)
    data = scores.get("data")
    if data:
        out.print(
            f"scored: {data['shards']} split {data['split']}, {data['images']} images, "
            f"{len(data['classes'])} classes",
            markup=False,
        )


def miou_rows(scores: dict, baseline: dict) -> list[tuple[str, dict, dict | None]]:
    """(name, result, random-init result) of every mIoU score; overcluster gives one per K."""
    rows = []
    for name, result in scores.items():
        if isinstance(result, dict) and "miou" in result:
            rows.append((name, result, baseline.get(name)))
        elif isinstance(result, dict) and "per_k" in result:
            random_per_k = baseline.get(name, {}).get("per_k", {})
            rows += [(f"{name} K={k}", r, random_per_k.get(k)) for k, r in result["per_k"].items()]
    return rows


def _miou_text(result: dict) -> str:
    spread = f" ± {result['miou_std']:.3f}" if "miou_std" in result else ""
    return f"{result['miou']:.3f}{spread}"


def davis_line(result: dict, random_init: dict | None) -> str:
    """The davis scores in one line: J&F, J, F, the random-init J&F and what was scored."""
    line = (
        f"davis: J&F {result['jf_mean']:.3f} (J {result['j_mean']:.3f}, F {result['f_mean']:.3f})"
    )
    if random_init is not None:
        gain = result["jf_mean"] - random_init["jf_mean"]
        line += f"; random-init J&F {random_init['jf_mean']:.3f} ({gain:+.3f})"
    return (
        f"{line}; {len(result['sequences'])} sequences, {result['objects']} objects, "
        f"{result['frames_scored']} frames scored"
    )


def raise_if_skipped(scores: dict | None) -> None:
    """Exit 1 (after the results are out) when a requested protocol could not run."""
    skipped = (scores or {}).get("skipped") or {}
    if skipped:
        reasons = "; ".join(f"{key}: {reason}" for key, reason in skipped.items())
        raise FoundProblems(f"{len(skipped)} requested protocol(s) could not run ({reasons})")
