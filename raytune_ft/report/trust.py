"""The report's "how far to trust the front" section: test-split intervals, McNemar groups of
indistinguishable front points and the confirmation runs, as HTML."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from raytune_ft import layout
from raytune_ft.deploy.holdout import ALPHA, trust_table, with_test_columns


def trust_section(exp_dir: str | Path, front: pd.DataFrame, acc_name: str,
                  teacher: Mapping[str, Any] | None) -> list[str]:
    """HTML: val − test gap per front point, Wilson 95 % interval widths, the McNemar pairs that are
    statistically indistinguishable, and the confirmed front (confirmed.csv) when there is one."""
    import html

    from raytune_ft import report

    exp_dir = Path(exp_dir)
    front = with_test_columns(front, exp_dir)
    h = ["<h3>How far to trust this front</h3>"]
    if "test_acc" not in front or front["test_acc"].isna().all():
        return h + ['<p class="note">No test accuracy: the experiment has no test split (or predates it).</p>']
    table = trust_table(front, acc_name)
    gap = table["gap"].dropna()
    n = int(front["test_n"].dropna().iloc[0]) if "test_n" in front and front["test_n"].notna().any() else 0
    h.append(f'<p>The front was selected on {html.escape(acc_name)}; test_acc is each point\'s deployed file '
             f"evaluated once, after the search, on {n} held-out images no selection touched, with a Wilson 95 % "
             f"score interval. Median {html.escape(acc_name)} − test_acc gap: <b>{gap.median() * 100:+.2f} points"
             f"</b> (max {gap.max() * 100:+.2f}); median interval width {table['interval_width'].median() * 100:.2f} "
             "points." + (f" Dense teacher: test_acc {report.format_interval(teacher)}." if teacher and
                          "test_acc" in teacher else "") + "</p>")
    h.append(report.html_table(table))
    pairs_path = exp_dir / layout.TEST_FRONT_JSON
    if pairs_path.is_file():
        pairs = pd.read_json(pairs_path) if pairs_path.stat().st_size > 2 else pd.DataFrame()
        same = pairs[pairs["indistinguishable"]] if len(pairs) else pairs
        h.append(f'<p>Statistically indistinguishable front points (exact McNemar test on the same test images, '
                 f"p ≥ {ALPHA}): {len(same)} of {len(pairs)} pairs"
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
              + "</p>", report.html_table(confirmed)]
    return h
