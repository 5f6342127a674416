"""Search strategies on real runs (issue 16): the product's own search, several samplers x seeds.

Each (strategy, seed) is one `python -m raytune_ft.search --space SPACE --seed SEED` run with
`search.sampler` set to the strategy (`+unseeded` appended: `search.initial=[]`), every run in its
own experiment folder under `--storage-path`, one after another (the machine's cores go to one
search at a time, as a user would run it). A run whose folder already holds a finished search is
read, not repeated, so the study can be built up in pieces (`--strategies tpe --seeds 3 4`).

Quality: the dominated hypervolume of the completed trials in analyze's normalised space (sizes /
the dense teacher's, 1 - val_acc; reference (1, 1)), after each completed trial (ordered by end
time) and against wall time from the search's start. Reported per strategy: the median and range of
the final hypervolume over seeds, and the budget at which each seed first reaches the median final
hypervolume of random search (`random+unseeded` when run, else `random`: the issue's "budget to
reach random search's final hypervolume"), as a fraction of the trials; a seed that never reaches
it counts as infinite (the median can then be inf). The plot has HV against
completed trials and against minutes, the median over seeds and the min-max band per strategy.

    PYTHONPATH=. python benchmarks/search_strategies_real.py --seeds 0 1 2 3 4 --num-samples 16 \
        --strategies random+unseeded tpe tpe+unseeded gp --set teacher.checkpoint=runs/teacher \
        --storage-path runs/strategies   # ~20 runs x ~9 min on an idle 2-core CPU
    # a smoke test of the machinery (minutes): --num-samples 4 --set epochs=1 --set max_samples=300

Cost to front (issue 20): strategy names also take `+fidelity` (a two-stage search:
`search.data_fraction` = --fraction, `search.promote` = --promote), `+fulldata` (data_fraction 1:
undo a space that ships with fidelity), `+mo_asha` (the MO-ASHA scheduler), `+fifo` (no scheduler:
undo a space that ships with one), `+synchronous` (trials
in groups of max_concurrent, reproducible; the runs of 2026-12-05 were made so) and `by_hand` (the
pipeline a practitioner runs by hand: one run of the space's first `initial` recipe — gradual
magnitude pruning, distillation from the dense teacher, int8 — literature defaults). The dense
teacher's own fp32 and int8 files (what a user ships first) come with every run (baselines).
The cost table gives, per strategy, the wall time in minutes and in units of one dense full-data
fine-tune (the teacher's own wall_time_s, measured in the same run), the hypervolume at equal wall
time (each run's curve read at the shortest run's end), and the best test accuracy of a front file
at <= 1 MB and <= 400 KB (gzip of the deployed file, `model_bytes_compressed`). With `--clock
fine-tunes` the curves, the equal-time reading and `--at-minutes` use each run's wall time divided
by its own dense fine-tune instead of minutes: the scale on which runs made on different CPUs compare.

    PYTHONPATH=. python benchmarks/search_strategies_real.py --space fashion_mnist --seeds 0 1 2 \
        --strategies by_hand random+unseeded+fulldata tpe tpe+mo_asha --storage-path runs/cost \
        --num-samples 12 --set teacher.checkpoint=runs/teacher/teacher --plot benchmarks/results/cost_to_front.png
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from raytune_ft import pareto
from raytune_ft.report import results


def run_name(strategy: str, seed: int) -> str:
    return f"{strategy.replace('+', '_')}-s{seed}"


def finished(folder: Path) -> bool:
    """Whether `folder` holds a search that ran to its end (both stages of a two-stage one)."""
    return folder.is_dir() and results.load_experiment(folder).state == "finished"


def run_search(strategy: str, seed: int, args: argparse.Namespace) -> Path:
    folder = Path(args.storage_path) / run_name(strategy, seed)
    if finished(folder):
        print(f"{folder.name}: finished earlier, read", flush=True)
        return folder
    cmd = [sys.executable, "-m", "raytune_ft.search", "--space", args.space, "--seed", str(seed),
           "--storage-path", str(args.storage_path), "--name", folder.name,
           *strategy_args(strategy, args.num_samples, args.fraction, args.promote)]
    if folder.is_dir():
        cmd.append("--resume")
    for override in args.set:
        cmd += ["--set", override]
    started = time.perf_counter()
    print(f"{folder.name}: {' '.join(cmd[1:])}", flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL if args.quiet else None)
    print(f"{folder.name}: {(time.perf_counter() - started) / 60:.1f} min", flush=True)
    return folder


def strategy_args(strategy: str, num_samples: int, fraction: float, promote: int) -> list[str]:
    """The search's command-line arguments for a strategy name (see the module docstring)."""
    if strategy == "by_hand":  # the space's first recipe, alone, on all the data
        return ["--num-samples", "1", "--set", "search.data_fraction=1"]
    sampler, *variants = strategy.split("+")
    unknown = set(variants) - {"unseeded", "fidelity", "fulldata", "mo_asha", "synchronous", "fifo"}
    if sampler not in ("random", "tpe", "gp", "nsga2") or unknown:
        raise SystemExit(f"unknown strategy {strategy!r}: a sampler (random, tpe, gp, nsga2) with optional "
                         "+unseeded, +fidelity, +fulldata, +mo_asha, +fifo, +synchronous; or by_hand")
    out = ["--num-samples", str(num_samples), "--set", f"search.sampler={sampler}"]
    if "unseeded" in variants:
        out += ["--set", "search.initial=[]"]
    if "fidelity" in variants:
        out += ["--set", f"search.data_fraction={fraction}", "--set", f"search.promote={promote}"]
    if "fulldata" in variants:
        out += ["--set", "search.data_fraction=1"]
    if "mo_asha" in variants:
        out += ["--set", "scheduler.type=mo_asha"]
    if "fifo" in variants:
        out += ["--set", "scheduler=none"]
    if "synchronous" in variants:
        out += ["--set", "search.synchronous=true"]
    return out


