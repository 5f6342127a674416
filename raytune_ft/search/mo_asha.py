"""MO-ASHA: multi-objective asynchronous successive halving as a Ray Tune scheduler.

Schmucker, Donini, Perrone, Archambeau (2021), "Multi-objective Asynchronous Successive
Halving": ASHA (Li et al. 2020) whose rung ranking is NSGA-II's — non-dominated sorting over
all objectives, ties inside a front broken by crowding distance (Deb et al. 2002; the paper's
other option, an epsilon-net, is not implemented). The ranking (pareto.rank_keys) is plain numpy on
"lower is better" points, separate from the Tune glue, so it is tested on hand-made rungs.
Size objectives are ranked on the trial's planned final values where it reports them
(`planned_<m>`, planned.py), accuracy as measured at the rung.
"""

from __future__ import annotations

import math
import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ray.tune.schedulers.trial_scheduler import FIFOScheduler, TrialScheduler

from raytune_ft import pareto
from raytune_ft.search.planned import PREFIX as PLANNED_PREFIX

# --- the rung decision: pure functions on (n, d) arrays, every objective minimised (pareto.py) -----

def continues_at_rung(recorded: np.ndarray, new: np.ndarray, reduction_factor: float) -> bool:
    """The asynchronous successive-halving decision for a trial reaching a rung.

    recorded: (m, d) points (minimisation) of the trials already recorded at this rung; new:
    (d,) the arriving trial. The first trial at a rung always continues. Otherwise the trial
    continues only if it is in the top 1/eta of the rung (eta = reduction_factor):

    * one objective — exactly ASHA as Ray implements it: continue iff the value is no worse
      than the (1 - 1/eta) quantile (linear interpolation) of the recorded values;
    * several objectives — the same cutoff taken on NSGA-II ranks, since vectors have no
      values to interpolate between: rank all m + 1 points by (non-dominated front, crowding
      distance); B = recorded points strictly ahead of the new one (ties are not ahead); continue
      iff B <= m - 1 - ceil((m - 1)(1 - 1/eta)). With one objective this rank rule equals
      ASHA's wherever the quantile falls on a recorded value, and is stricter only when the
      new value lies strictly between the two recorded values the quantile interpolates.
    """
    recorded = np.asarray(recorded, dtype=float)
    new = np.asarray(new, dtype=float).reshape(-1)
    m = len(recorded)
    if m == 0:
        return True
    if recorded.ndim == 1:
        recorded = recorded.reshape(m, -1)
    q = 1.0 - 1.0 / reduction_factor
    if recorded.shape[1] == 1:
        # Ray's _Bracket works on rewards (higher is better) with np.nanpercentile; negate back.
        cutoff = np.nanpercentile(-recorded[:, 0], q * 100)
        return not (-new[0] < cutoff)
    return ahead_count(recorded, new) <= rank_allowance(m, reduction_factor)


def ahead_count(recorded: np.ndarray, new: np.ndarray) -> int:
    """How many recorded points rank strictly ahead of `new` among recorded + new (NSGA-II order)."""
    points = np.vstack([np.asarray(recorded, dtype=float), np.asarray(new, dtype=float).reshape(1, -1)])
    front_of, crowding = pareto.rank_keys(points)
    f, c = front_of[-1], crowding[-1]
    ahead = (front_of[:-1] < f) | ((front_of[:-1] == f) & (crowding[:-1] > c))
    return int(ahead.sum())


def rank_allowance(m: int, reduction_factor: float) -> int:
    """Most recorded trials that may rank ahead of a new one that still continues (m recorded)."""
    h = (m - 1) * (1.0 - 1.0 / reduction_factor)
    return m - 1 - math.ceil(h - 1e-9)


def rung_milestones(grace_period: int, max_t: int, reduction_factor: float) -> list[float]:
    """grace_period * eta^k for k = 0, 1, ... while <= max_t (the same rungs as Ray's ASHA bracket 0)."""
    count = int(np.log(max_t / grace_period) / np.log(reduction_factor) + 1)
    return [grace_period * reduction_factor**k for k in range(count)]


# --- the Tune scheduler ---------------------------------------------------------------------------

