"""Cells and the plain-text table (report/tables.py): numbers formatted by their range, columns kept
in order, rows cut with a count."""

from __future__ import annotations

import numpy as np
import pandas as pd

from raytune_ft.report.tables import format_front, format_interval


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


def test_format_interval_is_empty_without_a_test_accuracy() -> None:
    assert format_interval({"test_acc": 0.965, "test_acc_low": 0.94123, "test_acc_high": 0.97951}) \
        == "0.9650 [0.9412, 0.9795]"
    assert format_interval({"test_acc": float("nan")}) == "" and format_interval({}) == ""