# The clock the curves are read on: (column of `curves`, its units per --at-minutes unit, suffix, axis label).
# "minutes": wall time from the search's start, comparable between runs on one machine. "fine-tunes":
# the same wall time divided by the run's own dense full-data fine-tune (its teacher's wall_time_s),
# which puts runs made on different CPUs on one scale.
CLOCKS = {"minutes": ("elapsed_s", 60.0, "min", "wall time (min)"),
          "fine-tunes": ("fine_tunes", 1.0, "ft", "wall time (dense full-data fine-tunes, each run's own)")}


def hv_at(run: pd.DataFrame, seconds: np.ndarray | float, column: str = "elapsed_s") -> np.ndarray:
    """Hypervolume of the trials `run` had completed by each of `seconds` on the clock `column` (a
    step function: a trial counts from the moment it ends, never earlier; 0 before the first)."""
    run = run.sort_values(column)
    index = np.searchsorted(run[column].to_numpy(), np.atleast_1d(seconds), side="right") - 1
    return np.where(index >= 0, run["hypervolume"].to_numpy()[np.maximum(index, 0)], 0.0)


def cost_table(folders: dict[tuple[str, int], Path], table: pd.DataFrame,
               at_minutes: list[float] | None = None, clock: str = "minutes") -> pd.DataFrame:
    """Per strategy (median over seeds, min-max): wall time in minutes and in dense fine-tunes, the
    hypervolume at equal wall time (the shortest run's end, and each of `at_minutes`, read on
    `clock`: minutes or dense fine-tunes, CLOCKS), the best test accuracy at <= 1 MB and <= 400 KB;
    plus the dense teacher's fp32 and int8 files (from the first run)."""
    column, per_unit, suffix, _ = CLOCKS[clock]
    equal = table.groupby(["strategy", "seed"])[column].max().min()  # the shortest run's end
    rows, dense = [], None
    for (strategy, seed), folder in folders.items():
        exp = results.load_experiment(folder)
        teacher = exp.teacher or {}
        run = table[(table["strategy"] == strategy) & (table["seed"] == seed)].sort_values("elapsed_s")
        hv_equal = float(hv_at(run, equal, column)[0]) if len(run) else 0.0
        budgets = {f"hv_at_{m:g}_{suffix}": float(hv_at(run, m * per_unit, column)[0]) if len(run) else 0.0
                   for m in at_minutes or []}
        front = pd.read_csv(folder / "pareto.csv") if (folder / "pareto.csv").is_file() else pd.DataFrame()
        best = {}
        for label, limit in (("test_acc_le_1MB", 1e6), ("test_acc_le_400KB", 4e5)):
            ok = front[pd.to_numeric(front.get("model_bytes_compressed"), errors="coerce") <= limit] \
                if len(front) and "test_acc" in front else front.iloc[0:0]
            best[label] = float(ok["test_acc"].max()) if len(ok) else np.nan
        minutes = run["elapsed_s"].max() / 60 if len(run) else np.nan
        rows.append({"strategy": strategy, "seed": seed, "minutes": minutes,
                     "dense_fine_tunes": run["fine_tunes"].max() if len(run) else np.nan, "hv_at_equal_time": hv_equal,
                     **budgets, **best})
        if dense is None and teacher.get("baselines"):
            dense = teacher
    frame = pd.DataFrame(rows)
    out = frame.groupby("strategy", sort=False).agg(["median", "min", "max"])
    out.columns = [f"{a}_{b}" for a, b in out.columns]
    out = out.drop(columns=[c for c in out.columns if c.startswith("seed_")]).reset_index()
    out.attrs["equal_time"] = f"{equal / per_unit:.2f} {suffix}"
    if dense is not None:
        for name, row in dense["baselines"].items():
            size = row.get("model_bytes_compressed", np.nan)
            out.loc[len(out), ["strategy", "test_acc_le_1MB_median", "test_acc_le_400KB_median"]] = [
                f"dense {name} ({size / 1e6:.2f} MB)", row.get("test_acc") if size <= 1e6 else np.nan,
                row.get("test_acc") if size <= 4e5 else np.nan]
    return out


