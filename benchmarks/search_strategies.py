"""Replay benchmark of search strategies on the quickstart space (docs/benchmarks.md).

Real learning curves (benchmarks/results/curves.csv + curves_b.csv, from record_curves.py: random
configurations of the quickstart space as it was when they were recorded, frozen in
benchmarks/curves_space.yaml; every epoch's val_acc, nonzero_params and epoch time) are fitted
by a surrogate (a random forest over the encoded hyperparameters predicting every epoch's
metrics, plus its time). Strategies then search that space against the surrogate, in a
simulated asynchronous cluster (`--workers` trials at once, each epoch taking the surrogate's
epoch time), until a budget of training epochs is spent. A strategy is
`SAMPLER[+seeded][+mo_asha|+mo_asha_planned]`:

* samplers (`make_sampler`): random; tpe (multivariate, group, constant liar, as shipped) with
  Optuna's default 10 start-up trials, tpe4 with 4; gp (GPSampler: LogEHVI, 4 start-up trials)
  on the conditional space, where Optuna samples every conditional param at random, and gp_flat
  on the flattened space (every param suggested in every trial, the inactive ones ignored);
  nsga2 (population 4, the old default) and nsga2_p8 (population 8);
* +seeded: the expert RECIPES are enqueued first (`study.enqueue_trial`), so they are the
  first trials and count as the sampler's start-up trials;
* +mo_asha: MO-ASHA (raytune_ft.search.mo_asha's own ranking, `continues_at_rung`) stops trials at the
  rungs, ranking (val_acc, nonzero_params at that epoch); +mo_asha_planned ranks (val_acc, the
  nonzero_params the trial will END with), known from the config before training: the
  sparsity schedule is exact (checked on load). Stopped trials are told PRUNED.

Quality: the dominated hypervolume of the fully trained trials' front in analyze's normalised
space — (nonzero_params / dense teacher's, 1 − val_acc) — with the fixed reference point (1, 1).
The surrogate's held-out quality is measured by 5-fold cross-validation over configurations,
and the MO-ASHA comparison is cross-checked on the recorded curves themselves (no surrogate:
random order of the measured configurations, with and without MO-ASHA).

    PYTHONPATH=. python benchmarks/search_strategies.py --seeds 10 --gp-seeds 5 \
        --reuse benchmarks/search_strategies_runs.csv     # the docs' run; GP is slow (~3-4 s per ask)
    PYTHONPATH=. python benchmarks/search_strategies.py --strategies random,tpe4,tpe4+seeded,gp:1

`--reuse` reads the runs an earlier call wrote (`--out`), so a long run can be built up in
pieces and the tables redrawn without simulating again.
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import json
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from raytune_ft import pareto
from raytune_ft.families import magnitude_pruning
from raytune_ft.search import mo_asha
from raytune_ft.space import spaces

if TYPE_CHECKING:
    import optuna

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"  # the recorded curves and what this script writes
# digits: 1,797 images, 20 % held out -> 1,438 training images, batches of 64 (ragged one dropped)
STEPS_PER_EPOCH = 1438 // 64


# --- strategies: samplers, expert recipes, schedulers ---------------------------------------------

SAMPLERS = ("random", "tpe", "tpe4", "gp", "gp_flat", "nsga2", "nsga2_p8")
SCHEDULERS = ("mo_asha", "mo_asha_planned")
# The sampler the goals are checked for (the proposed new default), chosen by this benchmark's
# measurement (the highest final HV, and the fewest epochs to random's, on every seed run);
# `--default` changes it.
DEFAULT_SAMPLER = "gp"


@dataclass(frozen=True)
class Strategy:
    """One parsed strategy name, e.g. `tpe4+seeded` or `random+mo_asha_planned`."""

    name: str
    sampler: str  # one of SAMPLERS
    seeded: bool  # RECIPES evaluated first
    scheduler: str | None  # one of SCHEDULERS; None: every trial trains all epochs


def parse_strategy(name: str) -> Strategy:
    """`SAMPLER[+seeded][+mo_asha|+mo_asha_planned]` -> Strategy; a clear error otherwise."""
    sampler, *mods = name.strip().split("+")
    form = "a strategy is SAMPLER[+seeded][+mo_asha|+mo_asha_planned]"
    if sampler not in SAMPLERS:
        raise ValueError(f"--strategies: {name!r} has unknown sampler {sampler!r}; choose from "
                         f"{', '.join(SAMPLERS)} ({form})")
    scheds = [m for m in mods if m in SCHEDULERS]
    bad = [m for m in mods if m != "seeded" and m not in SCHEDULERS]
    if bad or len(scheds) > 1 or mods.count("seeded") > 1:
        raise ValueError(f"--strategies: {name!r}: {form}; modifiers are seeded, {', '.join(SCHEDULERS)}")
    return Strategy(name.strip(), sampler, "seeded" in mods, scheds[0] if scheds else None)


def default_strategies(default: str) -> list[str]:
    """Every sampler with full training; the default and tpe4 (the best cheap sampler) seeded; MO-ASHA
    (both size rankings) on random, the default and tpe4."""
    names = list(SAMPLERS)
    names += [f"{s}+seeded" for s in dict.fromkeys((default, "tpe4"))]
    for sampler in dict.fromkeys(("random", default, "tpe4")):
        names += [f"{sampler}+mo_asha", f"{sampler}+mo_asha_planned"]
    return names


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """The Optuna sampler of a strategy.

    Mirrors raytune_ft.space.spaces.Space.make_sampler (RandomSampler; TPESampler multivariate + group
    + constant liar; NSGAIISampler with the space's population) and adds the variants compared
    here. Built in the benchmark so that a name keeps its meaning when the shipped defaults change.
    GPSampler (Optuna >= 4.4 multi-objective: LogEHVI, qLogEHVI over running trials) takes
    seed, independent_sampler, n_startup_trials, deterministic_objective, constraints_func,
    warn_independent_sampling in the installed Optuna 5.0.
    """
    import optuna

    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name in ("tpe", "tpe4"):
        with warnings.catch_warnings():  # `group` is experimental in Optuna: known and accepted
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True,
                                              n_startup_trials=10 if name == "tpe" else 4)
    if name in ("gp", "gp_flat"):
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=4, warn_independent_sampling=False)
    if name in ("nsga2", "nsga2_p8"):
        return optuna.samplers.NSGAIISampler(population_size=4 if name == "nsga2" else 8, seed=seed)
    raise ValueError(f"unknown sampler {name!r}; choose from {', '.join(SAMPLERS)}")


# Expert recipes for +seeded: complete configurations of curves_space.yaml (check_recipe).
RECIPES: tuple[tuple[str, dict[str, Any]], ...] = (
    # Gradual magnitude pruning to 85 % (Zhu & Gupta 2017) distilled at T = 4 with a high KD weight,
    # as sparse-transfer recipes do (Kurtic et al. 2022; Iofinova et al. 2022 on sparse ImageNet transfer).
    ("GMP 0.85 + KD (T 4, alpha 0.9)",
     {"lr": 5e-3, "use_weight_decay": False, "use_l2sp": False, "use_label_smoothing": False,
      "use_kd": True, "kd_alpha": 0.9, "kd_temperature": 4.0,
      "final_sparsity": 0.85, "pruning_end": 0.6, "pruning_frequency": 10}),
    # The plain fine-tune a user tries first: the least sparsity the space allows (0.6), no KD,
    # label smoothing 0.1 (Szegedy et al. 2016) and light decoupled weight decay (Loshchilov & Hutter 2019).
    ("sparsity 0.6, no KD, LS 0.1",
     {"lr": 5e-3, "use_weight_decay": True, "weight_decay": 1e-4, "use_l2sp": False,
      "use_label_smoothing": True, "label_smoothing": 0.1, "use_kd": False,
      "final_sparsity": 0.6, "pruning_end": 0.5, "pruning_frequency": 10}),
    # L2-SP instead of weight decay (Li et al. 2018; alpha/beta = 10 as their 0.1/0.01, at the top of
    # the space's range), mid sparsity 0.75.
    ("sparsity 0.75 + L2-SP (1e-2, 1e-3)",
     {"lr": 5e-3, "use_weight_decay": False, "use_l2sp": True, "l2sp_alpha": 1e-2, "l2sp_beta": 1e-3,
      "use_label_smoothing": False, "use_kd": False,
      "final_sparsity": 0.75, "pruning_end": 0.5, "pruning_frequency": 10}),
)


def active_params(space: spaces.Space, params: dict[str, Any]) -> dict[str, Any]:
    """The params of `params` that are active under their `when` conditions (file order)."""
    out: dict[str, Any] = {}
    for p in space.params:
        if p.name in params and all(parent in out and out[parent] in allowed for parent, allowed in p.when.items()):
            out[p.name] = params[p.name]
    return out


def check_recipe(space: spaces.Space, label: str, recipe: dict[str, Any]) -> None:
    """A recipe must set exactly the active params of `space`, each inside its range."""
    where = f"recipe {label!r} for {space.path}"
    names = [p.name for p in space.params]
    unknown = sorted(set(recipe) - set(names))
    if unknown:
        raise ValueError(f"{where}: unknown params {unknown}; valid: {', '.join(names)}")
    active = active_params(space, recipe)
    inactive = sorted(set(recipe) - set(active))
    if inactive:
        raise ValueError(f"{where}: {inactive} are set but inactive under their `when` conditions")
    for p in space.params:
        on = all(parent in active and active[parent] in allowed for parent, allowed in p.when.items())
        if on and p.name not in recipe:
            raise ValueError(f"{where}: {p.name} is active but missing (a recipe is a complete configuration)")
        if p.name not in recipe:
            continue
        v = recipe[p.name]
        if p.type == "categorical":
            if v not in p.choices:
                raise ValueError(f"{where}: {p.name}={v!r} is not one of {list(p.choices)}")
        elif isinstance(v, bool) or not isinstance(v, (int, float)) or not p.low <= v <= p.high:
            raise ValueError(f"{where}: {p.name}={v!r} is outside [{p.low}, {p.high}]")
        elif p.step and abs((v - p.low) / p.step - round((v - p.low) / p.step)) > 1e-9:
            raise ValueError(f"{where}: {p.name}={v!r} is not on the grid {p.low} + k * {p.step}")


def flattened(space: spaces.Space) -> spaces.Space:
    """The same space with every `when` removed: every param is suggested in every trial."""
    return dataclasses.replace(space, params=tuple(dataclasses.replace(p, when={}) for p in space.params))


# --- data and surrogate ---------------------------------------------------------------------------

def load_curves(paths: list[Path], epochs: int) -> pd.DataFrame:
    """One row per fully recorded configuration: config_id ("file:id"), params (dict), acc/nz/time arrays."""
    return pd.concat([_load_curves(p, epochs) for p in paths], ignore_index=True)


def _load_curves(path: Path, epochs: int) -> pd.DataFrame:
    raw = pd.read_csv(path)
    rows = []
    for cid, g in raw.groupby("config_id"):
        g = g[g["status"] == "ok"].sort_values("epoch")
        if len(g) != epochs or (raw[raw.config_id == cid]["status"] == "failed").any():
            continue
        params = json.loads(g["config_json"].iloc[0])
        gap = np.abs(scheduled_sparsity(params, epochs) - g["sparsity"].to_numpy(float)).max()
        assert gap < 1e-3, f"config {cid}: recorded sparsity differs from the schedule by {gap}"
        rows.append({"config_id": f"{path.stem}:{cid}", "params": params,
                     "acc": g["val_acc"].to_numpy(float), "nz": g["nonzero_params"].to_numpy(float),
                     "time": g["epoch_time_s"].to_numpy(float)})
    return pd.DataFrame(rows)


def scheduled_sparsity(params: dict[str, Any], epochs: int) -> np.ndarray:
    """The magnitude-pruning schedule's sparsity at the end of each epoch (train.fit's own schedule)."""
    total = epochs * STEPS_PER_EPOCH
    steps = magnitude_pruning.prune_steps(total, start_fraction=params.get("pruning_start", 0.0),
                                end_fraction=params["pruning_end"], frequency=params["pruning_frequency"])
    out = []
    for e in range(1, epochs + 1):
        done = [s for s in steps if s <= e * STEPS_PER_EPOCH - 1]
        out.append(magnitude_pruning.sparsity_at(done[-1], final=params["final_sparsity"], start=steps[0],
                                                 end=steps[-1]) if done else 0.0)
    return np.array(out)


def encode(space: spaces.Space, params: dict[str, Any]) -> np.ndarray:
    """Each searched param scaled to [0, 1] (log scale where the space says so); inactive: -0.5."""
    out = []
    for p in space.params:
        v = params.get(p.name)
        if v is None:
            out.append(-0.5)
        elif p.type == "categorical":
            out.append(float(list(p.choices).index(v)) / max(1, len(p.choices) - 1))
        elif p.log:
            out.append((math.log(v) - math.log(p.low)) / (math.log(p.high) - math.log(p.low)))
        else:
            out.append((v - p.low) / (p.high - p.low))
    return np.array(out)


class Surrogate:
    """Every epoch's (val_acc, nonzero_params, epoch time) of a configuration.

    nonzero_params follows the pruning schedule exactly (the recorded sparsity equals
    `scheduled_sparsity`, checked on load): a linear fit nz = a - b * sparsity over the recorded
    epochs. val_acc and the epoch time: a random forest (`kind="forest"`) or the nearest recorded
    configuration (`kind="knn"`) over the encoded hyperparameters plus the scheduled sparsities.
    """

    def __init__(self, space: spaces.Space, nz_scale: float, kind: str = "forest", seed: int = 0) -> None:
        self.space, self.nz_scale, self.kind, self.seed = space, nz_scale, kind, seed

    def features(self, params: dict[str, Any]) -> np.ndarray:
        return np.concatenate([encode(self.space, params), scheduled_sparsity(params, self.epochs)])

    def fit(self, curves: pd.DataFrame) -> Surrogate:
        from sklearn.ensemble import RandomForestRegressor
        from sklearn.neighbors import KNeighborsRegressor

        self.epochs = len(curves["acc"].iloc[0])
        x = np.stack([self.features(p) for p in curves["params"]])
        y = np.hstack([np.stack(curves["acc"]), np.stack(curves["time"])])
        sparsity = x[:, -self.epochs:].ravel()
        slope, intercept = np.polyfit(sparsity, np.stack(curves["nz"]).ravel(), 1)
        self.nz_line = (float(slope), float(intercept))
        if self.kind == "forest":
            self.model = RandomForestRegressor(n_estimators=100, min_samples_leaf=2, random_state=self.seed)
        else:
            self.model = KNeighborsRegressor(n_neighbors=1)
        self.model.fit(x, y)
        return self

    def predict(self, params: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = self.features(params)
        y = self.model.predict(x[None])[0]
        nz = self.nz_line[0] * x[-self.epochs:] + self.nz_line[1]
        return y[: self.epochs], nz, y[self.epochs:]


def surrogate_quality(space: spaces.Space, curves: pd.DataFrame, nz_scale: float, folds: int = 5,
                      kind: str = "forest") -> pd.DataFrame:
    """Held-out prediction quality per epoch (k-fold over configurations): R^2, MAE, Spearman."""
    from scipy.stats import spearmanr
    from sklearn.metrics import mean_absolute_error, r2_score
    from sklearn.model_selection import KFold

    epochs = len(curves["acc"].iloc[0])
    pred_acc, pred_nz = np.zeros((len(curves), epochs)), np.zeros((len(curves), epochs))
    for train_idx, test_idx in KFold(folds, shuffle=True, random_state=0).split(curves):
        s = Surrogate(space, nz_scale, kind=kind).fit(curves.iloc[train_idx])
        for i in test_idx:
            pred_acc[i], pred_nz[i], _ = s.predict(curves["params"].iloc[i])
    true_acc, true_nz = np.stack(curves["acc"]), np.stack(curves["nz"])
    rows = []
    for e in range(epochs):
        rows.append({"epoch": e + 1,
                     "val_acc R2": r2_score(true_acc[:, e], pred_acc[:, e]),
                     "val_acc MAE": mean_absolute_error(true_acc[:, e], pred_acc[:, e]),
                     "val_acc Spearman": spearmanr(true_acc[:, e], pred_acc[:, e]).statistic,
                     "nonzero_params R2": r2_score(true_nz[:, e], pred_nz[:, e]),
                     "nonzero_params MAE": mean_absolute_error(true_nz[:, e], pred_nz[:, e])})
    return pd.DataFrame(rows)


# The method part of the docs snippet (benchmarks/results/search_strategies.md); the numbers follow it.
METHOD = """\
**Strategies compared (issue 16).** The replay searches `benchmarks/curves_space.yaml`, the
quickstart space as it was when the curves were recorded (Lite0 only, objectives `val_acc` and
`nonzero_params`); the shipped quickstart has since gained the student architecture and int8,
which the 28 curves never vary, so searching it would add dimensions the surrogate cannot see.
Samplers are built in the benchmark (`make_sampler`, mirroring `spaces.Space.make_sampler`), so
a name keeps its meaning when the shipped defaults change:
`random`; `tpe` = TPE multivariate + group + constant liar as shipped, with Optuna's default 10
start-up trials, `tpe4` the same with 4; `gp` = GPSampler (LogEHVI, qLogEHVI over running
trials; 4 start-up trials) on the conditional space, where Optuna samples every conditional
param at random; `gp_flat` the same on the flattened space (every param suggested in every
trial, the inactive ones ignored); `nsga2` = population 4 (the old default), `nsga2_p8` =
population 8 (5 generations in the 40-trial budget; Optuna's default population is 50, and its
sampler table recommends NSGA-II for 100-10,000 trials). `+seeded`: the three recipes listed
below are enqueued (`study.enqueue_trial`) before the first ask, so they are the first trials
and count as the sampler's start-up trials. `+mo_asha`: MO-ASHA (`mo_asha.continues_at_rung`,
grace 1 epoch, eta 3) ranks (val_acc, nonzero_params at the rung's epoch);
`+mo_asha_planned` ranks (val_acc, the nonzero_params the trial will end with), known from the
config before training (the sparsity schedule is exact). Same budget (200 training epochs) and
same simulated cluster (4 workers, the surrogate's epoch times) for every strategy.
The GP strategies are run with fewer seeds (`--gp-seeds`): GPSampler's acquisition
optimisation costs seconds per trial on this CPU (per-strategy compute below), which would make
10 seeds take hours of the shared machine; the other strategies use all seeds. The machine was
loaded by other jobs: compute times are indicative only."""

# --- the simulated cluster --------------------------------------------------------------------

def hypervolume(done: list[tuple[float, float]], nz_scale: float) -> float:
    """HV of (val_acc, nonzero_params) pairs in (nz / teacher, 1 − acc) space, reference (1, 1)."""
    if not done:
        return 0.0
    pts = np.array([[nz / nz_scale, 1.0 - acc] for acc, nz in done])
    return pareto.hypervolume(pts, np.ones(2))


def new_study(strategy: Strategy, seed: int) -> optuna.Study:
    """A (val_acc max, nonzero_params min) study with the strategy's sampler; +seeded: RECIPES enqueued."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study = optuna.create_study(directions=["maximize", "minimize"], sampler=make_sampler(strategy.sampler, seed))
    if strategy.seeded:
        for _, recipe in RECIPES:
            study.enqueue_trial(recipe)
    return study


def rung_point(acc: float, nz: np.ndarray, epoch: int, planned: bool) -> np.ndarray:
    """The (−val_acc, nonzero_params) point MO-ASHA ranks at a rung: nonzero_params now (nz[epoch − 1])
    or, planned, the final one the trial's schedule ends at (nz[−1])."""
    return np.array([-float(acc), float(nz[-1] if planned else nz[epoch - 1])])


def simulate(strategy: Strategy, seed: int, *, space: spaces.Space, curve_of, budget: int, workers: int,
             nz_scale: float, grace_period: int = 1, reduction_factor: float = 3) -> pd.DataFrame:
    """Run one strategy until `budget` epochs are spent; one row per finished epoch event:
    epochs (spent so far), time_s (simulated wall clock), trials (finished: fully trained or
    stopped), hypervolume (of the fully trained trials)."""
    import optuna

    study = new_study(strategy, seed)
    define = (flattened(space) if strategy.sampler == "gp_flat" else space).define_by_run()
    epochs = space.max_epochs()
    milestones = mo_asha.rung_milestones(grace_period, epochs, reduction_factor) if strategy.scheduler else []
    planned = strategy.scheduler == "mo_asha_planned"
    rungs: dict[float, list[np.ndarray]] = {m: [] for m in milestones}
    events: list[tuple[float, int, int]] = []  # (finish time of the next epoch, trial number, epoch)
    running: dict[int, tuple[Any, tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
    spent, now, finished, done, log = 0, 0.0, 0, [], []

    def launch() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trial = study.ask()
            define(trial)
        curve = curve_of(active_params(space, trial.params))
        running[trial.number] = (trial, curve)
        heapq.heappush(events, (now + max(curve[2][0], 1e-3), trial.number, 1))

    for _ in range(workers):
        launch()
    while spent < budget and events:
        now, number, epoch = heapq.heappop(events)
        trial, (acc, nz, t) = running[number]
        spent += 1
        a, n = float(acc[epoch - 1]), float(nz[epoch - 1])
        if epoch < epochs and epoch in rungs:  # MO-ASHA decision at this rung
            point = rung_point(a, nz, epoch, planned)
            keep = mo_asha.continues_at_rung(np.array(rungs[epoch]).reshape(-1, 2), point, reduction_factor)
            rungs[epoch].append(point)
            if not keep:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                del running[number]
                finished += 1
                log.append((spent, now, finished, hypervolume(done, nz_scale)))
                launch()
                continue
        if epoch >= epochs:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                study.tell(trial, [a, n])
            done.append((a, n))
            del running[number]
            finished += 1
            log.append((spent, now, finished, hypervolume(done, nz_scale)))
            launch()
        else:
            heapq.heappush(events, (now + max(t[epoch], 1e-3), number, epoch + 1))
            log.append((spent, now, finished, hypervolume(done, nz_scale)))
    return pd.DataFrame(log, columns=["epochs", "time_s", "trials", "hypervolume"]).assign(
        strategy=strategy.name, seed=seed, trials_done=len(done))


def table_replay(curves: pd.DataFrame, seed: int, *, budget: int, nz_scale: float, scheduler: str | None,
                 reduction_factor: float = 3) -> pd.DataFrame:
    """Random search over the RECORDED configurations (real curves, no surrogate), one at a time,
    with or without MO-ASHA (either size ranking); returns epochs spent vs hypervolume."""
    order = np.random.default_rng(seed).permutation(len(curves))
    epochs = len(curves["acc"].iloc[0])
    milestones = mo_asha.rung_milestones(1, epochs, reduction_factor) if scheduler else []
    rungs: dict[float, list] = {m: [] for m in milestones}
    spent, done, log = 0, [], [(0, 0.0)]
    for i in order:
        acc, nz = curves["acc"].iloc[i], curves["nz"].iloc[i]
        for e in range(1, epochs + 1):
            if spent >= budget:
                break
            spent += 1
            if e == epochs:
                done.append((acc[-1], nz[-1]))
            elif e in rungs:
                point = rung_point(acc[e - 1], nz, e, scheduler == "mo_asha_planned")
                keep = mo_asha.continues_at_rung(np.array(rungs[e]).reshape(-1, 2), point, reduction_factor)
                rungs[e].append(point)
                if not keep:
                    break
        log.append((spent, hypervolume(done, nz_scale)))
        if spent >= budget:
            break
    return pd.DataFrame(log, columns=["epochs", "hypervolume"])


# --- summaries ------------------------------------------------------------------------------------

def markdown(df: pd.DataFrame) -> str:
    cells = [[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row] for row in df.itertuples(index=False)]
    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in cells])


def on_grid(run: pd.DataFrame, column: str, grid: np.ndarray) -> np.ndarray:
    """The hypervolume reached by each grid value of `column` (a step function; 0 before the first)."""
    x, hv = run[column].to_numpy(), run["hypervolume"].to_numpy()
    idx = np.searchsorted(x, grid, side="right") - 1
    return np.where(idx >= 0, hv[np.clip(idx, 0, None)], 0.0)


def epochs_to_reach(run: pd.DataFrame, target: float) -> float:
    hit = run[run["hypervolume"] >= target - 1e-12]
    return float(hit["epochs"].iloc[0]) if len(hit) else math.inf


def _pct(x: float, budget: int) -> str:
    return "never" if math.isinf(x) else f"{x:.0f} ({x / budget:.0%})"


def summarize(table: pd.DataFrame, names: list[str], default: str, budget: int) -> tuple[str, dict, list[str]]:
    """Markdown tables + goal verdicts; the per-seed HV grids for the plot; the goal lines."""
    runs = {s: [r for _, r in table[table.strategy == s].groupby("seed")] for s in names}
    finals = {s: np.array([r["hypervolume"].iloc[-1] for r in runs[s]]) for s in names}
    max_trials = int(table["trials"].max())
    tmax = table.groupby(["strategy", "seed"])["time_s"].max().min()
    grids = {"grid_n": np.arange(0, max_trials + 1), "grid_t": np.linspace(0, tmax, 80)}
    for s in names:
        grids[s] = {"trials": np.stack([on_grid(r, "trials", grids["grid_n"]) for r in runs[s]]),
                    "time": np.stack([on_grid(r, "time_s", grids["grid_t"]) for r in runs[s]]),
                    "n_max": max(int(r["trials"].iloc[-1]) for r in runs[s])}
    at = {s: {n: float(np.median([on_grid(r, "trials", np.array([n]))[0] for r in runs[s]])) for n in (8, 16)}
          for s in names}
    random_final = float(np.median(finals["random"])) if "random" in finals else math.nan
    reach_random = {s: [epochs_to_reach(r, random_final) for r in runs[s]] for s in names}

    rows = [f"Budget {budget} epochs; HV = hypervolume of the fully trained trials' front "
            "(reference (1, 1) in (nonzero_params / teacher, 1 − val_acc)); medians over seeds. "
            f"'to random's final HV' = epochs until the strategy's HV ≥ random search's median final HV "
            f"({random_final:.4f}); never = not within the budget.", "",
            "| strategy | seeds | median HV | min | max | trials fully trained | HV @ 8 trials | HV @ 16 trials "
            "| epochs to random's final HV (median, % budget) | seeds reaching it |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for s in names:
        f, trials = finals[s], np.median([r["trials_done"].iloc[0] for r in runs[s]])
        reach = reach_random[s]
        rows.append(f"| {s} | {len(f)} | {np.median(f):.4f} | {f.min():.4f} | {f.max():.4f} | {trials:.0f} "
                    f"| {at[s][8]:.4f} | {at[s][16]:.4f} | {_pct(float(np.median(reach)), budget)} "
                    f"| {sum(np.isfinite(reach))}/{len(reach)} |")
    rows += ["", "HV @ n trials: after the n-th finished trial (MO-ASHA rows: stopped trials count too)."]

    mo_rows = ["", "MO-ASHA against full training with the same sampler (target: the full-training strategy's "
               "median final HV; epochs until the MO-ASHA run's HV reaches it):", "",
               "| strategy | target HV | epochs to target (median, % budget) | seeds reaching | per seed "
               "| HV at 50 % of the budget (median) | final HV − target (median) |",
               "|---|---|---|---|---|---|---|"]
    mo_reach: dict[str, float] = {}
    for s in names:
        st = parse_strategy(s)
        base = st.sampler + ("+seeded" if st.seeded else "")
        if st.scheduler is None or base not in finals:
            continue
        target = float(np.median(finals[base]))
        reach = [epochs_to_reach(r, target) for r in runs[s]]
        mo_reach[s] = float(np.median(reach))
        half = float(np.median([on_grid(r, "epochs", np.array([budget // 2]))[0] for r in runs[s]]))
        mo_rows.append(f"| {s} | {target:.4f} ({base}) | {_pct(mo_reach[s], budget)} | "
                       f"{sum(np.isfinite(reach))}/{len(reach)} | {', '.join(f'{r:.0f}' for r in reach)} "
                       f"| {half:.4f} | {np.median(finals[s]) - target:+.4f} |")
    if len(mo_rows) > 5:
        mo_rows.append("")
        mo_rows.append("For reference, full training's HV at 50 % of the budget: " + ", ".join(
            f"{b} {np.median([on_grid(r, 'epochs', np.array([budget // 2]))[0] for r in runs[b]]):.4f}"
            for b in dict.fromkeys(parse_strategy(m).sampler for m in mo_reach) if b in runs) + ".")
        rows += mo_rows

    goals = []
    if default in finals and "random" in finals:
        med = float(np.median(reach_random[default]))
        frac = med / budget
        verdict = "met" if frac <= 0.5 else f"MISSED by {(frac - 0.5) * 100:.0f} points" if math.isfinite(frac) \
            else "MISSED (median seed never reaches it)"
        goals.append(f"- {default} (proposed default) reaches random's final HV after a median "
                     f"{_pct(med, budget)} epochs (goal ≤ 50 % of the budget): {verdict}; per seed: "
                     f"{', '.join(f'{r:.0f}' for r in reach_random[default])}")
    seeded = f"{default}+seeded"
    if seeded in at and default in at:
        a8, u16 = at[seeded][8], at[default][16]
        goals.append(f"- {seeded} HV @ 8 trials {a8:.4f} vs {default} HV @ 16 trials {u16:.4f} (goal ≥): "
                     + ("met" if a8 >= u16 else f"MISSED by {u16 - a8:.4f}") + f" (difference {a8 - u16:+.4f})")
    for sampler in dict.fromkeys((default, "tpe4", "random")):
        for s in (f"{sampler}+mo_asha_planned", f"{sampler}+mo_asha"):
            if s not in mo_reach:
                continue
            frac = mo_reach[s] / budget
            gap = float(np.median(finals[s]) - np.median(finals[sampler]))
            if math.isfinite(frac):
                verdict = "met" if frac <= 0.5 else f"MISSED by {(frac - 0.5) * 100:.0f} points"
                text = f"after a median {_pct(mo_reach[s], budget)} epochs"
            else:
                verdict, text = "MISSED", "not within the budget in the median seed"
            goals.append(f"- {s} reaches {sampler}'s full-training final HV {text} (goal ≤ 50 %): {verdict}; "
                         f"its final HV − full training's: {gap:+.4f}")
    if goals:
        rows += ["", "Goals of issue 16 on the replay:", "", *goals]
    return "\n".join(rows), grids, goals


def plot(grids: dict, names: list[str], path: str, title: str, workers: int) -> None:
    """Three rows (samplers; seeded vs unseeded; MO-ASHA vs full training), HV against trials and
    against simulated wall time: median line, min-max band over seeds. Colour = sampler, line =
    variant (full training solid, seeded thick, MO-ASHA dotted, planned sizes dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parsed = {s: parse_strategy(s) for s in names}
    samplers = [s for s in names if not parsed[s].seeded and parsed[s].scheduler is None]
    seeded = [s for s in names if parsed[s].seeded and parsed[s].scheduler is None]
    scheduled = [s for s in names if parsed[s].scheduler]

    def with_bases(members: list[str]) -> list[str]:
        return [b for b in samplers if any(parsed[m].sampler == b for m in members)] + members

    groups = [(label, members) for label, members in (
        ("Samplers, full training", samplers),
        ("Seeded starts (thick) vs the same sampler unseeded", with_bases(seeded)),
        ("MO-ASHA: current sizes (dotted), planned final sizes (dashed), full training (solid)",
         with_bases(scheduled))) if members]
    colors = {name: plt.get_cmap("tab10")(i) for i, name in enumerate(SAMPLERS)}
    fig, axes = plt.subplots(len(groups), 2, figsize=(13, 4.6 * len(groups)), squeeze=False)
    for row, (label, members) in zip(axes, groups, strict=True):
        for s in members:
            st = parsed[s]
            style = {"mo_asha": ":", "mo_asha_planned": "--"}.get(st.scheduler or "", "-")
            width = 2.6 if st.seeded else 1.8 if st.scheduler else 1.3
            for ax, key, grid, scale in ((row[0], "trials", grids["grid_n"], 1.0),
                                         (row[1], "time", grids["grid_t"], 60.0)):
                hv = grids[s][key]
                ax.plot(grid / scale, np.median(hv, axis=0), style, lw=width, color=colors[st.sampler],
                        label=f"{s} ({len(hv)} seeds)")
                ax.fill_between(grid / scale, hv.min(axis=0), hv.max(axis=0), color=colors[st.sampler], alpha=0.06)
        row[0].set_xlim(0, max(grids[s]["n_max"] for s in members))
        lo = min(np.median(grids[s]["trials"], axis=0)[min(8, len(grids["grid_n"]) - 1)] for s in members)
        hi = max(grids[s]["trials"].max() for s in members)
        for ax in row:
            ax.set_ylabel("hypervolume (median, min-max band)")
            ax.set_ylim(lo - 0.15 * (hi - lo), hi + 0.05 * (hi - lo))
            ax.grid(alpha=0.3)
            ax.set_title(label, fontsize=10)
        row[0].set_xlabel("trials finished (MO-ASHA: stopped ones included)")
        row[1].set_xlabel(f"simulated wall time (min, {workers} workers)")
        row[0].legend(loc="lower right", fontsize=7.5, ncol=2)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--curves", nargs="+", default=[str(RESULTS / "curves.csv"), str(RESULTS / "curves_b.csv")],
                   help="curve files of record_curves.py (two recorders ran side by side, different seeds)")
    p.add_argument("--space", default=str(HERE / "curves_space.yaml"), help="the space the curves were recorded in")
    p.add_argument("--strategies", default=None,
                   help="comma-separated SAMPLER[+seeded][+mo_asha|+mo_asha_planned][:SEEDS]; samplers: "
                        f"{', '.join(SAMPLERS)}; :SEEDS overrides --seeds/--gp-seeds for that strategy; "
                        "default: every sampler, gp and tpe4 seeded, MO-ASHA on random, gp and tpe4")
    p.add_argument("--default", default=DEFAULT_SAMPLER, choices=SAMPLERS, help="the sampler the goals are checked for")
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--gp-seeds", type=int, default=None, help="fewer seeds for the gp samplers (they are slow)")
    p.add_argument("--budget", type=int, default=200, help="training epochs per search")
    p.add_argument("--workers", type=int, default=4, help="trials at once in the simulated cluster")
    p.add_argument("--reduction-factor", type=float, default=3)
    p.add_argument("--surrogate", choices=("forest", "knn"), default="forest")
    p.add_argument("--out", default=str(RESULTS / "search_strategies_runs.csv"))
    p.add_argument("--plot", default=str(RESULTS / "search_strategies.png"))
    p.add_argument("--reuse", default=None,
                   help="a runs CSV of an earlier call (--out): its (strategy, seed) runs with the same budget, "
                        "workers, eta and surrogate are read instead of simulated again")
    p.add_argument("--torch-threads", type=int, default=1, help="torch threads (GPSampler's model)")
    p.add_argument("--markdown", default=str(RESULTS / "search_strategies.md"), help="results snippet for the docs")
    args = p.parse_args()
    try:
        wanted = args.strategies.split(",") if args.strategies else default_strategies(args.default)
        own_seeds = {}
        for item in wanted:
            name, _, count = item.partition(":")
            if count and not (count.isdigit() and int(count) > 0):
                raise ValueError(f"--strategies: {item!r}: SEEDS after ':' must be a positive int")
            own_seeds[parse_strategy(name).name] = int(count) if count else None
        names = list(own_seeds)
    except ValueError as exc:
        p.error(str(exc))

    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    if any(parse_strategy(n).sampler.startswith("gp") for n in names):
        import torch

        torch.set_num_threads(args.torch_threads)
    started = time.perf_counter()
    load = os.getloadavg()
    space = spaces.load_space(args.space)
    for label, recipe in RECIPES:
        check_recipe(space, label, recipe)
    epochs = space.max_epochs()
    paths = [Path(c) for c in args.curves if Path(c).exists()]
    curves = load_curves(paths, epochs)
    teacher = json.loads(paths[0].with_name(paths[0].stem + "_teacher.json").read_text())
    nz_scale = float(teacher["nonzero_params"])
    out: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        out.append(text)

    print(f"{len(curves)} recorded configurations x {epochs} epochs; dense teacher val_acc="
          f"{teacher['val_acc']:.4f}, nonzero_params={nz_scale:,.0f}")
    for kind in ("forest", "knn"):
        quality = surrogate_quality(space, curves, nz_scale, kind=kind)
        say(f"\nSurrogate {kind}{' (used)' if kind == args.surrogate else ''}, 5-fold held-out configurations "
            f"({len(curves)} recorded):\n")
        say(markdown(quality))
    final = list(zip(np.stack(curves["acc"])[:, -1], np.stack(curves["nz"])[:, -1], strict=True))
    say(f"\nHV of all {len(curves)} recorded configurations (real, fully trained): {hypervolume(final, nz_scale):.4f}")

    surrogate = Surrogate(space, nz_scale, kind=args.surrogate).fit(curves)
    cache: dict[str, Any] = {}

    def curve_of(params: dict[str, Any]):
        key = json.dumps(params, sort_keys=True)
        if key not in cache:
            cache[key] = surrogate.predict(params)
        return cache[key]

    settings = f"budget {args.budget}, workers {args.workers}, eta {args.reduction_factor:g}, {args.surrogate}"
    earlier = pd.read_csv(args.reuse) if args.reuse and Path(args.reuse).exists() else None
    reuse = None if earlier is None else earlier[earlier["settings"] == settings]

    def save(runs: list[pd.DataFrame]) -> pd.DataFrame:
        """This call's runs, plus the earlier file's other runs when writing over it (kept for later calls)."""
        table = pd.concat(runs, ignore_index=True)
        if earlier is not None and Path(args.out).resolve() == Path(args.reuse).resolve():
            mine = set(zip(table.strategy, table.seed, table.settings, strict=True))
            keep = [k not in mine for k in zip(earlier.strategy, earlier.seed, earlier.settings, strict=True)]
            table = pd.concat([table, earlier[keep]], ignore_index=True)
        table.to_csv(args.out, index=False)
        return table
    runs, seconds = [], {}
    for name in names:
        strategy = parse_strategy(name)
        seeds = own_seeds[name] or (args.gp_seeds if (args.gp_seeds and strategy.sampler.startswith("gp"))
                                    else args.seeds)
        for seed in range(seeds):
            old = None if reuse is None else reuse[(reuse.strategy == name) & (reuse.seed == seed)]
            if old is not None and len(old):
                runs.append(old)
                continue
            t0 = time.perf_counter()
            run = simulate(strategy, seed, space=space, curve_of=curve_of, budget=args.budget,
                           workers=args.workers, nz_scale=nz_scale, reduction_factor=args.reduction_factor)
            runs.append(run.assign(settings=settings, run_s=time.perf_counter() - t0))
            save(runs)  # an interrupted call keeps the seeds it finished
        mine = pd.concat(runs[-seeds:])
        seconds[name] = float(mine.groupby("seed")["run_s"].first().sum())
        print(f"  {name}: {seeds} seeds, {seconds[name]:.0f}s of compute", flush=True)
    save(runs)
    table = pd.concat(runs, ignore_index=True)
    summary, grids, goals = summarize(table, names, args.default, args.budget)
    rungs = mo_asha.rung_milestones(1, epochs, args.reduction_factor)
    say(f"\nReplay: {args.workers} simulated workers, budget {args.budget} epochs "
        f"(= {args.budget // epochs} full trials), MO-ASHA grace 1, eta {args.reduction_factor:g} "
        f"(rungs at epochs {', '.join(f'{m:g}' for m in rungs)}).\n")
    say(summary)
    say("\nSeed recipes (+seeded, enqueued first, in this order):")
    for label, recipe in RECIPES:
        say(f"- {label}: `{json.dumps(recipe)}`")

    budget = min(args.budget, len(curves) * epochs // 2)
    say(f"\nRecorded curves, no surrogate (random order of the {len(curves)} measured configurations, budget "
        f"{budget} epochs, {args.seeds} orders):\n")
    say("| strategy | median HV | min | max | epochs spent (median) |\n|---|---|---|---|---|")
    for sched in (None, "mo_asha", "mo_asha_planned"):
        real = [table_replay(curves, s, budget=budget, nz_scale=nz_scale, scheduler=sched,
                             reduction_factor=args.reduction_factor) for s in range(args.seeds)]
        hv = [r["hypervolume"].iloc[-1] for r in real]
        say(f"| random{'+' + sched if sched else ''} (real curves) | {np.median(hv):.4f} | {np.min(hv):.4f} | "
            f"{np.max(hv):.4f} | {np.median([r['epochs'].iloc[-1] for r in real]):.0f} |")

    title = (f"Replay on the quickstart (surrogate of {len(curves)} real curves), budget {args.budget} epochs, "
             f"{args.workers} workers, {args.seeds} seeds" + (" (fewer for some: see the table)" if
                                                              table.groupby("strategy")["seed"].nunique().min()
                                                              < args.seeds else ""))
    plot(grids, names, args.plot, title, args.workers)
    total = time.perf_counter() - started
    say(f"\nCompute of all runs {sum(seconds.values()) / 60:.0f} min on {os.cpu_count()} loaded cores (per strategy, "
        f"all its seeds: {', '.join(f'{k} {v:.0f}s' for k, v in seconds.items())}); this call {total:.0f} s "
        f"(load average {load[0]:.1f} at its start)" + (f", reading the runs it found in {args.reuse} (a file the "
        "command writes, not kept in the repository; without it every run is simulated again)" if reuse is not None
        and len(reuse) else "") + ".")
    command = "PYTHONPATH=. python benchmarks/search_strategies.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in (("seeds", args.seeds), ("gp_seeds", args.gp_seeds),
                                                      ("budget", args.budget), ("workers", args.workers),
                                                      ("strategies", args.strategies), ("default", args.default),
                                                      ("reuse", args.reuse and os.path.relpath(args.reuse, ROOT))) if v)
    Path(args.markdown).write_text(
        "<!-- written by benchmarks/search_strategies.py; paste into docs/benchmarks.md -->\n\n"
        f"{METHOD}\n\nCommand: `{command}` ({time.strftime('%Y-%m-%d')}). "
        f"Plot: benchmarks/results/search_strategies.png.\n"
        + "\n".join(out) + "\n", encoding="utf-8")
    print(f"\nwrote {args.out}, {args.plot} and {args.markdown} ({total:.0f}s)")


if __name__ == "__main__":
    main()
