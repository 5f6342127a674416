"""Latency you can compare: every shipped file re-timed after the search, in the driver, while
nothing trains.

During a search a trial times its deployed file right after training, on a machine where other
trials may be training (max_concurrent > 1) — on 2 cores that moved the b32 latency of one int8
graph by ±18 % between trials. Once the trials are done, `remeasure` times every completed
trial's deployed ONNX file and the baselines' files again, in this process, with the trials'
threads (`cpus_per_trial`), up to GROUP files together in interleaved rounds (`time_files`:
warm-up, every file at b1 and b32 in each round, median and IQR). Those values replace
`latency_ms_b1/b32` (and their `_iqr`) in trials.csv, the front, the baselines and each file's manifest; what the
trial measured during the search stays as `latency_ms_b1_search` / `latency_ms_b32_search` —
the values the sampler saw when a space optimises latency.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from raytune_ft import layout
from raytune_ft.config import TrialConfig
from raytune_ft.deploy import export

COLUMNS = ("latency_ms_b1", "latency_ms_b32", "latency_ms_b1_iqr", "latency_ms_b32_iqr")
SEARCH_SUFFIX = "_search"
GROUP = 16  # files timed together (sessions open at once)
RETIMED = "latency_retimed"  # manifest metrics flag: the latency there was re-timed after the search


def timed_file(export_dir: str | Path) -> tuple[Path, int] | None:
    """(the ONNX file an export folder ships, its input size), or None when it ships none."""
    path = export.deployed_file(export_dir)
    if path is None or path.suffix != ".onnx" or not path.is_file():
        return None
    manifest = json.loads((Path(export_dir) / layout.MANIFEST).read_text())
    return path, int(manifest.get("input_size", [3, 32, 32])[-1])


def time_files(export_dirs: list[str | Path], *, threads: int, budget_s: float,
               group: int = GROUP) -> list[dict[str, float] | None]:
    """ORT latency of each export folder's deployed file (None: nothing deployed), also written into
    its manifest's metrics. Files are timed together, `group` at a time, so drift
    in the machine's load hits all files of a group alike (export.ort_latency_many; files timed
    one after another differed by ±15 % at b32 here)."""
    found = [timed_file(d) for d in export_dirs]
    out: list[dict[str, float] | None] = [None] * len(export_dirs)
    todo = [i for i, f in enumerate(found) if f is not None]
    for start in range(0, len(todo), group):
        members = todo[start:start + group]
        timed = export.ort_latency_many([found[i][0] for i in members], [found[i][1] for i in members],
                                        threads=threads, budget_s=budget_s)
        for i, latency in zip(members, timed, strict=True):
            export.update_manifest(export_dirs[i], metrics={**latency, RETIMED: True})  # read back by read_trials
            out[i] = latency
    return out


def time_file(export_dir: str | Path, *, threads: int, budget_s: float) -> dict[str, float] | None:
    """ORT latency of one export folder's deployed file (time_files of one)."""
    return time_files([export_dir], threads=threads, budget_s=budget_s)[0]


def remeasure(trials: pd.DataFrame, teacher: dict[str, Any], *, threads: int,
              budget_s: float) -> tuple[pd.DataFrame, dict[str, Any]]:
    """(trials, teacher) with the latencies of every completed trial's and every baseline's deployed
    file re-timed now, together (time_files); prints one line with the count and the time it took."""
    started = time.perf_counter()
    trials = trials.copy()
    rows = []  # (trial row index or baseline name, export folder)
    if "export_path" in trials and "latency_ms_b32" in trials:
        for column in ("latency_ms_b1", "latency_ms_b32"):
            if column + SEARCH_SUFFIX not in trials:
                trials[column + SEARCH_SUFFIX] = trials[column]
        rows += [(i, row["export_path"]) for i, row in trials.iterrows()
                 if row.get("status") == "completed" and isinstance(row.get("export_path"), str)]
    baselines = dict(teacher.get("baselines") or {})
    rows += [(name, Path(str(row.get("file", ""))).parent) for name, row in baselines.items()
             if Path(str(row.get("file", ""))).is_file()]
    latencies = time_files([folder for _, folder in rows], threads=threads, budget_s=budget_s)
    timed = 0
    for (key, _), latency in zip(rows, latencies, strict=True):
        if latency is None:
            continue
        timed += 1
        if isinstance(key, str) and key in baselines:
            baselines[key] = {**baselines[key], **latency}
        else:
            for column in COLUMNS:
                trials.at[key, column] = latency[column]
    teacher = {**teacher, "baselines": baselines} if baselines else dict(teacher)
    if "teacher_fp32" in baselines:  # the teacher's own row is its fp32 file
        teacher.update({c: baselines["teacher_fp32"][c] for c in COLUMNS if c in baselines["teacher_fp32"]})
    if timed:
        print(f"latency: {timed} deployed file(s) re-timed together after the search, nothing training "
              f"({threads} thread(s), {time.perf_counter() - started:.1f} s)", flush=True)
    return trials, teacher


def after_search(trials: pd.DataFrame, teacher: dict[str, Any], fixed: Mapping[str, Any], exp_dir: Path,
                 upload: Callable[..., Any]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """`remeasure` with the trials' threads and latency budget (the space's fixed settings); rewrites
    teacher.json and baselines.csv in `exp_dir` and hands them to `upload` (remote storage)."""
    cfg = TrialConfig.from_dict(dict(fixed))
    if not cfg.export:
        return trials, teacher
    trials, teacher = remeasure(trials, teacher, threads=cfg.worker_cpus, budget_s=cfg.latency_budget_s)
    if teacher.get("baselines"):
        (exp_dir / layout.TEACHER_JSON).write_text(json.dumps(teacher, indent=2))
        pd.DataFrame(list(teacher["baselines"].values())).to_csv(exp_dir / layout.BASELINES_CSV, index=False)
        upload(layout.TEACHER_JSON, layout.BASELINES_CSV)
    return trials, teacher
