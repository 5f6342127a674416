"""The analyses behind `python -m raytune_ft.analyze` and the report: hyperparameter importances,
per-family effects at equal size, the spread of the front, `export_best`, and `write_report` (the
HTML page with its figures, one section per experiment plus a comparison). Reading an experiment
is `results`; drawing is `plots`; the Pareto and hypervolume math is `raytune_ft.pareto`.
"""

from __future__ import annotations

import html
import json
import math
import shutil
import time
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

    done = exp.trials[exp.trials["status"] == COMPLETED] if len(exp.trials) else exp.trials
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
    done = exp.trials[exp.trials["status"] == COMPLETED].copy() if len(exp.trials) else exp.trials
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


def write_report(exps: Sequence[Experiment], out: Path) -> Path:
    """Write report.html (one self-contained page), the PNGs it embeds, trials.csv and
    pareto.csv into `out` (with several experiments: one section each, an `experiment`
    column in the CSVs, their fronts on one plot and a hypervolume table); returns the page."""
    from raytune_ft import report

    multi = len(exps) > 1
    body = [f"<h1>raytune_ft: {html.escape(', '.join(e.name for e in exps))}</h1>",
            f'<p class="note">Generated {time.strftime("%Y-%m-%d %H:%M:%S")} by '
            "python -m raytune_ft.analyze. "
            "Hover over a point of a Pareto plot to see its recipe.</p>"]
    if multi:
        body += _comparison_section(exps, out)
    tables, fronts = [], []
    for exp in exps:
        section, front = _experiment_section(exp, out, prefix=f"{exp.name}-" if multi else "")
        body += section
        tables.append(exp.trials.assign(experiment=exp.name) if multi else exp.trials)
        fronts.append(front.assign(experiment=exp.name) if multi else front)
    pd.concat(tables, ignore_index=True).to_csv(out / layout.TRIALS_CSV, index=False)
    pd.concat(fronts, ignore_index=True).to_csv(out / layout.PARETO_CSV, index=False)
    page = out / layout.REPORT_HTML
    title = f"raytune_ft report: {', '.join(e.name for e in exps)}"
    page.write_text(report.html_page(title, "\n".join(body)))
    return page


