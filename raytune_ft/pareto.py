"""Multi-objective math, its one owner: dominance, non-dominated ranks, crowding distance,
hypervolume, and the normalisation of a trials table for the hypervolume (`hv_scales`,
`normalize`, `hypervolume_curve`); MO-ASHA, the search's progress line and the report use these.

Every array function takes an (n, m) float array in which each of the m objectives is
"lower is better"; `to_minimization` is the one place where "max" objectives are negated.
`pareto_front` is the DataFrame-facing entry point: it builds the front of a trials table from the
rows its caller marks eligible (which trials may share a front is not this module's to know).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from raytune_ft.layout import COMPLETED

MODES = ("max", "min")


def to_minimization(values: np.ndarray, modes: Sequence[str], *, nan_as_worst: bool = False) -> np.ndarray:
    """Return a float copy of the (n, m) `values` in which every "max" column is negated.

    f'_j = -f_j if modes[j] == "max" else f_j, so that afterwards lower is better everywhere.
    nan_as_worst: NaN becomes +inf (a missing value ranks last in its objective, as MO-ASHA's
    rungs need); otherwise NaN stays (rows with NaN rank after every valid row).
    """
    out = _as_points(values).copy()
    if out.shape[1] == 1 and len(modes) > 1:  # one point given as a flat vector
        out = out.reshape(-1, len(modes))
    if len(modes) != out.shape[1]:
        raise ValueError(f"got {len(modes)} modes for {out.shape[1]} objective columns")
    for j, mode in enumerate(modes):
        _check_mode(mode)
        if mode == "max":
            out[:, j] = -out[:, j]
    if nan_as_worst:
        out[np.isnan(out)] = np.inf
    return out


def dominates(a: np.ndarray, b: np.ndarray) -> bool:
    """a Pareto-dominates b (minimisation): no worse everywhere, strictly better somewhere."""
    return bool(np.all(a <= b) and np.any(a < b))


def pareto_mask(points: np.ndarray) -> np.ndarray:
    """Boolean (n,) mask of the non-dominated rows of a lower-is-better (n, m) array.

    a dominates b iff a_j <= b_j for all j and a_j < b_j for at least one j. Exact
    duplicates do not dominate each other, so both stay on the front. Rows containing NaN
    are never on the front and never dominate another row.
    """
    pts = _as_points(points)
    return (non_dominated_sort(pts) == 0) & ~np.isnan(pts).any(axis=1)


def non_dominated_sort(points: np.ndarray) -> np.ndarray:
    """Non-dominated rank of every row: 0 for the first front, 1 once it is removed, and so on.

    The fast non-dominated sort of NSGA-II (Deb et al., 2002), O(m n^2); the same ranks drive
    MO-ASHA's promotions (Schmucker et al., 2021). Rows containing NaN get rank
    max_rank + 1 (0 if no row is valid), i.e. they come after every valid row.
    """
    pts = _as_points(points)
    valid = ~np.isnan(pts).any(axis=1)
    ranks = np.zeros(len(pts), dtype=np.int64)
    candidates = pts[valid]
    dominates = _dominance_matrix(candidates)
    dominated_count = dominates.sum(axis=0)
    assigned = np.zeros(len(candidates), dtype=bool)
    rank_of_valid = np.zeros(len(candidates), dtype=np.int64)
    rank = 0
    while not assigned.all():  # dominance is acyclic, so some unassigned row has count 0
        front = ~assigned & (dominated_count == 0)
        rank_of_valid[front] = rank
        assigned |= front
        dominated_count -= dominates[front].sum(axis=0)
        rank += 1
    ranks[valid] = rank_of_valid
    ranks[~valid] = rank
    return ranks


def crowding_distance(points: np.ndarray) -> np.ndarray:
    """NSGA-II crowding distance (Deb et al., 2002) of each row of one front.

    With the rows sorted by objective j, d_i = sum_j (f_j[i+1] - f_j[i-1]) / (f_j^max - f_j^min).
    The two boundary rows of every objective get inf; an objective with zero (or infinite)
    spread adds nothing and marks no boundary (its order is arbitrary). Fronts of one or two
    rows are all boundary (inf).
    """
    pts = _as_points(points)
    if np.isnan(pts).any():
        raise ValueError("crowding_distance got NaN values; pass the rows of one valid front")
    n, m = pts.shape
    distance = np.zeros(n)
    if n <= 2:
        return np.full(n, np.inf)
    for j in range(m):
        order = np.argsort(pts[:, j], kind="stable")
        column = pts[order, j]
        spread = column[-1] - column[0]
        if spread > 0 and np.isfinite(spread):
            distance[order[0]] = distance[order[-1]] = np.inf
            distance[order[1:-1]] += (column[2:] - column[:-2]) / spread
    return distance


def non_dominated_fronts(points: np.ndarray) -> list[np.ndarray]:
    """Row indices split into fronts F0, F1, ... by `non_dominated_sort` (F0 is the Pareto set;
    identical rows share a front; rows with NaN form the last one)."""
    ranks = non_dominated_sort(points)
    return [np.flatnonzero(ranks == r) for r in range(int(ranks.max()) + 1)] if len(ranks) else []


def rank_keys(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(front index, crowding distance within its front) of every row: NSGA-II's order, better =
    lower front, then larger crowding distance."""
    points = _as_points(points)
    front_of = np.zeros(len(points), dtype=int)
    crowding = np.zeros(len(points))
    for k, idx in enumerate(non_dominated_fronts(points)):
        front_of[idx] = k
        crowding[idx] = crowding_distance(points[idx])
    return front_of, crowding


