"""`cseg bench data|loss`: measured throughput and memory, printed and written as JSON."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from .console import err, out

app = typer.Typer(help="Benchmarks: data decoding and loss forward+backward.", no_args_is_help=True)


@app.command("data")
def bench_data(
    shards: Path = typer.Argument(
        ..., help="A video shard folder (from `cseg shards build --kind video`)."
    ),
    workers: int = typer.Option(1, "--workers", help="DataLoader workers of the streaming path."),
    seconds: float = typer.Option(10.0, "--seconds", help="Time budget per path and round."),
    rounds: int = typer.Option(1, "--rounds", help="Alternating rounds (the median is reported)."),
    augment: bool = typer.Option(False, "--augment", help="Include the training augmentations."),
    json_out: Path = typer.Option(None, "--json", help="Also write the results here."),
) -> None:
    """Clips/s and frames/s through the full streaming path vs raw decord, per CPU core."""
    from raycseg.bench.data import benchmark_decoding

    err.print(f"decoding {shards} for about {2 * seconds * rounds:.0f} s", markup=False)
    results = benchmark_decoding(
        shards, num_workers=workers, seconds=seconds, rounds=rounds, augment=augment
    )
    _show("data decoding", results, json_out)


@app.command("loss")
def bench_loss(
    name: str = typer.Argument(
        ...,
        help="cacl, cacl-global, cacl-pixel, cacl-cycle, crw-walk, maskcontrast, maskcontrast-feature or reco.",
    ),
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


def _show(title: str, results: dict, json_out: Path | None) -> None:
    table = Table("measure", "value", title=title)
    for key, value in _flatten(results):
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    out.print(table)
    if json_out is not None:
        partial = json_out.with_name(json_out.name + ".partial")
        partial.write_text(json.dumps(results, indent=2))
        partial.replace(json_out)
        err.print(f"wrote {json_out}", markup=False)


def _flatten(results: dict, prefix: str = ""):
    for key, value in results.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value