def _experiment_section(exp: Experiment, out: Path, prefix: str) -> tuple[list[str], pd.DataFrame]:
    from raytune_ft import report
    from raytune_ft.deploy import holdout
    from raytune_ft.report import trust

    trials, size, acc = exp.trials, exp.size_name, exp.acc_name
    front = results.front(trials, exp.objectives)
    counts = trials["status"].value_counts().to_dict() if len(trials) else {}
    planned = f" of {exp.planned} planned" if exp.planned else ""
    ended = float(trials["end_time"].max()) if len(trials) else math.nan
    elapsed = (ended - exp.start_time) / 60 if exp.start_time and math.isfinite(ended) else None
    teacher = exp.teacher or {}
    h = [f"<h2>{html.escape(exp.name)}</h2>",
         f'<p class="note">{html.escape(exp.location)} — <b>{exp.state}</b>{_age(exp)}: '
         f"{len(trials)} trials started"
         f"{planned} ({html.escape(', '.join(f'{n} {s}' for s, n in counts.items()) or 'none')})"
         f"{f', {exp.pending} pending' if exp.pending else ''}"
         f"{f', {elapsed:.1f} min of search' if elapsed is not None else ''}; "
         f"objectives {html.escape(', '.join(f'{k} ({v})' for k, v in exp.objectives.items()))}; "
         f"{len(front)} completed trials on the front.</p>"]

    h.append(f"<h3>Pareto front: {html.escape(acc)} vs {html.escape(size)}</h3>")
    hover = [f"{r['trial_id']} [{r['status']}] {acc}={_fmt(r.get(acc))} {size}={_fmt(r.get(size))} | "
             + recipe_text(r, exp.params) for _, r in trials.iterrows()]
    h.append(report.pareto_svg(trials, exp.objectives, hover, teacher=teacher or None))
    report.plot_pareto(holdout.with_test_columns(trials, exp.local_dir), exp.objectives, out / f"{prefix}pareto.png",
                       teacher=teacher if pareto.is_number(teacher.get(acc)) else None,
                       baselines=list((teacher.get("baselines") or {}).values()),
                       title=f"{exp.name}: {len(trials)} trials, {len(front)} on the front")
    h.append('<p class="note">Filled grey: completed; hollow: incomplete or early-stopped (never on the '
             "front); red: the front; blue star: the dense teacher.</p>")
    if teacher:
        shown = {k: teacher[k] for k in ("model", acc, *SIZE_COLUMNS, "epochs_trained", "checkpoint", "export_path")
                 if k in teacher}
        h += ["<h3>Dense teacher (reference)</h3>", report.html_table(pd.DataFrame([shown]))]
        if teacher.get("reused_from"):
            h.append(f"<p>Reused from another experiment in the same storage folder (same data and teacher "
                     f"config): {html.escape(str(teacher['reused_from']))}</p>")
    gate_path = exp.local_dir / layout.TEACHER_GATE_JSON
    if gate_path.is_file():  # the teacher-quality gate (search/gate.py)
        gate = json.loads(gate_path.read_text())
        verdict = (html.escape(gate.get("reason") or "") if gate.get("closed") else
                   f"open: the teacher (val {_fmt(gate.get('teacher_val_acc'))}) stayed at least "
                   f"{_fmt(gate.get('margin'))} ahead of the best of {gate.get('students_seen', 0)} students "
                   f"({_fmt(gate.get('best_student_val_acc'))}), so distillation was searched throughout")
        h.append(f"<p><b>Teacher-quality gate</b> (search.kd_gate = {html.escape(str(gate.get('mode')))}): "
                 f"{verdict}.</p>")
    if teacher.get("baselines"):  # the teacher shipped as fp32 and int8 ONNX, measured like trials
        rows = list(teacher["baselines"].values())
        h += ["<h3>Baselines (the dense teacher's deployed files)</h3>", report.html_table(pd.DataFrame(rows))]
        int8 = teacher["baselines"].get("teacher_int8")
        if int8:
            line = pareto.dominance_line(front, exp.objectives, int8, "the int8 teacher")
            h.append(f'<p class="note">{html.escape(line)}</p>')

    h.append("<h3>Front models</h3>")
    if len(front):
        sizes = [c for c in SIZE_COLUMNS if c in front.columns and front[c].notna().any() and c != size]
        arch = ["model"] if "model" in front.columns else []  # the student architecture of each point
        table = front[["trial_id", *arch, acc, size, *sizes]].copy()
        if pareto.is_number(teacher.get(size)):
            table[f"{size} / teacher"] = pd.to_numeric(front[size]) / float(teacher[size])
        paths = front["checkpoint"]
        if "export_path" in front.columns:  # the exported model where there is one
            paths = front["export_path"].where(front["export_path"].notna(), paths)
        files = pd.DataFrame({"trial_id": front["trial_id"], "model path": paths,
                              "recipe": [recipe_text(r, exp.params) for _, r in front.iterrows()]})
        h += [report.html_table(table), report.html_table(files)]
    else:
        h.append('<p class="note">No completed trial yet, so no front.</p>')
    h += trust.trust_section(exp.local_dir, front, acc, teacher)  # test_acc, intervals, confirmed front
    h += _fidelity_section(exp, out, prefix)

    scales = hv_scales(trials, exp.objectives, exp.teacher)
    curve = hypervolume_curve(trials, exp.objectives, scales, exp.start_time)
    report.plot_hypervolume(curve, out / f"{prefix}hypervolume.png", title=f"{exp.name}: hypervolume")
    final = f"{curve['hypervolume'].iloc[-1]:.4f}" if len(curve) else "0 (no completed trials)"
    h += ["<h3>Hypervolume</h3>",
          f"<p>{hv_statement(exp.objectives, scales, exp.teacher)} Final hypervolume: <b>{final}</b> "
          f"after {len(curve)} completed trials (left: after each completion, in completion order; right: "
          "against wall time since the search started).</p>",
          report.img_tag(out / f"{prefix}hypervolume.png", "hypervolume over trials and wall time")]

    importances, note = param_importances(exp)
    report.plot_importances(importances, out / f"{prefix}importance.png", note=note)
    h += ["<h3>Hyperparameter importance</h3>", f'<p class="note">{html.escape(note)}</p>',
          report.img_tag(out / f"{prefix}importance.png", "hyperparameter importance per objective")]
    if importances is not None:
        h.append(report.html_table(importances.rename_axis("parameter").reset_index()))

    effects, bins = family_effects(exp)
    switches = [p for p in exp.params if p.startswith("use_") and p in trials.columns]
    done = trials[trials["status"] == COMPLETED] if len(trials) else trials
    report.plot_family_panels(done, size, acc, switches, out / f"{prefix}families.png")
    h += ["<h3>Effect of each family at equal size</h3>",
          f'<p class="note">Completed trials in {bins} size bin(s) (quantiles of {html.escape(size)}); '
          f"size-adjusted {html.escape(acc)} = {html.escape(acc)} − its bin's mean. Switches and categorical "
          "levels: Δ = mean adjusted accuracy with the level − without it; numeric parameters: Spearman ρ "
          "between the value and the adjusted accuracy, over trials where it was active. Empty effect: "
          "fewer than two trials on a side (three for ρ). Few trials make these numbers noisy; read them "
          "with the counts.</p>",
          report.html_table(effects),
          report.img_tag(out / f"{prefix}families.png", "accuracy vs size per switch, and vs sparsity by KD")]

    failed = trials[trials["status"] == "failed"] if len(trials) else trials
    if len(failed):
        h += ["<h3>Failed trials</h3>", report.html_table(failed[["trial_id", "epochs_trained", "error"]])]
    if len(trials):
        cols = ["trial_id", "status", acc, size, "epochs_trained", "wall_time_s"]
        table = trials[[c for c in cols if c in trials.columns]].copy()
        table["recipe"] = [recipe_text(r, exp.params) for _, r in trials.iterrows()]
        h += ["<h3>All trials</h3>", report.html_table(table)]
    return h, front