def select_top(points: np.ndarray, k: int) -> np.ndarray:
    """Indices of the best `k` rows by NSGA-II survival (Deb et al. 2002): whole fronts in order, the
    front that does not fit whole filled by decreasing crowding distance (ties: lower index first)."""
    front_of, crowding = rank_keys(points)
    order = np.lexsort((np.arange(len(front_of)), -crowding, front_of))  # last key sorts first
    return np.sort(order[: max(0, k)])


def hypervolume(points: np.ndarray, reference: np.ndarray) -> float:
    """Lebesgue measure of the region dominated by `points` and bounded by `reference`.

    HV = vol( union_i [p_i, r] ) for lower-is-better points p_i and reference point r.
    Rows that are not strictly better than r in every objective (and NaN rows) are ignored.
    Exact: a sweep in 2-D, and for m > 2 the slicing recursion of HSO (While et al., 2006),
    which cuts the space into slabs along the last objective; fine for n up to ~1000.
    """
    pts = _as_points(points)
    ref = np.asarray(reference, dtype=float).reshape(-1)
    if ref.shape != (pts.shape[1],):
        raise ValueError(f"reference has {ref.size} values for {pts.shape[1]} objectives")
    if not np.isfinite(ref).all():
        raise ValueError(f"reference must be finite, got {ref.tolist()}")
    inside = (pts < ref).all(axis=1)  # NaN compares False, so NaN rows drop out here
    pts = pts[inside]
    return float(_hso(pts[pareto_mask(pts)], ref))


def objective_matrix(trials: pd.DataFrame, objectives: Mapping[str, str]) -> np.ndarray:
    """The (n, m) lower-is-better array of the objective columns of `trials` (NaN kept)."""
    names, modes = _split_objectives(objectives)
    missing = [name for name in names if name not in trials.columns]
    if missing:
        raise ValueError(
            f"objective column(s) {missing} not in trials; columns are {list(trials.columns)}"
        )
    columns = []
    for name in names:
        try:
            column = pd.to_numeric(trials[name], errors="raise")
        except (TypeError, ValueError) as err:
            raise ValueError(f"objective column {name!r} is not numeric: {err}") from err
        columns.append(column.to_numpy(dtype=float, na_value=np.nan))
    return to_minimization(np.column_stack(columns), modes)


