"""How long a search has left: the estimate the progress lines show ("~12 min left") and the
record of every estimate, `progress.jsonl` in the experiment folder, one JSON object a line:
{"time": unix seconds, "phase": "start" | "teacher" | "trials" | "end", "elapsed_s": seconds since
the phase began, "eta_s": estimated seconds left of what the phase estimates, ...}.
benchmarks/eta_error.py reads it back to measure the estimate against the actual end.

The estimate is arithmetic on measured epoch times, nothing fitted: the teacher's remaining
epochs at its mean epoch time so far; the trials' planned remaining epochs (running trials at
their own seconds per epoch, queued ones at their model's or else the mean over measured trials)
scheduled on `max_concurrent` slots, then a two-stage search's stage 2 (`promote` recipes for
their epochs on all the data, at the measured epoch time / data_fraction). Early stopping
(MO-ASHA) can only shorten what is planned: until a trial has ended the estimate is an upper
bound ("at most"); after that, queued trials are planned at the mean share of their epochs that
the ended trials trained. Not included: the teacher's export and baselines, re-timing and testing
the front after the last trial.
"""

from __future__ import annotations

import heapq
import json
import os
import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LOG_ENV = "RAYTUNE_FT_PROGRESS_LOG"  # where the driver records estimates: <experiment>/progress.jsonl


@dataclass(frozen=True)
class Plan:
    """What the estimate plans besides the trials Tune reports on: trials at once (`slots`,
    search.max_concurrent), whether a scheduler may stop trials early, and a second stage
    (`later_trials` recipes for `later_epochs` epochs on all the data; data_fraction: stage 1's share)."""

    slots: int = 1
    early_stopping: bool = False
    later_trials: int = 0
    later_epochs: int = 0
    data_fraction: float = 1.0


def plan_for(space: Any) -> Plan:
    """The Plan of a Space: search.max_concurrent, its scheduler, and with search.data_fraction < 1
    stage 2's search.promote recipes for search.promote_epochs (or the trials' epochs)."""
    search = space.search
    two_stage = search.data_fraction < 1
    return Plan(slots=max(1, int(search.max_concurrent)), early_stopping=space.scheduler is not None,
                later_trials=int(search.promote) if two_stage else 0,
                later_epochs=int(search.promote_epochs or space.trial_config({}).epochs) if two_stage else 0,
                data_fraction=float(search.data_fraction))


def makespan(jobs: Iterable[float], slots: int, busy: Sequence[float] = ()) -> float:
    """Seconds until `jobs` (each its seconds, run in the given order, each on the first slot to
    free up) have all run on `slots` parallel slots, of which len(busy) are busy for `busy` seconds."""
    free = [float(b) for b in busy] + [0.0] * max(0, slots - len(busy))
    heapq.heapify(free)
    for job in jobs:
        heapq.heappush(free, heapq.heappop(free) + float(job))
    return max(free, default=0.0)


def time_left(running: Sequence[tuple[float, float]], queued: Sequence[tuple[float, float]], slots: int,
              later: Sequence[tuple[float, float]] = ()) -> float:
    """Seconds left: each (seconds per epoch, epochs left) of `running` occupies a slot, `queued`
    trials follow on the first free slot, and `later` (a later stage) starts when all of them ended."""
    first = makespan([rate * n for rate, n in queued], slots, busy=[rate * n for rate, n in running])
    return first + makespan([rate * n for rate, n in later], slots)


def teacher_time_left(epoch_times: Sequence[float], epochs_left: int) -> float:
    """The teacher's remaining training: its mean epoch time so far times the epochs left."""
    return statistics.fmean(epoch_times) * epochs_left if epoch_times else float("nan")


def format_eta(seconds: float | None, *, upper_bound: bool = False) -> str:
    """"~12 min left", "~3.4 min left", "at most ~40 min left"; "" when there is no estimate."""
    if seconds is None or seconds != seconds:
        return ""
    minutes = max(0.0, seconds) / 60
    text = f"~{minutes:.0f} min left" if minutes >= 10 else f"~{minutes:.1f} min left"
    return f"at most {text}" if upper_bound else text


@dataclass
class EpochClock:
    """Seconds per epoch of every trial, measured on the driver's clock between a trial's start (or
    its previous epoch) and each reported epoch: so it includes checkpointing, the trial's setup in
    its first epoch and the export in its last, as the remaining trials will."""

    last: dict[str, float] = field(default_factory=dict)  # trial -> time of its start or last epoch
    seconds: dict[str, float] = field(default_factory=dict)  # trial -> measured seconds
    epochs: dict[str, int] = field(default_factory=dict)  # trial -> epochs measured
    models: dict[str, str] = field(default_factory=dict)  # trial -> its model (its config's)

    def start(self, trial_id: str, model: str | None, now: float) -> None:
        self.last[trial_id] = now
        if model is not None:
            self.models[trial_id] = str(model)

    def epoch(self, trial_id: str, now: float) -> None:
        if trial_id in self.last:  # a trial seen first mid-run (a restored search) starts its clock here
            self.seconds[trial_id] = self.seconds.get(trial_id, 0.0) + now - self.last[trial_id]
            self.epochs[trial_id] = self.epochs.get(trial_id, 0) + 1
        self.last[trial_id] = now

    def rate(self, trial_id: str, model: str | None = None) -> float | None:
        """Seconds per epoch of `trial_id` if measured, else of its `model`'s trials, else of all."""
        if self.epochs.get(trial_id):
            return self.seconds[trial_id] / self.epochs[trial_id]
        rates = {t: self.seconds[t] / n for t, n in self.epochs.items() if n}
        same = [r for t, r in rates.items() if model is not None and self.models.get(t) == str(model)]
        if same:
            return statistics.fmean(same)
        return statistics.fmean(rates.values()) if rates else None


def record(path: str | os.PathLike | None, phase: str, *, elapsed_s: float | None = None,
           eta_s: float | None = None, **extra: Any) -> None:
    """Append one estimate (or a start/end mark) to `path`; nothing when `path` is None or its
    folder does not exist here (the teacher on another node of a cluster)."""
    if path is None or not Path(path).parent.is_dir():
        return
    row = {"time": time.time(), "phase": phase, "elapsed_s": elapsed_s,
           "eta_s": None if eta_s is None or eta_s != eta_s else round(float(eta_s), 1), **extra}
    with open(path, "a") as out:
        out.write(json.dumps(row, default=str) + "\n")


def log_path() -> str | None:
    """Where this process records estimates: $RAYTUNE_FT_PROGRESS_LOG, set by `begin`."""
    return os.environ.get(LOG_ENV) or None


def begin(path: str | os.PathLike) -> None:
    """Record estimates into `path` from now on (this process and the tasks it passes log_path() to)
    and mark the search's start there."""
    os.environ[LOG_ENV] = str(path)
    record(path, "start")


def finish() -> None:
    """Mark the search's end in the record."""
    record(log_path(), "end")