def _fidelity_section(exp: Experiment, out: Path, prefix: str) -> list[str]:
    """A two-stage search (search/fidelity.py): both fronts on one plot, and how well the subset's
    ranking predicted the full-data one (fidelity.csv / fidelity.json)."""
    from raytune_ft import report

    table_path, summary_path = exp.local_dir / layout.FIDELITY_CSV, exp.local_dir / layout.FIDELITY_JSON
    if not summary_path.is_file() or "stage" not in exp.trials.columns:
        return []
    summary = json.loads(summary_path.read_text())
    table = pd.read_csv(table_path) if table_path.is_file() and table_path.stat().st_size > 1 else pd.DataFrame()
    stage1 = exp.trials[exp.trials["stage"] == 1]
    fraction = data_fraction.subset_fraction(stage1)
    stages = [(f"subset ({fraction:g} of the data)", stage1, None)] if fraction is not None else []
    stages.append(("all the data (promoted recipes)", exp.trials[exp.trials["stage"] == 2], exp.teacher))
    report.plot_fronts(stages, exp.objectives, out / f"{prefix}fidelity.png")
    tau = summary.get("kendall_tau")
    low, high = (summary.get("kendall_tau_ci95") or [None, None])[:2]
    interval = f", bootstrap 95 % [{_fmt(low)}, {_fmt(high)}]" if pareto.is_number(low) else ""
    said = (f"<p><b>{html.escape(summary['disagreement'][0].upper() + summary['disagreement'][1:])}.</b></p>"
            if summary.get("disagreement") else "")
    scatter = []
    if len(table) and f"{exp.acc_name}_subset" in table.columns:
        report.plot_subset_vs_full(table, exp.acc_name, out / f"{prefix}fidelity_scatter.png")
        scatter = [report.img_tag(out / f"{prefix}fidelity_scatter.png", "subset against full-data accuracy")]
    return ["<h3>Data-size fidelity: the subset front and the full-data front</h3>",
            f"<p>Stage 1 trained every trial on a subset of the training split; its best {summary.get('n', 0)} "
            "recipes (the subset front first, then the nearest in NSGA-II order) were retrained on all of it, "
            "and the front above is made of those. Kendall's τ between the subset and the full-data "
            f"{html.escape(exp.acc_name)} of the promoted recipes: <b>{_fmt(tau)}</b> "
            f"(p = {_fmt(summary.get('kendall_p'))}{interval}, n = {summary.get('n', 0)}); 1: the subset ranked "
            "them exactly as the full data did, 0: no better than chance. Recipes marked random were drawn at "
            "random from the rest (search.promote_random), the check that the subset did not misjudge one.</p>",
            said,
            report.img_tag(out / f"{prefix}fidelity.png", "the subset front and the full-data front"),
            *scatter,
            report.html_table(table)]


