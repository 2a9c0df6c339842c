"""`cseg shards build|synthetic|inspect|verify`: make and check webdataset shards.

Thin wrappers over `raycseg.shards` and `raycseg.data.synthetic`:
results go to stdout, progress bars and problem lists to stderr. Exit codes:
0 when all is well, 1 when inputs were skipped (build) or stored samples are
corrupt (verify), 2 for usage errors, missing/empty sources and existing shards
without --overwrite.
"""

from __future__ import annotations

import re
from contextlib import ExitStack
from pathlib import Path
from typing import Literal

import typer
from rich.table import Table

from raycseg.errors import CsegError, DataError, FoundProblems
from raycseg.shards.manifest import MANIFEST
from raycseg.storage import join

from .console import StageProgress, err, human_size, out, print_json, print_problems
from .parsing import parse_height_width, parse_size

app = typer.Typer(
    help="Build, generate, inspect and verify webdataset shards.",
    epilog="""Examples:

cseg shards synthetic data/synthetic   # generated video, masks, saliency
cseg shards build --kind video ~/videos data/video
cseg shards verify data/video""",
    no_args_is_help=True,
)


@app.command(
    "build",
    epilog="""Examples:

cseg shards build --kind video ~/kinetics/train k400   # 256 px, GOP 8
cseg shards build --kind video ~/k400 s3://bucket/k400 --address auto
cseg shards build --kind vos --layout davis ~/DAVIS davis""",
)
def build(
    paths: list[str] = typer.Argument(
        ..., metavar="[SRC] OUT", help="Source (omit with --images) and output folder or URL."
    ),
    kind: Literal["video", "image", "segmentation", "saliency", "vos"] = typer.Option(
        ..., "--kind", help="What the source holds (vos: annotated video sequences)."
    ),
    layout: Literal["voc", "cityscapes", "ade20k", "davis"] = typer.Option(
        None, "--layout", help="The dataset tree's layout (segmentation: voc; vos: davis)."
    ),
    images: Path = typer.Option(
        None, "--images", help="Saliency: the image folder (instead of SRC)."
    ),
    masks: Path = typer.Option(
        None, "--masks", help="Saliency masks paired by stem; for videos, per-frame mask strips."
    ),
    compute: bool = typer.Option(
        False, "--compute", help="Saliency: derive masks with the classical detector."
    ),
    split_list: Path = typer.Option(
        None,
        "--split-list",
        metavar="FILE",
        help="Saliency: image stems to keep, one per line (in a VOC tree, by default its "
        "ImageSets/Segmentation/train_aug.txt, else train.txt).",
    ),
    exclude: Path = typer.Option(
        None, "--exclude", metavar="FILE", help="Saliency: image stems to leave out (wins)."
    ),
    resize_to: str = typer.Option(
        None,
        "--resize-to",
        metavar="HxW",
        help="Segmentation: store every image and mask at height x width, e.g. 512x1024 "
        "(ReCo's one-time Cityscapes resize).",
    ),
    transcode: Literal["h264", "none"] = typer.Option(
        "h264", "--transcode", help="Video: re-encode each clip once (none: keep the original)."
    ),
    short_side: int = typer.Option(256, "--short-side", min=16, help="Video: scale down to this."),
    gop: int = typer.Option(8, "--gop", min=1, help="Video: a keyframe every GOP frames at most."),
    crf: int = typer.Option(23, "--crf", min=0, max=51, help="Video: x264 quality (lower: finer)."),
    fast_decode: bool = typer.Option(
        True,
        "--fast-decode/--no-fast-decode",
        help="Video: x264's fastdecode tune (cheaper decoding, ~15 % larger shards).",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace shards already in OUT."),
    max_count: int = typer.Option(1000, "--max-count", min=1, help="Most samples per shard."),
    max_size: str = typer.Option("1GB", "--max-size", help="Largest shard size (e.g. 500MB, 1GB)."),
    procs: int = typer.Option(None, "--procs", min=1, help="Worker processes (default: all CPUs)."),
    address: str = typer.Option(
        None,
        "--address",
        metavar="ADDR",
        help="Prepare samples as Ray tasks on the cluster at HOST:PORT, or auto (RAY_ADDRESS, "
        "else the cluster started here); the source must be at the same path on every node.",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the output path."),
) -> None:
    """Turn a folder, CSV or dataset tree into shards plus manifest.json (OUT may be s3://...)."""
    preparer = _ray_tasks(address, procs)  # an unreachable address fails before slow imports
    from raycseg.media.transcode import TranscodeSettings
    from raycseg.shards.build import build_shards

    if images is not None:
        if len(paths) != 1:
            raise DataError("with --images give only OUT; the images come from --images")
        src, dest = images, paths[0]
    elif len(paths) == 2:
        src, dest = Path(paths[0]), paths[1]
    else:
        raise DataError("give SRC and OUT (or --images DIR and OUT)")
    settings = TranscodeSettings(short_side, gop, crf, fast_decode=fast_decode)
    with ExitStack() as stack:
        report = build_shards(
            kind, src, dest, layout=layout or ("davis" if kind == "vos" else "voc"),
            masks_dir=masks, compute_saliency=compute,
            split_list=split_list, exclude_list=exclude,
            resize_to=parse_height_width(resize_to) if resize_to else None,
            transcode=settings if kind == "video" and transcode == "h264" else None,
            max_count=max_count,
            max_bytes=parse_size(max_size), overwrite=overwrite, num_procs=procs,
            preparer=preparer, on_progress=StageProgress(stack, quiet).stage(f"building {kind} shards"),
        )  # fmt: skip
    if quiet:
        out.print(str(report.out), markup=False)
    else:
        table = Table("split", "samples", "shards", title=f"{kind} shards in {report.out}")
        for split, count in report.counts.items():
            table.add_row(split, str(count), str(report.shards[split]))
        out.print(table)
        out.print(
            f"{human_size(report.bytes)} in {report.seconds:.1f} s; manifest: {join(report.out, MANIFEST)}",
            markup=False,
        )
        if report.dropped:
            err.print(
                f"{len(report.dropped)} inputs left out by design (see 'dropped' in the manifest)",
                markup=False,
            )
        if report.selection:
            _print_selection(report.selection)
    if report.skipped:
        print_problems("skipped inputs", [(s["path"], s["reason"]) for s in report.skipped])
        raise FoundProblems(
            f"{len(report.skipped)} inputs were skipped (listed under 'skipped' in "
            f"{join(report.out, MANIFEST)}); fix or remove them and rebuild with --overwrite"
        )


def _ray_tasks(address: str | None, procs: int | None):
    """Ray tasks on the cluster at `address`: checked now, joined once the inputs are listed."""
    if address is None:
        return None
    if procs is not None:
        raise CsegError("--procs sets local processes and --address a Ray cluster; drop one")
    from raycseg.shards.parallel import RayTasks, check_ray_address

    check_ray_address(address)
    from raycseg.train.ray_start import start_ray  # imports Ray: only once the address answers

    return RayTasks(lambda: start_ray(address, quiet=True))


@app.command(
    "synthetic",
    epilog="""Examples:

cseg shards synthetic data/synthetic
cseg shards synthetic data/tiny --num-clips 8 --val-clips 2 --image-size 32""",
)
def synthetic(
    dest: Path = typer.Argument(
        ..., metavar="OUT", help="Output folder: OUT/video, OUT/segmentation, OUT/saliency."
    ),
    seed: int = typer.Option(0, "--seed", help="Everything is deterministic from it."),
    num_clips: int = typer.Option(300, "--num-clips", min=1, help="Training clips."),
    val_clips: int = typer.Option(
        100, "--val-clips", min=1, help="Validation clips (one frame each)."
    ),
    image_size: int = typer.Option(64, "--image-size", min=16, help="Frame side in pixels."),
    frames: int = typer.Option(8, "--frames", min=1, help="Frames per clip."),
    fps: int = typer.Option(8, "--fps", min=1, help="Frame rate of the mp4s."),
    min_objects: int = typer.Option(2, "--min-objects", min=1, help="Fewest objects per clip."),
    max_objects: int = typer.Option(4, "--max-objects", min=1, help="Most objects per clip."),
    frames_per_clip: int = typer.Option(
        2, "--frames-per-clip", min=1, help="Stills per training clip (segmentation, saliency)."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace an existing dataset in OUT."
    ),
    procs: int = typer.Option(None, "--procs", min=1, help="Worker processes (default: all CPUs)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the output path."),
) -> None:
    """Generate procedural videos, masks and saliency maps (no downloads) as shards."""
    from raycseg.data.synthetic import build_synthetic
    from raycseg.shards.manifest import inspect_shards

    with ExitStack() as stack:
        progress = StageProgress(stack, quiet)
        root = build_synthetic(
            dest, seed=seed, num_clips=num_clips, val_clips=val_clips, image_size=image_size,
            frames=frames, fps=fps, min_objects=min_objects, max_objects=max_objects,
            frames_per_clip=frames_per_clip, overwrite=overwrite, num_procs=procs,
            on_progress=lambda stage, done, total: progress.stage(stage)(done, total),
        )  # fmt: skip
    if quiet:
        out.print(str(root), markup=False)
        return
    table = Table(
        "shard set", "split", "samples", "shards", "size", title=f"synthetic dataset in {root}"
    )
    for name in ("video", "segmentation", "saliency"):
        for split, info in inspect_shards(root / name)["splits"].items():
            table.add_row(
                name, split, str(info["samples"]), str(info["shards"]), human_size(info["bytes"])
            )
    out.print(table)


@app.command(
    "inspect",
    epilog="""Examples:

cseg shards inspect data/synthetic/video
cseg shards inspect data/voc --json""",
)
def inspect(
    root: Path = typer.Argument(
        ..., metavar="DIR", help="A shard set (folder with manifest.json)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Show counts, classes, sizes and duration/fps statistics from the manifest."""
    from raycseg.shards.manifest import inspect_shards  # reads no shard: no torch, fast

    summary = inspect_shards(root)
    if as_json:
        print_json(summary)
        return
    table = Table(
        "split", "samples", "shards", "size", title=f"{summary['kind']} shards in {summary['root']}"
    )
    for split, info in summary["splits"].items():
        table.add_row(split, str(info["samples"]), str(info["shards"]), human_size(info["bytes"]))
    out.print(table)
    stats = Table("split", "statistic", "min", "mean", "max", title="statistics")
    for split, values in summary["stats"].items():
        for name, value in values.items():
            if isinstance(value, dict) and {"min", "mean", "max"} <= value.keys():
                stats.add_row(split, name, *(f"{value[k]:g}" for k in ("min", "mean", "max")))
    if stats.row_count:
        out.print(stats)
    classes = summary["classes"] or []
    shown = ", ".join(classes[:30]) + (
        f", ... ({len(classes)} in all)" if len(classes) > 30 else ""
    )
    out.print(f"classes ({len(classes)}): {shown or '(unlabelled)'}", markup=False)
    if summary.get("mask_classes"):
        out.print(f"mask classes: {', '.join(summary['mask_classes'])}", markup=False)
    for split, values in summary["stats"].items():
        counts = values.get("class_counts") or values.get("images_per_class_id")
        if counts:
            pairs = ", ".join(f"{name}: {count}" for name, count in list(counts.items())[:30])
            out.print(f"{split} per class: {pairs}", markup=False)
    out.print(
        f"source: {summary['source']}; skipped at build: {summary['skipped']}; dropped: {summary['dropped']}",
        markup=False,
    )
    if summary.get("selection"):
        chosen = {k: v for k, v in summary["selection"].items() if not k.endswith("_examples")}
        out.print("selection: " + ", ".join(f"{k}={v}" for k, v in chosen.items()), markup=False)


@app.command(
    "verify",
    epilog="""Examples:

cseg shards verify data/synthetic/video
cseg shards verify data/k400 --procs 4""",
)
def verify(
    root: Path = typer.Argument(
        ..., metavar="DIR", help="A shard set (folder with manifest.json)."
    ),
    procs: int = typer.Option(None, "--procs", min=1, help="Worker processes (default: all CPUs)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    as_json: bool = typer.Option(
        False, "--json", help="Print the findings as JSON (the exit code is the same)."
    ),
) -> None:
    """Check checksums and decode every stored sample; exit 1 if anything is corrupt."""
    from raycseg.shards.verify import verify_shards

    with ExitStack() as stack:
        report = verify_shards(
            root, StageProgress(stack, quiet).stage("verifying"), num_procs=procs
        )
    problems = _verify_problems(report)
    skipped = [{**s, "reason": clean_reason(s["reason"])} for s in report.skipped]
    if as_json:
        print_json(
            {
                "root": str(report.root),
                "ok": not problems,
                "samples": report.samples,
                "shards": report.shards,
                "problems": problems,
                "skipped_at_build": skipped,
            }
        )
    else:
        out.print(
            f"{report.samples} samples in {report.shards} shards checked in {report.root}",
            markup=False,
        )
        if skipped:
            print_problems(
                "inputs skipped at build (from the manifest)",
                [(s["path"], s["reason"]) for s in skipped],
            )
        if problems:
            print_problems("corrupt", [(_where(p), p["reason"]) for p in problems])
    if problems:
        raise FoundProblems(
            f"{len(problems)} problems in {report.root}; rebuild the shards with `cseg shards build --overwrite`"
        )
    if not as_json:
        out.print("ok: every checksum matches and every sample decodes", markup=False)


def _verify_problems(report) -> list[dict]:
    """One entry per problem that verify found: shard, key (None: the whole shard), what, why."""

    def problem(shard: str, key: str | None, what: str, reason: str) -> dict:
        return {"shard": shard, "key": key, "problem": what, "reason": clean_reason(reason)}

    problems = [problem(c["shard"], c["key"], "corrupt", c["reason"]) for c in report.corrupt]
    problems += [
        problem(name, None, "checksum", "sha256 differs from the manifest")
        for name in report.checksum_mismatches
    ]
    problems += [
        problem(name, None, "missing", "shard file is missing") for name in report.missing_shards
    ]
    for text in report.count_mismatches:  # "<shard>: 0 samples, manifest says 2"
        name, _, counts = text.partition(": ")
        problems.append(problem(name, None, "count", counts))
    return problems


def _where(problem: dict) -> str:
    return f"{problem['shard']}:{problem['key']}" if problem["key"] else problem["shard"]


_OBJECT_REPR = re.compile(r"\s*@?\s*<[\w.]+ (?:name=[^>]*|object at 0x[0-9a-fA-F]+)>")


def clean_reason(reason: str) -> str:
    """A problem's reason without the Python object reprs some libraries append to errors.

    e.g. "unexpected end of data @ <_io.BufferedReader name='/x/a.tar'>" (the shard
    is named beside it) or "cannot identify image file <_io.BytesIO object at 0x7f...>".
    """
    return _OBJECT_REPR.sub("", str(reason)).strip()


def _print_selection(selection: dict) -> None:
    """Say which split list was used by default, and how many listed stems had no pair."""
    if selection["split_list_default"]:
        err.print(
            f"split list (VOC default): {selection['split_list']}: {selection['kept']} kept, "
            f"{selection['not_in_list']} not in it; choose with --split-list or --exclude",
            markup=False,
        )
    if selection["listed_without_pair"]:
        examples = ", ".join(selection["listed_without_pair_examples"])
        err.print(
            f"{selection['listed_without_pair']} listed stems have no image/mask pair "
            f"(e.g. {examples}; see 'selection' in the manifest)",
            markup=False,
        )
