"""What `cseg` leaves in a terminal or a pipe: no native or Ray noise, no escape codes,
whole names, JSON on request, and a progress bar that names its phase."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cseg.main import app
from typer.testing import CliRunner

CSEG = [sys.executable, "-c", "from cseg.main import run; run()"]
ESCAPE = "\x1b["
runner = CliRunner()


def cseg(*args):
    """`cseg ARGS` in process on the root app: its output is not a terminal, as a pipe."""
    return runner.invoke(app, [str(arg) for arg in args])


def cseg_process(*args, env=None):
    """`cseg ARGS` in a fresh interpreter, its output a pipe."""
    return subprocess.run(
        [*CSEG, *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory):
    """A tiny synthetic video shard set under a folder with a long name."""
    root = tmp_path_factory.mktemp("t") / ("a-folder-with-a-long-descriptive-name-" * 3)
    result = cseg("shards", "synthetic", root, "--num-clips", 2, "--val-clips", 1,
                  "--image-size", 32, "--frames", 3, "--procs", 1)  # fmt: skip
    assert result.exit_code == 0, result.output
    return root / "video"


# 1. Native and Ray noise ------------------------------------------------------------------


def test_a_clip_decord_cannot_open_says_why_in_the_error_and_nothing_on_stderr(capfd):
    from raycseg.data.synthetic_clips import encode_mp4
    from raycseg.media.video import probe_video

    clip = encode_mp4(np.zeros((4, 32, 32, 3), np.uint8), 8)
    capfd.readouterr()
    with pytest.raises(ValueError, match="cannot open video") as caught:
        probe_video(clip[:200])  # the header only: no moov atom (it comes last)
    assert "Invalid data found when processing input" in str(caught.value)
    native = capfd.readouterr()  # ffmpeg's "moov atom not found", decord's "ERROR opening"
    assert native.err == "" and native.out == ""


def test_encoding_a_clip_logs_nothing_even_when_pyav_logging_is_on(caplog):
    import av.logging

    from raycseg.data.synthetic_clips import encode_mp4

    # PyAV is silent by default; a library or a logging setup in the process may turn it on.
    av.logging.set_level(av.logging.INFO)
    try:
        with caplog.at_level(logging.DEBUG), caplog.at_level(logging.DEBUG, logger="libav"):
            encode_mp4(np.zeros((3, 32, 32, 3), np.uint8), 8)
    finally:
        av.logging.set_level(None)
    assert not [r for r in caplog.records if r.name.startswith("libav")]


GET_TIMEOUT = [  # as Ray Train's controller writes it when the CPUs are busy (Ray 2.60)
    "Failed to send resource request for train-4ca268ce. If this only happens transiently "
    "during network partition or CPU being overloaded, it's safe to ignore this error.",
    "Traceback (most recent call last):",
    '  File ".../autoscaling_coordinator_client.py", line 58, in send_resource_request',
    "    ray.get(",
    '  File "python/ray/includes/common.pxi", line 107, in ray._raylet.check_status',
    "ray.exceptions.GetTimeoutError: Get timed out: some object(s) not ready.",
]
CLEANER = [
    "Exception in thread PlacementGroupCleanerMonitor:",
    "Traceback (most recent call last):",
    '  File ".../placement_group_cleaner.py", line 80, in _monitor_loop',
    "ConnectionError: Found multiple active Ray instances: {'a', 'b'}.",
]
WORKER_ERROR = [
    "Traceback (most recent call last):",
    '  File "worker.py", line 3, in <module>',
    "ValueError: a real error",
]


@pytest.fixture
def ray_printer():
    """Ray's stream dispatcher with a stand-in for Ray's own printer, as after ray.init."""
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    printed = []
    dispatcher.add_handler("ray_print_logs", printed.append)
    yield dispatcher, printed
    dispatcher.remove_handler("ray_print_logs")


def batch(pid, lines, **extra):
    return {"ip": "127.0.0.1", "pid": pid, "is_err": True, "lines": lines, **extra}


def test_local_ray_notices_go_to_the_run_log_and_real_errors_stay_on_stderr(
    ray_printer, tmp_path, capsys
):
    from raycseg.train.ray_logs import route_worker_output

    dispatcher, printed = ray_printer
    assert route_worker_output(tmp_path / "logs", local=True)
    dispatcher.emit(batch(11, ["step one", *GET_TIMEOUT[:3]], actor_name="TrainController"))
    dispatcher.emit(batch(11, [*GET_TIMEOUT[3:], "after the notice"]))  # a traceback split
    dispatcher.emit(batch(12, [*CLEANER, *WORKER_ERROR]))
    shown = capsys.readouterr()
    assert printed == [], "Ray's own printer is replaced"
    assert shown.out == ""
    assert shown.err.splitlines() == ["step one", "after the notice", *WORKER_ERROR]
    logged = (tmp_path / "logs" / "ray.log").read_text()
    for line in (*GET_TIMEOUT, *CLEANER):
        assert line in logged
    assert "(TrainController pid=11) Failed to send resource request" in logged


def test_autoscaler_events_of_local_ray_go_to_the_run_log_only(tmp_path, capsys):
    from raycseg.train.ray_logs import WorkerOutput

    def events(lines):  # Ray's filter keeps the events of the monitor's log
        return [line.split(":event_summary:")[1] for line in lines if ":event_summary:" in line]

    monitor = ["INFO autoscaler.py:147 -- status", ":event_summary:Resized to 4 CPUs."]
    WorkerOutput(tmp_path, local=True, events=events)(batch("autoscaler", monitor))
    assert capsys.readouterr().err == ""
    logged = (tmp_path / "ray.log").read_text()
    assert "Resized to 4 CPUs." in logged and "status" not in logged
    WorkerOutput(None, local=False, events=events)(batch("autoscaler", monitor))
    assert capsys.readouterr().err == "Resized to 4 CPUs.\n", "a cluster shows them"


def test_joined_clusters_keep_ray_notices_on_screen(ray_printer, capsys):
    from raycseg.train.ray_logs import route_worker_output

    dispatcher, _ = ray_printer
    route_worker_output(None, local=False)
    dispatcher.emit(batch(11, GET_TIMEOUT))
    assert capsys.readouterr().err.splitlines() == GET_TIMEOUT


def test_the_token_auth_notice_of_local_ray_goes_to_the_run_log(tmp_path, capsys):
    from ray._private.authentication import authentication_token_setup

    from raycseg.train.ray_logs import route_driver_notices

    logger = authentication_token_setup.logger
    level = logger.level
    logger.setLevel(logging.WARNING)  # earlier tests may have quieted Ray's loggers
    route_driver_notices(tmp_path / "logs")
    try:
        authentication_token_setup._warn_token_auth_enabled()
    finally:
        route_driver_notices(None)
        logger.setLevel(level)
    assert "Token authentication" not in capsys.readouterr().err
    assert "Token authentication is enabled" in (tmp_path / "logs" / "ray.log").read_text()


# 3. Escape codes ----------------------------------------------------------------------------


def test_repeated_worker_lines_print_once_and_without_colour_codes(ray_printer, capsys):
    """Ray's printer folds repeats into a green "[repeated 1x across cluster]" note, which
    it prints when Ray shuts down, colour codes and all, into a pipe as well."""
    from ray._private import worker as ray_worker
    from ray._private.ray_logging import stderr_deduplicator

    from raycseg.train.ray_logs import route_worker_output

    dispatcher, _ = ray_printer
    route_worker_output(None, local=True)
    for pid in (21, 22):
        dispatcher.emit(batch(pid, ["\x1b[33mthe same warning\x1b[0m from every rank"]))
    for leftover in stderr_deduplicator.flush():  # what ray.shutdown() prints
        ray_worker.print_worker_logs(leftover, sys.stderr, ignore_prefix=True)
    shown = capsys.readouterr()
    assert shown.err == "the same warning from every rank\n" and shown.out == ""


@pytest.mark.integration
def test_piped_output_has_no_escape_codes_even_when_colour_is_forced(shard_set):
    """Rich believes FORCE_COLOR and TTY_COMPATIBLE; then `--quiet`'s path or a `--json`
    document would carry colour codes into the pipe that reads them. Rich reads them when
    a console is made, so this takes a fresh interpreter."""
    forced = {"FORCE_COLOR": "1", "TTY_COMPATIBLE": "1"}
    for args in (
        ["recipes", "ls"],
        ["shards", "inspect", shard_set],
        ["pretrain", "cacl/debug", "--dry-run"],
    ):
        result = cseg_process(*args, env=forced)
        assert result.returncode == 0, result.stderr
        assert ESCAPE not in result.stdout and ESCAPE not in result.stderr, args


# 4. Whole names in pipes ------------------------------------------------------------------


def test_piped_tables_print_whole_names(shard_set, tmp_path):
    import yaml

    from raycseg.config import find_recipe

    result = cseg("recipes", "ls")
    assert "…" not in result.stdout and ESCAPE not in result.stdout
    described = [line for line in result.stdout.splitlines() if "cacl/debug " in line]
    description = yaml.safe_load(find_recipe("cacl/debug").read_text())["description"]
    assert len(described) == 1 and description in described[0], "one row, on one line"

    broken = tmp_path / ("another-folder-named-at-length-" * 3)
    (broken / "train").mkdir(parents=True)
    manifest = json.loads((shard_set / "manifest.json").read_text())
    (broken / "manifest.json").write_text(json.dumps(manifest))
    result = cseg("shards", "verify", broken, "--procs", "1")
    assert result.exit_code == 1
    assert "…" not in result.stderr and ESCAPE not in result.stderr + result.stdout
    missing = [line for line in result.stderr.splitlines() if "shard file is missing" in line]
    assert missing and "train/video-000000.tar" in missing[0]
    assert str(broken) in result.stdout.splitlines()[0]


# 5. --json and the displays of verify and bench ----------------------------------------------


def test_inspect_json_is_the_manifest_summary_byte_for_byte(shard_set, tmp_path):
    """Rich would turn ":smile:" into an emoji and highlight or wrap the text."""
    odd = tmp_path / "odd"
    odd.mkdir()
    for item in shard_set.iterdir():
        (odd / item.name).symlink_to(item)
    manifest = json.loads((shard_set / "manifest.json").read_text())
    manifest["classes"] = ["a :smile: class", "[bold]b[/bold]", "c" * 200]
    (odd / "manifest.json").unlink()
    (odd / "manifest.json").write_text(json.dumps(manifest))
    result = cseg("shards", "inspect", odd, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["classes"] == manifest["classes"]


def test_json_output_is_valid_json_without_nan(capsys):
    from cseg.console import print_json

    print_json({"mean": float("nan"), "paths": [Path("a")]})
    assert json.loads(capsys.readouterr().out) == {"mean": None, "paths": ["a"]}


def test_verify_json_lists_problems_by_shard_and_key_and_exits_1(shard_set, tmp_path):
    result = cseg("shards", "verify", shard_set, "--procs", "1", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] and report["samples"] == 2 and report["problems"] == []

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text((shard_set / "manifest.json").read_text())
    (broken / "train").mkdir()
    shard = next((shard_set / "train").glob("*.tar")).read_bytes()
    (broken / "train" / "video-000000.tar").write_bytes(shard[:1552])  # cut inside a member
    result = cseg("shards", "verify", broken, "--procs", "1", "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert not report["ok"]
    kinds = {p["problem"]: p for p in report["problems"]}
    assert set(kinds) == {"corrupt", "checksum", "count"}
    assert kinds["corrupt"]["key"] is None and "<_io" not in kinds["corrupt"]["reason"]
    assert kinds["count"]["reason"] == "0 samples, manifest says 2"

    result = cseg("shards", "verify", broken, "--procs", "1")
    table = result.stderr
    assert ":None" not in table and "<_io" not in table and "0x" not in table
    assert "train/video-000000.tar" in table


def test_bench_tables_show_one_value_per_cell(monkeypatch):
    import raycseg.bench.data

    results = {
        "root": "shards",
        "mfu": None,
        "rounds": [
            {"pipeline": {"clips_per_s": 94.687}, "ratio": 0.349},
            {"pipeline": {"clips_per_s": 90.0}, "ratio": 0.35},
        ],
        "ratio": 0.349,
    }
    monkeypatch.setattr(raycseg.bench.data, "benchmark_decoding", lambda *a, **k: results)
    result = cseg("bench", "data", "shards", "--seconds", "0.1")
    assert result.exit_code == 0, result.output
    assert "{" not in result.stdout and "None" not in result.stdout
    row = next(line for line in result.stdout.splitlines() if "pipeline.clips_per_s" in line)
    assert "94.69" in row and "90" in row


# 2. Phases before the first step --------------------------------------------------------------


def test_progress_names_each_phase_once_off_a_tty_and_in_the_bar_on_one(monkeypatch):
    import cseg.pretrain
    from rich.console import Console

    def shown(console):
        display = cseg.pretrain._progress_display(12, quiet=False)
        with display:
            for phase in ("starting Ray", "starting 2 workers", "starting 2 workers"):
                display.phase(phase)
            display.phase("waiting for the first batch")
            if console.is_terminal:
                console.file.seek(0)
                console.file.truncate()
                display.progress.refresh()
                return console.file.getvalue()
            display.update({"stage": "cacl", "step": 1, "loss": 2.5, "samples_per_s": 8.0})
        return console.file.getvalue()

    piped = Console(file=io.StringIO(), width=100)
    monkeypatch.setattr(cseg.pretrain, "err", piped)
    assert shown(piped).splitlines() == [
        "starting Ray",
        "starting 2 workers",
        "waiting for the first batch",
        "[cacl] step 1/12 loss 2.5000 8.0 samples/s",
    ]
    tty = Console(file=io.StringIO(), width=100, force_terminal=True)
    monkeypatch.setattr(cseg.pretrain, "err", tty)
    bar = shown(tty)
    assert "waiting for the first batch" in bar and "nan" not in bar and "0/12" in bar


def test_a_local_run_reports_its_phases_before_its_first_step(tmp_path, capfd):
    from raycseg.config import load_recipe
    from raycseg.train.launch import run_pretrain

    recipe = load_recipe(
        "cacl/debug",
        [
            f"data.root={tmp_path / 'data'}",
            f"storage.path={tmp_path / 'runs'}",
            "scaling.num_workers=0",
            "stages.cacl.steps=2",
            "stages.cacl.val_every=0",
            "storage.checkpoint_every=2",
            "eval=null",
        ],
    )
    events = []
    run_pretrain(
        recipe,
        on_metrics=lambda record: events.append(("step", record["step"])),
        on_phase=lambda phase: events.append(("phase", phase)),
    )
    assert events == [
        ("phase", "starting the training loop"),
        ("phase", "waiting for the first batch"),
        ("phase", "running the first step"),
        ("step", 1),
        ("step", 2),
    ]
    assert "Running in local mode" not in capfd.readouterr().err  # Ray Train's INFO note