def _comparison_section(exps: Sequence[Experiment], out: Path) -> list[str]:
    from raytune_ft import report

    first = exps[0]
    objectives = first.objectives
    scales = hv_scales(pd.concat([e.trials for e in exps], ignore_index=True), objectives, first.teacher)
    rows = []
    for exp in exps:
        done = exp.trials[exp.trials["status"] == COMPLETED] if len(exp.trials) else exp.trials
        points = normalize(done, objectives, scales)
        points = points[np.isfinite(points).all(axis=1)] if len(points) else points
        front = results.front(exp.trials, objectives)
        rows.append({"experiment": exp.name, "state": exp.state, "trials": len(exp.trials),
                     "completed": len(done), "front": len(front),
                     f"teacher {first.size_name}": (exp.teacher or {}).get(first.size_name),
                     "hypervolume": (pareto.hypervolume(points, np.ones(len(objectives)))
                                     if len(points) else 0.0)})
    report.plot_fronts([(e.name, e.trials, e.teacher) for e in exps], objectives, out / "fronts.png")
    return ["<h2>Experiments compared</h2>",
            report.img_tag(out / "fronts.png", "Pareto fronts of all experiments"),
            f"<p>{hv_statement(objectives, scales, first.teacher)} The same normalisation (from "
            f"{html.escape(first.name)}) is used for every experiment so the numbers compare.</p>",
            report.html_table(pd.DataFrame(rows))]


def hv_statement(objectives: Mapping[str, str], scales: Mapping[str, float],
                 teacher: Mapping[str, Any] | None) -> str:
    """The sentence stating how objectives were normalised and the fixed reference point."""
    parts = []
    for name, mode in objectives.items():
        whose = "the dense teacher's" if teacher and teacher.get(name) == scales[name] else "the largest seen"
        if mode == "max":
            scaled = f"1 − {name} / {_fmt(scales[name])} ({whose})"
            parts.append(f"1 − {name}" if scales[name] == 1.0 else scaled)
        else:
            parts.append(f"{name} / {_fmt(scales[name])} ({whose})")
    return (f"Hypervolume of the completed trials with objectives normalised to lower-is-better: "
            f"{html.escape(', '.join(parts))}; fixed reference point ({', '.join('1.0' for _ in parts)}), "
            "i.e. 100 % error at the dense teacher's size. It is the area (fraction of that box) the "
            "front dominates: 1.0 would be a perfect, zero-size model.")


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




def _age(exp: Experiment) -> str:
    if exp.state == "finished" or "://" in exp.location:
        return ""
    return f" (last write {(time.time() - exp.last_update) / 60:.1f} min ago: still running, or interrupted)"


def _fmt(value: Any) -> str:
    if not pareto.is_number(value):
        return str(value)
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"




def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _py(value: Any) -> Any:
    """numpy scalars -> Python (Optuna and json want plain values)."""
    return value.item() if isinstance(value, np.generic) else value
