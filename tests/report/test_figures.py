"""Figures (report/figures.py): every PNG is written, also for empty inputs; the SVG marks each trial
and the front; a subset-stage trial never is drawn as a front point."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from raytune_ft.report import figures

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
OBJECTIVES = {"val_acc": "max", "nonzero_params": "min"}
TEACHER = {"val_acc": 0.96, "nonzero_params": 3_400_000}


def trials_table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "trial_id": ["t0", "t1", "t2", "t3", "t4", "t5"],
            "status": ["completed", "completed", "completed", "early_stopped", "failed", "failed"],
            "val_acc": [0.90, 0.80, 0.85, 0.99, np.nan, np.nan],
            "nonzero_params": [1_000_000, 50_000, 2_000_000, 10_000, np.nan, np.nan],
            "latency_ms": [3.0, 1.0, 2.0, 0.5, np.nan, np.nan],
        }
    )


def assert_png(path: Path) -> None:
    assert path.is_file()
    data = path.read_bytes()
    assert len(data) > 1000
    assert data.startswith(PNG_MAGIC)


def test_plot_pareto_normal(tmp_path: Path) -> None:
    out = figures.plot_pareto(
        trials_table(),
        OBJECTIVES,
        tmp_path / "plots" / "pareto.png",
        teacher=TEACHER,
        title="digits",
    )
    assert out == tmp_path / "plots" / "pareto.png"
    assert_png(out)


def test_plot_pareto_draws_more_with_teacher(tmp_path: Path) -> None:
    plain = figures.plot_pareto(trials_table(), OBJECTIVES, tmp_path / "plain.png")
    with_teacher = figures.plot_pareto(trials_table(), OBJECTIVES, tmp_path / "t.png", teacher=TEACHER)
    assert plain.read_bytes() != with_teacher.read_bytes()


@pytest.mark.parametrize(
    "trials",
    [
        trials_table().iloc[0:0],  # no rows at all
        trials_table().assign(status="failed"),  # rows, none completed
        trials_table().iloc[[0]],  # one trial
    ],
    ids=["empty", "all-failed", "one-row"],
)
def test_plot_pareto_degenerate_inputs(tmp_path: Path, trials: pd.DataFrame) -> None:
    assert_png(figures.plot_pareto(trials, OBJECTIVES, tmp_path / "p.png", teacher=TEACHER))


def test_plot_pareto_more_than_two_objectives(tmp_path: Path) -> None:
    objectives = {"val_acc": "max", "nonzero_params": "min", "latency_ms": "min"}
    assert_png(figures.plot_pareto(trials_table(), objectives, tmp_path / "p.png"))


def test_plot_pareto_needs_a_min_and_a_max_objective(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="one 'min'"):
        figures.plot_pareto(trials_table(), {"val_acc": "max"}, tmp_path / "p.png")
    with pytest.raises(ValueError, match="'val_acc'"):
        figures.plot_pareto(trials_table(), OBJECTIVES, tmp_path / "p.png", teacher={"acc": 0.9})
    assert not (tmp_path / "p.png").exists()


def test_importing_report_does_not_import_matplotlib() -> None:
    code = ("import sys, raytune_ft.report.figures, raytune_ft.report.page, raytune_ft.report.tables; "
            "assert not {'matplotlib', 'torch'} & set(sys.modules), sorted(sys.modules)")
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


def test_pareto_svg_marks_every_trial_with_its_hover_text() -> None:
    trials = trials_table()
    hover = [f"{t} <recipe & more>" for t in trials["trial_id"]]
    svg = figures.pareto_svg(trials, OBJECTIVES, hover, teacher=TEACHER)
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert svg.count("<circle") == 4  # the failed trials have no values to plot
    assert svg.count('class="trial front"') == 2  # t0, t1 (t2 is dominated, t3 not completed)
    assert "t3 &lt;recipe &amp; more&gt;" in svg and "<recipe" not in svg  # escaped
    assert 'class="teacher"' in svg and "(log)" in svg  # sizes span 10k..3.4M
    empty = figures.pareto_svg(trials.iloc[0:0], OBJECTIVES, [])
    assert "<circle" not in empty and empty.endswith("</svg>")


def test_analysis_plots_write_pngs_also_for_empty_inputs(tmp_path: Path) -> None:
    curve = pd.DataFrame({"completed": [1, 2], "elapsed_s": [30.0, 90.0], "hypervolume": [0.2, 0.5]})
    assert_png(figures.plot_hypervolume(curve, tmp_path / "hv.png"))
    assert_png(figures.plot_hypervolume(curve.iloc[0:0], tmp_path / "hv0.png"))
    table = pd.DataFrame({"val_acc": [0.7, 0.3], "nonzero_params": [0.1, 0.9]}, index=["lr", "use_kd"])
    assert_png(figures.plot_importances(table, tmp_path / "imp.png"))
    assert_png(figures.plot_importances(None, tmp_path / "imp0.png", note="needs ≥ 3 completed trials"))
    trials = trials_table().assign(use_kd=[True, False, True, False, True, False],
                                   final_sparsity=[0.5, 0.9, 0.7, 0.95, 0.6, 0.6])
    assert_png(figures.plot_family_panels(trials, "nonzero_params", "val_acc", ["use_kd"], tmp_path / "fam.png"))
    assert_png(figures.plot_family_panels(trials_table(), "nonzero_params", "val_acc", [], tmp_path / "fam0.png"))
    assert_png(figures.plot_fronts([("a", trials_table(), TEACHER), ("b", trials_table().iloc[0:0], None)],
                                   OBJECTIVES, tmp_path / "fronts.png"))


def test_plot_pareto_marks_each_architecture_when_there_are_several() -> None:
    from matplotlib.figure import Figure

    trials = trials_table()
    trials["model"] = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite0", "efficientnet_lite1",
                       "efficientnet_lite0", "efficientnet_lite0"]
    x, y = trials["nonzero_params"].to_numpy(float), trials["val_acc"].to_numpy(float)
    shown = np.isfinite(x) & np.isfinite(y)
    ax = Figure().add_subplot()
    figures.mark_architectures(ax, trials, x, y, shown)
    labels = ax.get_legend_handles_labels()[1]
    assert labels == ["efficientnet_lite0 (2)", "efficientnet_lite1 (2)"]
    single = Figure().add_subplot()
    figures.mark_architectures(single, trials.assign(model="efficientnet_lite0"), x, y, shown)
    assert single.get_legend_handles_labels()[1] == []  # one architecture: nothing to tell apart


def test_the_svg_front_leaves_out_a_subset_trial_that_dominates_the_full_data_ones() -> None:
    trials = trials_table().assign(data_fraction=[1.0, 1.0, 1.0, 1.0, 1.0, 0.25])
    trials.loc[5, ["status", "val_acc", "nonzero_params"]] = ["completed", 0.999, 1_000]
    hover = list(trials["trial_id"])
    svg = figures.pareto_svg(trials, OBJECTIVES, hover)
    assert svg.count('class="trial front"') == 2  # t0, t1 as without t5
    front_marks = [part for part in svg.split("<circle")[1:] if 'class="trial front"' in part]
    assert not any("<title>t5</title>" in mark for mark in front_marks)
