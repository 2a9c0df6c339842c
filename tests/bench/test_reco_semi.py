"""`cseg bench reco-semi`: a one-seed, few-step smoke run of the benchmark's report."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from raycseg.bench.reco import benchmark_reco_semi
from raycseg.errors import CsegError


@pytest.mark.integration
def test_one_seed_reports_both_modes_and_the_summary(tmp_path):
    from cseg.main import app

    result = CliRunner().invoke(
        app,
        ["bench", "reco-semi", "--seeds", "1", "--steps", "4", "--workdir", str(tmp_path),
         "--json", str(tmp_path / "reco.json")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "reco.json").read_text())
    assert (report["steps"], report["mode"]) == (4, "semi")
    (seed,) = report["seeds"]
    assert seed["seed"] == 0
    for mode in ("supervised", "semi"):
        scores = seed[mode]
        assert 0.0 <= scores["best_val_miou"] <= 1.0 and 0.0 <= scores["final_val_miou"] <= 1.0
        assert scores["best_val_miou"] >= scores["final_val_miou"] and scores["seconds"] > 0
        summary = report["summary"][mode]
        assert summary["best_val_miou_mean"] == scores["best_val_miou"]
        assert summary["best_val_miou_std"] is None  # one seed: no spread
    assert seed["semi_won"] == (seed["semi"]["best_val_miou"] > seed["supervised"]["best_val_miou"])
    assert report["summary"]["semi_wins"] == int(seed["semi_won"])
    assert report["summary"]["seeds"] == 1
    assert math.isclose(
        report["summary"]["gain_mean"],
        seed["semi"]["best_val_miou"] - seed["supervised"]["best_val_miou"],
    )
    assert "reco: semi vs supervised" in result.stdout and "semi_wins" in result.stdout


def test_bad_arguments_are_errors_before_anything_trains(tmp_path):
    with pytest.raises(CsegError, match="semi, partial"):
        benchmark_reco_semi(1, 1, mode="supervised", workdir=tmp_path)
    with pytest.raises(CsegError, match="at least 1"):
        benchmark_reco_semi(0, 1, workdir=tmp_path)
    assert list(tmp_path.iterdir()) == []
