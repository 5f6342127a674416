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
    root = Path(__file__).resolve().parents[1]
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