class MOASHAScheduler(FIFOScheduler):
    """Ray Tune scheduler: MO-ASHA over `metrics` (each with its mode), asynchronous, one bracket.

    At every report whose `time_attr` (default `epoch`) reaches a rung not yet recorded for the
    trial, the trial's objective vector is recorded there and `continues_at_rung` decides
    CONTINUE or STOP against the trials already recorded at that rung. For a size objective m the
    vector holds `planned_<m>` when the trial reports it (its planned final size, planned.py:
    a pruning schedule that has not finished is ranked on where it ends), else m as measured. A
    trial reaching `max_t` is stopped (its training is over). Every objective must be in every report.

    state_path: a file where the rung records are written after each change and read back on the
    first event after a restore (`Tuner.restore` unpickles the scheduler as it was at the start),
    so `--resume` keeps the rung history. Everything else is plain picklable data.
    """

    def __init__(self, metrics: Sequence[str], modes: Sequence[str], *, max_t: int, grace_period: int = 1,
                 reduction_factor: float = 3, time_attr: str = "epoch", state_path: str | None = None) -> None:
        metrics, modes = list(metrics), list(modes)
        if not metrics or len(metrics) != len(modes):
            raise ValueError(f"one mode per metric is required, got metrics={metrics} modes={modes}")
        bad = [m for m in modes if m not in pareto.MODES]
        if bad:
            raise ValueError(f"mode {bad[0]!r} is not one of {list(pareto.MODES)}")
        if not (grace_period >= 1 and max_t >= grace_period and reduction_factor > 1):
            raise ValueError(f"need 1 <= grace_period <= max_t and reduction_factor > 1, got grace_period="
                             f"{grace_period}, max_t={max_t}, reduction_factor={reduction_factor}")
        super().__init__()
        self.metrics, self.modes = metrics, modes
        self.max_t, self.grace_period, self.reduction_factor = max_t, grace_period, reduction_factor
        self.time_attr = time_attr
        self.milestones = rung_milestones(grace_period, max_t, reduction_factor)
        self.rungs: dict[float, dict[str, tuple[float, ...]]] = {m: {} for m in self.milestones}
        self.stopped: dict[str, float] = {}  # trial_id -> rung where it was stopped
        self.state_path = state_path
        self._state_checked = False

    # Tune passes TuneConfig's metric/mode (None here): the scheduler's own objectives stand.
    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return True

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if self.time_attr not in result:
            return TrialScheduler.CONTINUE
        self._load_state()
        point = self._point(trial.trial_id, result)
        t = result[self.time_attr]
        if t >= self.max_t:
            return TrialScheduler.STOP
        action = self.decide(trial.trial_id, t, point)
        if action == TrialScheduler.STOP:
            self.stopped[trial.trial_id] = t
        return action

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        if not result or self.time_attr not in result:
            return
        self._load_state()
        self.decide(trial.trial_id, result[self.time_attr], self._point(trial.trial_id, result))

    def decide(self, trial_id: str, t: float, point: np.ndarray) -> str:
        """Record `point` at the highest rung <= t the trial has not reached yet, and decide there."""
        for milestone in reversed(self.milestones):
            recorded = self.rungs[milestone]
            if t < milestone or trial_id in recorded:
                continue
            others = np.array(list(recorded.values()), dtype=float).reshape(len(recorded), len(self.metrics))
            keep = continues_at_rung(others, point, self.reduction_factor)
            recorded[trial_id] = tuple(float(v) for v in point)
            self._save_state()
            return TrialScheduler.CONTINUE if keep else TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def _point(self, trial_id: str, result: dict) -> np.ndarray:
        missing = [m for m in self.metrics if m not in result]
        if missing:
            raise ValueError(f"MO-ASHA: trial {trial_id} reported no {', '.join(missing)} at "
                             f"{self.time_attr}={result.get(self.time_attr)}; every objective must be "
                             "reported at every epoch")
        # a size the trial plans (planned.py) is ranked as what the trial will be, not what it is now
        values = [result.get(f"{PLANNED_PREFIX}{m}", result[m]) for m in self.metrics]
        return pareto.to_minimization(np.array([values], dtype=float), self.modes, nan_as_worst=True)[0]

    def _save_state(self) -> None:
        if not self.state_path:
            return
        tmp = f"{self.state_path}.tmp"
        with open(tmp, "wb") as f:
            pickle.dump({"rungs": self.rungs, "stopped": self.stopped}, f)
        os.replace(tmp, self.state_path)

    def _load_state(self) -> None:
        if self._state_checked:
            return
        self._state_checked = True
        if self.state_path and Path(self.state_path).exists() and not any(self.rungs.values()):
            with open(self.state_path, "rb") as f:
                state = pickle.load(f)
            self.rungs.update({m: dict(r) for m, r in state["rungs"].items() if m in self.rungs})
            self.stopped.update(state["stopped"])

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))

    def debug_string(self) -> str:
        rungs = " | ".join(f"epoch {m:g}: {len(r)} recorded" for m, r in self.rungs.items())
        return f"MO-ASHA over {self.metrics}: {len(self.stopped)} stopped; {rungs}"


# --- honest results for the sampler ---------------------------------------------------------------

