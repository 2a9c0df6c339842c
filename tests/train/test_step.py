"""The training step waits for the device only where it must: host syncs counted per method.

A training step that does not log makes at most MAX_HOST_SYNCS host-device
synchronisations (docs/benchmarks.md, "Training step"); a logging step makes one
more, to read its metrics. The counter is `raycseg.bench.host_syncs.HostSyncCounter`,
whose own detection is tested first.
"""

from __future__ import annotations

import pytest
import torch

from raycseg.bench.host_syncs import HostSyncCounter
from raycseg.bench.train_step import _random_batch, _random_weights_and_shapes
from raycseg.config import load_recipe
from raycseg.methods import build_method
from raycseg.train.step import StageStep

MAX_HOST_SYNCS = 0  # a training step that does not log (the fused optimizers read nothing back)


def test_the_counter_sees_reads_and_data_dependent_shapes_and_nothing_else():
    x = torch.randn(6, 4)
    mask = x[:, 0] > 0
    with HostSyncCounter() as plain:
        (x @ x.T).softmax(1).sum()
        x[torch.tensor([0, 2])]  # indexing by position: a fixed shape
        torch.where(mask[:, None], x, 0.0)
    assert plain.count == 0, plain.by_op
    with HostSyncCounter() as syncs:
        float(x.sum())
        x[mask]
        mask.nonzero()
        torch.unique(mask)
        if mask.any():
            x.tolist()
    assert syncs.by_op["_local_scalar_dense"] == 2  # float() and the `if`
    assert syncs.by_op["index"] == 1 and syncs.by_op["nonzero"] == 1
    assert syncs.by_op["tolist"] == 1
    assert syncs.count == 6
    assert x.tolist.__qualname__ == "Tensor.tolist"  # unwrapped again


STAGES = [
    ("cacl/debug", []),
    ("maskcontrast/debug", []),
    ("maskcontrast/debug", ["stages.maskcontrast.loss_resolution=feature"]),
    ("reco/voc_60labels_debug", []),
    ("reco/voc_60labels_debug", ["stages.reco.mode=partial"]),
    ("reco/voc_60labels_debug", ["stages.reco.mode=supervised"]),
]


def _stage_step(name: str, overrides: list[str]) -> tuple[StageStep, dict]:
    recipe = load_recipe(name, overrides, check_files=False)
    recipe, stage, _ = _random_weights_and_shapes(recipe, recipe.stages[0])
    torch.manual_seed(0)
    method = build_method(stage, recipe.model).train()
    step = StageStep(
        method, method, recipe.optim_for(stage), 10, recipe.scaling, torch.device("cpu")
    )
    batch = _random_batch(stage, torch.Generator().manual_seed(0))
    return step, batch


@pytest.mark.parametrize(("name", "overrides"), STAGES)
def test_a_step_that_does_not_log_makes_no_host_sync(name, overrides):
    step, batch = _stage_step(name, overrides)
    step.run(dict(batch), 0)  # the first step reads the EMA copy's flag once
    with HostSyncCounter() as syncs:
        output = step.run(dict(batch), 1)
    assert syncs.count <= MAX_HOST_SYNCS, dict(syncs.by_op)
    with HostSyncCounter() as logging:
        logged = step.logged_values(output, skipped_corrupt=3)
    assert logging.count == 1, dict(logging.by_op)  # the metrics, read back at once
    assert logged.loss == pytest.approx(float(output["loss"].detach()))
    assert set(logged.terms) == set(output["terms"]) and logged.skipped_corrupt == 3
    assert logged.first_non_finite is None


def test_a_non_finite_loss_is_flagged_on_the_device_and_read_when_logging():
    step, batch = _stage_step("cacl/debug", [])
    step.run(dict(batch), 0)
    with torch.no_grad():
        next(step.method.parameters()).fill_(float("nan"))
    step.run(dict(batch), 1)
    output = step.run(dict(batch), 2)
    assert not torch.isfinite(output["loss"])
    assert step.logged_values(output, 0).first_non_finite == 1  # the first bad step, not the last
