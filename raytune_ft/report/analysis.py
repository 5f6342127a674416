"""The analyses behind `python -m raytune_ft.analyze` and the report, computed and nothing else:
hyperparameter importances, per-family effects at equal size, the front's tables, the hypervolume
over time, the two stages of a fidelity search, several experiments compared, the spread of the
front and `export_best`. Tables and numbers only: reading an experiment is `results`, drawing is
`figures`, the HTML page is `page`; the Pareto and hypervolume math is `raytune_ft.pareto`.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from raytune_ft import data_fraction, layout, pareto
from raytune_ft.layout import COMPLETED
from raytune_ft.pareto import hv_scales, hypervolume_curve, normalize
from raytune_ft.report import results
from raytune_ft.report.results import Experiment, local_path

# Size and speed columns shown in the front table when a trial reports them (in this order).
SIZE_COLUMNS = ("nonzero_params", "params", "sparsity", "model_bytes", "model_bytes_compressed",
                "macs", "flops", "latency_ms_b1", "latency_ms_b32")


# How the report groups parameters: each family's own TrialConfig fields (families.base.Family.fields), the
# two pruning families as one; the rest (lr, model, ...) is "optimization".
REPORT_FAMILY = {"channel_pruning": "pruning", "magnitude_pruning": "pruning"}


EXTRA_FIELDS = {"dropout": "regularization", "pruning_method": "pruning"}  # read outside the families


def family_of() -> dict[str, str]:
    """TrialConfig field -> report family, from the family registry (imported here: it needs torch)."""
    from raytune_ft.families import FAMILIES

    out = dict(EXTRA_FIELDS)
    for name, cls in FAMILIES.items():
        out.update(dict.fromkeys(cls.fields, REPORT_FAMILY.get(name, name)))
    return out


MIN_IMPORTANCE_TRIALS = 3  # Optuna refuses one trial; with two every split is a guess


def search_distributions(space_file: str | None, params: Sequence[str], trials: pd.DataFrame) -> dict:
    """Optuna distributions of the searched params: from the space file when it still loads and
    agrees with the values seen, else inferred from the values (bool/str: categorical)."""
    import optuna.distributions as od

    specs = {}
    if space_file:
        try:
            from raytune_ft.space.spaces import load_space
            specs = {p.name: p for p in load_space(space_file).params}
        except Exception:  # moved or edited since the search: infer below
            specs = {}
    out = {}
    for name in params:
        if name not in trials.columns:
            continue
        seen = [_py(v) for v in trials[name] if not _missing(v)]
        if not seen:
            continue
        spec = specs.get(name)
        dist = None
        if spec is not None and spec.type == "categorical":
            dist = od.CategoricalDistribution(spec.choices)
        elif spec is not None and spec.type == "int":
            dist = od.IntDistribution(int(spec.low), int(spec.high), log=spec.log, step=int(spec.step or 1))
        elif spec is not None:
            dist = od.FloatDistribution(spec.low, spec.high, log=spec.log, step=spec.step)
        if dist is None or not all(_in_distribution(dist, v) for v in seen):
            if all(isinstance(v, bool | str) for v in seen):
                dist = od.CategoricalDistribution(sorted(set(seen), key=str))
            elif all(isinstance(v, int) for v in seen):
                dist = od.IntDistribution(min(seen), max(max(seen), min(seen) + 1))
            else:
                low, high = float(min(seen)), float(max(seen))
                dist = od.FloatDistribution(low, high if high > low else low + 1.0)
        out[name] = dist
    return out


def param_importances(exp: Experiment) -> tuple[pd.DataFrame | None, str]:
    """fANOVA importances (Optuna's default evaluator, seed 0) of the searched params for each
    objective, from the completed trials; (table params x objectives, note). Conditional params
    count only where present in every completed trial (Optuna's rule); their `use_*` switch
    stands for them otherwise."""
    import optuna

    done = completed(exp.trials)
    if len(done) < MIN_IMPORTANCE_TRIALS:
        return None, f"needs ≥ {MIN_IMPORTANCE_TRIALS} completed trials, has {len(done)}"
    distributions = search_distributions(exp.space_file, exp.params, done)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["maximize" if m == "max" else "minimize"
                                            for m in exp.objectives.values()])
    for _, row in done.iterrows():
        values = [float(row[name]) for name in exp.objectives]
        if not all(math.isfinite(v) for v in values):
            continue
        params = {n: _py(row[n]) for n in distributions if not _missing(row[n])}
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions={n: distributions[n] for n in params}, values=values))
    table = {}
    for i, name in enumerate(exp.objectives):
        try:
            table[name] = optuna.importance.get_param_importances(
                study, target=lambda t, i=i: t.values[i],
                evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
        except (ValueError, RuntimeError) as err:
            return None, f"Optuna could not evaluate importances: {err}"
    frame = pd.DataFrame(table).fillna(0.0)
    note = (f"fANOVA (Optuna) over {len(study.trials)} completed trials; conditional parameters "
            "appear only if active in every one of them")
    return frame, note


def family_effects(exp: Experiment) -> tuple[pd.DataFrame, int]:
    """Effect of each searched parameter on accuracy at equal size; (table, number of size bins).

    Completed trials are split into size bins (quantiles of the size objective, about four
    trials a bin, at most five bins); a trial's size-adjusted accuracy is its accuracy minus its
    bin's mean. Switches and categorical levels: mean adjusted accuracy with the level minus
    without it (Δ). Numbers (strengths, T, α, sparsity): Spearman ρ between the value and the
    adjusted accuracy over the trials where the param was active. Counts are in the table;
    fewer than two trials on a side gives no number.
    """
    done = completed(exp.trials).copy()
    columns = ["family", "parameter", "comparison", "n", "effect", "measure"]
    if len(done) < 2:
        return pd.DataFrame(columns=columns), 0
    acc, size = pareto.numeric_column(done, exp.acc_name), pareto.numeric_column(done, exp.size_name)
    bins = max(1, min(5, len(done) // 4))
    ranks = pd.Series(size).rank(method="first")
    bin_of = pd.qcut(ranks, bins, labels=False).to_numpy() if bins > 1 else np.zeros(len(done))
    adjusted = acc - pd.Series(acc).groupby(np.asarray(bin_of)).transform("mean").to_numpy()
    extra = [c for c in ("pruning_method",) if c in done.columns and c not in exp.params]
    rows = []
    families = family_of()
    for name in [*exp.params, *extra]:
        if name not in done.columns:
            continue
        values = done[name]
        active = ~values.map(_missing).to_numpy(dtype=bool)
        levels = sorted({_py(v) for v in values[active]}, key=str)
        family = families.get(name, "optimization")
        if len(levels) < 2:
            continue
        if all(isinstance(v, bool | str) for v in levels):
            for level in levels[-1:] if set(levels) == {False, True} else levels:
                has = active & (values.map(lambda v, lv=level: _py(v) == lv)).to_numpy(dtype=bool)
                n_on, n_off = int(has.sum()), int((~has).sum())
                effect = (float(adjusted[has].mean() - adjusted[~has].mean())
                          if min(n_on, n_off) >= 2 else math.nan)
                rows.append({"family": family, "parameter": name, "comparison": f"{level} vs rest",
                             "n": f"{n_on} vs {n_off}", "effect": effect, "measure": f"Δ {exp.acc_name}"})
        else:
            x = pd.to_numeric(values[active], errors="coerce").to_numpy(dtype=float)
            rho = _spearman(x, adjusted[active]) if active.sum() >= 3 else math.nan
            rows.append({"family": family, "parameter": name, "comparison": "higher value",
                         "n": str(int(active.sum())), "effect": rho, "measure": "Spearman ρ"})
    table = pd.DataFrame(rows, columns=columns)
    order = {"regularization": 0, "distillation": 1, "pruning": 2, "quantization": 3, "optimization": 4}
    table = table.sort_values("family", key=lambda s: s.map(order), kind="stable").reset_index(drop=True)
    return table, bins


def spread_along_front(front: pd.DataFrame, n: int) -> pd.DataFrame:
    """`n` rows of a size-sorted front, evenly spaced by rank: always the smallest and the most
    accurate, then points in between (all rows when the front has no more than `n`)."""
    if n <= 0:
        raise ValueError(f"--export-best needs N >= 1, got {n}")
    if len(front) <= n:
        return front
    picks = sorted(set(np.linspace(0, len(front) - 1, n).round().astype(int)))
    return front.iloc[picks]


def export_best(exp: Experiment, front: pd.DataFrame, n: int, dest: Path) -> pd.DataFrame:
    """Copy `n` front models (spread_along_front) into `dest/<k>_<trial_id>/`: the exported
    model folder (`export_path`, with its manifest.json) when trials have one, else the
    checkpoint folder (model.pt + checkpoint.json). Writes dest/index.json and index.csv."""
    chosen = spread_along_front(front, n)
    dest.mkdir(parents=True, exist_ok=True)
    rows = []
    for k, (_, row) in enumerate(chosen.iterrows(), start=1):
        kind = "export" if "export_path" in row and not _missing(row["export_path"]) else "checkpoint"
        source = local_path(exp, str(row["export_path"] if kind == "export" else row["checkpoint"]))
        if source is None or not source.is_dir():
            raise FileNotFoundError(f"trial {row['trial_id']}: {kind} folder {row.get(kind)!r} not found")
        target = dest / f"{k:02d}_{row['trial_id']}"
        shutil.copytree(source, target, dirs_exist_ok=True)
        rows.append({"rank": k, "trial_id": row["trial_id"],
                     **{c: _py(row[c]) for c in (*exp.objectives, *SIZE_COLUMNS) if c in row},
                     "kind": kind, "source": str(row["export_path" if kind == "export" else "checkpoint"]),
                     "folder": target.name,
                     "recipe": recipe_text(row, exp.params)})
    index = pd.DataFrame(rows)
    index.to_csv(dest / layout.EXPORT_INDEX_CSV, index=False)
    (dest / layout.EXPORT_INDEX_JSON).write_text(json.dumps(rows, indent=2, default=str))
    return index


def recipe_text(row: Mapping[str, Any] | pd.Series, params: Sequence[str]) -> str:
    """`name=value` of the active searched params, comma-separated (the hover text and table)."""
    parts = []
    for name in params:
        value = row.get(name) if hasattr(row, "get") else None
        if not _missing(value):
            value = _py(value)
            parts.append(f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={value}")
    return ", ".join(parts)


def completed(trials: pd.DataFrame) -> pd.DataFrame:
    """The rows of `trials` that trained all their epochs (status completed)."""
    return trials[trials["status"] == COMPLETED] if len(trials) else trials


def search_minutes(exp: Experiment) -> float | None:
    """Minutes from the search's start to the last trial's end; None before either is known."""
    ended = float(exp.trials["end_time"].max()) if len(exp.trials) else math.nan
    return (ended - exp.start_time) / 60 if exp.start_time and math.isfinite(ended) else None


def teacher_gate(exp: Experiment) -> dict[str, Any] | None:
    """The teacher-quality gate's record (teacher_gate.json, search/gate.py); None without one."""
    path = exp.local_dir / layout.TEACHER_GATE_JSON
    return json.loads(path.read_text()) if path.is_file() else None


def front_tables(exp: Experiment, front: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The front models as two tables: their numbers (trial_id, model, the objectives, the other size
    and speed columns that were measured, the size relative to the teacher's) and their files
    (trial_id, the exported model's folder where there is one or else the checkpoint, the recipe)."""
    size, acc, teacher = exp.size_name, exp.acc_name, exp.teacher or {}
    sizes = [c for c in SIZE_COLUMNS if c in front.columns and front[c].notna().any() and c != size]
    arch = ["model"] if "model" in front.columns else []  # the student architecture of each point
    numbers = front[["trial_id", *arch, acc, size, *sizes]].copy()
    if pareto.is_number(teacher.get(size)):
        numbers[f"{size} / teacher"] = pd.to_numeric(front[size]) / float(teacher[size])
    paths = front["checkpoint"]
    if "export_path" in front.columns:  # the exported model where there is one
        paths = front["export_path"].where(front["export_path"].notna(), paths)
    files = pd.DataFrame({"trial_id": front["trial_id"], "model path": paths,
                          "recipe": [recipe_text(r, exp.params) for _, r in front.iterrows()]})
    return numbers, files


def trials_overview(exp: Experiment) -> pd.DataFrame:
    """Every trial: its status, objectives, epochs, wall time and recipe."""
    cols = ["trial_id", "status", exp.acc_name, exp.size_name, "epochs_trained", "wall_time_s"]
    table = exp.trials[[c for c in cols if c in exp.trials.columns]].copy()
    table["recipe"] = [recipe_text(r, exp.params) for _, r in exp.trials.iterrows()]
    return table


def hypervolume_over_time(exp: Experiment) -> tuple[pd.DataFrame, dict[str, float]]:
    """(pareto.hypervolume_curve of the experiment, the normalisation it used: pareto.hv_scales)."""
    scales = hv_scales(exp.trials, exp.objectives, exp.teacher)
    return hypervolume_curve(exp.trials, exp.objectives, scales, exp.start_time), scales


def searched_switches(exp: Experiment) -> list[str]:
    """The searched on/off switches (`use_*`) the trials table has."""
    return [p for p in exp.params if p.startswith("use_") and p in exp.trials.columns]


Stages = list[tuple[str, pd.DataFrame, Any]]  # (label, trials, teacher or None): one front each on a plot


def fidelity_results(exp: Experiment) -> tuple[dict[str, Any], pd.DataFrame, Stages] | None:
    """A two-stage search (search/fidelity.py): (fidelity.json's summary, fidelity.csv's table, the two
    stages as (label, trials, teacher) for one plot of both fronts); None for a one-stage search."""
    table_path, summary_path = exp.local_dir / layout.FIDELITY_CSV, exp.local_dir / layout.FIDELITY_JSON
    if not summary_path.is_file() or "stage" not in exp.trials.columns:
        return None
    summary = json.loads(summary_path.read_text())
    table = pd.read_csv(table_path) if table_path.is_file() and table_path.stat().st_size > 1 else pd.DataFrame()
    stage1 = exp.trials[exp.trials["stage"] == 1]
    fraction = data_fraction.subset_fraction(stage1)
    stages = [(f"subset ({fraction:g} of the data)", stage1, None)] if fraction is not None else []
    stages.append(("all the data (promoted recipes)", exp.trials[exp.trials["stage"] == 2], exp.teacher))
    return summary, table, stages


def comparison(exps: Sequence[Experiment]) -> tuple[pd.DataFrame, dict[str, float]]:
    """Several experiments side by side: per experiment its state, trials, completed trials, front
    size, teacher size and the hypervolume of its completed trials, all under one normalisation (the
    first experiment's objectives and teacher, the scales of every trial); (table, the scales)."""
    first = exps[0]
    objectives = first.objectives
    scales = hv_scales(pd.concat([e.trials for e in exps], ignore_index=True), objectives, first.teacher)
    rows = []
    for exp in exps:
        done = completed(exp.trials)
        points = normalize(done, objectives, scales)
        points = points[np.isfinite(points).all(axis=1)] if len(points) else points
        rows.append({"experiment": exp.name, "state": exp.state, "trials": len(exp.trials),
                     "completed": len(done), "front": len(results.front(exp.trials, objectives)),
                     f"teacher {first.size_name}": (exp.teacher or {}).get(first.size_name),
                     "hypervolume": (pareto.hypervolume(points, np.ones(len(objectives)))
                                     if len(points) else 0.0)})
    return pd.DataFrame(rows), scales


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's ρ (scipy.stats.spearmanr, ties ranked by their mean) over the pairs where both are
    finite; NaN below 3 pairs or when either side is constant."""
    from scipy.stats import spearmanr

    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return math.nan
    return float(spearmanr(x[ok], y[ok]).statistic)


def _in_distribution(dist: Any, value: Any) -> bool:
    try:
        return bool(dist._contains(dist.to_internal_repr(value)))
    except (ValueError, TypeError):
        return False



def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _py(value: Any) -> Any:
    """numpy scalars -> Python (Optuna and json want plain values)."""
    return value.item() if isinstance(value, np.generic) else value
