"""The HTML report of `python -m raytune_ft.analyze`, assembled: `write_report` writes report.html
(one self-contained page: inline CSS, PNGs embedded as data URIs, no script loaded from anywhere)
with one section per experiment, a comparison of several, and the "how far to trust the front"
section. It only puts together what `analysis` computed and `figures` drew: numbers are formatted
here (`html_table`), never computed.
"""

from __future__ import annotations

import base64
import html
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from raytune_ft import layout, pareto
from raytune_ft.report import analysis, figures, results
from raytune_ft.report.results import Experiment
from raytune_ft.report.tables import format_column, format_interval


def write_report(exps: Sequence[Experiment], out: Path) -> Path:
    """Write report.html (one self-contained page), the PNGs it embeds, trials.csv and
    pareto.csv into `out` (with several experiments: one section each, an `experiment`
    column in the CSVs, their fronts on one plot and a hypervolume table); returns the page."""
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
    page.write_text(html_page(title, "\n".join(body)))
    return page


def _experiment_section(exp: Experiment, out: Path, prefix: str) -> tuple[list[str], pd.DataFrame]:
    from raytune_ft.deploy import holdout  # torch: only once a report is written

    trials, size, acc = exp.trials, exp.size_name, exp.acc_name
    front = results.front(trials, exp.objectives)
    counts = trials["status"].value_counts().to_dict() if len(trials) else {}
    planned = f" of {exp.planned} planned" if exp.planned else ""
    elapsed = analysis.search_minutes(exp)
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
             + analysis.recipe_text(r, exp.params) for _, r in trials.iterrows()]
    h.append(figures.pareto_svg(trials, exp.objectives, hover, teacher=teacher or None))
    figures.plot_pareto(holdout.with_test_columns(trials, exp.local_dir), exp.objectives, out / f"{prefix}pareto.png",
                        teacher=teacher if pareto.is_number(teacher.get(acc)) else None,
                        baselines=list((teacher.get("baselines") or {}).values()),
                        title=f"{exp.name}: {len(trials)} trials, {len(front)} on the front")
    h.append('<p class="note">Filled grey: completed; hollow: incomplete or early-stopped (never on the '
             "front); red: the front; blue star: the dense teacher.</p>")
    h += _teacher_section(exp, front)

    h.append("<h3>Front models</h3>")
    if len(front):
        h += [html_table(table) for table in analysis.front_tables(exp, front)]
    else:
        h.append('<p class="note">No completed trial yet, so no front.</p>')
    h += trust_section(exp.local_dir, front, acc, teacher)  # test_acc, intervals, confirmed front
    h += _fidelity_section(exp, out, prefix)

    curve, scales = analysis.hypervolume_over_time(exp)
    figures.plot_hypervolume(curve, out / f"{prefix}hypervolume.png", title=f"{exp.name}: hypervolume")
    final = f"{curve['hypervolume'].iloc[-1]:.4f}" if len(curve) else "0 (no completed trials)"
    h += ["<h3>Hypervolume</h3>",
          f"<p>{hv_statement(exp.objectives, scales, exp.teacher)} Final hypervolume: <b>{final}</b> "
          f"after {len(curve)} completed trials (left: after each completion, in completion order; right: "
          "against wall time since the search started).</p>",
          img_tag(out / f"{prefix}hypervolume.png", "hypervolume over trials and wall time")]

    importances, note = analysis.param_importances(exp)
    figures.plot_importances(importances, out / f"{prefix}importance.png", note=note)
    h += ["<h3>Hyperparameter importance</h3>", f'<p class="note">{html.escape(note)}</p>',
          img_tag(out / f"{prefix}importance.png", "hyperparameter importance per objective")]
    if importances is not None:
        h.append(html_table(importances.rename_axis("parameter").reset_index()))

    effects, bins = analysis.family_effects(exp)
    figures.plot_family_panels(analysis.completed(trials), size, acc, analysis.searched_switches(exp),
                               out / f"{prefix}families.png")
    h += ["<h3>Effect of each family at equal size</h3>",
          f'<p class="note">Completed trials in {bins} size bin(s) (quantiles of {html.escape(size)}); '
          f"size-adjusted {html.escape(acc)} = {html.escape(acc)} − its bin's mean. Switches and categorical "
          "levels: Δ = mean adjusted accuracy with the level − without it; numeric parameters: Spearman ρ "
          "between the value and the adjusted accuracy, over trials where it was active. Empty effect: "
          "fewer than two trials on a side (three for ρ). Few trials make these numbers noisy; read them "
          "with the counts.</p>",
          html_table(effects),
          img_tag(out / f"{prefix}families.png", "accuracy vs size per switch, and vs sparsity by KD")]

    failed = trials[trials["status"] == "failed"] if len(trials) else trials
    if len(failed):
        h += ["<h3>Failed trials</h3>", html_table(failed[["trial_id", "epochs_trained", "error"]])]
    if len(trials):
        h += ["<h3>All trials</h3>", html_table(analysis.trials_overview(exp))]
    return h, front