def pareto_front(
    trials: pd.DataFrame,
    objectives: Mapping[str, str],
    *,
    eligible: np.ndarray | None = None,
    status_column: str = "status",
    completed: str = "completed",
) -> pd.DataFrame:
    """The non-dominated rows among the completed, eligible rows of `trials`, with all their columns.

    Only rows with `status_column == completed`, finite values in every objective and True in
    `eligible` (a boolean (n,) mask; None: every row) take part: a trial stopped early reports
    truncated metrics and must not reach the front, and which other rows may (e.g. only the
    full-data trials of a two-stage search, `data_fraction.front_eligible`) is the caller's to say.
    `objectives` maps column name -> "max" or "min". The result is sorted by the first "min"
    objective ascending (the size), then by the first "max" objective descending; index reset.
    """
    names, modes = _split_objectives(objectives)
    if status_column not in trials.columns:
        raise ValueError(
            f"status column {status_column!r} not in trials; columns are {list(trials.columns)}"
        )
    values = objective_matrix(trials, objectives)
    taking_part = (trials[status_column] == completed).to_numpy(dtype=bool, na_value=False).copy()
    if eligible is not None:
        eligible = np.asarray(eligible, dtype=bool).reshape(-1)
        if eligible.shape != (len(trials),):
            raise ValueError(f"eligible has {eligible.size} values for {len(trials)} rows")
        taking_part = taking_part & eligible
    taking_part &= np.isfinite(values).all(axis=1)
    candidates = trials.loc[taking_part]
    front = candidates.loc[pareto_mask(values[taking_part])]
    sort_by, ascending = [], []
    for mode, want_ascending in (("min", True), ("max", False)):
        if mode in modes:
            sort_by.append(names[modes.index(mode)])
            ascending.append(want_ascending)
    front = front.sort_values(by=sort_by, ascending=ascending, kind="stable")
    return front.reset_index(drop=True)


def dominance_line(front: pd.DataFrame, objectives: Mapping[str, str], baseline: Mapping[str, float],
                   name: str) -> str:
    """One line: whether any row of `front` dominates `baseline` (at least as good in every
    objective, better in one) and by how much: per objective, the best such row's ratio to
    the baseline for "min" objectives and its difference in points for accuracy-like "max" ones."""
    missing = [k for k in objectives if not _finite(baseline.get(k))]
    if missing:
        return f"{name}: cannot compare, it has no {missing[0]}"
    if not len(front):
        return f"no front point dominates {name} (the front is empty)"
    values = to_minimization(front[list(objectives)].to_numpy(dtype=float), list(objectives.values()))
    ref = to_minimization(np.array([[float(baseline[k]) for k in objectives]]), list(objectives.values()))[0]
    dominating = np.all(values <= ref, axis=1) & np.any(values < ref, axis=1)
    if not dominating.any():
        return f"no front point dominates {name} ({_describe(baseline, objectives)})"
    rows = front[dominating]
    parts = []
    for k, mode in objectives.items():
        best = rows[k].max() if mode == "max" else rows[k].min()
        base = float(baseline[k])
        parts.append(f"{k} {100 * (best - base):+.2f} pts" if mode == "max" and 0 <= base <= 1
                     else f"{k} {best / base:.1%} of it" if base else f"{k} {best:g}")
    return f"{int(dominating.sum())} front point(s) dominate {name} ({_describe(baseline, objectives)}); best: " \
        + ", ".join(parts)


