"""`RunTracking`: the trackers of one `cseg pretrain` run, fed in its driver.

Rank 0's records reach the driver live (`raycseg.train.progress`); `wrap` hands each
one to the display and to every tracker, under metrics.jsonl's own names (numbers
only) at the record's global `step`. `<run>/tracking.json` keeps `logged_through`
(the highest step the trackers hold) and each tracker's run id, so a resumed run
reopens the same MLflow and W&B runs and skips the steps they hold already: a step
redone after a failure keeps its first logged value. Whatever the live stream missed
(a stream cut off, a driver that died before the trackers heard the last steps) is
taken from metrics.jsonl before the next stage's first record and at the end, so the
trackers hold every line of metrics.jsonl once.

A tracker that is not installed, or cannot be opened, is one warning line at the
start; one that fails later is one warning line and is off for the rest of the run.
No tracker error reaches training.
"""

from __future__ import annotations

import json
import math
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import storage
from ..config import Recipe, recipe_to_yaml
from ..run_directory import EVAL_FILE, METRICS_FILE, MetricsLog
from ..storage import is_url
from .backends import Backend, open_backend
from .environment import (
    describe,
    is_installed,
    mlflow_uri,
    no_wandb_key,
    not_installed,
    wandb_key_missing,
)

TRACKING_FILE = "tracking.json"
NOT_LOGGED = {"stage", "step"}  # metrics.jsonl keys that are not series
NOT_SCORES = {"protocol", "data", "sequences", "skipped"}  # eval.json entries that are not scores
REMOTE_SAVE_EVERY_S = 30.0  # tracking.json in a bucket: one PUT at most this often


