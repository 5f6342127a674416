"""The fidelity study (benchmarks/fidelity_study.py): its agreement numbers on known rankings, its
promotion regret, and its smoke path end to end (a few hundred Fashion-MNIST images, resumable)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "fidelity_study.py"
FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("fidelity_study", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rank_agreement_on_known_rankings(study):
    # one swapped pair of 4: 5 concordant, 1 discordant pair -> tau = 4/6; rho = 1 - 6*2/(4*15) = 0.8
    out = study.rank_agreement(np.array([0.1, 0.2, 0.3, 0.4]), np.array([0.5, 0.6, 0.8, 0.7]))
    assert out["n"] == 4 and out["tau"] == pytest.approx(2 / 3) and out["rho"] == pytest.approx(0.8)
    low, high = out["tau_ci95"]
    assert -1 <= low <= out["tau"] <= high <= 1
    reversed_ = study.rank_agreement(np.arange(6.0), -np.arange(6.0))
    assert reversed_["tau"] == pytest.approx(-1) and reversed_["tau_ci95"] == [pytest.approx(-1), pytest.approx(-1)]


def test_promotion_regret_is_the_reference_gap_of_the_cheap_top_k(study):
    objectives = {"val_acc": "max", "model_bytes_compressed": "min"}
    # the cheap fidelity ranks 0 and 1 on top by accuracy; the reference's best is recipe 2
    cheap = pd.DataFrame({"val_acc": [0.90, 0.89, 0.80, 0.70], "model_bytes_compressed": [100, 100, 100, 100]})
    reference = pd.Series([0.91, 0.92, 0.935, 0.90])
    regret = study.promotion_regret(cheap, reference, objectives, k=2)
    assert regret["regret_acc_pts"] == pytest.approx(1.5) and regret["regret_nsga2_pts"] == pytest.approx(1.5)
    # a tiny recipe (3) is on the cheap front: NSGA-II promotes it with the most accurate, not recipe 1
    tiny = cheap.assign(model_bytes_compressed=[100, 100, 100, 10])
    regret = study.promotion_regret(tiny, reference, objectives, k=2)
    assert regret["regret_nsga2_pts"] == pytest.approx(2.5) and regret["regret_acc_pts"] == pytest.approx(1.5)


def test_report_numbers_from_a_results_file(study, tmp_path):
    val = {"stage1": [0.80, 0.82, 0.81, 0.85], "full_equal_cost": [0.86, 0.87, 0.88, 0.89],
           "reference": [0.88, 0.90, 0.89, 0.92]}
    units = {f"{i:02d}/{name}": {"val_acc": v[i], "model_bytes_compressed": 1000 + i, "seconds": s,
                                 "data_fraction": 0.25 if name == "stage1" else 1.0, "epochs": 4, "cpu": "x",
                                 "date": "d", "command": "c", "threads": 1}
             for name, v, s in (("stage1", val["stage1"], 1.0), ("full_equal_cost", val["full_equal_cost"], 1.0),
                                ("reference", val["reference"], 4.0)) for i in range(4)}
    setup = {"space": "s", "drawn": "d", "recipes": [{"lr": 0.1}] * 4, "objectives": {"val_acc": "max",
             "model_bytes_compressed": "min"}, "fidelities": {n: {"data_fraction": 1.0, "epochs": 4} for n in val}}
    data = {"setup": setup, "units": units}
    summary = study.analyse(data, setup["objectives"], k=2).set_index("fidelity")
    # stage1 orders 0 < 2 < 1 < 3, the reference 0 < 2 < 1 < 3 too: tau 1; equal cost swaps 1 and 2: 4/6
    assert summary.loc["stage1", "val_acc_tau"] == pytest.approx(1.0)
    assert summary.loc["full_equal_cost", "val_acc_tau"] == pytest.approx(2 / 3)
    assert summary.loc["stage1", "cost_x_reference"] == pytest.approx(0.25)
    assert summary.loc["stage1", "regret_acc_pts"] == pytest.approx(0.0)
    text = study.markdown(summary.reset_index(), data, 2, "f.json")
    assert "| stage1 | 0.25 | 4 | 4 | 1.00 [" in text and "| full_equal_cost | 1 | 4 | 4 | 0.67 [" in text


@pytest.mark.skipif(not FASHION.is_dir(), reason="needs Debian's dataset-fashion-mnist")
def test_smoke_run_trains_every_unit_once_and_reports(study, tmp_path):
    out, md, png = tmp_path / "f.json", tmp_path / "f.md", tmp_path / "f.png"
    args = ["--smoke", "--no-kd", "--no-export", "--recipes", "3", "--models", "compact_cnn_16", "--threads", "1",
            "--out", str(out)]
    assert study.main([*args, "--shard", "1/2"]) == 0  # recipe 1 only
    data = json.loads(out.read_text())
    assert sorted(data["units"]) == ["01/full_equal_cost", "01/reference", "01/stage1"]
    assert study.main(args) == 0  # the rest: recipe 1 is not trained again
    data = json.loads(out.read_text())
    assert len(data["units"]) == 9 and len(data["setup"]["recipes"]) == 3
    unit = data["units"]["01/stage1"]
    assert unit["data_fraction"] == 0.25 and unit["train_images"] == 80 and 0 <= unit["val_acc"] <= 1
    assert unit["model_bytes_compressed"] > 0 and unit["seconds"] > 0 and unit["cpu"]
    assert all(not r.get("use_kd") and r["model"] == "compact_cnn_16" for r in data["setup"]["recipes"])
    assert study.main([*args, "--report", "--md", str(md), "--png", str(png)]) == 0
    assert "| stage1 | 0.25 | 1 | 3 |" in md.read_text() and png.stat().st_size > 0
