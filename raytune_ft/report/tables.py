"""Numbers in table cells, one rule for the terminal and the HTML page alike: `format_column` (a
column's numbers by their range), `format_interval` (test_acc with its Wilson 95 % interval) and
`format_front`, a front (or any table) as plain text for the terminal. No drawing, no HTML.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from raytune_ft.pareto import is_number


def format_front(front: pd.DataFrame, columns: Sequence[str], *, max_rows: int = 30) -> str:
    """A plain-text table of `columns` of `front` (missing columns skipped), index hidden, cells as
    `format_column` writes them. At most `max_rows` rows, then a "... N more rows" line."""
    present = [c for c in columns if c in front.columns]
    if not present:
        return "(no columns to show)"
    if front.empty:
        return "  ".join(present) + "\n(no rows)"
    shown = front.head(max_rows)
    table = pd.DataFrame({c: format_column(shown[c]) for c in present})
    text = table.to_string(index=False)
    if len(front) > max_rows:
        text += f"\n... {len(front) - max_rows} more rows"
    return text


def format_column(column: pd.Series) -> list[str]:
    """Each cell of `column` as text. Floats all in [0, 1] get 4 decimals (values below 1e-3 get 3
    significant digits instead of rounding to 0), integers and integral floats get thousands
    separators, other floats 3 significant digits; missing values of other kinds are ""."""
    if pd.api.types.is_bool_dtype(column):
        return [_missing_or(v, str) for v in column]
    if pd.api.types.is_integer_dtype(column):
        return [_missing_or(v, lambda v: f"{int(v):,}") for v in column]
    if not pd.api.types.is_float_dtype(column):
        return [_missing_or(v, str) for v in column]
    values = column.to_numpy(dtype=float, na_value=np.nan)
    finite = values[np.isfinite(values)]
    if finite.size and ((finite >= 0) & (finite <= 1)).all():
        return [_format_unit(v) for v in values]
    if finite.size and (finite == np.round(finite)).all() and (np.abs(finite) < 1e15).all():
        return [f"{int(v):,}" if np.isfinite(v) else str(v) for v in values]
    return [f"{v:.3g}" for v in values]


def format_interval(row: Mapping[str, Any]) -> str:
    """"0.9650 [0.9412, 0.9795]": test_acc and its Wilson 95 % interval ("" when missing)."""
    if not is_number(row.get("test_acc")):
        return ""
    return f"{float(row['test_acc']):.4f} [{float(row['test_acc_low']):.4f}, {float(row['test_acc_high']):.4f}]"


def _format_unit(value: float) -> str:
    if value != 0 and abs(value) < 1e-3:
        return f"{value:.3g}"
    return f"{value:.4f}"


def _missing_or(value: Any, fmt: Any) -> str:
    return "" if pd.isna(value) else fmt(value)
