"""raycseg.bench.losses: input checks, the result dict of a tiny case, the CRW baseline's closed form.

Timings are never asserted (DESIGN.md convention 10).
"""

from __future__ import annotations

import math

import pytest
import torch

from raycseg.bench.losses import CASES, DEFAULT_SHAPES, benchmark_loss, crw_walk_loss
from raycseg.errors import CsegError


def test_unknown_case_or_shape_key_is_a_usage_error():
    with pytest.raises(CsegError, match="choose one of"):
        benchmark_loss("simclr")
    with pytest.raises(CsegError, match="unknown shape key"):
        benchmark_loss("reco", height=3)
    assert set(CASES) == set(DEFAULT_SHAPES)


@pytest.mark.integration
def test_a_tiny_case_runs_in_a_subprocess_and_reports_time_and_memory():
    tiny = {
        "batch": 1,
        "dim": 8,
        "side": 9,
        "classes": 4,
        "classes_per_image": 2,
        "num_queries": 4,
        "num_negatives": 4,
    }
    result = benchmark_loss("reco", repeats=2, **tiny)
    assert result["case"] == "reco" and result["shapes"] == {**DEFAULT_SHAPES["reco"], **tiny}
    assert len(result["times_s"]) == 2 and result["time_s"] > 0 and result["cpu_s"] >= 0
    assert result["peak_mib"] >= 0 and result["peak_method"]
    assert "reference" not in result  # references apply to the default shapes only


def test_crw_walk_on_identical_nodes_gives_log_of_node_count():
    nodes = 6
    frames = torch.ones(2, 4, 3, nodes)  # every transition uniform, so every walk is uniform
    torch.testing.assert_close(
        crw_walk_loss(frames, edge_dropout=0.0), torch.tensor(math.log(nodes))
    )


def test_crw_walk_with_three_frames_is_the_explicit_palindrome():
    frames = torch.randn(
        1, 3, 4, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    z = torch.nn.functional.normalize(frames[0], dim=1)
    step = [torch.softmax(z[t].T @ z[t + 1] / 0.07, dim=1) for t in range(2)]
    back = [torch.softmax(z[t + 1].T @ z[t] / 0.07, dim=1) for t in range(2)]
    walk = step[0] @ step[1] @ back[1] @ back[0]  # 0 -> 1 -> 2 -> 1 -> 0
    expected = -torch.log(torch.diagonal(walk) + 1e-20).mean()
    torch.testing.assert_close(crw_walk_loss(frames, edge_dropout=0.0), expected)