def _describe(row: Mapping[str, float], objectives: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={float(row[k]):.4g}" for k in objectives)


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and bool(np.isfinite(value))


def _hso(points: np.ndarray, reference: np.ndarray) -> float:
    """Hypervolume of points that are all strictly inside the reference box."""
    n, m = points.shape
    if n == 0:
        return 0.0
    if m == 1:
        return float(reference[0] - points[:, 0].min())
    if m == 2:
        return _hypervolume_2d(points, reference)
    # Slab between consecutive values of the last objective: its depth times the (m-1)-D
    # hypervolume of every point already "below" it in that objective.
    points = points[np.argsort(points[:, -1], kind="stable")]
    upper = np.append(points[1:, -1], reference[-1])
    volume = 0.0
    for i in range(n):
        depth = upper[i] - points[i, -1]
        if depth > 0:
            volume += depth * _hso(points[: i + 1, :-1], reference[:-1])
    return volume


def _hypervolume_2d(points: np.ndarray, reference: np.ndarray) -> float:
    """Sweep over x ascending: each point adds (r_x - x_i) * (best y so far - y_i)^+."""
    order = np.lexsort((points[:, 1], points[:, 0]))
    x, y = points[order, 0], points[order, 1]
    best_before = np.minimum.accumulate(np.concatenate(([reference[1]], y[:-1])))
    return float(np.sum((reference[0] - x) * np.clip(best_before - y, 0.0, None)))


def _dominance_matrix(points: np.ndarray) -> np.ndarray:
    """D[i, j] = True iff row i dominates row j (NaN-free input); built row by row."""
    n = len(points)
    dominates = np.zeros((n, n), dtype=bool)
    for i in range(n):
        no_worse = (points[i] <= points).all(axis=1)
        better = (points[i] < points).any(axis=1)
        dominates[i] = no_worse & better
    return dominates


def _as_points(points: np.ndarray) -> np.ndarray:
    pts = np.asarray(points, dtype=float)
    if pts.ndim == 1:  # a single objective given as a flat vector
        pts = pts.reshape(-1, 1)
    if pts.ndim != 2:
        raise ValueError(f"points must be an (n, m) array, got shape {pts.shape}")
    return pts


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown objective mode {mode!r}; choose from {sorted(MODES)}")


def _split_objectives(objectives: Mapping[str, str]) -> tuple[list[str], list[str]]:
    if not objectives:
        raise ValueError("objectives is empty; give at least one {column: 'max' | 'min'}")
    names, modes = list(objectives), list(objectives.values())
    for name, mode in zip(names, modes, strict=True):
        if mode not in MODES:
            raise ValueError(
                f"unknown mode {mode!r} for objective {name!r}; choose from {sorted(MODES)}"
            )
    return names, modes


def hv_scales(trials: pd.DataFrame, objectives: Mapping[str, str],
              teacher: Mapping[str, Any] | None) -> dict[str, float]:
    """Per objective, the value that maps to 1.0 in the normalised space (see `normalize`).

    "min" objectives (sizes, latency): the dense teacher's value, or the largest value in
    `trials` when the teacher has none. "max" objectives: 1.0 when every value is a fraction
    in [0, 1] (accuracy), else the teacher's value (or the largest seen).
    """
    scales = {}
    for name, mode in objectives.items():
        values = numeric_column(trials, name)
        finite = values[np.isfinite(values)]
        own = float(teacher[name]) if teacher and is_number(teacher.get(name)) else math.nan
        if mode == "max" and ((finite >= 0) & (finite <= 1)).all() and not own > 1:
            scales[name] = 1.0
        elif math.isfinite(own) and own > 0:
            scales[name] = own
        else:
            scales[name] = float(np.abs(finite).max()) if finite.size and finite.any() else 1.0
    return scales


def normalize(trials: pd.DataFrame, objectives: Mapping[str, str], scales: Mapping[str, float]) -> np.ndarray:
    """(n, m) lower-is-better array: v / scale for "min" objectives, 1 − v / scale for "max".

    With val_acc and a size this is (relative size, error rate), and the fixed hypervolume
    reference point (1, 1) is "as big as the dense teacher, 100 % error".
    """
    columns = []
    for name, mode in objectives.items():
        v = numeric_column(trials, name) / scales[name]
        columns.append(1.0 - v if mode == "max" else v)
    return np.column_stack(columns) if columns else np.empty((len(trials), 0))


def hypervolume_curve(trials: pd.DataFrame, objectives: Mapping[str, str], scales: Mapping[str, float],
                      start_time: float | None = None) -> pd.DataFrame:
    """Hypervolume of the completed trials so far, after each completion (ordered by end time).

    Columns: trial_id, completed (k), elapsed_s (end time − start of the search), front_size,
    hypervolume (reference 1.0 in every normalised objective).
    """
    done = trials[trials["status"] == COMPLETED] if len(trials) else trials
    if not len(done):
        return pd.DataFrame(columns=["trial_id", "completed", "elapsed_s", "front_size", "hypervolume"])
    done = done.sort_values("end_time", kind="stable", na_position="last")
    points = normalize(done, objectives, scales)
    reference = np.ones(points.shape[1])
    start = start_time if start_time is not None else numeric_column(done, "start_time").min()
    rows = []
    for k in range(1, len(done) + 1):
        valid = points[:k][np.isfinite(points[:k]).all(axis=1)]
        rows.append({"trial_id": done["trial_id"].iloc[k - 1], "completed": k,
                     "elapsed_s": float(done["end_time"].iloc[k - 1]) - start,
                     "front_size": int(pareto_mask(valid).sum()) if len(valid) else 0,
                     "hypervolume": hypervolume(valid, reference) if len(valid) else 0.0})
    return pd.DataFrame(rows)


def numeric_column(frame: pd.DataFrame, name: str) -> np.ndarray:
    """`frame[name]` as floats (NaN where missing or not a number; all NaN without the column)."""
    if name not in frame.columns:
        return np.full(len(frame), np.nan)
    return pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=float, na_value=np.nan)


def is_number(value: Any) -> bool:
    """A finite int or float, numpy scalars included, not bool."""
    return isinstance(value, int | float | np.number) and not isinstance(value, bool) and math.isfinite(value)
