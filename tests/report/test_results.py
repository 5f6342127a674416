"""The front of an experiment's trials table (report/results.front): every reader of pareto.csv's rows
gets the full-data trials of a two-stage search, never a subset row."""

from __future__ import annotations

import pandas as pd

from raytune_ft.report import results

OBJECTIVES = {"val_acc": "max", "nonzero_params": "min"}


def _table() -> pd.DataFrame:
    # s: a stage-1 (subset) trial better than every full-data trial in both objectives
    return pd.DataFrame({"trial_id": ["s", "f1", "f2"], "status": "completed", "val_acc": [0.99, 0.90, 0.80],
                         "nonzero_params": [10, 1000, 100], "data_fraction": [0.25, 1.0, 1.0]})


def test_a_subset_row_never_reaches_the_front_of_a_table_with_full_data_rows():
    assert list(results.front(_table(), OBJECTIVES)["trial_id"]) == ["f2", "f1"]


def test_a_table_of_subset_rows_alone_has_the_subset_front_and_an_empty_table_an_empty_one():
    assert list(results.front(_table().iloc[:1], OBJECTIVES)["trial_id"]) == ["s"]
    empty = results.front(_table().iloc[:0], OBJECTIVES)
    assert empty.empty and list(empty.columns) == list(_table().columns)