class RunTracking:
    """The trackers `storage.loggers` names, for one run directory (none: every call is a no-op).

    Build it with `RunTracking.open`; call `wrap(on_metrics)` for the stages' stream,
    `finish(...)` after the run's evaluation, `close(failed=True)` when the run fails.
    """

    def __init__(self, run_dir, backends: list[Backend], state: dict[str, Any], on_message):
        self.run_dir = run_dir
        self.backends = backends
        self.logged_through = int(state.get("logged_through", 0))
        self.run_ids = dict(state.get("run_ids", {}))
        self.on_message = on_message
        self.lock = threading.Lock()
        self.stage: str | None = None
        self.saved_at = 0.0

    @classmethod
    def open(
        cls,
        recipe: Recipe,
        run_dir: Path | str,
        on_message: Callable[[str], None] = lambda _: None,
    ) -> RunTracking:
        """Open each tracker of `recipe.storage.loggers` (reopening a resumed run's runs)."""
        state = _read_state(run_dir)
        backends = []
        for logger in dict.fromkeys(recipe.storage.loggers):
            backend = _open_one(logger, recipe, run_dir, state.get("run_ids", {}), on_message)
            if backend is not None:
                backends.append(backend)
        tracking = cls(run_dir, backends, state, on_message)
        new = {
            b.name
            for b in backends
            if b.run_id is None or b.run_id not in tracking.run_ids.values()
        }
        tracking.run_ids.update({b.name: b.run_id for b in backends if b.run_id})
        params = _flat(recipe.model_dump(mode="json"))
        text = recipe_to_yaml(recipe)
        for backend in list(backends):
            tracking._call(
                backend, "the recipe", backend.log_recipe, text, params, new=backend.name in new
            )
        if backends:
            tracking._save(force=True)
        return tracking

    def wrap(self, on_metrics: Callable[[dict], None] | None) -> Callable[[dict], None] | None:
        """`on_metrics` that also logs each record to the trackers (itself, without any)."""
        if not self.backends:
            return on_metrics

        def display_and_track(record: dict[str, Any]) -> None:
            if on_metrics is not None:
                on_metrics(record)
            self.record(record)

        return display_and_track

    def record(self, record: dict[str, Any]) -> None:
        """Log one live record: after metrics.jsonl's missed lines below it, on a new stage."""
        with self.lock:
            if record.get("stage") != self.stage:
                self.stage = record.get("stage")
                self._catch_up(below=record["step"])
            self._log(record)
            self._save()

    def catch_up(self) -> None:
        """Log every line of metrics.jsonl past `logged_through` (the stream's missed tail)."""
        with self.lock:
            self._catch_up(below=None)
            self._save(force=True)

    def finish(self, checkpoint: str | None) -> None:
        """The end of a finished run: missed lines, eval.json's scores, plots and checkpoint."""
        if not self.backends:
            return
        self.catch_up()
        scores = _eval_scores(self.run_dir)
        if scores:
            for backend in list(self.backends):
                self._call(backend, "eval scores", backend.log_scores, scores, self.logged_through)
        with tempfile.TemporaryDirectory(prefix="raycseg-tracking-") as scratch:
            files = {"plots": self._plots(Path(scratch)), "checkpoint": _checkpoint(checkpoint)}
            for backend in list(self.backends):
                self._call(backend, "artefacts", backend.log_files, files)
            self.close(failed=False)

    def close(self, *, failed: bool) -> None:
        """End every tracker's run (after logging what metrics.jsonl holds past them)."""
        if failed and self.backends:
            try:
                self.catch_up()
            except Exception as error:  # noqa: BLE001 (a failing run's log may be unreadable)
                self.on_message(f"storage.loggers: metrics.jsonl not read ({describe(error)})")
        for backend in list(self.backends):
            self._call(backend, "closing", backend.close, failed=failed)
        self.backends = []

    # ------------------------------------------------------------------------- inside

    def _catch_up(self, below: int | None) -> None:
        for record in MetricsLog(storage.join(self.run_dir, METRICS_FILE)).read():
            step = record.get("step")
            if isinstance(step, int) and step > self.logged_through:
                if below is None or step < below:
                    self._log(record)

    def _log(self, record: dict[str, Any]) -> None:
        step = record.get("step")
        if not isinstance(step, int) or step <= self.logged_through:
            return  # held already (a step redone after a failure keeps its first value)
        values = {
            key: float(value)
            for key, value in record.items()
            if key not in NOT_LOGGED and _is_number(value)
        }
        for backend in list(self.backends):
            self._call(backend, f"step {step}", backend.log_metrics, values, step)
        self.logged_through = step

    def _save(self, force: bool = False) -> None:
        """Write tracking.json (after flushing the trackers): every record locally, less in a bucket."""
        remote = is_url(str(self.run_dir))
        if not force and remote and time.monotonic() - self.saved_at < REMOTE_SAVE_EVERY_S:
            return
        for backend in list(self.backends):
            self._call(backend, "flushing", backend.flush)
        state = {"logged_through": self.logged_through, "run_ids": self.run_ids}
        try:
            storage.write_text(
                storage.join(self.run_dir, TRACKING_FILE), json.dumps(state, indent=2)
            )
            self.saved_at = time.monotonic()
        except OSError as error:
            self.on_message(f"storage.loggers: {TRACKING_FILE} not written ({describe(error)})")

    def _call(self, backend: Backend, what: str, function, *args, **kwargs) -> None:
        """Call a tracker; on any error, one warning line and the tracker is off."""
        try:
            function(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 (a tracker must never stop training)
            if backend in self.backends:
                self.backends.remove(backend)
                self.on_message(
                    f"storage.loggers: {backend.name} failed ({what}: {describe(error)}); "
                    "it is off for the rest of this run"
                )

    def _plots(self, scratch: Path) -> list[Path]:
        """The run report's plots, drawn into `scratch` (a run at a URL: none)."""
        if is_url(str(self.run_dir)):
            return []
        from ..reports import run_plots
        from ..reports.run import load_run

        summary = load_run(Path(self.run_dir))
        drawn = [
            run_plots.plot_losses(summary, scratch / "loss.png"),
            run_plots.plot_schedule_and_throughput(summary, scratch / "lr_throughput.png"),
            run_plots.plot_validation(summary, scratch / "validation.png"),
            run_plots.plot_eval(summary, scratch / "eval.png"),
        ]
        return [path for path in drawn if path is not None]


def _open_one(logger, recipe, run_dir, run_ids, on_message) -> Backend | None:
    """One tracker's run, or None after its one warning line."""
    if not is_installed(logger):
        on_message(not_installed(logger))
        return None
    if logger == "wandb" and wandb_key_missing():
        on_message(no_wandb_key())
        return None
    local = not is_url(str(run_dir))
    if logger == "tensorboard" and not local:
        on_message("storage.loggers: tensorboard writes into a local run directory; it is off")
        return None
    if logger == "mlflow" and mlflow_uri(run_dir) is None:
        on_message(
            "storage.loggers: mlflow needs MLFLOW_TRACKING_URI for a run at a URL "
            "(its default store, sqlite, is a local file); it is off"
        )
        return None
    try:
        config = recipe.model_dump(mode="json")
        return open_backend(logger, run_dir, recipe.name, config, run_ids.get(logger))
    except ImportError:
        on_message(not_installed(logger))
    except Exception as error:  # noqa: BLE001 (unreachable, refused: the run goes on)
        on_message(f"storage.loggers: {logger} could not start ({describe(error)}); it is off")
    return None


def _read_state(run_dir) -> dict[str, Any]:
    location = storage.join(run_dir, TRACKING_FILE)
    try:
        return json.loads(storage.read_text(location)) if storage.is_file(location) else {}
    except (OSError, ValueError):
        return {}


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as `a.b.c` keys (lists and scalars as strings, for params)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flat(value, f"{name}."))
        else:
            flat[name] = value if isinstance(value, str) else json.dumps(value)
    return flat


def _eval_scores(run_dir) -> dict[str, float]:
    """eval.json's numbers as `eval/<protocol>/<score>` (per-class lists and records left out)."""
    location = storage.join(run_dir, EVAL_FILE)
    if not storage.is_file(location):
        return {}
    scores: dict[str, float] = {}

    def walk(tree: dict[str, Any], prefix: str) -> None:
        for key, value in tree.items():
            if isinstance(value, dict) and key not in NOT_SCORES:
                walk(value, f"{prefix}/{key}")
            elif _is_number(value):
                scores[f"{prefix}/{key}"] = float(value)

    walk(json.loads(storage.read_text(location)), "eval")
    return scores


def _checkpoint(location: str | None) -> list[Path]:
    """The final checkpoint's state file, when it is on this machine."""
    if location is None or is_url(str(location)) or not Path(location).is_file():
        return []
    return [Path(location)]
