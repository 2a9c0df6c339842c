"""`read_live_jsonl`: the records of a JSON-lines file that a running job appends to.

Test helper shared by the Ray-level tests (tests/ is on sys.path: its conftest.py
has no package around it).
"""

from __future__ import annotations

import json
from pathlib import Path


def read_live_jsonl(path: Path) -> list[dict]:
    """Every complete record so far: [] before the file exists, a half-written line skipped."""
    records = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            records.append(json.loads(line))
        except ValueError:
            pass  # a line being written
    return records
