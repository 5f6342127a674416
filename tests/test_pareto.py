"""Tests for raytune_ft.pareto on hand-built points and trial tables."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from raytune_ft.pareto import (
    crowding_distance,
    hypervolume,
    non_dominated_sort,
    objective_matrix,
    pareto_front,
    pareto_mask,
    to_minimization,
)

NAN = float("nan")


def brute_force_mask(points: np.ndarray) -> np.ndarray:
    """The dominance definition, pair by pair."""
    n = len(points)
    mask = np.zeros(n, dtype=bool)
    for i in range(n):
        if np.isnan(points[i]).any():
            continue
        mask[i] = not any(
            not np.isnan(points[j]).any()
            and (points[j] <= points[i]).all()
            and (points[j] < points[i]).any()
            for j in range(n)
        )
    return mask


def grid_hypervolume(points: np.ndarray, reference: np.ndarray) -> int:
    """Count the unit cells [c, c + 1) inside the reference box dominated by an integer point."""
    axes = [np.arange(int(r)) for r in reference]
    cells = np.array(list(itertools.product(*axes)), dtype=float)
    dominated = np.zeros(len(cells), dtype=bool)
    for p in points:
        dominated |= (cells >= p).all(axis=1)
    return int(dominated.sum())


# --- to_minimization --------------------------------------------------------------------


def test_to_minimization_negates_max_columns_and_copies() -> None:
    values = np.array([[0.9, 100.0], [0.8, 50.0]])
    out = to_minimization(values, ["max", "min"])
    np.testing.assert_array_equal(out, [[-0.9, 100.0], [-0.8, 50.0]])
    assert values[0, 0] == 0.9  # input untouched


def test_to_minimization_rejects_unknown_mode_and_lists_choices() -> None:
    with pytest.raises(ValueError, match=r"'maximize'.*\['max', 'min'\]"):
        to_minimization(np.zeros((2, 2)), ["maximize", "min"])


def test_to_minimization_rejects_wrong_number_of_modes() -> None:
    with pytest.raises(ValueError, match="2 modes for 3"):
        to_minimization(np.zeros((2, 3)), ["min", "min"])


# --- pareto_mask ------------------------------------------------------------------------


def test_pareto_mask_hand_built() -> None:
    points = np.array(
        [
            [1.0, 4.0],  # front
            [2.0, 2.0],  # front
            [2.0, 2.0],  # exact duplicate: neither dominates, both on the front
            [4.0, 1.0],  # front
            [1.0, 5.0],  # equal in x to (1, 4), worse in y: dominated
            [3.0, 3.0],  # dominated by (2, 2)
            [NAN, 0.0],  # NaN row: never on the front ...
        ]
    )
    mask = pareto_mask(points)
    np.testing.assert_array_equal(mask, [True, True, True, True, False, False, False])


def test_nan_row_does_not_dominate() -> None:
    # (0, 0) would dominate everything if the NaN were ignored rather than disqualifying.
    points = np.array([[0.0, NAN], [1.0, 1.0]])
    np.testing.assert_array_equal(pareto_mask(points), [False, True])
    np.testing.assert_array_equal(pareto_mask(np.array([[NAN, 1.0]])), [False])


def test_pareto_mask_single_point_and_empty() -> None:
    np.testing.assert_array_equal(pareto_mask(np.array([[3.0, 7.0]])), [True])
    assert pareto_mask(np.empty((0, 2))).shape == (0,)


def test_pareto_mask_one_objective_keeps_all_minima() -> None:
    np.testing.assert_array_equal(pareto_mask(np.array([3.0, 1.0, 2.0, 1.0])), [0, 1, 0, 1])
    np.testing.assert_array_equal(pareto_mask(np.array([[3.0], [1.0]])), [False, True])


def test_pareto_mask_matches_definition_on_random_ties() -> None:
    rng = np.random.default_rng(0)
    for m in (2, 3):
        points = rng.integers(0, 4, size=(40, m)).astype(float)  # many ties and duplicates
        points[rng.random(40) < 0.1, 0] = NAN
        np.testing.assert_array_equal(pareto_mask(points), brute_force_mask(points))


# --- non_dominated_sort -----------------------------------------------------------------


def test_non_dominated_sort_known_ranks() -> None:
    points = np.array(
        [
            [1.0, 4.0],  # 0
            [2.0, 2.0],  # 0
            [4.0, 1.0],  # 0
            [3.0, 3.0],  # 1 (behind (2, 2))
            [2.0, 5.0],  # 1 (behind (1, 4))
            [4.0, 4.0],  # 2 (behind (3, 3))
            [NAN, 1.0],  # max + 1
        ]
    )
    np.testing.assert_array_equal(non_dominated_sort(points), [0, 0, 0, 1, 1, 2, 3])


def test_non_dominated_sort_matches_repeated_peeling() -> None:
    points = np.random.default_rng(1).integers(0, 5, size=(30, 2)).astype(float)
    expected = np.full(len(points), -1)
    remaining = np.arange(len(points))
    rank = 0
    while remaining.size:
        front = brute_force_mask(points[remaining])
        expected[remaining[front]] = rank
        remaining, rank = remaining[~front], rank + 1
    assert rank > 2  # the check covers several fronts
    np.testing.assert_array_equal(non_dominated_sort(points), expected)


def test_non_dominated_sort_all_nan_gets_rank_zero() -> None:
    np.testing.assert_array_equal(non_dominated_sort(np.full((2, 2), NAN)), [0, 0])


# --- crowding_distance ------------------------------------------------------------------


def test_crowding_distance_boundaries_inf_and_interior_values() -> None:
    front = np.array([[1.0, 6.0], [2.0, 3.0], [4.0, 2.0], [5.0, 1.0]])
    d = crowding_distance(front)
    assert np.isinf(d[0]) and np.isinf(d[3])
    # (2, 3): (4 - 1)/4 + (6 - 2)/5 ; (4, 2): (5 - 2)/4 + (3 - 1)/5
    np.testing.assert_allclose(d[1:3], [0.75 + 0.8, 0.75 + 0.4])


def test_crowding_distance_small_fronts_are_all_boundary() -> None:
    assert np.isinf(crowding_distance(np.array([[1.0, 2.0], [2.0, 1.0]]))).all()
    assert crowding_distance(np.empty((0, 2))).shape == (0,)


# --- hypervolume ------------------------------------------------------------------------


def test_hypervolume_2d_known_value() -> None:
    assert hypervolume(np.array([[1.0, 2.0], [2.0, 1.0]]), np.array([3.0, 3.0])) == 3.0


def test_hypervolume_ignores_points_outside_reference_dominated_and_nan() -> None:
    reference = np.array([3.0, 3.0])
    base = hypervolume(np.array([[1.0, 2.0], [2.0, 1.0]]), reference)
    extra = np.array(
        [
            [1.0, 2.0],
            [2.0, 1.0],
            [2.5, 2.5],  # dominated: adds nothing
            [0.0, 3.0],  # on the reference in y: not strictly better, ignored
            [5.0, 0.0],  # beyond the reference in x: ignored
            [NAN, 0.0],
        ]
    )
    assert hypervolume(extra, reference) == base
    assert hypervolume(np.empty((0, 2)), reference) == 0.0


def test_hypervolume_1d() -> None:
    assert hypervolume(np.array([[2.0], [1.0]]), np.array([4.0])) == 3.0


def test_hypervolume_3d_matches_grid_count() -> None:
    points = np.array([[0.0, 2.0, 3.0], [1.0, 1.0, 1.0], [3.0, 0.0, 2.0], [2.0, 2.0, 2.0]])
    reference = np.array([4.0, 4.0, 4.0])
    assert hypervolume(points, reference) == grid_hypervolume(points, reference)


@pytest.mark.parametrize("m", [3, 4])
def test_hypervolume_random_integer_points_match_grid_count(m: int) -> None:
    rng = np.random.default_rng(m)
    reference = np.full(m, 5.0)
    for _ in range(5):
        points = rng.integers(0, 6, size=(8, m)).astype(float)  # some touch the reference
        assert hypervolume(points, reference) == grid_hypervolume(points, reference)


def test_hypervolume_rejects_bad_reference() -> None:
    with pytest.raises(ValueError, match="3 values for 2"):
        hypervolume(np.zeros((1, 2)), np.ones(3))
    with pytest.raises(ValueError, match="finite"):
        hypervolume(np.zeros((1, 2)), np.array([1.0, np.inf]))


# --- pareto_front -----------------------------------------------------------------------

OBJECTIVES = {"val_acc": "max", "nonzero_params": "min"}


def trials_table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "trial_id": ["a", "b", "c", "d", "e", "f", "g", "h"],
            "status": [
                "completed",
                "completed",
                "completed",
                "early_stopped",
                "failed",
                "completed",
                "completed",
                "completed",
            ],
            "val_acc": [0.90, 0.80, 0.85, 0.99, NAN, 0.97, 0.95, 0.80],
            "nonzero_params": [1000, 500, 2000, 100, NAN, NAN, 5000, 500],
            "lr": [1e-3, 2e-3, 3e-3, 4e-3, 5e-3, 6e-3, 7e-3, 8e-3],
        }
    )


def test_pareto_front_excludes_early_stopped_failed_and_non_finite() -> None:
    front = pareto_front(trials_table(), OBJECTIVES)
    # d (early-stopped) looks best in both objectives and f has no size: neither counts,
    # c is dominated by a, and b/h are duplicates so both stay.
    assert list(front["trial_id"]) == ["b", "h", "a", "g"]
    assert list(front.columns) == list(trials_table().columns)
    assert list(front.index) == [0, 1, 2, 3]


def test_pareto_front_early_stopped_counts_when_asked() -> None:
    front = pareto_front(trials_table(), OBJECTIVES, completed="early_stopped")
    assert list(front["trial_id"]) == ["d"]


def test_pareto_front_sorts_by_size_then_accuracy_descending() -> None:
    trials = pd.DataFrame(
        {
            "trial_id": ["x", "y", "z"],
            "status": ["completed"] * 3,
            "latency_ms": [1.0, 5.0, 2.0],
            "val_acc": [0.70, 0.90, 0.95],
            "nonzero_params": [300, 300, 900],
        }
    )
    objectives = {"latency_ms": "min", "val_acc": "max", "nonzero_params": "min"}
    front = pareto_front(trials, objectives)
    # Sorted by latency_ms (first "min"), then val_acc descending. With the size first:
    assert list(front["trial_id"]) == ["x", "z", "y"]
    size_first = {"nonzero_params": "min", "val_acc": "max", "latency_ms": "min"}
    assert list(pareto_front(trials, size_first)["trial_id"]) == ["y", "x", "z"]


def test_pareto_front_takes_only_the_rows_the_caller_marks_eligible() -> None:
    trials = trials_table()
    eligible = (trials["trial_id"] != "b").to_numpy()  # b and h are equal: h alone stays
    assert list(pareto_front(trials, OBJECTIVES, eligible=eligible)["trial_id"]) == ["h", "a", "g"]
    # a row that dominates every other one is left out when it is not eligible, and c takes a's place
    best = trials.assign(val_acc=np.where(trials["trial_id"] == "a", 0.999, trials["val_acc"]),
                         nonzero_params=np.where(trials["trial_id"] == "a", 10, trials["nonzero_params"]))
    assert list(pareto_front(best, OBJECTIVES)["trial_id"]) == ["a"]
    without_a = (best["trial_id"] != "a").to_numpy()
    assert "a" not in set(pareto_front(best, OBJECTIVES, eligible=without_a)["trial_id"])
    with pytest.raises(ValueError, match="3 values for 8 rows"):
        pareto_front(trials, OBJECTIVES, eligible=np.ones(3, dtype=bool))


def test_pareto_front_knows_no_data_fraction() -> None:
    """Which trials may share a front is the caller's (data_fraction.front_eligible): the column is a
    column like any other here."""
    trials = trials_table().assign(data_fraction=0.25)
    assert list(pareto_front(trials, OBJECTIVES)["trial_id"]) == ["b", "h", "a", "g"]


def test_pareto_front_no_eligible_rows_gives_empty_frame_with_columns() -> None:
    trials = trials_table().assign(status="failed")
    front = pareto_front(trials, OBJECTIVES)
    assert front.empty and list(front.columns) == list(trials.columns)


def test_pareto_front_names_missing_columns() -> None:
    with pytest.raises(ValueError, match="'val_loss'"):
        pareto_front(trials_table(), {"val_loss": "min"})
    with pytest.raises(ValueError, match="'state'"):
        pareto_front(trials_table(), OBJECTIVES, status_column="state")
    with pytest.raises(ValueError, match="'best'.*'val_acc'"):
        pareto_front(trials_table(), {"val_acc": "best"})


def test_objective_matrix_is_lower_is_better() -> None:
    values = objective_matrix(trials_table().head(2), OBJECTIVES)
    np.testing.assert_array_equal(values, [[-0.90, 1000.0], [-0.80, 500.0]])