def _teacher_section(exp: Experiment, front: pd.DataFrame) -> list[str]:
    """The dense teacher, the teacher-quality gate's verdict and the teacher's deployed baselines."""
    teacher, acc = exp.teacher or {}, exp.acc_name
    h = []
    if teacher:
        shown = {k: teacher[k] for k in ("model", acc, *analysis.SIZE_COLUMNS, "epochs_trained", "checkpoint",
                                         "export_path") if k in teacher}
        h += ["<h3>Dense teacher (reference)</h3>", html_table(pd.DataFrame([shown]))]
        if teacher.get("reused_from"):
            h.append(f"<p>Reused from another experiment in the same storage folder (same data and teacher "
                     f"config): {html.escape(str(teacher['reused_from']))}</p>")
    gate = analysis.teacher_gate(exp)
    if gate is not None:
        verdict = (html.escape(gate.get("reason") or "") if gate.get("closed") else
                   f"open: the teacher (val {_fmt(gate.get('teacher_val_acc'))}) stayed at least "
                   f"{_fmt(gate.get('margin'))} ahead of the best of {gate.get('students_seen', 0)} students "
                   f"({_fmt(gate.get('best_student_val_acc'))}), so distillation was searched throughout")
        h.append(f"<p><b>Teacher-quality gate</b> (search.kd_gate = {html.escape(str(gate.get('mode')))}): "
                 f"{verdict}.</p>")
    if teacher.get("baselines"):  # the teacher shipped as fp32 and int8 ONNX, measured like trials
        rows = list(teacher["baselines"].values())
        h += ["<h3>Baselines (the dense teacher's deployed files)</h3>", html_table(pd.DataFrame(rows))]
        int8 = teacher["baselines"].get("teacher_int8")
        if int8:
            line = pareto.dominance_line(front, exp.objectives, int8, "the int8 teacher")
            h.append(f'<p class="note">{html.escape(line)}</p>')
    return h


def _fidelity_section(exp: Experiment, out: Path, prefix: str) -> list[str]:
    """A two-stage search (search/fidelity.py): both fronts on one plot, and how well the subset's
    ranking predicted the full-data one (fidelity.csv / fidelity.json)."""
    found = analysis.fidelity_results(exp)
    if found is None:
        return []
    summary, table, stages = found
    figures.plot_fronts(stages, exp.objectives, out / f"{prefix}fidelity.png")
    tau = summary.get("kendall_tau")
    low, high = (summary.get("kendall_tau_ci95") or [None, None])[:2]
    interval = f", bootstrap 95 % [{_fmt(low)}, {_fmt(high)}]" if pareto.is_number(low) else ""
    said = (f"<p><b>{html.escape(summary['disagreement'][0].upper() + summary['disagreement'][1:])}.</b></p>"
            if summary.get("disagreement") else "")
    scatter = []
    if len(table) and f"{exp.acc_name}_subset" in table.columns:
        figures.plot_subset_vs_full(table, exp.acc_name, out / f"{prefix}fidelity_scatter.png")
        scatter = [img_tag(out / f"{prefix}fidelity_scatter.png", "subset against full-data accuracy")]
    return ["<h3>Data-size fidelity: the subset front and the full-data front</h3>",
            f"<p>Stage 1 trained every trial on a subset of the training split; its best {summary.get('n', 0)} "
            "recipes (the subset front first, then the nearest in NSGA-II order) were retrained on all of it, "
            "and the front above is made of those. Kendall's τ between the subset and the full-data "
            f"{html.escape(exp.acc_name)} of the promoted recipes: <b>{_fmt(tau)}</b> "
            f"(p = {_fmt(summary.get('kendall_p'))}{interval}, n = {summary.get('n', 0)}); 1: the subset ranked "
            "them exactly as the full data did, 0: no better than chance. Recipes marked random were drawn at "
            "random from the rest (search.promote_random), the check that the subset did not misjudge one.</p>",
            said,
            img_tag(out / f"{prefix}fidelity.png", "the subset front and the full-data front"),
            *scatter,
            html_table(table)]


def _comparison_section(exps: Sequence[Experiment], out: Path) -> list[str]:
    first = exps[0]
    table, scales = analysis.comparison(exps)
    figures.plot_fronts([(e.name, e.trials, e.teacher) for e in exps], first.objectives, out / "fronts.png")
    return ["<h2>Experiments compared</h2>",
            img_tag(out / "fronts.png", "Pareto fronts of all experiments"),
            f"<p>{hv_statement(first.objectives, scales, first.teacher)} The same normalisation (from "
            f"{html.escape(first.name)}) is used for every experiment so the numbers compare.</p>",
            html_table(table)]