REPLAYED = " (asynchronous replay)"


def replay_asynchronous(trials: pd.DataFrame, slots: int) -> pd.DataFrame:
    """The same trials as if a new one had started as soon as a slot freed (search.synchronous
    false) instead of in groups of `slots`: each trial keeps its measured duration, and they start
    in their recorded order, each at the earliest free slot. Exact only for a sampler whose
    suggestions do not depend on earlier results (random search: its k-th draw is the same either
    way); durations measured beside a different neighbour may differ slightly in reality."""
    out = trials.copy()
    out["start_time"], out["end_time"] = (pd.to_numeric(out[c], errors="coerce").astype(float)
                                          for c in ("start_time", "end_time"))
    order = out.sort_values(["start_time", "trial_id"], kind="stable").index
    free = [float(out["start_time"].min())] * slots
    for i in order:
        duration = float(out.at[i, "end_time"]) - float(out.at[i, "start_time"])
        if not np.isfinite(duration):
            continue
        slot = int(np.argmin(free))
        out.at[i, "start_time"], out.at[i, "end_time"] = free[slot], free[slot] + duration
        free[slot] += duration
    return out


def curves(folders: dict[tuple[str, int], Path], slots: int = 2) -> pd.DataFrame:
    """Hypervolume after each completed trial of every run, on one common normalisation (the first
    run's dense teacher: the teacher is trained with the same seed-independent config each time).
    A strategy named with REPLAYED is its run's trials replayed with `replay_asynchronous`."""
    exps = {key: results.load_experiment(folder) for key, folder in folders.items()}
    first = next(iter(exps.values()))
    scales = pareto.hv_scales(pd.concat([e.trials for e in exps.values()]), first.objectives, first.teacher)
    frames = []
    for (strategy, seed), exp in exps.items():
        trials = replay_asynchronous(exp.trials, slots) if strategy.endswith(REPLAYED) else exp.trials
        curve = pareto.hypervolume_curve(trials, exp.objectives, scales, exp.start_time)
        unit = (exp.teacher or {}).get("wall_time_s")
        frames.append(curve.assign(strategy=strategy, seed=seed,
                                   fine_tunes=curve["elapsed_s"] / unit if unit else np.nan))
    return pd.concat(frames, ignore_index=True)


def summary(table: pd.DataFrame, budget: int) -> pd.DataFrame:
    finals = table.sort_values("completed").groupby(["strategy", "seed"])["hypervolume"].last()
    randoms = [s for s in table["strategy"].unique() if s.startswith("random")]  # random+unseeded first
    baseline = sorted(randoms, key=lambda s: s != "random+unseeded")[0] if randoms else None
    target = float(finals.loc[baseline].median()) if baseline else np.nan
    rows = []
    for strategy, group in table.groupby("strategy", sort=False):
        reach = []
        for _, run in group.groupby("seed"):
            hit = run[run["hypervolume"] >= target - 1e-12]["completed"]
            reach.append(hit.min() / budget if len(hit) else np.inf)
        final = finals.loc[strategy]
        finite = [r for r in reach if np.isfinite(r)]
        rows.append({"strategy": strategy, "seeds": len(final), "final_hv_median": final.median(),
                     "final_hv_min": final.min(), "final_hv_max": final.max(),
                     "reach_random_median": float(np.median(reach)),
                     "reached": f"{len(finite)}/{len(reach)}",
                     "minutes_median": group.groupby("seed")["elapsed_s"].max().median() / 60})
    return pd.DataFrame(rows)


