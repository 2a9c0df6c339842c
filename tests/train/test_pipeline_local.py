"""The three-stage pipeline (cacl -> maskcontrast -> reco) in one `run_pretrain` call, local mode."""

from __future__ import annotations

import json

from raycseg.config import load_recipe
from raycseg.train.checkpoint import load_state
from raycseg.train.evaluation import build_initial_backbone
from raycseg.train.launch import run_pretrain


def test_stages_run_in_order_each_from_the_previous_checkpoint(tmp_path):
    recipe = load_recipe(
        "pipeline/cacl_maskcontrast_reco_debug",
        [f"data.root={tmp_path / 'data'}", f"storage.path={tmp_path / 'runs'}", "eval=null"],
    )
    result = run_pretrain(recipe)
    records = [
        json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    stages = [stage.name for stage in recipe.stages]
    assert stages == ["cacl", "maskcontrast", "reco"]
    expected, offset = [], 0
    for stage in recipe.stages:  # `step` counts on across stages
        expected += [(stage.name, offset + s) for s in range(1, stage.steps + 1)]
        offset += stage.steps
    assert [(r["stage"], r["step"]) for r in records] == expected

    finished = json.loads((result.run_dir / "stages.json").read_text())
    assert list(finished) == stages
    cacl = load_state(result.checkpoints["cacl"])
    maskcontrast = load_state(result.checkpoints["maskcontrast"])
    assert maskcontrast["step"] == cacl["step"] + recipe.stages[1].steps
    # maskcontrast started from cacl's weights: 4 steps later it is far closer to them than to
    # the random initialisation the run began with
    initial = build_initial_backbone(recipe).state_dict()
    names = [n for n, t in cacl["backbone"].items() if t.is_floating_point() and "weight" in n]

    def distance(a, b):
        return sum(float((a[n] - b[n]).pow(2).sum()) for n in names) ** 0.5

    moved = distance(maskcontrast["backbone"], cacl["backbone"])
    assert 0 < moved < 0.5 * distance(maskcontrast["backbone"], initial)