def trust_section(exp_dir: str | Path, front: pd.DataFrame, acc_name: str,
                  teacher: Mapping[str, Any] | None) -> list[str]:
    """How far to trust the front: val − test gap per front point, Wilson 95 % interval widths
    (deploy/holdout.trust_table), the McNemar pairs that are statistically indistinguishable
    (test_front.json), and the confirmed front (confirmed.csv) when there is one."""
    from raytune_ft.deploy import holdout

    exp_dir = Path(exp_dir)
    front = holdout.with_test_columns(front, exp_dir)
    h = ["<h3>How far to trust this front</h3>"]
    if "test_acc" not in front or front["test_acc"].isna().all():
        return h + ['<p class="note">No test accuracy: the experiment has no test split (or predates it).</p>']
    table = holdout.trust_table(front, acc_name)
    gap = table["gap"].dropna()
    n = int(front["test_n"].dropna().iloc[0]) if "test_n" in front and front["test_n"].notna().any() else 0
    h.append(f'<p>The front was selected on {html.escape(acc_name)}; test_acc is each point\'s deployed file '
             f"evaluated once, after the search, on {n} held-out images no selection touched, with a Wilson 95 % "
             f"score interval. Median {html.escape(acc_name)} − test_acc gap: <b>{gap.median() * 100:+.2f} points"
             f"</b> (max {gap.max() * 100:+.2f}); median interval width {table['interval_width'].median() * 100:.2f} "
             "points." + (f" Dense teacher: test_acc {format_interval(teacher)}." if teacher and
                          "test_acc" in teacher else "") + "</p>")
    h.append(html_table(table))
    pairs_path = exp_dir / layout.TEST_FRONT_JSON
    if pairs_path.is_file():
        pairs = pd.read_json(pairs_path) if pairs_path.stat().st_size > 2 else pd.DataFrame()
        same = pairs[pairs["indistinguishable"]] if len(pairs) else pairs
        h.append(f'<p>Statistically indistinguishable front points (exact McNemar test on the same test images, '
                 f"p ≥ {holdout.ALPHA}): {len(same)} of {len(pairs)} pairs"
                 + (": " + ", ".join(f"{a} ~ {b} (p={p:.2f})" for a, b, p in
                                     zip(same["a"], same["b"], same["mcnemar_p"], strict=True)) if len(same) else "")
                 + ".</p>")
    confirmed_path = exp_dir / layout.CONFIRMED_CSV
    if confirmed_path.is_file():
        confirmed = pd.read_csv(confirmed_path)
        off = confirmed.loc[~confirmed["on_confirmed_front"].astype(bool), "trial_id"].astype(str).tolist()
        h += [f"<h3>Confirmed front ({int(confirmed['n_runs'].max())} seeds per recipe)</h3>",
              '<p class="note">Each front recipe re-run with more seeds (model init and batch order; the split '
              "fixed); mean ± std (ddof 1) over the runs. on_confirmed_front: non-dominated on (mean test_acc, "
              "mean size) among the front recipes. "
              + (f"Fell off the front once confirmed: {', '.join(off)}." if off else "Every point stays on it.")
              + "</p>", html_table(confirmed)]
    return h


def hv_statement(objectives: Mapping[str, str], scales: Mapping[str, float],
                 teacher: Mapping[str, Any] | None) -> str:
    """The sentence stating how objectives were normalised and the fixed reference point (HTML)."""
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


def html_table(frame: pd.DataFrame, *, max_rows: int = 200) -> str:
    """An HTML table of `frame` with the terminal's number formatting (tables.format_column), cells
    escaped, missing values empty."""
    if frame.empty:
        return '<p class="note">(no rows)</p>'
    shown = frame.head(max_rows)
    text = pd.DataFrame({c: ["" if v in ("nan", "None") else v for v in format_column(shown[c])]
                         for c in shown.columns})
    table = f'<div class="scroll">{text.to_html(index=False, escape=True, border=0, classes="data")}</div>'
    if len(frame) > max_rows:
        table += f'<p class="note">… {len(frame) - max_rows} more rows</p>'
    return table


def img_tag(path: str | Path, alt: str) -> str:
    """An <img> with the PNG at `path` embedded as a base64 data URI (the page stays one file)."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def html_page(title: str, body: str) -> str:
    """A complete HTML document with inline CSS and no external resource (opens offline)."""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 24px auto; max-width: 1180px; color: #222; }}
h1 {{ font-size: 22px; }} h2 {{ font-size: 18px; margin-top: 28px; border-bottom: 1px solid #ddd; }}
h3 {{ font-size: 15px; }}
table.data {{ border-collapse: collapse; font-size: 12px; margin: 8px 0; }}
table.data th, table.data td {{ border: 1px solid #ccc; padding: 3px 6px; text-align: left; }}
table.data th {{ background: #f3f3f3; }}
div.scroll {{ overflow-x: auto; }}
img {{ max-width: 100%; border: 1px solid #eee; margin: 6px 0; }}
p.note {{ color: #555; font-size: 13px; }}
svg.pareto circle.trial:hover {{ stroke: black; stroke-width: 2; }}
</style></head>
<body>
{body}
<script>/* for checks in a headless browser: how many embedded images decoded */
addEventListener("load", () => {{ document.body.dataset.imagesDecoded =
  [...document.images].filter(i => i.complete && i.naturalWidth > 0).length; }});</script>
</body></html>
"""


def _age(exp: Experiment) -> str:
    if exp.state == "finished" or "://" in exp.location:
        return ""
    return f" (last write {(time.time() - exp.last_update) / 60:.1f} min ago: still running, or interrupted)"


def _fmt(value: Any) -> str:
    if not pareto.is_number(value):
        return str(value)
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
