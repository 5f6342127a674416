"""Reading an experiment folder, while the search runs, after it finished or after it was killed.

Owns `read_trials` (one row per trial from Tune's per-trial files: the table behind trials.csv),
`load_experiment` (that table plus space.json, teacher.json and Tune's state) and `fetch` (a copy
of a folder behind a URI such as s3://, via pyarrow.fs). No Ray import: Tune's files are read as
plain JSON.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from raytune_ft import data_fraction, layout, pareto
from raytune_ft.layout import COMPLETED, EARLY_STOPPED, FAILED, INCOMPLETE  # noqa: E402  (re-exported)


def fully_trained(trained_epochs: int, config: dict[str, Any], default_epochs: int | None) -> bool:
    """Whether a trial that reported `trained_epochs` trained all its epochs: `config`'s own
    `epochs` (searched or fixed) or else `default_epochs` (None: nothing to compare, True).
    The one rule for the trials table, the progress line and the sampler (a shorter trial was
    early-stopped: never on the front, PRUNED in the study)."""
    required = (config or {}).get("epochs", default_epochs)
    return required is None or int(trained_epochs or 0) >= int(required)
# Ray Tune's bookkeeping in result.json; everything else a trial reports is a metric.
RAY_KEYS = frozenset({
    "epoch", "timestamp", "checkpoint_dir_name", "should_checkpoint", "done", "training_iteration",
    "trial_id", "date", "time_this_iter_s", "time_total_s", "pid", "hostname", "node_ip", "config",
    "time_since_restore", "iterations_since_restore", "experiment_tag",
})
DEFAULT_OBJECTIVES = {"val_acc": "max", "nonzero_params": "min"}


@dataclass
class Experiment:
    """One experiment folder, read: its settings, teacher and trials table."""

    name: str
    location: str  # as the user gave it (a path or a URI)
    local_dir: Path  # where the files were read (a temporary copy for a URI)
    objectives: dict[str, str]  # metric -> "max" | "min", as searched
    params: list[str]  # searched parameter names
    space_file: str | None  # the search-space YAML the experiment was started from
    planned: int | None  # num_samples of the search
    teacher: dict[str, Any] | None  # teacher.json
    trials: pd.DataFrame  # read_trials()
    state: str  # "finished" (every planned trial ended) | "unfinished" (running, or interrupted)
    last_update: float  # unix time of the newest file in the folder: tells running from interrupted
    start_time: float | None  # unix time the search started (Tune's experiment state)
    pending: int  # trials Tune had created but not started

    @property
    def size_name(self) -> str:
        return next(k for k, v in self.objectives.items() if v == "min")

    @property
    def acc_name(self) -> str:
        return next(k for k, v in self.objectives.items() if v == "max")


def read_trials(exp_dir: str | Path) -> pd.DataFrame:
    """One row per `trial_*` folder of an experiment, from Tune's per-trial files alone.

    Works while the search runs and after it was killed: it needs only `params.json` and
    `result.json` (one line per epoch) in each trial folder, plus `space.json` for the fixed
    settings. Status: `completed` when the trial reported as many epochs as its config asks,
    `failed` when Tune wrote `error.txt`/`error.pkl` (or its state says ERROR), `early-stopped`
    when Tune's state says TERMINATED before that, otherwise `incomplete` (running or
    interrupted). Columns: trial_id, status, searched params (inactive conditional ones empty),
    fixed settings (`model`, the architecture, always), the last reported metrics, epochs_trained,
    wall_time_s, start_time, end_time (unix s), checkpoint (the newest checkpoint folder), export_path (its `export/`
    folder when there is one), pruning_method (pruning.pruning_method), data_fraction (the share of
    the training split the trial trained on: 1.0 unless a two-stage search's stage 1 set it), error.
    """
    from raytune_ft.config import TrialConfig
    from raytune_ft.families.pruning import pruning_method

    exp_dir = Path(exp_dir)
    space = _read_json(exp_dir / layout.SPACE_JSON) or {}
    fixed: dict[str, Any] = space.get("fixed", {})
    _, tune_state = _tune_state(exp_dir)
    rows = []
    for trial_dir in sorted(p for p in exp_dir.glob("trial_*") if p.is_dir()):
        results = _read_results(trial_dir / layout.TUNE_RESULT_JSON)
        last = results[-1] if results else {}
        config = _read_json(trial_dir / layout.TUNE_PARAMS_JSON) or last.get("config") or {}
        param_names = space.get("params") or sorted(config)
        trial_id = last.get("trial_id") or trial_dir.name.removeprefix("trial_")
        trained = int(last.get("epoch", len(results)) or 0)
        error = _error_line(trial_dir)
        state = tune_state.get(trial_id, {})
        if fully_trained(trained, {**fixed, **config}, TrialConfig.epochs) and state.get("status") != "ERROR":
            status = COMPLETED
        elif error is not None or state.get("status") == "ERROR":
            status = FAILED
        elif state.get("status") == "TERMINATED":
            status = EARLY_STOPPED
        else:
            status = INCOMPLETE
        metrics = {k: v for k, v in last.items()
                   if k not in RAY_KEYS and k not in config and k not in fixed and _is_scalar(v)}
        checkpoints = sorted(p for p in trial_dir.glob("checkpoint_*") if p.is_dir())  # not Train's .json
        export = checkpoints[-1] / layout.EXPORT_DIR if checkpoints else None
        metrics.update(_retimed_latency(export, metrics))
        end_time = last.get("timestamp")
        start_time = state.get("start_time") or (
            end_time - last["time_total_s"] if end_time and "time_total_s" in last else None)
        rows.append({
            "trial_id": trial_id, "status": status,
            **{name: config.get(name) for name in param_names},
            **{name: value for name, value in fixed.items() if name not in param_names},
            **metrics,
            "epochs_trained": trained, "wall_time_s": last.get("time_total_s"),
            "start_time": start_time, "end_time": end_time,
            "checkpoint": str(checkpoints[-1]) if checkpoints else None,
            "export_path": str(export) if export is not None and export.is_dir() else None,
            "pruning_method": pruning_method({**fixed, **config}),
            # the student architecture of every row, also when it is neither fixed nor searched
            **({} if "model" in config or "model" in fixed else {"model": TrialConfig.model}),
            # which share of the training split the row was trained on, also in a one-stage search
            **({} if data_fraction.COLUMN in config or data_fraction.COLUMN in fixed
               else {data_fraction.COLUMN: data_fraction.FULL}),
            "error": error if status == FAILED else None,
        })
    texts = ("trial_id", "status", "checkpoint", "error")
    numbers = (*space.get("objectives", DEFAULT_OBJECTIVES), "epochs_trained", "wall_time_s", "start_time",
               "end_time")
    trials = pd.DataFrame(rows)
    for column in (*texts, *numbers):  # also before any trial has reported
        if column not in trials.columns:
            trials[column] = pd.Series([None] * len(trials), dtype=object if column in texts else float)
    if len(trials):
        trials = trials.sort_values(["start_time", "trial_id"], kind="stable", na_position="last")
    trials = trials.reset_index(drop=True)
    stage_dir = exp_dir / layout.STAGE2_DIR
    if stage_dir.is_dir() and any(stage_dir.glob("trial_*")):
        trials = with_stage2(trials, read_trials(stage_dir), space.get("params") or [])
    return trials


def front(trials: pd.DataFrame, objectives: dict[str, str]) -> pd.DataFrame:
    """The Pareto front of a trials table (pareto.csv's rows): `pareto.pareto_front` over the rows
    `data_fraction.front_eligible` lets take part — a two-stage search's full-data trials, once one
    completed. Every reader of an experiment's front asks here; an empty table gives an empty front."""
    if not len(trials):
        return trials.iloc[:0]
    return pareto.pareto_front(trials, objectives, eligible=data_fraction.front_eligible(trials))


def with_stage2(stage1: pd.DataFrame, stage2: pd.DataFrame, params: list[str]) -> pd.DataFrame:
    """A two-stage search's table (search/fidelity.py): stage-1 rows, then stage-2 rows (trained on
    all the data), a `stage` column, and `promoted_from`: the stage-1 trial whose recipe (its
    searched values) a stage-2 trial retrained."""
    keys = {_recipe_key(row, params): str(row["trial_id"]) for _, row in stage1.iterrows()}
    stage2 = stage2.assign(stage=2, promoted_from=[keys.get(_recipe_key(row, params)) for _, row in stage2.iterrows()])
    return pd.concat([stage1.assign(stage=1), stage2], ignore_index=True, sort=False)


def _recipe_key(row: pd.Series, params: list[str]) -> tuple:
    def plain(value: Any) -> Any:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return None
        if isinstance(value, float | np.floating):
            return round(float(value), 12)
        return value.item() if isinstance(value, np.generic) else value

    return tuple((p, plain(row.get(p))) for p in params)


def _retimed_latency(export: Path | None, metrics: dict[str, Any]) -> dict[str, Any]:
    """The latencies re-timed after the search (remeasure.py) from the export's manifest, with the
    trial's own measurement kept as latency_ms_b*_search; {} when it was not re-timed."""
    path = export / layout.MANIFEST if export is not None else None
    if path is None or not path.is_file():
        return {}
    measured = json.loads(path.read_text()).get("metrics") or {}
    if not measured.get("latency_retimed"):
        return {}
    out = {f"{k}_search": metrics[k] for k in ("latency_ms_b1", "latency_ms_b32") if k in metrics}
    return {**out, **{k: v for k, v in measured.items() if k.startswith("latency_ms_")}}


def load_experiment(location: str | Path, *, with_checkpoints: bool = False) -> Experiment:
    """Read an experiment folder; a URI (s3://, gs://, file://) is copied to a temporary folder
    first (checkpoint weights only when `with_checkpoints`, e.g. for --export-best)."""
    location = str(location)
    local = fetch(location, with_checkpoints=with_checkpoints) if "://" in location else Path(location)
    if not local.is_dir():
        raise FileNotFoundError(f"experiment folder {location!r} does not exist")
    space = _read_json(local / layout.SPACE_JSON)
    if space is None and not any(local.glob("trial_*")):
        raise FileNotFoundError(f"{location!r} has neither space.json nor trial_* folders; "
                                "give the folder <storage-path>/<name> of a search")
    space = space or {}
    objectives = space.get("objectives") or DEFAULT_OBJECTIVES
    trials = read_trials(local)
    if "://" in location and len(trials):  # name files where they are, not in the temporary copy
        for column in ("checkpoint", "export_path"):
            trials[column] = [v.replace(str(local), location.rstrip("/"), 1) if isinstance(v, str) else v
                              for v in trials[column]]
    start_time, tune_state = _tune_state(local)
    if start_time is None and len(trials) and trials["start_time"].notna().any():
        start_time = float(trials["start_time"].min())
    search = space.get("search", {})
    planned = search.get("num_samples")
    done = trials["status"].isin([COMPLETED, FAILED, EARLY_STOPPED]).sum() if len(trials) else 0
    if planned is not None and data_fraction.is_subset(search.get(data_fraction.COLUMN) or data_fraction.FULL) \
            and len(trials):
        # a two-stage search also plans its stage-2 retrainings (killed during stage 2: unfinished)
        stage1 = trials[trials["stage"] == 1] if "stage" in trials else trials
        planned += min(int(search["promote"]), int((stage1["status"] == COMPLETED).sum()))
    newest = max((p.stat().st_mtime for p in local.rglob("*") if p.is_file()), default=0.0)
    state = "finished" if planned is not None and done >= planned else "unfinished"
    seen = set(trials["trial_id"]) if len(trials) else set()
    pending = sum(1 for tid, s in tune_state.items() if tid not in seen and s.get("status") == "PENDING")
    return Experiment(
        name=local.name, location=location, local_dir=local, objectives=dict(objectives),
        params=list(space.get("params") or []), space_file=space.get("space_file"), planned=planned,
        teacher=_read_json(local / layout.TEACHER_JSON), trials=trials, state=state,
        last_update=newest,
        start_time=start_time, pending=pending,
    )


def fetch(uri: str, *, with_checkpoints: bool = False) -> Path:
    """Copy an experiment folder at `uri` (anything pyarrow.fs.FileSystem.from_uri takes) into a
    new temporary folder and return the copy. Checkpoint and export weights are skipped unless
    `with_checkpoints` (a checkpoint's checkpoint.json is always copied)."""
    from pyarrow import fs

    filesystem, root = fs.FileSystem.from_uri(uri)
    root = root.rstrip("/")
    local = Path(tempfile.mkdtemp(prefix="raytune_ft-analyze-")) / Path(root).name
    infos = filesystem.get_file_info(fs.FileSelector(root, recursive=True))
    for info in infos:
        if info.type != fs.FileType.File:
            continue
        relative = info.path[len(root):].lstrip("/")
        folders = relative.split("/")[:-1]
        heavy = any(f.startswith("checkpoint_") or f == "export" for f in folders)
        if heavy and not with_checkpoints and not relative.endswith(layout.CHECKPOINT_META):
            continue
        target = local / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        with filesystem.open_input_stream(info.path) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return local


def _tune_state(exp_dir: Path) -> tuple[float | None, dict[str, dict[str, Any]]]:
    """(search start time, {trial_id: {status, start_time}}) from Tune's newest
    experiment_state-*.json; (None, {}) when there is none or it cannot be parsed."""
    files = sorted(exp_dir.glob("experiment_state-*.json"), key=lambda p: p.stat().st_mtime)
    state = _read_json(files[-1]) if files else None
    if not state:
        return None, {}
    trials = {}
    try:
        for entry in state.get("trial_data", []):
            meta = json.loads(entry[0])
            run = json.loads(entry[1]) if len(entry) > 1 and isinstance(entry[1], str) else {}
            trials[meta["trial_id"]] = {"status": meta.get("status"), "start_time": run.get("start_time")}
    except (TypeError, KeyError, ValueError, IndexError):
        trials = {}
    return state.get("stats", {}).get("start_time"), trials


def _read_results(path: Path) -> list[dict[str, Any]]:
    """The epoch reports of result.json; a half-written last line (a killed run) is dropped."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _error_line(trial_dir: Path) -> str | None:
    """The last line of Tune's error.txt (the original exception), or a note for error.pkl only."""
    text = trial_dir / layout.TUNE_ERROR_TXT
    if text.is_file():
        lines = [ln.strip() for ln in text.read_text(errors="replace").splitlines() if ln.strip()]
        return lines[-1] if lines else "error (empty error.txt)"
    return "error (see error.pkl)" if (trial_dir / layout.TUNE_ERROR_PKL).is_file() else None


def local_path(exp: Experiment, recorded: str) -> Path | None:
    """Map a path recorded during the search onto the folder we read (a copy for a URI)."""
    path = Path(recorded)
    if path.exists():
        return path
    parts = path.parts
    for anchor in (exp.name,):
        if anchor in parts:
            return exp.local_dir.joinpath(*parts[len(parts) - parts[::-1].index(anchor):])
    trial = next((i for i, p in enumerate(parts) if p.startswith("trial_")), None)
    return exp.local_dir.joinpath(*parts[trial:]) if trial is not None else None


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float | str)
