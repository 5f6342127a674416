"""The data fraction, its one owner: the share of the training split a trial trained on
(`TrialConfig.data_fraction`, the trials table's `data_fraction` column). `FULL` (1) is all of it;
less is the subset stage of a two-stage search (search/fidelity.py). Owns what follows from it:
whether a search has a subset stage, which rows of a trials table are full-data, and which rows a
front may be built from (`front_eligible`, handed to `pareto.pareto_front`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from raytune_ft.layout import COMPLETED

COLUMN = "data_fraction"  # the config field, the space.json fixed setting and the trials-table column
FULL = 1.0  # all of the training split: a one-stage search, or a two-stage search's second stage


def is_subset(fraction: float) -> bool:
    """A fraction below FULL: a subset-fidelity trial, or a search with a subset stage first."""
    return float(fraction) < FULL


def fractions(trials: pd.DataFrame) -> np.ndarray:
    """Each row's data fraction as floats; FULL where the table has no such column or the value is
    missing (a row the subset stage did not mark was trained on all the data)."""
    if COLUMN not in trials.columns:
        return np.full(len(trials), FULL)
    return pd.to_numeric(trials[COLUMN], errors="coerce").fillna(FULL).to_numpy(dtype=float)


def is_full_data(trials: pd.DataFrame) -> np.ndarray:
    """Boolean (n,) mask of the rows trained on all of the training split."""
    return fractions(trials) >= FULL


def front_eligible(trials: pd.DataFrame, *, status_column: str = "status", completed: str = COMPLETED) -> np.ndarray:
    """Boolean (n,) mask of the rows a front of `trials` may be built from: the full-data rows, as long
    as one of them completed; every row otherwise (a two-stage search before or without its second
    stage: its front is the subset front). A subset row's accuracy is not comparable with a full-data
    row's, so the two never share a front."""
    full = is_full_data(trials)
    done = (trials[status_column] == completed).to_numpy(dtype=bool, na_value=False) \
        if status_column in trials.columns else np.zeros(len(trials), dtype=bool)
    return full if (done & full).any() else np.ones(len(trials), dtype=bool)


def subset_fraction(trials: pd.DataFrame) -> float | None:
    """The fraction the subset rows of `trials` were trained on (the first one seen), None without any."""
    shares = fractions(trials)
    shares = shares[shares < FULL]
    return float(shares[0]) if len(shares) else None


def with_fraction(settings: Mapping[str, Any], fraction: float) -> dict[str, Any]:
    """`settings` (a trial's fixed or sampled values) with `fraction` set when it is a subset, as is
    otherwise: a one-stage search's trials carry no data_fraction (TrialConfig's default is FULL)."""
    return {**settings, COLUMN: float(fraction)} if is_subset(fraction) else dict(settings)


def on_full_data(settings: Mapping[str, Any]) -> dict[str, Any]:
    """`settings` marked as trained on all the data: what a second-stage trial is given."""
    return {**settings, COLUMN: FULL}
