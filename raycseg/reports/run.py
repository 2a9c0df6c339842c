"""Read a `cseg pretrain` run directory (its files: `raycseg.run_directory`).

What the report reads of it:

RUN/
  config.yaml     the resolved recipe
  metrics.jsonl   one JSON object per logged optimizer step: stage, step (global
                  to the run), loss, loss_<term>..., lr, samples_per_s,
                  skipped_corrupt, and validation metrics (`val_*`) on some steps
  eval.json       {"<protocol>": {"miou", "per_class_iou", "pixels_scored", ...}, ...,
                   "baseline_random": {...}, "data": {"shards", "split", "images", "classes"}}
                  (older files lack `pixels_scored` and `data`; the report leaves them out)
  eval_samples/   a few scored validation images (`raycseg.eval.samples`): index.json
                  lists the classes, the protocols and each sample's PNG files
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raycseg.errors import CsegError
from raycseg.run_directory import CONFIG_FILE, EVAL_FILE, METRICS_FILE, SAMPLES_DIR

BASELINE_KEY = "baseline_random"
DATA_KEY = "data"
SAMPLES_INDEX = "index.json"


@dataclass(frozen=True)
class StageSpan:
    """The steps one stage covered in the run (inclusive)."""

    name: str
    first_step: float
    last_step: float


@dataclass(frozen=True)
class ProtocolScore:
    """One evaluation protocol: the pretrained backbone against the random baseline.

    `protocol` is the row's name (`overcluster K=100`), `key` its eval.json key
    (`overcluster`), where its fingerprint is.
    """

    protocol: str
    miou: float | None
    per_class_iou: list[float | None]
    baseline_miou: float | None
    baseline_per_class_iou: list[float | None]
    pixels_scored: int | None = None
    key: str = ""


@dataclass(frozen=True)
class EvalData:
    """eval.json's `data` record: what was scored."""

    shards: str | None
    split: str | None
    images: int | None
    classes: list[str]


@dataclass(frozen=True)
class SamplePictures:
    """One saved validation image: its PNG files, relative to `eval_samples/`.

    `predictions` maps each protocol of the index to its PNG, or None where that
    protocol saved no prediction for this image.
    """

    key: str
    image: str | None
    label: str | None
    predictions: dict[str, str | None]


@dataclass(frozen=True)
class EvalSamples:
    """`eval_samples/index.json`: the class names, the protocols in order, the samples."""

    directory: Path
    classes: list[str]
    protocols: list[str]
    samples: list[SamplePictures]


@dataclass
class RunSummary:
    """What a run report says.

    Attributes:
        path: The run directory.
        config_text: `config.yaml` as written (empty when missing).
        records: The rows of `metrics.jsonl`, sorted by step, one per step.
        stages: Each stage's step span, in run order.
        loss_terms: The `loss_<term>` keys present, sorted.
        validation_keys: The `val*` metric keys present, sorted.
        evaluation: The protocols in `eval.json`, in file order (empty without it).
        eval_seed: The seed `eval.json` records, if any.
        skipped_corrupt: Corrupt samples skipped over the run.
        files: The files the report wrote (filled in by the writer).
        eval_data: eval.json's `data` record (None in older files).
        eval_samples: The saved validation images (None without `eval_samples/`).
        fingerprints: Each protocol's `protocol.fingerprint` (`-` in older files).
        davis: eval.json's `davis` entry (J&F per sequence), and `davis_baseline` the
            random-init one.
    """

    path: Path
    config_text: str
    records: list[dict[str, Any]]
    stages: list[StageSpan]
    loss_terms: list[str]
    validation_keys: list[str]
    evaluation: list[ProtocolScore]
    eval_seed: int | None
    skipped_corrupt: int
    files: list[Path] = field(default_factory=list)
    eval_data: EvalData | None = None
    eval_samples: EvalSamples | None = None
    fingerprints: dict[str, str] = field(default_factory=dict)
    davis: dict[str, Any] | None = None
    davis_baseline: dict[str, Any] | None = None

    def series(self, key: str) -> tuple[list[float], list[float]]:
        """The finite values of `key` against `step`, for plotting."""
        steps, values = [], []
        for record in self.records:
            value = record.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                if math.isfinite(value):
                    steps.append(float(record["step"]))
                    values.append(float(value))
        return steps, values


def is_run_dir(path: Path) -> bool:
    """True when `path` holds a `metrics.jsonl`."""
    return (path / METRICS_FILE).is_file()


