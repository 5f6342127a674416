"""How long a search has left: the estimate the progress lines show ("~12 min left") and the
record of every estimate, `progress.jsonl` in the experiment folder, one JSON object a line:
{"time": unix seconds, "phase": "start" | "teacher" | "trials" | "end", "elapsed_s": seconds since
the phase began, "eta_s": estimated seconds left of what the phase estimates, ...}.
benchmarks/eta_error.py reads it back to measure the estimate against the actual end.

The estimate is arithmetic on measured epoch times, nothing fitted: the teacher's remaining
epochs at its mean epoch time so far; the trials' planned remaining epochs (running trials at
their own seconds per epoch, queued ones at their model's or else the mean over measured trials)
scheduled on `max_concurrent` slots, then a two-stage search's stage 2 (`promote` recipes for
their epochs on all the data, at the mean epoch time of the fully trained trials, which are the
ones promoted, or else of all measured trials, / data_fraction; an upper side: the validation
part of an epoch does not grow with the data: 2.9-3.4x, not 4x, at 0.25 on Fashion-MNIST). Early stopping
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

import numpy as np
from ray import tune

from raytune_ft import data_fraction

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
    stage 2's search.promote + search.promote_random recipes for search.promote_epochs (or the trials' epochs)."""
    search = space.search
    two_stage = data_fraction.is_subset(search.data_fraction)
    return Plan(slots=max(1, int(search.max_concurrent)), early_stopping=space.scheduler is not None,
                later_trials=int(search.promote) + int(search.promote_random) if two_stage else 0,
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


class Progress(tune.Callback):
    """One line when a trial starts, finishes or fails (never per epoch), e.g.

        [4/10 done, 1 running, 0 failed | front 2, HV 0.6123 | 3.2 min, ~12 min left] trial 5cb43b1c finished: ...

    Counts come from Tune's trial list (so they stay right after `--resume`). The front is over
    the completed trials' last results; with `epochs` (the fixed epoch count; a trial's own
    `epochs` in its config wins) a trial that reported fewer epochs is early-stopped and stays
    off it. The hypervolume uses pareto's normalisation — 1 − accuracy and size / the dense
    `teacher`'s size, reference point (1, 1) — so it is the number the report shows; without a
    `teacher` the largest value seen so far is the scale, and early values can still move.
    The time left (progress.py, with `plan`: slots, early stopping, a second stage) shows once an
    epoch has been measured; every epoch's estimate is recorded (log_path()), and a line
    is printed for the first one and then at least every PRINT_EVERY_S.
    """

    PRINT_EVERY_S = 600.0

    def __init__(self, total: int, objectives: dict[str, str], *,
                 teacher: dict[str, Any] | None = None, epochs: int | None = None,
                 plan: Plan | None = None, stage: str = "") -> None:
        self.total, self.objectives, self.stage = total, dict(objectives), stage  # stage: "stage 2 " etc.
        self.teacher, self.epochs = (dict(teacher) if teacher else None), epochs
        self.started = time.time()  # wall clock: still meaningful after a restore
        self.plan, self.clock = plan or Plan(), EpochClock()
        self.most_running, self.printed = 0, None

    def __setstate__(self, state: dict[str, Any]) -> None:  # restored from a search saved before these fields
        self.__dict__.update({"plan": Plan(), "clock": EpochClock(), "most_running": 0,
                              "printed": None, "stage": "", **state})

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.clock.start(trial.trial_id, trial.config.get("model"), time.time())
        recipe = ", ".join(f"{k}={_short(v)}" for k, v in trial.config.items())
        print(f"{self._stamp(trials)} trial {trial.trial_id} started: {recipe}", flush=True)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        now = time.time()
        self.clock.epoch(trial.trial_id, now)
        eta, upper = self.estimate(trials)
        running = sum(1 for t in trials if t.status == "RUNNING")
        record(log_path(), "trials", elapsed_s=round(now - self.started, 1), eta_s=eta,
                        upper_bound=upper, done=sum(1 for t in trials if t.status in ("TERMINATED", "ERROR")),
                        running=running, trial_id=trial.trial_id, epoch=result.get("epoch"))
        if eta is not None and (self.printed is None or now - self.printed >= self.PRINT_EVERY_S):
            print(f"{self._stamp(trials)} time left estimated from the epochs measured so far", flush=True)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # Tune calls this while the trial is still RUNNING; count it as done already.
        result = trial.last_result or {}
        values = ", ".join(f"{k}={_short(result.get(k))}" for k in self.objectives)
        stopped = "" if self._fully_trained(trial) else " (early-stopped, not on the front)"
        print(f"{self._stamp(trials, done=trial)} trial {trial.trial_id} finished: {values}{stopped}",
              flush=True)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        print(f"{self._stamp(trials)} trial {trial.trial_id} FAILED (see trials.csv; the search goes on)",
              flush=True)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if self.plan.later_trials:
            print(f"{self._stamp(trials)} stage 1 finished; the time left is stage 2's", flush=True)
        else:
            print(f"{self._stamp(trials, eta=False)} {self.stage or 'search '}finished", flush=True)

    def summary(self, trials: list, done: Any = None) -> dict[str, Any]:
        """Counts (done, running, failed, pending), front size and hypervolume of `trials`."""
        import pandas as pd

        from raytune_ft import pareto

        status = self._status(trials, done)
        counts = {s: sum(1 for v in status.values() if v == s)
                  for s in ("TERMINATED", "RUNNING", "ERROR", "PENDING")}
        finished = [t for t in trials if status[t.trial_id] == "TERMINATED" and self._fully_trained(t)]
        rows = [{"trial_id": t.trial_id, "status": "completed",
                 **{k: (t.last_result or {}).get(k) for k in self.objectives}} for t in finished]
        front_size, hv = 0, 0.0
        if rows:
            table = pd.DataFrame(rows)
            front_size = len(pareto.pareto_front(table, self.objectives))
            scales = pareto.hv_scales(table, self.objectives, self.teacher)
            points = pareto.normalize(table, self.objectives, scales)
            points = points[np.isfinite(points).all(axis=1)]
            hv = pareto.hypervolume(points, np.ones(len(self.objectives))) if len(points) else 0.0
        return {"done": counts["TERMINATED"], "running": counts["RUNNING"], "failed": counts["ERROR"],
                "pending": counts["PENDING"], "front": front_size, "hypervolume": hv,
                "elapsed_min": (time.time() - self.started) / 60}

    def estimate(self, trials: list, done: Any = None) -> tuple[float | None, bool]:
        """(seconds left, whether that is an upper bound) for the trials of `trials` not ended, the
        ones the searcher has yet to start (of `total`) and the plan's later stage; (None, False)
        before any epoch was measured. See progress.py."""
        mean_rate = self.clock.rate("")
        if mean_rate is None:
            return None, False
        status = self._status(trials, done)
        self.most_running = max(self.most_running, sum(1 for v in status.values() if v == "RUNNING"))
        share, upper = 1.0, self.plan.early_stopping
        ended = [t for t in trials if status[t.trial_id] == "TERMINATED" and self._planned(t)]
        if upper and ended:  # early stopping: plan queued trials at the share of epochs ended ones trained
            share = float(np.mean([min(1.0, (t.last_result or {}).get("epoch", 0) / self._planned(t))
                                    for t in ended]))
            upper = False
        running, queued = [], []
        for t in trials:
            planned_epochs = self._planned(t)
            if status[t.trial_id] in ("TERMINATED", "ERROR") or planned_epochs is None:
                continue
            rate = self.clock.rate(t.trial_id, t.config.get("model"))
            if status[t.trial_id] == "RUNNING":
                running.append((rate, max(0, planned_epochs - (t.last_result or {}).get("epoch", 0))))
            else:
                queued.append((rate, planned_epochs * share))
        if self.epochs:
            queued += [(mean_rate, self.epochs * share)] * max(0, self.total - len(trials))
        slots = max(1, min(self.plan.slots, self.most_running or 1))
        # stage 2 retrains the recipes that would be promoted now (the fully trained ones first in
        # non-dominated order): their epoch time, not that of all trials (on the shipped Fashion-MNIST
        # search the mean over every fully trained recipe planned stage 2 at +181 %: a compact CNN 24
        # slowed beside a ResNet, where the two promoted compact CNN 16s took 5.7 s per epoch)
        trained = [t for t in trials if status[t.trial_id] == "TERMINATED"
                   and self.clock.epochs.get(t.trial_id) and self._fully_trained(t)]
        chosen = self._promotable(trained, self.plan.later_trials)
        stage2_rate = float(np.mean([self.clock.rate(t.trial_id) for t in chosen])) if chosen else mean_rate
        later = [(stage2_rate / self.plan.data_fraction, self.plan.later_epochs)] * self.plan.later_trials
        return time_left(running, queued, slots, later), upper

    def _promotable(self, trained: list, k: int) -> list:
        """The `k` of `trained` first in non-dominated order of the objectives (ties by the first
        objective), as stage 2 promotes them; all of them when k is 0 or a value is missing."""
        from raytune_ft import pareto

        values = np.array([[float((t.last_result or {}).get(name, np.nan)) for name in self.objectives]
                           for t in trained], dtype=float).reshape(len(trained), len(self.objectives))
        if not k or not len(trained) or np.isnan(values).any():
            return trained
        points = pareto.to_minimization(values, list(self.objectives.values()))
        ranks = pareto.non_dominated_sort(points)
        order = sorted(range(len(trained)), key=lambda i: (ranks[i], points[i, 0]))
        return [trained[i] for i in order[:k]]

    def _stamp(self, trials: list, done: Any = None, *, eta: bool = True) -> str:
        s = self.summary(trials, done)
        seconds, upper = self.estimate(trials, done) if eta else (None, False)
        left = format_eta(seconds, upper_bound=upper)
        self.printed = time.time()
        return (f"{self.stage}[{s['done'] + s['failed']}/{self.total} done, {s['running']} running, "
                f"{s['failed']} failed | front {s['front']}, HV {s['hypervolume']:.4f} | "
                f"{s['elapsed_min']:.1f} min{', ' + left if left else ''}]")

    def _status(self, trials: list, done: Any = None) -> dict[str, str]:
        status = {t.trial_id: t.status for t in trials}
        if done is not None:
            status[done.trial_id] = "TERMINATED"
        return status

    def _planned(self, trial: Any) -> int | None:
        epochs = trial.config.get("epochs", self.epochs)
        return int(epochs) if epochs else None

    def _fully_trained(self, trial: Any) -> bool:
        from raytune_ft.report import results

        return results.fully_trained((trial.last_result or {}).get("epoch", 0), trial.config, self.epochs)



def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)

