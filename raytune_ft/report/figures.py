"""Figures of an experiment, drawn and nothing else: the Pareto plot (pareto.png), the report's
PNG figures (hypervolume, importances, per-family panels, several fronts, subset against full data)
and the report's inline SVG Pareto plot with hover text. What they show is computed elsewhere: the
front by `results.front`, the tables by `analysis`; the page around them is `page`. matplotlib is
imported inside the functions (Agg canvas, no pyplot state), so importing this module costs nothing.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from raytune_ft import data_fraction
from raytune_ft.pareto import MODES, is_number, pareto_front
from raytune_ft.report import results

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
    baselines: Sequence[Mapping[str, Any]] = (),
) -> Path:
    """Plot the first "max" objective (y, e.g. val_acc) against the first "min" one (x, size).

    Completed trials are grey dots; trials with any other status except `failed` (stopped
    early, still running) are hollow grey circles; failed trials are only counted in the
    legend. The front over all objectives (`pareto_front` of the completed rows that
    `data_fraction.front_eligible` lets take part) is highlighted, joined by a step line and
    labelled with trial_id. `teacher` maps metric names to the dense baseline's values: a star at
    (x, y) when it has both, and a dashed line at y - 0.02 ("teacher − 2 pts"). The x axis is
    logarithmic when the sizes span more than 10x, its ticks in engineering notation (380k,
    3.38M). `baselines` (rows with a `baseline` name, e.g. the teacher in fp32 and int8, measured
    on their deployed files) are drawn as labelled diamonds. Writes a PNG at 120 dpi and returns
    its path.
    """
    x_name, y_name = _plot_axes(objectives)
    for name in (x_name, y_name, status_column):
        if name not in trials.columns:
            raise ValueError(f"column {name!r} not in trials; columns are {list(trials.columns)}")
    if teacher is not None and y_name not in teacher:
        raise ValueError(f"teacher needs a {y_name!r} value, got keys {sorted(teacher)}")

    eligible = data_fraction.front_eligible(trials, status_column=status_column, completed=completed)
    front = pareto_front(trials, objectives, eligible=eligible, status_column=status_column, completed=completed)
    status = trials[status_column]
    is_completed = (status == completed).to_numpy(dtype=bool, na_value=False)
    is_failed = (status == failed).to_numpy(dtype=bool, na_value=False)
    x = pd.to_numeric(trials[x_name]).to_numpy(dtype=float, na_value=np.nan)
    y = pd.to_numeric(trials[y_name]).to_numpy(dtype=float, na_value=np.nan)
    plottable = np.isfinite(x) & np.isfinite(y)
    done = plottable & is_completed
    stopped = plottable & ~is_completed & ~is_failed

    fig, (ax,) = _figure((7.0, 4.8))
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
    draw_test_intervals(ax, front, x_name, teacher)
    mark_architectures(ax, trials, x, y, plottable & ~is_failed)
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
    baseline_x = []
    for i, row in enumerate(baselines):
        if is_number(row.get(x_name)) and is_number(row.get(y_name)):
            baseline_x.append(float(row[x_name]))
            ax.scatter([row[x_name]], [row[y_name]], marker="D", s=50, zorder=5, color=("tab:cyan", "tab:purple",
                       "tab:olive")[i % 3], edgecolors="black", linewidths=0.5, label=str(row.get("baseline")))
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
    sizes = np.append(sizes, baseline_x)
    if sizes.size and sizes.min() > 0 and sizes.max() / sizes.min() > LOG_X_SPREAD:
        ax.set_xscale("log")
    _eng_axis(ax.xaxis)
    ax.set_xlabel(x_name)
    ax.set_ylabel(y_name)
    ax.set_title(title if title is not None else f"{y_name} vs {x_name}")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize=8)
    return _save(fig, path, dpi=120)


def draw_test_intervals(ax: Any, front: pd.DataFrame, x_name: str, teacher: Mapping[str, Any] | None = None) -> None:
    """Test accuracy of the front points (and the teacher) as hollow diamonds with their Wilson 95 %
    interval as error bars (holdout.py), next to the val_acc the front was selected on."""
    rows = [dict(r) for _, r in front.iterrows()] + ([dict(teacher)] if teacher else [])
    rows = [r for r in rows if is_number(r.get("test_acc")) and is_number(r.get(x_name))]
    if not rows:
        return
    x = np.array([float(r[x_name]) for r in rows])
    acc = np.array([float(r["test_acc"]) for r in rows])
    low = np.array([float(r["test_acc_low"]) for r in rows])
    high = np.array([float(r["test_acc_high"]) for r in rows])
    ax.errorbar(x, acc, yerr=np.vstack([acc - low, high - acc]), fmt="D", markersize=5, mfc="none",
                color="tab:green", ecolor="tab:green", elinewidth=1, capsize=3, zorder=4,
                label="test_acc, Wilson 95 %")


ARCHITECTURE_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")


def mark_architectures(ax: Any, trials: pd.DataFrame, x: np.ndarray, y: np.ndarray, shown: np.ndarray,
                       column: str = "model") -> None:
    """When the plotted trials span several architectures (`column`), ring each point with its
    architecture's marker (black outline, one legend entry per architecture with its count), so
    the front shows which architecture every point is. One architecture: nothing drawn."""
    if column not in trials.columns:
        return
    names = trials[column].astype(str).to_numpy()
    kinds = list(dict.fromkeys(names[shown]))
    if len(kinds) < 2:
        return
    for i, kind in enumerate(kinds):
        rows = shown & (names == kind)
        ax.scatter(x[rows], y[rows], s=70, marker=ARCHITECTURE_MARKERS[i % len(ARCHITECTURE_MARKERS)],
                   facecolors="none", edgecolors="black", linewidths=0.8, zorder=6,
                   label=f"{kind} ({int(rows.sum())})")


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


def plot_hypervolume(curve: pd.DataFrame, path: str | Path, *, title: str = "") -> Path:
    """Two panels: hypervolume after each completed trial, and against wall time (minutes since
    the search started). `curve` has the columns of pareto.hypervolume_curve."""
    fig, axes = _figure((9.0, 3.6), ncols=2)
    for ax, x_name, label in ((axes[0], "completed", "completed trials"),
                              (axes[1], "elapsed_s", "wall time (min)")):
        if len(curve):
            x = pd.to_numeric(curve[x_name]).to_numpy(dtype=float)
            x = x / 60.0 if x_name == "elapsed_s" else x
            ax.step(x, curve["hypervolume"].to_numpy(dtype=float), where="post", color="tab:red")
            ax.scatter(x, curve["hypervolume"].to_numpy(dtype=float), s=14, color="tab:red")
        else:
            _no_data(ax, "no completed trials")
        ax.set_xlabel(label)
        ax.set_ylabel("hypervolume")
        ax.grid(True, alpha=0.3)
    fig.suptitle(title or "hypervolume of the completed trials", fontsize=10)
    return _save(fig, path)


def plot_importances(table: pd.DataFrame | None, path: str | Path, *, note: str = "") -> Path:
    """Horizontal bars, one panel per objective (columns of `table`), params sorted by the mean
    importance. With no table, a panel saying `note` (e.g. "needs ≥ 3 completed trials")."""
    columns = list(table.columns) if table is not None and len(table) else []
    fig, axes = _figure((4.2 * max(1, len(columns)), 0.8 + 0.32 * (len(table) if columns else 4)),
                        ncols=max(1, len(columns)))
    if not columns:
        _no_data(axes[0], note or "no importances")
        axes[0].set_axis_off()
        return _save(fig, path)
    ordered = table.loc[table.mean(axis=1).sort_values().index]
    for ax, name in zip(axes, columns, strict=True):
        ax.barh(list(ordered.index), ordered[name].to_numpy(dtype=float), color="tab:blue")
        ax.set_title(f"importance for {name}", fontsize=9)
        ax.set_xlim(0, 1)
        ax.tick_params(labelsize=8)
        ax.grid(True, axis="x", alpha=0.3)
    return _save(fig, path)


def plot_family_panels(trials: pd.DataFrame, x_name: str, y_name: str, switches: Sequence[str],
                       path: str | Path, *, sparsity: str = "final_sparsity", kd: str = "use_kd") -> Path:
    """One panel per on/off switch: `y_name` against `x_name` (size) for the completed trials in
    `trials`, on and off in two colours with their counts; plus `y_name` against `sparsity`
    coloured by `kd` when both columns exist. Compare colours at the same x: that is the effect
    of the switch at equal size."""
    panels: list[tuple[str, str]] = [(s, x_name) for s in switches if s in trials.columns]
    if sparsity in trials.columns and kd in trials.columns:
        panels.append((kd, sparsity))
    ncols = min(3, max(1, len(panels)))
    nrows = max(1, math.ceil(len(panels) / ncols))
    fig, axes = _figure((4.0 * ncols, 3.3 * nrows), ncols=ncols, nrows=nrows)
    y = pd.to_numeric(trials[y_name], errors="coerce") if y_name in trials.columns else None
    for ax, (switch, x_col) in zip(axes, panels, strict=False):
        x = pd.to_numeric(trials[x_col], errors="coerce")
        for value, color in ((True, "tab:green"), (False, "tab:gray")):
            on = (trials[switch] == value).to_numpy(dtype=bool, na_value=False) & x.notna().to_numpy()
            if y is not None and on.any():
                ax.scatter(x[on], y[on], s=18, color=color, label=f"{switch}={value} ({int(on.sum())})")
        if x_col == x_name and x.notna().any() and x.min() > 0 and x.max() / x.min() > LOG_X_SPREAD:
            ax.set_xscale("log")
        if x_col == x_name:
            _eng_axis(ax.xaxis)
        ax.set_xlabel(x_col, fontsize=8)
        ax.set_ylabel(y_name, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    for ax in axes[len(panels):]:
        ax.set_axis_off()
    if not panels:
        _no_data(axes[0], "no on/off switches were searched")
    return _save(fig, path)


def plot_fronts(experiments: Sequence[tuple[str, pd.DataFrame, Mapping[str, Any] | None]],
                objectives: Mapping[str, str], path: str | Path) -> Path:
    """The Pareto fronts of several experiments on one plot (a colour each, step lines), their
    completed trials as faint dots and each dense teacher as a star."""
    x_name, y_name = _plot_axes(objectives)
    fig, (ax,) = _figure((7.5, 5.0))
    sizes = []
    for i, (name, trials, teacher) in enumerate(experiments):
        color = f"C{i % 10}"
        done = trials[trials["status"] == "completed"] if len(trials) else trials
        if len(done):
            ax.scatter(done[x_name], done[y_name], s=10, color=color, alpha=0.3)
            sizes.extend(pd.to_numeric(done[x_name]).tolist())
        front = results.front(trials, objectives)
        if len(front):
            ax.step(front[x_name], front[y_name], where="post", color=color)
        ax.scatter(front[x_name] if len(front) else [], front[y_name] if len(front) else [], s=30,
                   color=color, label=f"{name} ({len(front)} on the front)")
        if teacher and is_number(teacher.get(x_name)) and is_number(teacher.get(y_name)):
            ax.scatter([teacher[x_name]], [teacher[y_name]], marker="*", s=140, color=color,
                       edgecolors="black", linewidths=0.5)
            sizes.append(float(teacher[x_name]))
    if sizes and min(sizes) > 0 and max(sizes) / min(sizes) > LOG_X_SPREAD:
        ax.set_xscale("log")
    _eng_axis(ax.xaxis)
    ax.set_xlabel(x_name)
    ax.set_ylabel(y_name)
    ax.set_title("Pareto fronts (stars: dense teachers)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def pareto_svg(trials: pd.DataFrame, objectives: Mapping[str, str], hover: Sequence[str], *,
               teacher: Mapping[str, Any] | None = None, width: int = 760, height: int = 440) -> str:
    """An inline SVG scatter of accuracy against size: every plottable trial (completed filled,
    others hollow), the front in red joined by a step line, the teacher as a blue star. Each
    mark has an SVG <title> (`hover[i]` for trial i), which browsers show on hover — no script."""
    x_name, y_name = _plot_axes(objectives)
    front_ids = set(results.front(trials, objectives)["trial_id"])
    x = pd.to_numeric(trials[x_name], errors="coerce").to_numpy(dtype=float) if len(trials) else np.array([])
    y = pd.to_numeric(trials[y_name], errors="coerce").to_numpy(dtype=float) if len(trials) else np.array([])
    tx = float(teacher[x_name]) if teacher and is_number(teacher.get(x_name)) else None
    ty = float(teacher[y_name]) if teacher and is_number(teacher.get(y_name)) else None
    xs = [v for v in [*x, tx] if v is not None and np.isfinite(v)]
    ys = [v for v in [*y, ty] if v is not None and np.isfinite(v)]
    left, right, top, bottom = 70, 20, 20, 50
    log_x = bool(xs) and min(xs) > 0 and max(xs) / min(xs) > LOG_X_SPREAD
    fx = (lambda v: math.log10(v)) if log_x else (lambda v: v)
    x_lo, x_hi = _padded([fx(v) for v in xs] or [0.0, 1.0])
    y_lo, y_hi = _padded(ys or [0.0, 1.0])

    def px(v: float) -> float:
        return left + (fx(v) - x_lo) / (x_hi - x_lo) * (width - left - right)

    def py(v: float) -> float:
        return height - bottom - (v - y_lo) / (y_hi - y_lo) * (height - top - bottom)

    out = [f'<svg class="pareto" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img">',
           f"<title>{html.escape(y_name)} vs {html.escape(x_name)}</title>",
           f'<rect x="{left}" y="{top}" width="{width - left - right}" height="{height - top - bottom}" '
           'fill="white" stroke="#999"/>']
    from matplotlib.ticker import LogLocator, MaxNLocator

    x_ticks = (np.log10(LogLocator(numticks=8).tick_values(10**x_lo, 10**x_hi)) if log_x
               else MaxNLocator(6).tick_values(x_lo, x_hi))
    for xv in (v for v in x_ticks if x_lo <= v <= x_hi):
        xp = left + (xv - x_lo) / (x_hi - x_lo) * (width - left - right)
        out.append(f'<text x="{xp:.1f}" y="{height - bottom + 16}" font-size="11" '
                   f'text-anchor="middle">{_tick(10 ** xv if log_x else xv)}</text>')
        out.append(f'<line x1="{xp:.1f}" x2="{xp:.1f}" y1="{top}" y2="{height - bottom}" stroke="#eee"/>')
    for yv in (v for v in MaxNLocator(6).tick_values(y_lo, y_hi) if y_lo <= v <= y_hi):
        out.append(f'<text x="{left - 6}" y="{py(yv) + 4:.1f}" font-size="11" '
                   f'text-anchor="end">{yv:.3f}</text>')
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{py(yv):.1f}" y2="{py(yv):.1f}" '
                   'stroke="#eee"/>')
    out.append(f'<text x="{(left + width - right) / 2}" y="{height - 12}" font-size="12" '
               'text-anchor="middle">'
               f'{html.escape(x_name)}{" (log)" if log_x else ""}</text>')
    out.append(f'<text x="16" y="{(top + height - bottom) / 2}" font-size="12" text-anchor="middle" '
               f'transform="rotate(-90 16 {(top + height - bottom) / 2})">{html.escape(y_name)}</text>')
    on_front = [i for i in range(len(trials)) if trials["trial_id"].iloc[i] in front_ids]
    steps = sorted((x[i], y[i]) for i in on_front)
    if steps:
        pts = []
        for j, (a, b) in enumerate(steps):
            pts.append(f"{px(a):.1f},{py(b):.1f}")
            if j + 1 < len(steps):
                pts.append(f"{px(steps[j + 1][0]):.1f},{py(b):.1f}")
        out.append(f'<polyline points="{" ".join(pts)}" fill="none" stroke="#d62728" stroke-width="1.5"/>')
    for i in range(len(trials)):
        if not (np.isfinite(x[i]) and np.isfinite(y[i])):
            continue
        status = str(trials["status"].iloc[i])
        front = i in on_front
        fill = "#d62728" if front else ("#999" if status == "completed" else "none")
        stroke = "#d62728" if front else "#777"
        out.append(f'<circle class="trial{" front" if front else ""}" '
                   f'cx="{px(x[i]):.1f}" cy="{py(y[i]):.1f}" '
                   f'r="{6 if front else 4.5}" fill="{fill}" stroke="{stroke}">'
                   f"<title>{html.escape(hover[i])}</title></circle>")
    if tx is not None and ty is not None:
        cx, cy = px(tx), py(ty)
        star = " ".join(f"{cx + r * math.sin(k * math.pi / 5):.1f},{cy - r * math.cos(k * math.pi / 5):.1f}"
                        for k, r in zip(range(10), [9, 4] * 5, strict=True))
        out.append(f'<polygon class="teacher" points="{star}" fill="#1f77b4"><title>dense teacher: '
                   f"{html.escape(y_name)}={ty:.4f}, {html.escape(x_name)}={_tick(tx)}</title></polygon>")
    out.append("</svg>")
    return "\n".join(out)


def plot_subset_vs_full(table: pd.DataFrame, accuracy: str, path: str | Path) -> Path:
    """Each promoted recipe's subset accuracy against its full-data accuracy (fidelity.csv): the top
    recipes as dots, those drawn at random as open circles, the diagonal's order as a guide. A
    subset that ranks recipes as the full data does puts them in the same order along both axes."""
    fig, (ax,) = _figure((5.5, 4.5))
    sub, full = f"{accuracy}_subset", f"{accuracy}_full"
    how = table["promotion"] if "promotion" in table.columns else pd.Series(["top"] * len(table))
    for kind, style in (("top", {"color": "C3"}), ("random", {"facecolors": "none", "edgecolors": "C0"})):
        rows = table[how.to_numpy() == kind]
        if len(rows):
            ax.scatter(rows[sub], rows[full], s=40, label=f"{kind} ({len(rows)})", **style)
            for _, row in rows.iterrows():
                ax.annotate(str(row["recipe"]), (row[sub], row[full]), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
    ax.set_xlabel(f"{accuracy} after the subset stage")
    ax.set_ylabel(f"{accuracy} retrained on all the data")
    ax.set_title("Promoted recipes: subset against full data")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _figure(size: tuple[float, float], *, ncols: int = 1, nrows: int = 1) -> tuple[Any, list[Any]]:
    """A bare Figure on an Agg canvas, registered nowhere (unlike pyplot): nothing stays open."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, list(axes.ravel())


def _save(fig: Any, path: str | Path, *, dpi: int = 110) -> Path:
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png")
    return path


def _eng_axis(axis: Any) -> None:
    """Tick labels like 380k, 3.38M: raw parameter counts overlap at small sizes."""
    from matplotlib.ticker import EngFormatter

    axis.set_major_formatter(EngFormatter(sep=""))


def _no_data(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="0.4")


def _padded(values: Sequence[float]) -> tuple[float, float]:
    lo, hi = float(min(values)), float(max(values))
    pad = (hi - lo) * 0.06 or abs(lo) * 0.06 or 0.5
    return lo - pad, hi + pad


def _tick(value: float) -> str:
    """A size in the SVG's labels as the PNG axes show it (_eng_axis), to 3 significant digits: 380k, 3.38M."""
    from matplotlib.ticker import EngFormatter

    return EngFormatter(sep="").format_eng(float(f"{value:.3g}"))
