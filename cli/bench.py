"""`cseg bench train|data|decode-pool|loss|reco-semi|davis`: measured throughput, memory and accuracy.

Each command prints its results as tables and, with `--json FILE`, writes them as JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import typer
from rich.table import Table

from .console import err, out

app = typer.Typer(
    help="Benchmarks: training steps, data decoding, losses, ReCo semi vs supervised.",
    epilog="""Examples:

cseg bench train reco/voc_60labels --synthetic stages.reco.data.batch_size=2
cseg bench loss cacl
cseg bench data data/synthetic/video --seconds 5""",
    no_args_is_help=True,
)


@app.command(
    "train",
    epilog="""Examples:

cseg bench train cacl/debug --synthetic
cseg bench train reco/voc_60labels --synthetic stages.reco.data.batch_size=2
cseg bench train quickstart --steps 20 --json step.json   # its own shards""",
)
def bench_train(
    recipe: str = typer.Argument(..., help="A shipped recipe name or a YAML path."),
    overrides: list[str] = typer.Argument(None, help="key=value overrides of the recipe."),
    stage: str = typer.Option(None, "--stage", help="The stage to time (default: the first)."),
    steps: int = typer.Option(10, "--steps", min=1, help="Timed steps (after the warm-up)."),
    warmup: int = typer.Option(2, "--warmup", min=0, help="Untimed steps first."),
    synthetic: bool = typer.Option(
        False, "--synthetic", help="Random batches of the stage's shapes and random weights."
    ),
    threads: int = typer.Option(None, "--threads", min=1, help="torch CPU threads."),
    device: str = typer.Option(None, "--device", help="cuda or cpu (default: cuda if present)."),
    json_out: Path = typer.Option(None, "--json", help="Also write the results here."),
) -> None:
    """One stage's training steps in this process, without Ray.

    Reports the step's time split, FLOPs, host syncs, memory, and the overhead over a
    step of the bare network passes (docs/benchmarks.md, "Training step").
    """
    import torch

    from raycseg.bench.train_step import benchmark_training_step
    from raycseg.config import load_recipe

    loaded = load_recipe(recipe, overrides or [], check_files=not synthetic)
    if threads:
        torch.set_num_threads(threads)
    results = benchmark_training_step(
        loaded, stage_name=stage, steps=steps, warmup=warmup, synthetic=synthetic, device=device,
        on_progress=lambda line: err.print(line, markup=False),
    )  # fmt: skip
    _show(f"training step: {results['recipe']} / {results['stage']}", results, json_out)


@app.command(
    "data",
    epilog="""Examples:

cseg bench data data/synthetic/video
cseg bench data k400 --vs k400-original --augment --json data.json
cseg bench data data/k400 --workers 4 --pairs-per-s 1000""",
)
def bench_data(
    shards: Path = typer.Argument(
        ..., help="A video shard folder (from `cseg shards build --kind video`)."
    ),
    vs: Path = typer.Option(
        None, "--vs", metavar="OTHER", help="A second video shard set to compare SHARDS with."
    ),
    workers: int = typer.Option(1, "--workers", help="DataLoader workers of the streaming path."),
    seconds: float = typer.Option(10.0, "--seconds", help="Time budget per set and round."),
    rounds: int = typer.Option(1, "--rounds", help="Rounds (the medians are reported)."),
    augment: bool = typer.Option(False, "--augment", help="Include the training augmentations."),
    pairs_per_s: float = typer.Option(
        None, "--pairs-per-s", help="A GPU's pairs/s: report the decode cores it needs."
    ),
    json_out: Path = typer.Option(None, "--json", help="Also write the results here."),
) -> None:
    """Training pairs per CPU-second of video shards (and of OTHER), and against raw decord."""
    from raycseg.bench.data import benchmark_decoding

    roots = [shards] if vs is None else [shards, vs]
    err.print(f"decoding for about {2 * seconds * rounds * len(roots):.0f} s", markup=False)
    results = benchmark_decoding(
        roots, num_workers=workers, seconds=seconds, rounds=rounds, augment=augment,
        pairs_per_s=pairs_per_s,
    )  # fmt: skip
    _show("data decoding", results, json_out)


@app.command(
    "decode-pool",
    epilog="""Examples:

cseg bench decode-pool k400
cseg bench decode-pool k400 --processes 2 --seconds 30 --json pool.json""",
)
def bench_decode_pool(
    shards: Path = typer.Argument(
        ..., help="A video shard folder (from `cseg shards build --kind video`)."
    ),
    processes: int = typer.Option(2, "--processes", help="Decode processes of each path."),
    seconds: float = typer.Option(20.0, "--seconds", help="Time budget per path."),
    image_size: int = typer.Option(224, "--image-size", help="Side of the augmented views."),
    json_out: Path = typer.Option(None, "--json", help="Also write the results here."),
) -> None:
    """Augmented training pairs per second: the in-worker loader vs the Ray Data decode pool."""
    from raycseg.bench.decode_pool import benchmark_decode_pool

    err.print(f"decoding for about {2 * seconds:.0f} s, then starting Ray", markup=False)
    results = benchmark_decode_pool(
        shards, processes=processes, seconds=seconds, image_size=image_size
    )
    _show("in-worker loader vs Ray Data pool", results, json_out)