def load_run(path: Path) -> RunSummary:
    """Read a pretrain run directory into a `RunSummary`.

    Args:
        path: The run directory.

    Returns:
        The summary; a step logged twice keeps its last record.

    Raises:
        CsegError: A line of `metrics.jsonl`, `eval.json` or `eval_samples/index.json`
            is not valid JSON.
    """
    records = _read_metrics(path / METRICS_FILE)
    keys = {key for record in records for key in record}
    config_file = path / CONFIG_FILE
    scores = _read_json(path / EVAL_FILE)
    evaluation, seed = _read_eval(scores)
    return RunSummary(
        path=path,
        config_text=config_file.read_text(encoding="utf-8") if config_file.is_file() else "",
        records=records,
        stages=_stage_spans(records),
        loss_terms=sorted(key for key in keys if key.startswith("loss_")),
        validation_keys=sorted(key for key in keys if key.startswith("val")),
        evaluation=evaluation,
        eval_seed=seed,
        skipped_corrupt=_skipped_total(records),
        eval_data=_read_data(scores.get(DATA_KEY)),
        eval_samples=_read_samples(path / SAMPLES_DIR),
        fingerprints={
            name: (result.get("protocol") or {}).get("fingerprint", "-")
            for name, result in scores.items()
            if isinstance(result, dict) and isinstance(result.get("protocol"), dict)
        },
        davis=scores.get("davis") if isinstance(scores.get("davis"), dict) else None,
        davis_baseline=(scores.get(BASELINE_KEY) or {}).get("davis"),
    )


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    by_step: dict[float, dict[str, Any]] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise CsegError(
                f"{path}:{number} is not JSON ({error.msg}); delete the broken line"
            ) from error
        if isinstance(record, dict) and isinstance(record.get("step"), int | float):
            by_step[record["step"]] = record
    return [by_step[step] for step in sorted(by_step)]


def _stage_spans(records: list[dict[str, Any]]) -> list[StageSpan]:
    spans: list[StageSpan] = []
    for record in records:
        name = str(record.get("stage", "train"))
        step = float(record["step"])
        if spans and spans[-1].name == name:
            spans[-1] = StageSpan(name, spans[-1].first_step, step)
        else:
            spans.append(StageSpan(name, step, step))
    return spans


def _skipped_total(records: list[dict[str, Any]]) -> int:
    """Total corrupt samples skipped over the run.

    The worker logs `skipped_corrupt` as a counter that accumulates within a
    stage and starts again from 0 at each stage and on resume. So the total is
    the sum of each counter run's last value, where a run ends at a stage change
    or when the counter drops.
    """
    total, previous_stage, previous_count = 0, None, 0
    for record in records:
        count = record.get("skipped_corrupt")
        if not isinstance(count, int) or isinstance(count, bool):
            continue
        stage = record.get("stage")
        if stage != previous_stage or count < previous_count:
            total += previous_count
        previous_stage, previous_count = stage, count
    return total + previous_count


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object file written by `cseg eval`; {} when it is missing."""
    if not path.is_file():
        return {}
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise CsegError(f"{path} is not JSON ({error.msg}); re-run `cseg eval`") from error
    return content if isinstance(content, dict) else {}


def _read_eval(scores: dict[str, Any]) -> tuple[list[ProtocolScore], int | None]:
    if not scores:
        return [], None
    baseline = scores.get(BASELINE_KEY) or {}
    protocols = []
    for name, result in scores.items():
        if name in (BASELINE_KEY, DATA_KEY) or not isinstance(result, dict):
            continue  # the baseline is read with its protocol; `data` is not a protocol
        if "per_k" in result:  # overclustering: one row per K
            random_per_k = (baseline.get(name) or {}).get("per_k") or {}
            protocols += [
                _protocol_score(name, entry, random_per_k.get(k) or {}, result, f" K={k}")
                for k, entry in result["per_k"].items()
            ]
            continue
        if "miou" in result:
            protocols.append(_protocol_score(name, result, baseline.get(name) or {}, result))
    return protocols, _find_seed(scores)


def _protocol_score(
    key: str, result: dict, random: dict, outer: dict, suffix: str = ""
) -> ProtocolScore:
    """Row `key + suffix`: `result` against `random`; `outer` holds pixels_scored."""
    return ProtocolScore(
        protocol=key + suffix,
        key=key,
        miou=result.get("miou"),
        per_class_iou=list(result.get("per_class_iou") or []),
        baseline_miou=random.get("miou"),
        baseline_per_class_iou=list(random.get("per_class_iou") or []),
        pixels_scored=_count(outer.get("pixels_scored")),
    )


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _read_data(record: object) -> EvalData | None:
    if not isinstance(record, dict):
        return None
    shards, split = record.get("shards"), record.get("split")
    return EvalData(
        shards=None if shards is None else str(shards),
        split=None if split is None else str(split),
        images=_count(record.get("images")),
        classes=[str(name) for name in record.get("classes") or []],
    )


def _read_samples(directory: Path) -> EvalSamples | None:
    """`eval_samples/index.json`, or None when the run saved no samples."""
    index = _read_json(directory / SAMPLES_INDEX)
    protocols = [str(key) for key in index.get("protocols") or []]
    samples = []
    for entry in index.get("samples") or []:
        if not isinstance(entry, dict):
            continue
        samples.append(
            SamplePictures(
                key=str(entry.get("key", "")),
                image=entry.get("image"),
                label=entry.get("label"),
                predictions={key: entry.get(key) for key in protocols},
            )
        )
    if not samples:
        return None
    classes = [str(name) for name in index.get("classes") or []]
    return EvalSamples(directory, classes, protocols, samples)


def _find_seed(scores: dict[str, Any]) -> int | None:
    if isinstance(scores.get("seed"), int):
        return scores["seed"]
    for result in scores.values():
        if isinstance(result, dict) and isinstance(result.get("seed"), int):
            return result["seed"]
    return None
