"""Run reports from a `cseg pretrain` run directory, and directories that are neither kind."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from raycseg.errors import CsegError
from raycseg.reports import RunSummary, load_run, write_report
from raycseg.reports.render import render_markdown
from raycseg.reports.run_report import run_blocks

from .conftest import PNG_MAGIC, section, write_run


@pytest.fixture(scope="module")
def reported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, RunSummary]:
    """One run directory with its report written (shared: writing takes a second)."""
    root = write_run(tmp_path_factory.mktemp("reported") / "run")
    return root, write_report(root)


def test_run_report_writes_md_html_and_plots(reported: tuple[Path, RunSummary]) -> None:
    run_dir, summary = reported

    pngs = {"loss.png", "lr_throughput.png", "validation.png", "eval.png"}
    assert {path.name for path in summary.files} == {"report.md", "report.html", *pngs}
    for name in pngs:
        assert (run_dir / name).read_bytes().startswith(PNG_MAGIC)
    html = (run_dir / "report.html").read_text()
    sources = re.findall(r'src="([^"]*)"', html)
    assert len(sources) == len(pngs)
    assert all(source.startswith("data:image/png;base64,") for source in sources)
    assert 'src="http' not in html and "<link" not in html


def test_run_report_has_the_eval_table_against_the_random_baseline(
    reported: tuple[Path, RunSummary],
) -> None:
    run_dir, _ = reported
    evaluation = section((run_dir / "report.md").read_text(), "Evaluation")

    assert "| linear_probe | 0.41 | 0.12 | +0.2900 |" in evaluation
    assert "| kmeans | 0.33 | 0.08 | +0.2500 |" in evaluation
    assert "k-means seed: 0" in evaluation
    # Per-class IoU: class 1 never occurs (null) in any column.
    assert "| 1 | - | - | - | - |" in evaluation
    assert "| 0 | 0.9 | 0.3 | 0.7 | 0.2 |" in evaluation


def test_run_summary_reads_stages_terms_and_validation(reported: tuple[Path, RunSummary]) -> None:
    _, summary = reported

    assert [(s.name, s.first_step, s.last_step) for s in summary.stages] == [
        ("cacl", 1, 40),
        ("reco", 41, 80),
    ]
    assert summary.loss_terms == [
        "loss_cycle",
        "loss_global",
        "loss_pixel",
        "loss_reco",
        "loss_supervised",
    ]
    assert summary.validation_keys == ["val_miou"]
    assert summary.series("val_miou")[0] == [10, 20, 30, 40, 50, 60, 70, 80]
    assert summary.skipped_corrupt == 40 // 13 + 40 // 5  # each stage counter's last value
    assert summary.eval_seed == 0
    stages = section((summary.path / "report.md").read_text(), "Stages")
    assert "| cacl | 1 | 40 |" in stages and "| reco | 41 | 80 |" in stages


def test_skip_counter_restarts_per_stage_and_on_resume(tmp_path: Path) -> None:
    counts = [
        ("cacl", 0),
        ("cacl", 2),
        ("cacl", 5),
        ("cacl", 1),
        ("cacl", 4),
        ("reco", 0),
        ("reco", 3),
    ]
    lines = [
        {"stage": stage, "step": step, "loss": 1.0, "skipped_corrupt": count}
        for step, (stage, count) in enumerate(counts, start=1)
    ]  # step 4: resumed from a checkpoint, so the counter started again
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(line) for line in lines))

    assert load_run(tmp_path).skipped_corrupt == 5 + 4 + 3


def test_a_step_logged_twice_keeps_its_last_record(tmp_path: Path) -> None:
    lines = [
        {"stage": "cacl", "step": 1, "loss": 3.0},
        {"stage": "cacl", "step": 2, "loss": 2.0},
        {"stage": "cacl", "step": 2, "loss": 1.5},
        {"stage": "cacl", "step": 3, "loss": 1.0},
    ]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(line) for line in lines))

    assert load_run(tmp_path).series("loss") == ([1.0, 2.0, 3.0], [3.0, 1.5, 1.0])


def test_without_eval_json_the_report_says_how_to_evaluate(tmp_path: Path) -> None:
    summary = load_run(write_run(tmp_path / "run", with_eval=False))

    evaluation = section(render_markdown("t", run_blocks(summary, plots=[])), "Evaluation")

    assert "No `eval.json` yet" in evaluation
    assert f"cseg eval {summary.path} --baseline random" in evaluation


def test_broken_metrics_line_names_the_line(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text('{"stage": "cacl", "step": 1, "loss": 1}\n{"stage": \n')

    with pytest.raises(CsegError, match=r"metrics.jsonl:2 is not JSON"):
        load_run(tmp_path)


@pytest.mark.parametrize("kind", ["empty", "missing", "file", "unrelated"])
def test_a_directory_of_neither_kind_is_a_cseg_error(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "target"
    if kind == "empty":
        target.mkdir()
    elif kind == "file":
        target.write_text("not a directory")
    elif kind == "unrelated":
        target.mkdir()
        (target / "notes.txt").write_text("hello")

    with pytest.raises(CsegError) as raised:
        write_report(target)

    message = str(raised.value)
    assert "\n" not in message
    assert "cseg pretrain" in message and "cseg tune" in message
    if target.is_dir():
        assert not list(target.glob("report.*"))


def test_the_evaluation_section_has_overclustering_davis_and_each_protocol_fingerprint(
    tmp_path: Path,
) -> None:
    from PIL import Image

    run = write_run(tmp_path / "run")
    scores = json.loads((run / "eval.json").read_text())
    scores["kmeans"]["protocol"] = {"name": "k-means", "fingerprint": "0123456789ab"}
    scores["overcluster"] = {
        "per_k": {"100": {"k": 100, "miou": 0.5, "miou_std": 0.01, "per_class_iou": [0.5]}},
        "pixels_scored": 10,
        "protocol": {"name": "overclustering", "fingerprint": "ba9876543210"},
    }
    sequence = {"j_mean": 0.6, "f_mean": 0.7, "jf_mean": 0.65, "objects": 2, "frames_scored": 8}
    scores["davis"] = {"j_mean": 0.6, "f_mean": 0.7, "jf_mean": 0.65, "objects": 2,
                       "frames_scored": 8, "sequences": {"shapes-00": sequence},
                       "protocol": {"name": "CRW", "fingerprint": "feedfacecafe"}}  # fmt: skip
    scores["baseline_random"]["davis"] = {**scores["davis"], "jf_mean": 0.25}
    (run / "eval.json").write_text(json.dumps(scores))
    Image.new("RGB", (40, 10)).save(run / "davis_strip.png")

    write_report(run)
    text = (run / "report.md").read_text()
    assert "| overcluster K=100 | 0.5 | - | - | 10 |" in text
    davis = section(text, "DAVIS label propagation")
    assert "J&F 0.6500 (J 0.6000, F 0.7000) over 2 objects, 8 frames scored" in davis
    assert "random init J&F 0.2500" in davis and "| shapes-00 | 0.6 | 0.7 | 0.65 | 2 |" in davis
    assert "(davis_strip.png)" in davis
    fingerprints = section(text, "Protocol fingerprints")
    for line in (
        "| kmeans | 0123456789ab |",
        "| overcluster | ba9876543210 |",
        "| davis | feedfacecafe |",
    ):
        assert line in fingerprints
