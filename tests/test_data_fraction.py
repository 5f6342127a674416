"""The data fraction's owner (data_fraction.py): which rows of a trials table are full-data, which may
reach a front, and how a trial's settings are marked."""

from __future__ import annotations

import numpy as np
import pandas as pd

from raytune_ft import data_fraction, pareto


def _two_stages() -> pd.DataFrame:
    # s1, s2: the subset stage (s1 looks best of all: more accurate and smaller); f1, f2: all the data
    return pd.DataFrame({"trial_id": ["s1", "s2", "f1", "f2"],
                         "status": ["completed", "completed", "completed", "failed"],
                         "val_acc": [0.99, 0.80, 0.90, 0.95], "nonzero_params": [10, 500, 1000, 100],
                         "data_fraction": [0.25, 0.25, 1.0, np.nan]})


def test_a_missing_fraction_or_column_is_all_the_data():
    np.testing.assert_array_equal(data_fraction.fractions(_two_stages()), [0.25, 0.25, 1.0, 1.0])
    np.testing.assert_array_equal(data_fraction.is_full_data(_two_stages()), [False, False, True, True])
    assert data_fraction.is_full_data(pd.DataFrame({"trial_id": ["a", "b"]})).all()


def test_only_full_data_rows_are_eligible_once_one_completed():
    trials = _two_stages()
    np.testing.assert_array_equal(data_fraction.front_eligible(trials), [False, False, True, True])
    front = pareto.pareto_front(trials, {"val_acc": "max", "nonzero_params": "min"},
                                eligible=data_fraction.front_eligible(trials))
    assert list(front["trial_id"]) == ["f1"]  # s1 dominates f1 but was trained on a quarter of the data


def test_before_a_full_data_row_completed_the_subset_rows_make_the_front():
    trials = _two_stages().assign(status=["completed", "completed", "running", "failed"])
    assert data_fraction.front_eligible(trials).all()
    assert data_fraction.front_eligible(trials, completed="running").tolist() == [False, False, True, True]


def test_settings_are_marked_only_when_they_are_a_subset():
    assert data_fraction.is_subset(0.5) and not data_fraction.is_subset(1)
    assert data_fraction.with_fraction({"lr": 0.1}, 0.25) == {"lr": 0.1, "data_fraction": 0.25}
    assert data_fraction.with_fraction({"lr": 0.1}, 1.0) == {"lr": 0.1}
    assert data_fraction.on_full_data({"lr": 0.1, "data_fraction": 0.25}) == {"lr": 0.1, "data_fraction": 1.0}
    assert data_fraction.subset_fraction(_two_stages()) == 0.25
    assert data_fraction.subset_fraction(_two_stages().iloc[2:]) is None