def plot(table: pd.DataFrame, path: Path, clock: str = "minutes") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    column, per_unit, _, label = CLOCKS[clock]
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.2))
    for strategy, group in table.groupby("strategy", sort=False):
        by_k = group.pivot_table(index="completed", columns="seed", values="hypervolume").ffill()
        line = axes[0].plot(by_k.index, by_k.median(axis=1), label=strategy)[0]
        axes[0].fill_between(by_k.index, by_k.min(axis=1), by_k.max(axis=1), color=line.get_color(), alpha=0.15)
        grid = np.linspace(0, group[column].max(), 200)
        per_seed = [hv_at(run, grid, column) for _, run in group.groupby("seed")]
        stack = np.vstack(per_seed)
        axes[1].step(grid / per_unit, np.median(stack, axis=0), where="post", color=line.get_color())
        axes[1].fill_between(grid / per_unit, stack.min(axis=0), stack.max(axis=0), step="post",
                             color=line.get_color(), alpha=0.15)
    shown = table.loc[table["hypervolume"] > 0, "hypervolume"]  # 0 before a run's first trial: off the axis
    limits = (shown.min() - 0.005, shown.max() + 0.005)
    axes[0].set(xlabel="completed trials", ylabel="hypervolume (normalised)")
    axes[1].set(xlabel=label, ylabel="hypervolume (normalised)", ylim=limits)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=2, fontsize=9)
    fig.suptitle("Real searches: hypervolume, median over seeds and min-max band")
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", default="quickstart")
    p.add_argument("--strategies", nargs="+", default=["random+unseeded", "tpe", "tpe+unseeded", "gp"],
                   help="sampler names (random, tpe, gp, nsga2), optionally with +unseeded")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--num-samples", type=int, default=16)
    p.add_argument("--storage-path", default="runs/strategies")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed to every search")
    p.add_argument("--plot", default="benchmarks/results/search_strategies_real.png")
    p.add_argument("--quiet", action="store_true", help="hide the searches' own output")
    p.add_argument("--fraction", type=float, default=0.25, help="+fidelity: the subset stage's data fraction")
    p.add_argument("--promote", type=int, default=3, help="+fidelity: recipes retrained on all the data")
    p.add_argument("--at-minutes", nargs="+", type=float, default=[],
                   help="also read every run's hypervolume at these wall times of its trial phase (minutes, "
                        "or dense fine-tunes with --clock fine-tunes)")
    p.add_argument("--clock", choices=sorted(CLOCKS), default="minutes",
                   help="read hypervolume against minutes (runs on one machine) or against each run's own dense "
                        "full-data fine-tunes (runs made on different CPUs)")
    p.add_argument("--replay-asynchronous", nargs="+", default=[], metavar="STRATEGY",
                   help="also read these strategies' runs (random search only: see replay_asynchronous) as if "
                        "each trial had started as soon as a slot freed (a run made with search.synchronous true)")
    p.add_argument("--slots", type=int, default=2, help="--replay-asynchronous: trials at a time")
    p.add_argument("--read-only", action="store_true",
                   help="run nothing: read the finished runs among --strategies x --seeds, name the others")
    args = p.parse_args()
    if args.read_only:
        folders = {}
        for s in args.strategies:
            for seed in args.seeds:
                folder = Path(args.storage_path) / run_name(s, seed)
                if finished(folder):
                    folders[s, seed] = folder
                else:
                    print(f"{folder}: not a finished run, left out", flush=True)
        if not folders:
            raise SystemExit(f"--read-only: no finished run under {args.storage_path}")
    else:
        folders = {(s, seed): run_search(s, seed, args) for s in args.strategies for seed in args.seeds}
    folders.update({(s + REPLAYED, seed): folders[s, seed] for s in args.replay_asynchronous for seed in args.seeds
                    if (s, seed) in folders})
    table = curves(folders, args.slots)
    out = Path(args.storage_path) / "hypervolume_curves.csv"
    table.to_csv(out, index=False)
    print(summary(table, args.num_samples).to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    costs = cost_table(folders, table, args.at_minutes, args.clock)
    costs.to_csv(Path(args.storage_path) / "cost_to_front.csv", index=False)
    print(f"\ncost to front (hypervolume read at {costs.attrs['equal_time']}, the shortest run):")
    print(costs.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    plot(table, Path(args.plot), args.clock)
    print(f"wrote {out} and {args.plot}")


if __name__ == "__main__":
    main()
