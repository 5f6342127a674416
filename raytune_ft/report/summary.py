"""The closing summary of a search: its front as the few columns a person compares (model, the
recipe in a few words, val_acc, test_acc with its Wilson 95 % interval, the deployed file's gzip
size, latency at batch 1) with the teacher baselines above it, in at most 100 columns, and where
the full tables, the plot and the report are. pareto.csv and the report keep every column.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from raytune_ft import layout
from raytune_ft.config import TrialConfig

WIDTH = 100  # the summary's lines fit this many columns
MODEL_WIDTH = 20  # longer model names are cut with "…" (pareto.csv has them whole)
SEP = " · "
BASELINE_RECIPES = {"teacher_fp32": "dense teacher · fp32", "teacher_int8": "dense teacher · int8 PTQ"}
SHOWN = ("val_acc", "test_acc", "model_bytes_compressed", "latency_ms_b1")  # other objectives get a column too
_DEFAULTS = TrialConfig()


def recipe_words(row: Mapping[str, Any]) -> str:
    """A recipe in a few words, family by family, e.g. "KD T=4 · 75 % sparse · int8",
    "aug · wd · LS 0.1 · 50 % sparse · int8", "L2-SP · ch-pruned 50 % · QAT". A setting missing
    from `row` (a pareto.csv row holds the fixed and searched ones) takes TrialConfig's default."""
    def get(name: str) -> Any:
        value = row.get(name)
        return getattr(_DEFAULTS, name) if _missing(value) else value

    words = []
    if _true(get("augment")):
        words.append("aug")
    if _true(get("use_weight_decay")):
        words.append("wd")
    if _true(get("use_l2sp")):
        words.append("L2-SP")
    if _true(get("use_label_smoothing")):
        words.append(f"LS {round(float(get('label_smoothing')), 2):g}")
    if float(get("dropout") or 0) > 0:
        words.append(f"dropout {round(float(get('dropout')), 2):g}")
    if _true(get("use_kd")):
        words.append(f"KD T={float(get('kd_temperature')):.2g}")
    if _true(get("use_pruning")):
        words.append(f"{100 * float(get('final_sparsity')):.0f} % sparse")
    if _true(get("use_channel_pruning")):
        words.append(f"ch-pruned {100 * float(get('channel_pruning_ratio')):.0f} %")
    if _true(get("use_quantization")):
        words.append("QAT" if float(get("quant_aware_fraction") or 0) > 0 else "int8")
    else:
        words.append("fp32")
    return SEP.join(words)


def closing_summary(front: pd.DataFrame, teacher: Mapping[str, Any], objectives: Mapping[str, str],
                    location: str, *, notes: Sequence[str] = (), width: int = WIDTH) -> str:
    """The lines printed when a search ends: `notes` (wrapped), the teacher baselines (or the
    teacher) and the front (pareto.csv's rows, in its order) as a short table, then where
    pareto.csv (every column), trials.csv, pareto.png and the report are. `location`: the
    experiment folder or URI; a local folder under the current directory is shown relative to it."""
    rows = [_baseline_row(name, row, teacher) for name, row in (teacher.get("baselines") or {}).items()]
    if not rows and teacher:
        rows = [{**teacher, "recipe": "dense teacher"}]
    n_baselines = len(rows)
    rows += [{**r, "recipe": recipe_words(r)} for r in front.to_dict("records")]
    extra = [m for m in objectives if m not in SHOWN]
    order = next((m for m, mode in objectives.items() if mode == "min"), "size")  # pareto_front's order
    columns = [("model", "model", _model), ("val_acc", "val", _accuracy),
               ("test_acc", "test [95 %]", _interval),
               ("model_bytes_compressed", "gzip", _bytes), ("latency_ms_b1", "latency", _latency),
               *[(m, m, _number) for m in extra]]
    cells = [[fmt(row.get(key), row) for key, _, fmt in columns] for row in rows]
    widths = [max([len(head), *(len(c[i]) for c in cells)]) for i, (_, head, _) in enumerate(columns)]
    recipe_width = max(16, width - sum(widths) - 2 * len(widths))

    def line(values: Sequence[str], recipe: str) -> str:  # the model, the recipe, then numbers right-aligned
        first, *rest = values
        parts = [first.ljust(widths[0]), recipe.ljust(recipe_width),
                 *(v.rjust(w) for v, w in zip(rest, widths[1:], strict=True))]
        return "  ".join(parts).rstrip()

    out = [textwrap.fill(note, width, subsequent_indent="  ") for note in notes]
    out += [*([""] if notes else []), textwrap.fill(
        f"Pareto front: {len(front)} point(s) in order of {order} (gzip: the deployed file; latency: batch 1)",
        width), line([h for _, h, _ in columns], "recipe")]
    for k, (row, values) in enumerate(zip(rows, cells, strict=True)):
        if k == n_baselines and n_baselines:  # the baselines above, the front below
            out.append("-" * min(width, sum(widths) + recipe_width + 2 * len(widths)))
        wrapped = _wrap_recipe(row["recipe"], recipe_width)
        out.append(line(values, wrapped[0]))
        out += [line([""] * len(values), more) for more in wrapped[1:]]
    if not len(front):
        out.append("(no completed trial: the front is empty)")
    where = _shown_path(location)
    out += ["", f"in {where}/:",
            f"  {layout.PARETO_CSV} (the front, every column)  {layout.TRIALS_CSV} (every trial)  "
            f"{layout.PARETO_PNG} (the plot)",
            f"{layout.REPORT_HTML}: python -m raytune_ft.analyze {where}"]
    return "\n".join(out)