LossName = Literal[
    "cacl",
    "cacl-global",
    "cacl-pixel",
    "cacl-cycle",
    "crw-walk",
    "maskcontrast",
    "maskcontrast-feature",
    "reco",
]


@app.command(
    "loss",
    epilog="""Examples:

cseg bench loss cacl
cseg bench loss reco --threads 4 --json reco.json""",
)
def bench_loss(
    name: LossName = typer.Argument(..., help="The loss (or loss term) to time."),
    threads: int = typer.Option(1, "--threads", help="torch CPU threads."),
    repeats: int = typer.Option(
        3, "--repeats", help="Timed repetitions (time_s is the median, time_s_min the best)."
    ),
    json_out: Path = typer.Option(None, "--json", help="Also write the results here."),
) -> None:
    """Forward+backward time and peak memory of a loss at the issue's reference shapes."""
    from raycseg.bench.losses import benchmark_loss

    err.print(f"benchmarking {name} on {threads} thread(s)", markup=False)
    _show(f"loss: {name}", benchmark_loss(name, threads=threads, repeats=repeats), json_out)


@app.command(
    "reco-semi",
    epilog="""Examples:

cseg bench reco-semi                      # 3 seeds, 600 steps per run
cseg bench reco-semi --seeds 5 --mode partial --json reco-semi.json""",
)
def bench_reco_semi(
    seeds: int = typer.Option(3, "--seeds", help="Seeds 0..N-1 (model, loader and split)."),
    steps: int = typer.Option(600, "--steps", help="Training steps per run."),
    mode: Literal["semi", "partial"] = typer.Option(
        "semi", "--mode", help="The semi-supervised ReCo mode compared with supervised."
    ),
    workdir: Path = typer.Option(
        None, "--workdir", help="Keep the data and runs here (default: a temporary folder)."
    ),
    json_out: Path = typer.Option(None, "--json", help="Also write the results here."),
) -> None:
    """Best validation mIoU of supervised vs semi-supervised ReCo, per seed and overall.

    Trains the debug recipe with one labelled pixel per class; reports each seed's
    scores, their mean and std, and on how many seeds semi won.
    """
    from raycseg.bench.reco import benchmark_reco_semi

    err.print(f"training supervised and {mode} ReCo, {seeds} seed(s) x {steps} steps", markup=False)
    results = benchmark_reco_semi(
        seeds,
        steps,
        mode=mode,
        workdir=workdir,
        on_message=lambda line: err.print(line, markup=False),
    )
    _show(f"reco: {mode} vs supervised", results, json_out)


@app.command(
    "davis",
    epilog="""Examples:

cseg bench davis runs/quickstart           # 5 seeds x 4 sequences
cseg bench davis runs/quickstart eval.davis.feature_stride=4""",
)
def bench_davis(
    run: Path = typer.Argument(..., help="A run directory or raycseg checkpoint."),
    overrides: list[str] = typer.Argument(
        None, metavar="[eval.davis.KEY=VALUE]...", help="Overrides of the davis protocol."
    ),
    seeds: int = typer.Option(5, "--seeds", help="Seeds 0..N-1 of the generated sequences."),
    sequences: int = typer.Option(4, "--sequences", help="Sequences per seed."),
    frames: int = typer.Option(24, "--frames", help="Frames per sequence."),
    size: int = typer.Option(64, "--size", help="Frame size in pixels (scored as is)."),
    json_out: Path = typer.Option(None, "--json", help="Also write the results here."),
) -> None:
    """J&F of a checkpoint against its random init on generated multi-object sequences.

    Reports each seed's J&F for both, the gain, its mean and std, and the seeds won.
    """
    from raycseg.bench.davis import benchmark_davis

    results = benchmark_davis(
        run, seeds, sequences=sequences, frames=frames, image_size=size,
        overrides=overrides or [], on_message=lambda line: err.print(line, markup=False),
    )  # fmt: skip
    _show("davis: pretrained vs random init", results, json_out)


def _show(title: str, results: dict, json_out: Path | None) -> None:
    """Print the results as tables and write them to `json_out` as they are.

    One table holds the single measures; each list of records (such as `rounds`)
    gets its own table with a column per record.
    """
    table = Table("measure", "value", title=title)
    for key, value in _flatten({k: v for k, v in results.items() if not _is_records(v)}):
        table.add_row(key, _cell(value))
    out.print(table)
    for key, records in results.items():
        if _is_records(records):
            rows = [dict(_flatten(record)) for record in records]
            columns = [str(number) for number in range(1, len(rows) + 1)]
            per_record = Table("measure", *columns, title=f"{title}: {key}, one column each")
            for name in dict.fromkeys(name for row in rows for name in row):
                per_record.add_row(name, *(_cell(row.get(name)) for row in rows))
            out.print(per_record)
    if json_out is not None:
        partial = json_out.with_name(json_out.name + ".partial")
        partial.write_text(json.dumps(results, indent=2))
        partial.replace(json_out)
        err.print(f"wrote {json_out}", markup=False)


def _is_records(value) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _cell(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(_cell(v) for v in value)
    return str(value)


def _flatten(results: dict, prefix: str = ""):
    for key, value in results.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        elif _is_records(value):
            for number, record in enumerate(value, 1):
                yield from _flatten(record, f"{prefix}{key}[{number}].")
        else:
            yield f"{prefix}{key}", value
