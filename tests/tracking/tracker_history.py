"""Read back what each tracker stored, with the trackers' own readers (test helper).

TensorBoard: `EventAccumulator` over every event file of the folder. MLflow:
`MlflowClient`. W&B: the offline run's transaction log, `run-<id>.wandb`, whose
records are the `wandb_internal_pb2.Record` protos in LevelDB-log framing (wandb
0.31 no longer ships its Python reader, so the framing is read here).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK = 32768  # the LevelDB log's block
HEADER = 7  # a record's header: checksum (4), length (2), type (1)
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def tensorboard_series(folder: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of a scalar tag, over every event file in `folder`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    points = []
    for events in sorted(Path(folder).glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        if tag in accumulator.Tags()["scalars"]:
            points += [(event.step, event.value) for event in accumulator.Scalars(tag)]
    return sorted(points)


def tensorboard_text_tags(folder: Path) -> set[str]:
    """The tensor (text summary) tags written in `folder`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags: set[str] = set()
    for events in Path(folder).glob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        tags |= set(accumulator.Tags()["tensors"])
    return tags


def mlflow_client(uri: str):
    """An `MlflowClient` on `uri` (the sqlite store a run writes by default)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def wandb_records(wandb_dir: Path, run_id: str):
    """Every record of the run's offline transaction logs (a resumed run adds a folder)."""
    from wandb.proto import wandb_internal_pb2

    for log in sorted(Path(wandb_dir).glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")):
        for data in _leveldb_records(log.read_bytes()):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(data)
            yield record


def wandb_history(wandb_dir: Path, run_id: str) -> list[dict]:
    """The run's logged rows (`_step` and the logged keys), in logging order."""
    rows = []
    for record in wandb_records(wandb_dir, run_id):
        if record.WhichOneof("record_type") == "history":
            rows.append(
                {
                    item.key or "/".join(item.nested_key): json.loads(item.value_json)
                    for item in record.history.item
                }
            )
    return rows


def _leveldb_records(data: bytes):
    ident, magic, _version = struct.unpack("<4sHB", data[:HEADER])
    assert ident == b":W&B" and magic == 0xBEE1, "not a W&B transaction log"
    position, pending = HEADER, b""
    while position + HEADER <= len(data):
        left = BLOCK - position % BLOCK
        if left < HEADER:  # the block's tail is padding
            position += left
            continue
        _checksum, length, kind = struct.unpack("<IHB", data[position : position + HEADER])
        if length == 0 and kind == 0:
            position += left
            continue
        chunk = data[position + HEADER : position + HEADER + length]
        position += HEADER + length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            yield pending + chunk
            pending = b""