def _baseline_row(name: str, row: Mapping[str, Any], teacher: Mapping[str, Any]) -> dict[str, Any]:
    return {**row, "model": row.get("model") or teacher.get("model"), "recipe": BASELINE_RECIPES.get(name, name)}


def _wrap_recipe(recipe: str, width: int) -> list[str]:
    """`recipe` on lines of at most `width`, broken between its words (" · "); a line that goes on
    ends with " ·"."""
    words, tail = recipe.split(SEP), SEP.rstrip()
    lines = [words[0]]
    for k, word in enumerate(words[1:], start=2):
        room = width - (len(tail) if k < len(words) else 0)  # the next line's words need the " ·"
        if len(lines[-1]) + len(SEP) + len(word) <= room:
            lines[-1] += SEP + word
        else:
            lines[-1] += tail
            lines.append(word)
    return lines


def _shown_path(location: str) -> str:
    if "://" in location:
        return location.rstrip("/")
    path = Path(location).resolve()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _model(value: Any, _row: Mapping[str, Any]) -> str:
    text = "" if _missing(value) else str(value)
    return text if len(text) <= MODEL_WIDTH else text[:MODEL_WIDTH - 1] + "…"


def _accuracy(value: Any, _row: Mapping[str, Any]) -> str:
    return "–" if _missing(value) else f"{float(value):.4f}"


def _interval(_value: Any, row: Mapping[str, Any]) -> str:
    """"0.9888 [0.972, 0.996]": test_acc and its Wilson 95 % interval."""
    if any(_missing(row.get(k)) for k in ("test_acc", "test_acc_low", "test_acc_high")):
        return "–"
    return f"{float(row['test_acc']):.4f} [{float(row['test_acc_low']):.3f}, {float(row['test_acc_high']):.3f}]"


def _bytes(value: Any, _row: Mapping[str, Any]) -> str:
    """Decimal units, 3 significant digits: "136 KB", "1.98 MB"."""
    if _missing(value):
        return "–"
    size = float(value)
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{size:.0f} B"


def _latency(value: Any, _row: Mapping[str, Any]) -> str:
    return "–" if _missing(value) else f"{float(value):.2g} ms" if float(value) < 1 else f"{float(value):.3g} ms"


def _number(value: Any, _row: Mapping[str, Any]) -> str:
    if _missing(value):
        return "–"
    value = float(value)
    return f"{value:,.0f}" if value.is_integer() and abs(value) >= 1 else f"{value:.4g}"


def _true(value: Any) -> bool:
    return str(value).strip().lower() in ("true", "1", "1.0")


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA \
        or (isinstance(value, str) and not value)

