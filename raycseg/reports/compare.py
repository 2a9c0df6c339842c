"""`cseg report A B ...`: one report comparing runs (or searches, by their best trial).

Written into an output folder: `report.md`, a self-contained `report.html` and
`compare_loss.png`, with

* the resolved recipes' differences: every dotted key of `config.yaml` whose value is
  not the same in all runs (a key a run lacks shows `-`);
* the `loss` curves overlaid against step;
* the eval scores side by side: mIoU per protocol (overclustering per K) and DAVIS J&F,
  each with its protocol fingerprint, so that scores of different protocols are not
  read as comparable.

An experiment directory stands for its best trial's run (`runs/<trial id>`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from matplotlib.figure import Figure

from raycseg.errors import CsegError

from .experiment import is_experiment_dir, load_experiment
from .render import Heading, Image, Paragraph, Table, format_number, save_figure, write_report_files
from .run import RunSummary, is_run_dir, load_run
from .run_plots import log_loss_axis

LOSS_PLOT = "compare_loss.png"


def resolve_runs(paths: list[Path]) -> list[tuple[str, Path]]:
    """(label, run directory) per path; an experiment gives its best trial's run.

    Raises:
        CsegError: a path that is neither kind, or an experiment without a best trial.
    """
    runs = []
    for path in (Path(p).expanduser().resolve() for p in paths):
        if is_run_dir(path):
            runs.append((path.name, path))
        elif is_experiment_dir(path):
            best = load_experiment(path).best
            if best is None or not is_run_dir(path / "runs" / best.trial_id):
                raise CsegError(f"{path} has no finished best trial with a run to compare")
            runs.append((f"{path.name}/{best.trial_id}", path / "runs" / best.trial_id))
        else:
            raise CsegError(
                f"{path} is neither a run directory (metrics.jsonl) nor a Tune experiment; pass "
                "the directories that `cseg pretrain` or `cseg tune` printed"
            )
    labels = [label for label, _ in runs]
    return [(f"{label} ({index})" if labels.count(label) > 1 else label, run)
            for index, (label, run) in enumerate(runs, start=1)]  # fmt: skip


def recipe_differences(configs: list[dict[str, Any]]) -> list[list[str]]:
    """Rows [key, value per run] of the dotted keys whose values differ between configs."""
    flat = [dict(_flatten(config)) for config in configs]
    keys = sorted({key for values in flat for key in values})
    missing = object()
    rows = []
    for key in keys:
        values = [values.get(key, missing) for values in flat]
        if any(value != values[0] for value in values[1:]):
            rows.append([key, *("-" if v is missing else str(v) for v in values)])
    return rows


def _flatten(value: Any, prefix: str = ""):
    if isinstance(value, dict) and value:
        for key, inner in value.items():
            yield from _flatten(inner, f"{prefix}{key}.")
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        for index, inner in enumerate(value):  # stages: by name where they have one
            yield from _flatten(inner, f"{prefix}{inner.get('name', index)}.")
    else:
        yield prefix.rstrip("."), value


def score_rows(summaries: list[RunSummary]) -> list[list[str]]:
    """Rows [protocol, score per run, fingerprints] for every score any run holds."""
    scores: dict[tuple[str, str], list[str]] = {}  # (row name, eval.json key) -> cells
    for column, summary in enumerate(summaries):
        found = {(score.protocol, score.key): score.miou for score in summary.evaluation}
        if summary.davis is not None:
            found["davis (J&F)", "davis"] = summary.davis["jf_mean"]
        for row, value in found.items():
            scores.setdefault(row, ["-"] * len(summaries))[column] = format_number(value)
    rows = []
    for (name, key), cells in scores.items():
        prints = {s.fingerprints.get(key) for s in summaries if s.fingerprints.get(key)}
        rows.append([name, *cells, ", ".join(sorted(prints)) or "-"])
    return rows


def plot_compared_losses(labelled: list[tuple[str, RunSummary]], path: Path) -> Path | None:
    """Every run's `loss` against step on one set of axes."""
    series = [(label, summary.series("loss")) for label, summary in labelled]
    series = [(label, steps, values) for label, (steps, values) in series if steps]
    if not series:
        return None
    figure = Figure(figsize=(10, 4.8), layout="constrained")
    axes = figure.add_subplot()
    for label, steps, values in series:
        axes.plot(steps, values, linewidth=1.6, label=label)
    if all(min(values) > 0 for _, _, values in series):
        log_loss_axis(axes)
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.set_title("training loss")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small", loc="upper right")
    return save_figure(figure, path)


def write_comparison_report(paths: list[Path], out: Path) -> list[Path]:
    """Compare two or more runs or searches in `out`; return the files written."""
    if len(paths) < 2:
        raise CsegError("a comparison needs two or more run or experiment directories")
    runs = resolve_runs(paths)
    labels = [label for label, _ in runs]
    summaries = [load_run(run) for _, run in runs]
    configs = [yaml.safe_load(summary.config_text) or {} for summary in summaries]
    out = Path(out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    plot = plot_compared_losses(list(zip(labels, summaries, strict=True)), out / LOSS_PLOT)
    differences = recipe_differences(configs)
    blocks = [
        Paragraph("Runs: " + "; ".join(f"{label}: `{run}`" for label, run in runs) + "."),
        Heading("Recipe differences"),
        Table(["key", *labels], differences)
        if differences
        else Paragraph("The resolved recipes are the same."),
        Heading("Training loss"),
    ]
    if plot is not None:
        blocks.append(Image(LOSS_PLOT, "loss against step, one line per run"))
    rows = score_rows(summaries)
    blocks += [
        Heading("Evaluation"),
        Paragraph(
            "mIoU per protocol (overclustering per K) and DAVIS J&F; scores compare only "
            "where the protocol fingerprints agree (one fingerprint in the last column)."
        ),
        Table(["protocol", *labels, "fingerprints"], rows, numeric=frozenset(labels))
        if rows
        else Paragraph("No run has an eval.json."),
    ]
    return [*write_report_files(out, "Run comparison", blocks), *([plot] if plot else [])]
