"""Tests for raytune_ft.report: the Pareto plot is written, tables are formatted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from raytune_ft.report import format_front, plot_pareto

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
    out = plot_pareto(
        trials_table(),
        OBJECTIVES,
        tmp_path / "plots" / "pareto.png",
        teacher=TEACHER,
        title="digits",
    )
    assert out == tmp_path / "plots" / "pareto.png"
    assert_png(out)


def test_plot_pareto_draws_more_with_teacher(tmp_path: Path) -> None:
    plain = plot_pareto(trials_table(), OBJECTIVES, tmp_path / "plain.png")
    with_teacher = plot_pareto(trials_table(), OBJECTIVES, tmp_path / "t.png", teacher=TEACHER)
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
    assert_png(plot_pareto(trials, OBJECTIVES, tmp_path / "p.png", teacher=TEACHER))


def test_plot_pareto_more_than_two_objectives(tmp_path: Path) -> None:
    objectives = {"val_acc": "max", "nonzero_params": "min", "latency_ms": "min"}
    assert_png(plot_pareto(trials_table(), objectives, tmp_path / "p.png"))


def test_plot_pareto_needs_a_min_and_a_max_objective(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="one 'min'"):
        plot_pareto(trials_table(), {"val_acc": "max"}, tmp_path / "p.png")
    with pytest.raises(ValueError, match="'val_acc'"):
        plot_pareto(trials_table(), OBJECTIVES, tmp_path / "p.png", teacher={"acc": 0.9})
    assert not (tmp_path / "p.png").exists()


def test_importing_report_does_not_import_matplotlib() -> None:
    code = "import sys, raytune_ft.report; assert 'matplotlib' not in sys.modules"
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


def front_table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "trial_id": ["t1", "t0"],
            "val_acc": [0.81234567, 0.9],
            "nonzero_params": [1_234_567, 50_000],
            "nonzero_float": [1_234_567.0, np.nan],  # ints made float by a missing value
            "lr": [3e-5, 0.0123],
            "kd_temperature": [123456.7, 4.25],
        }
    )


def test_format_front_number_formatting() -> None:
    text = format_front(
        front_table(),
        ["trial_id", "val_acc", "nonzero_params", "nonzero_float", "lr", "kd_temperature"],
    )
    lines = text.splitlines()
    assert lines[0].split() == [
        "trial_id",
        "val_acc",
        "nonzero_params",
        "nonzero_float",
        "lr",
        "kd_temperature",
    ]
    assert lines[1].split() == ["t1", "0.8123", "1,234,567", "1,234,567", "3e-05", "1.23e+05"]
    assert lines[2].split() == ["t0", "0.9000", "50,000", "nan", "0.0123", "4.25"]


def test_format_front_skips_missing_columns_and_keeps_order() -> None:
    text = format_front(front_table(), ["nonzero_params", "no_such_column", "trial_id"])
    assert text.splitlines()[0].split() == ["nonzero_params", "trial_id"]
    assert "no_such_column" not in text


def test_format_front_truncates_rows() -> None:
    front = pd.DataFrame({"trial_id": [f"t{i}" for i in range(5)], "val_acc": [0.5] * 5})
    lines = format_front(front, ["trial_id", "val_acc"], max_rows=3).splitlines()
    assert len(lines) == 1 + 3 + 1
    assert lines[-1] == "... 2 more rows"


def test_format_front_empty_inputs() -> None:
    assert "no rows" in format_front(front_table().iloc[0:0], ["trial_id"])
    assert "no columns" in format_front(front_table(), ["missing"])


def test_pareto_svg_marks_every_trial_with_its_hover_text() -> None:
    from raytune_ft.report import pareto_svg

    trials = trials_table()
    hover = [f"{t} <recipe & more>" for t in trials["trial_id"]]
    svg = pareto_svg(trials, OBJECTIVES, hover, teacher=TEACHER)
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert svg.count("<circle") == 4  # the failed trials have no values to plot
    assert svg.count('class="trial front"') == 2  # t0, t1 (t2 is dominated, t3 not completed)
    assert "t3 &lt;recipe &amp; more&gt;" in svg and "<recipe" not in svg  # escaped
    assert 'class="teacher"' in svg and "(log)" in svg  # sizes span 10k..3.4M
    empty = pareto_svg(trials.iloc[0:0], OBJECTIVES, [])
    assert "<circle" not in empty and empty.endswith("</svg>")


def test_html_table_formats_and_escapes() -> None:
    from raytune_ft.report import html_table

    text = html_table(front_table().assign(trial_id=["<b>t1</b>", "t0"]))
    assert "&lt;b&gt;t1&lt;/b&gt;" in text and "<b>" not in text
    assert "<td>1,234,567</td>" in text and "<td>0.8123</td>" in text
    assert "<td></td>" in text and "nan" not in text  # missing values are empty cells
    assert "no rows" in html_table(front_table().iloc[0:0])


def test_html_page_loads_nothing_from_the_network(tmp_path: Path) -> None:
    from raytune_ft.report import html_page, img_tag

    png = plot_pareto(trials_table(), OBJECTIVES, tmp_path / "p.png")
    page = html_page("a <title>", img_tag(png, "front"))
    assert "<title>a &lt;title&gt;</title>" in page
    assert 'src="data:image/png;base64,iVBORw0KGgo' in page
    assert "http" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_analysis_plots_write_pngs_also_for_empty_inputs(tmp_path: Path) -> None:
    from raytune_ft.report import plot_family_panels, plot_fronts, plot_hypervolume, plot_importances

    curve = pd.DataFrame({"completed": [1, 2], "elapsed_s": [30.0, 90.0], "hypervolume": [0.2, 0.5]})
    assert_png(plot_hypervolume(curve, tmp_path / "hv.png"))
    assert_png(plot_hypervolume(curve.iloc[0:0], tmp_path / "hv0.png"))
    table = pd.DataFrame({"val_acc": [0.7, 0.3], "nonzero_params": [0.1, 0.9]}, index=["lr", "use_kd"])
    assert_png(plot_importances(table, tmp_path / "imp.png"))
    assert_png(plot_importances(None, tmp_path / "imp0.png", note="needs ≥ 3 completed trials"))
    trials = trials_table().assign(use_kd=[True, False, True, False, True, False],
                                   final_sparsity=[0.5, 0.9, 0.7, 0.95, 0.6, 0.6])
    assert_png(plot_family_panels(trials, "nonzero_params", "val_acc", ["use_kd"], tmp_path / "fam.png"))
    assert_png(plot_family_panels(trials_table(), "nonzero_params", "val_acc", [], tmp_path / "fam0.png"))
    assert_png(plot_fronts([("a", trials_table(), TEACHER), ("b", trials_table().iloc[0:0], None)],
                           OBJECTIVES, tmp_path / "fronts.png"))


def test_plot_pareto_marks_each_architecture_when_there_are_several() -> None:
    from matplotlib.figure import Figure

    from raytune_ft.report import mark_architectures

    trials = trials_table()
    trials["model"] = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite0", "efficientnet_lite1",
                       "efficientnet_lite0", "efficientnet_lite0"]
    x, y = trials["nonzero_params"].to_numpy(float), trials["val_acc"].to_numpy(float)
    shown = np.isfinite(x) & np.isfinite(y)
    ax = Figure().add_subplot()
    mark_architectures(ax, trials, x, y, shown)
    labels = ax.get_legend_handles_labels()[1]
    assert labels == ["efficientnet_lite0 (2)", "efficientnet_lite1 (2)"]
    single = Figure().add_subplot()
    mark_architectures(single, trials.assign(model="efficientnet_lite0"), x, y, shown)
    assert single.get_legend_handles_labels()[1] == []  # one architecture: nothing to tell apart
