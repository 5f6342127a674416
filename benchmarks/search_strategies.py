"""Replay benchmark of search strategies on the quickstart space (docs/benchmarks.md).

Real learning curves (benchmarks/curves.csv, from record_curves.py: random configurations of
search_spaces/quickstart.yaml, every epoch's val_acc, nonzero_params and epoch time) are fitted
by a surrogate (a random forest over the encoded hyperparameters predicting every epoch's
metrics, plus its time). Strategies then search the same space against the surrogate, in a
simulated asynchronous cluster (`--workers` trials at once, each epoch taking the surrogate's
epoch time), until a budget of training epochs is spent:

* random, nsga2, tpe: Optuna's samplers as `raytune_ft.spaces` builds them; every trial trains
  all epochs;
* nsga2+mo_asha, random+mo_asha: the same samplers, with MO-ASHA (raytune_ft.mo_asha's own
  ranking, `continues_at_rung`) stopping trials at the rungs; stopped trials are told PRUNED.

Quality: the dominated hypervolume of the fully trained trials' front in analyze's normalised
space — (nonzero_params / dense teacher's, 1 − val_acc) — with the fixed reference point (1, 1).
The surrogate's held-out quality is measured by 5-fold cross-validation over configurations,
and the strategies' ranking is cross-checked on the recorded curves themselves (no surrogate:
random with and without MO-ASHA over the measured configurations).

    PYTHONPATH=. python benchmarks/search_strategies.py --seeds 10 --budget 200 --workers 4
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import json
import math
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from raytune_ft import magnitude_pruning, mo_asha, pareto, spaces

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
STRATEGIES = ("random", "nsga2", "tpe", "random+mo_asha", "nsga2+mo_asha")
# digits: 1,797 images, 20 % held out -> 1,438 training images, batches of 64 (ragged one dropped)
STEPS_PER_EPOCH = 1438 // 64


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


# --- the simulated cluster --------------------------------------------------------------------

def hypervolume(done: list[tuple[float, float]], nz_scale: float) -> float:
    """HV of (val_acc, nonzero_params) pairs in (nz / teacher, 1 − acc) space, reference (1, 1)."""
    if not done:
        return 0.0
    pts = np.array([[nz / nz_scale, 1.0 - acc] for acc, nz in done])
    return pareto.hypervolume(pts, np.ones(2))


def simulate(strategy: str, seed: int, *, space: spaces.Space, curve_of, budget: int, workers: int,
             nz_scale: float, grace_period: int = 1, reduction_factor: float = 3) -> pd.DataFrame:
    """Run one strategy until `budget` epochs are spent; one row per finished epoch event:
    epochs (spent so far), time_s (simulated wall clock), hypervolume (fully trained trials)."""
    import optuna

    sampler_name, _, sched = strategy.partition("+")
    sp = dataclasses.replace(space, search=dataclasses.replace(space.search, sampler=sampler_name))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study = optuna.create_study(directions=["maximize", "minimize"], sampler=sp.make_sampler(seed))
    define = sp.define_by_run()
    epochs = space.max_epochs()
    milestones = mo_asha.rung_milestones(grace_period, epochs, reduction_factor) if sched else []
    rungs: dict[float, list[np.ndarray]] = {m: [] for m in milestones}
    events: list[tuple[float, int, int]] = []  # (finish time of the next epoch, trial number, epoch)
    running: dict[int, tuple[Any, tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
    spent, now, done, log = 0, 0.0, [], []

    def launch() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trial = study.ask()
            define(trial)
        curve = curve_of(trial.params)
        running[trial.number] = (trial, curve)
        heapq.heappush(events, (now + max(curve[2][0], 1e-3), trial.number, 1))

    for _ in range(workers):
        launch()
    while spent < budget and events:
        now, number, epoch = heapq.heappop(events)
        trial, (acc, nz, t) = running[number]
        spent += 1
        a, n = float(acc[epoch - 1]), float(nz[epoch - 1])
        finished = epoch >= epochs
        if not finished and epoch in rungs:  # MO-ASHA decision at this rung
            point = np.array([-a, n])
            recorded = np.array(rungs[epoch]).reshape(-1, 2)
            keep = mo_asha.continues_at_rung(recorded, point, reduction_factor)
            rungs[epoch].append(point)
            if not keep:
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                del running[number]
                log.append((spent, now, hypervolume(done, nz_scale)))
                launch()
                continue
        if finished:
            study.tell(trial, [a, n])
            done.append((a, n))
            del running[number]
            log.append((spent, now, hypervolume(done, nz_scale)))
            launch()
        else:
            heapq.heappush(events, (now + max(t[epoch], 1e-3), number, epoch + 1))
            log.append((spent, now, hypervolume(done, nz_scale)))
    return pd.DataFrame(log, columns=["epochs", "time_s", "hypervolume"]).assign(
        strategy=strategy, seed=seed, trials_done=len(done))


def table_replay(curves: pd.DataFrame, seed: int, *, budget: int, nz_scale: float, mo: bool,
                 reduction_factor: float = 3) -> pd.DataFrame:
    """Random search over the RECORDED configurations (real curves, no surrogate), one at a time,
    with or without MO-ASHA; returns epochs spent vs hypervolume."""
    order = np.random.default_rng(seed).permutation(len(curves))
    epochs = len(curves["acc"].iloc[0])
    milestones = mo_asha.rung_milestones(1, epochs, reduction_factor) if mo else []
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
                point = np.array([-acc[e - 1], nz[e - 1]])
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--curves", nargs="+", default=[str(HERE / "curves.csv"), str(HERE / "curves_b.csv")],
                   help="curve files of record_curves.py (two recorders ran side by side, different seeds)")
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--budget", type=int, default=200, help="training epochs per search")
    p.add_argument("--workers", type=int, default=4, help="trials at once in the simulated cluster")
    p.add_argument("--reduction-factor", type=float, default=3)
    p.add_argument("--surrogate", choices=("forest", "knn"), default="forest")
    p.add_argument("--out", default=str(HERE / "search_strategies_runs.csv"))
    p.add_argument("--plot", default=str(ROOT / "docs" / "search_strategies.png"))
    args = p.parse_args()

    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    started = time.perf_counter()
    space = spaces.load_space(spaces.resolve_space("quickstart"))
    epochs = space.max_epochs()
    paths = [Path(c) for c in args.curves if Path(c).exists()]
    curves = load_curves(paths, epochs)
    teacher = json.loads(paths[0].with_name(paths[0].stem + "_teacher.json").read_text())
    nz_scale = float(teacher["nonzero_params"])
    print(f"{len(curves)} recorded configurations x {epochs} epochs; dense teacher val_acc="
          f"{teacher['val_acc']:.4f}, nonzero_params={nz_scale:,.0f}")

    for kind in ("forest", "knn"):
        quality = surrogate_quality(space, curves, nz_scale, kind=kind)
        print(f"\nSurrogate {kind}{' (used)' if kind == args.surrogate else ''}, 5-fold held-out configurations:")
        print(markdown(quality))
    real_hv = hypervolume(list(zip(np.stack(curves["acc"])[:, -1], np.stack(curves["nz"])[:, -1], strict=True)),
                          nz_scale)
    print(f"\nHV of all {len(curves)} recorded configurations (real, fully trained): {real_hv:.4f}")

    surrogate = Surrogate(space, nz_scale, kind=args.surrogate).fit(curves)
    cache: dict[str, Any] = {}

    def curve_of(params: dict[str, Any]):
        key = json.dumps(params, sort_keys=True)
        if key not in cache:
            cache[key] = surrogate.predict(params)
        return cache[key]

    runs = []
    for strategy in STRATEGIES:
        for seed in range(args.seeds):
            runs.append(simulate(strategy, seed, space=space, curve_of=curve_of, budget=args.budget,
                                 workers=args.workers, nz_scale=nz_scale, reduction_factor=args.reduction_factor))
        print(f"  {strategy}: {args.seeds} seeds done ({time.perf_counter() - started:.0f}s)", flush=True)
    table = pd.concat(runs, ignore_index=True)
    table.to_csv(args.out, index=False)

    summary, grids = summarize(table, args, epochs)
    print("\n" + summary)

    # cross-check on the real curves, without the surrogate
    check = []
    for mo in (False, True):
        finals = [table_replay(curves, s, budget=min(args.budget, len(curves) * epochs // 2), nz_scale=nz_scale,
                               mo=mo, reduction_factor=args.reduction_factor) for s in range(args.seeds)]
        hv = [f["hypervolume"].iloc[-1] for f in finals]
        spent = [f["epochs"].iloc[-1] for f in finals]
        check.append((("random+mo_asha" if mo else "random"), np.median(hv), np.min(hv), np.max(hv), np.median(spent)))
    print("\nRecorded curves, no surrogate (random order of the measured configurations, budget "
          f"{min(args.budget, len(curves) * epochs // 2)} epochs, {args.seeds} orders):")
    for name, med, lo, hi, spent in check:
        print(f"  {name}: median HV {med:.4f} (min {lo:.4f}, max {hi:.4f}), epochs {spent:.0f}")
    plot(table, grids, args)
    print(f"\nwrote {args.out} and {args.plot} ({time.perf_counter() - started:.0f}s)")


def summarize(table: pd.DataFrame, args: argparse.Namespace, epochs: int) -> tuple[str, dict]:
    grid_e = np.arange(0, args.budget + 1, 5)
    tmax = table.groupby(["strategy", "seed"])["time_s"].max().min()
    grid_t = np.linspace(0, tmax, 60)
    grids: dict[str, dict[str, np.ndarray]] = {}
    finals: dict[str, list[float]] = {}
    for strategy, g in table.groupby("strategy", sort=False):
        per_seed = [run for _, run in g.groupby("seed")]
        grids[strategy] = {"epochs": np.stack([on_grid(r, "epochs", grid_e) for r in per_seed]),
                           "time": np.stack([on_grid(r, "time_s", grid_t) for r in per_seed]),
                           "grid_e": grid_e, "grid_t": grid_t}
        finals[strategy] = [r["hypervolume"].iloc[-1] for r in per_seed]
    lines = [f"Hypervolume after {args.budget} epochs ({args.seeds} seeds, {args.workers} workers; reference "
             "(1, 1) in (nonzero_params / teacher, 1 - val_acc)):", "",
             "| strategy | median HV | min | max | trials fully trained (median) |", "|---|---|---|---|---|"]
    trials = table.groupby(["strategy", "seed"])["trials_done"].first().groupby("strategy").median()
    for s in STRATEGIES:
        f = finals[s]
        lines.append(f"| {s} | {np.median(f):.4f} | {np.min(f):.4f} | {np.max(f):.4f} | {trials[s]:.0f} |")
    random_final = float(np.median(finals["random"]))
    nsga_final = float(np.median(finals["nsga2"]))
    lines += ["", "Goals (epochs to reach a target hypervolume, median over seeds; inf = never within the budget):", ""]
    for s, target, name, limit in (("nsga2", random_final, "random's final HV", 0.6),
                                   ("tpe", random_final, "random's final HV", 0.6),
                                   ("nsga2+mo_asha", nsga_final, "full-training NSGA-II's final HV", 0.5),
                                   ("random+mo_asha", random_final, "random's final HV", 0.5)):
        reach = [epochs_to_reach(run, target) for _, run in table[table.strategy == s].groupby("seed")]
        med = float(np.median(reach))
        frac = med / args.budget
        verdict = "met" if frac <= limit else "NOT met"
        lines.append(f"- {s} reaches {name} ({target:.4f}) after a median {med:.0f} epochs = {frac:.0%} of the "
                     f"budget (goal <= {limit:.0%}: {verdict}); per seed: {', '.join(f'{r:.0f}' for r in reach)}")
    return "\n".join(lines), grids


def plot(table: pd.DataFrame, grids: dict, args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for strategy in STRATEGIES:
        g = grids[strategy]
        for ax, key, grid, scale in ((axes[0], "epochs", g["grid_e"], 1.0), (axes[1], "time", g["grid_t"], 60.0)):
            hv = g[key]
            med = np.median(hv, axis=0)
            line, = ax.plot(grid / scale, med, label=strategy)
            ax.fill_between(grid / scale, np.percentile(hv, 25, axis=0), np.percentile(hv, 75, axis=0),
                            color=line.get_color(), alpha=0.15)
    axes[0].set_xlabel("training epochs spent")
    axes[1].set_xlabel(f"simulated wall time (min, {args.workers} workers)")
    # zoom on the part where strategies differ: from the lowest median at 30 % of the budget
    third = int(0.3 * (len(grids["random"]["grid_e"]) - 1))
    lo = min(np.percentile(grids[s]["epochs"], 25, axis=0)[third] for s in STRATEGIES)
    hi = max(np.percentile(grids[s]["epochs"], 75, axis=0).max() for s in STRATEGIES)
    for ax in axes:
        ax.set_ylabel("hypervolume (median, IQR band)")
        ax.grid(alpha=0.3)
        ax.set_ylim(lo - 0.1 * (hi - lo), hi + 0.05 * (hi - lo))
    axes[0].legend(loc="lower right")
    fig.suptitle(f"Replay on the quickstart (surrogate of real curves), {args.seeds} seeds, "
                 f"budget {args.budget} epochs")
    fig.tight_layout()
    fig.savefig(args.plot, dpi=120)


if __name__ == "__main__":
    main()
