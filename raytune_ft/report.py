"""Human-facing output of an experiment: the accuracy-versus-size plot and plain-text tables.

The math lives in pareto.py; this module only draws and formats. matplotlib is imported
inside the functions (Agg canvas, no pyplot state), so importing this module costs nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from raytune_ft.pareto import MODES, pareto_front

TEACHER_MARGIN = 0.02  # "teacher − 2 pts": accuracy is a fraction in [0, 1]
LOG_X_SPREAD = 10.0  # switch the size axis to log scale when max/min exceeds this


def plot_pareto(
    trials: pd.DataFrame,
    objectives: Mapping[str, str],
    path: str | Path,
    *,
    teacher: Mapping[str, float] | None = None,
    title: str | None = None,
    status_column: str = "status",
    completed: str = "completed",
    failed: str = "failed",
) -> Path:
    """Plot the first "max" objective (y, e.g. val_acc) against the first "min" one (x, size).

    Completed trials are grey dots; trials with any other status except `failed` (stopped
    early, still running) are hollow grey circles; failed trials are only counted in the
    legend. The front of `pareto_front(trials, objectives)` (over all objectives, fully
    trained trials only) is highlighted, joined by a step line and labelled with trial_id.
    `teacher` maps metric names to the dense baseline's values: a star at (x, y) when it has
    both, and a dashed line at y - 0.02 ("teacher − 2 pts"). The x axis is logarithmic when
    the sizes span more than 10x. Writes a PNG at 120 dpi and returns its path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    x_name, y_name = _plot_axes(objectives)
    for name in (x_name, y_name, status_column):
        if name not in trials.columns:
            raise ValueError(f"column {name!r} not in trials; columns are {list(trials.columns)}")
    if teacher is not None and y_name not in teacher:
        raise ValueError(f"teacher needs a {y_name!r} value, got keys {sorted(teacher)}")

    front = pareto_front(trials, objectives, status_column=status_column, completed=completed)
    status = trials[status_column]
    is_completed = (status == completed).to_numpy(dtype=bool, na_value=False)
    is_failed = (status == failed).to_numpy(dtype=bool, na_value=False)
    x = pd.to_numeric(trials[x_name]).to_numpy(dtype=float, na_value=np.nan)
    y = pd.to_numeric(trials[y_name]).to_numpy(dtype=float, na_value=np.nan)
    plottable = np.isfinite(x) & np.isfinite(y)
    done = plottable & is_completed
    stopped = plottable & ~is_completed & ~is_failed

    # A bare Figure is registered nowhere (unlike pyplot), so nothing stays open afterwards.
    fig = Figure(figsize=(7.0, 4.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if done.any():
        ax.scatter(x[done], y[done], s=18, color="0.6", label=f"completed ({done.sum()})")
    if stopped.any():
        ax.scatter(
            x[stopped],
            y[stopped],
            s=18,
            facecolors="none",
            edgecolors="0.6",
            label=f"early-stopped ({stopped.sum()})",
        )
    if len(front):
        fx = front[x_name].to_numpy(dtype=float)
        fy = front[y_name].to_numpy(dtype=float)
        ax.step(fx, fy, where="post", color="tab:red", linewidth=1.2, zorder=3)
        ax.scatter(fx, fy, s=36, color="tab:red", zorder=4, label=f"Pareto front ({len(front)})")
        if "trial_id" in front.columns:
            for xi, yi, trial_id in zip(fx, fy, front["trial_id"], strict=True):
                ax.annotate(
                    str(trial_id),
                    (xi, yi),
                    xytext=(4, 4),
                    textcoords="offset points",
                    fontsize=7,
                    color="tab:red",
                )
    teacher_x = None
    if teacher is not None:
        teacher_y = float(teacher[y_name])
        if x_name in teacher:
            teacher_x = float(teacher[x_name])
            ax.scatter(
                [teacher_x],
                [teacher_y],
                marker="*",
                s=160,
                color="tab:blue",
                zorder=5,
                label="dense teacher",
            )
        ax.axhline(
            teacher_y - TEACHER_MARGIN,
            color="tab:blue",
            linestyle="--",
            linewidth=1,
            label="teacher − 2 pts",
        )
    n_failed = int(is_failed.sum())
    if n_failed:
        ax.plot([], [], linestyle="none", label=f"{n_failed} failed")
    if not done.any():
        ax.text(  # near the bottom edge, clear of the teacher marker
            0.5,
            0.06,
            "no completed trials",
            transform=ax.transAxes,
            ha="center",
            va="bottom",
            color="0.4",
            bbox={"facecolor": "white", "edgecolor": "0.8"},
        )

    sizes = x[plottable]
    if teacher_x is not None:
        sizes = np.append(sizes, teacher_x)
    if sizes.size and sizes.min() > 0 and sizes.max() / sizes.min() > LOG_X_SPREAD:
        ax.set_xscale("log")
    ax.set_xlabel(x_name)
    ax.set_ylabel(y_name)
    ax.set_title(title if title is not None else f"{y_name} vs {x_name}")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, format="png")
    return path


def format_front(front: pd.DataFrame, columns: Sequence[str], *, max_rows: int = 30) -> str:
    """A plain-text table of `columns` of `front` (missing columns skipped), index hidden.

    Per column: floats all in [0, 1] get 4 decimals (values below 1e-3 get 3 significant
    digits instead of rounding to 0), integers and integral floats get thousands separators,
    other floats 3 significant digits. At most `max_rows` rows, then a "... N more rows" line.
    """
    present = [c for c in columns if c in front.columns]
    if not present:
        return "(no columns to show)"
    if front.empty:
        return "  ".join(present) + "\n(no rows)"
    shown = front.head(max_rows)
    table = pd.DataFrame({c: _format_column(shown[c]) for c in present})
    text = table.to_string(index=False)
    if len(front) > max_rows:
        text += f"\n... {len(front) - max_rows} more rows"
    return text


def _plot_axes(objectives: Mapping[str, str]) -> tuple[str, str]:
    """(x, y) = (first "min" objective, first "max" objective)."""
    for name, mode in objectives.items():
        if mode not in MODES:
            raise ValueError(
                f"unknown mode {mode!r} for objective {name!r}; choose from {sorted(MODES)}"
            )
    mins = [name for name, mode in objectives.items() if mode == "min"]
    maxs = [name for name, mode in objectives.items() if mode == "max"]
    if not mins or not maxs:
        raise ValueError(
            f"plot_pareto needs one 'min' (size) and one 'max' (accuracy) objective, "
            f"got {dict(objectives)}"
        )
    return mins[0], maxs[0]


def _format_column(column: pd.Series) -> list[str]:
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


def _format_unit(value: float) -> str:
    if value != 0 and abs(value) < 1e-3:
        return f"{value:.3g}"
    return f"{value:.4f}"


def _missing_or(value: Any, fmt: Any) -> str:
    return "" if pd.isna(value) else fmt(value)
