"""The README's "Train on your own data" commands, run as written on the real media.

The commands are read from the README itself; only its placeholder paths are replaced:
`/data/my-clips` by the real clips, `/data/VOC2012` by the real VOC tree, `/data/shards`
by a temporary folder. They run in a temporary working directory (runs/ lands there).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CSEG = [sys.executable, "-c", "from cseg.main import run; run()"]


def readme_commands(section: str) -> list[str]:
    """The first ```sh block under `## <section>`, continuation lines joined."""
    text = (REPO / "README.md").read_text()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", body, re.S).group(1)
    return [line for line in block.replace("\\\n", " ").splitlines() if line.strip()]


@pytest.mark.real_data
@pytest.mark.ray
@pytest.mark.integration
def test_the_own_data_section_runs_as_written_on_the_real_media(real_data, tmp_path):
    commands = readme_commands("Train on your own data")
    assert [shlex.split(c)[:2] for c in commands] == [
        ["cseg", "shards"], ["cseg", "shards"], ["cseg", "pretrain"], ["cseg", "eval"],
        ["cseg", "report"],
    ]  # fmt: skip
    places = {
        "/data/my-clips": str(real_data / "videos"),
        "/data/VOC2012": str(real_data / "voc"),
        "/data/shards": str(tmp_path / "shards"),
    }
    for command in commands:
        for placeholder, path in places.items():
            command = command.replace(placeholder, path)
        args = shlex.split(command)[1:]
        result = subprocess.run(
            [*CSEG, *args], cwd=tmp_path, capture_output=True, text=True, env=dict(os.environ)
        )
        assert result.returncode == 0, f"{command}\n{result.stderr[-3000:]}"
        assert "generated data" not in result.stderr  # every path read is the user's
    run = tmp_path / "runs" / "my-run"
    scores = json.loads((run / "eval.json").read_text())
    assert scores["data"]["shards"] == str(tmp_path / "shards" / "my-voc")
    assert scores["data"]["split"] == "val" and len(scores["data"]["classes"]) == 21
    assert {"linear_probe", "kmeans"} <= set(scores)
    assert scores["kmeans"]["protocol"]["input"].startswith("each image resized to 64x64")
    assert (run / "report.html").exists()
