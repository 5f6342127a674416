"""Confirmation runs: the front's recipes trained again with other seeds after the search (Ray
Tune, the same trainable), and how their accuracy spread compares with the front's gaps."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from raytune_ft import layout
from raytune_ft.config import TrialConfig
from raytune_ft.deploy.holdout import TestSplit, evaluate_export


def confirm_runs(front: pd.DataFrame, params: Sequence[str], fixed: Mapping[str, Any], k: int) -> list[dict[str, Any]]:
    """The K − 1 extra runs of every front recipe: {"of": trial_id, "seed": s, "sampled": {...}} with the
    recipe's searched values (from the trial's params.json, so types and inactive params are exact)
    and seeds base + 1 … base + K − 1 (model init and batch order; data_seed, the split, stays)."""
    runs = []
    for _, row in front.iterrows():
        trial_dir = Path(str(row["checkpoint"])).parent
        params_file = trial_dir / layout.TUNE_PARAMS_JSON
        sampled = json.loads(params_file.read_text()) if params_file.is_file() \
            else {p: row[p] for p in params if p in row and not pd.isna(row[p])}
        base = int(sampled.get("seed", fixed.get("seed", TrialConfig.seed)))
        runs += [{"of": str(row["trial_id"]), "seed": base + i, "sampled": {**sampled, "seed": base + i}}
                 for i in range(1, k)]
    return runs


def run_confirmation(runs: list[dict[str, Any]], exp_dir: Path, trainable_kwargs: dict[str, Any],
                     fixed: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Train `runs` in parallel as one Tune experiment `exp_dir/confirm` (grid over the runs, no
    sampler, no scheduler: nothing learns from them) with the search's own trainable; returns
    {"of", "seed", **final metrics, "export_path"} per run that finished."""
    from ray import tune

    from raytune_ft.search import trial

    def confirm_trial(config: dict[str, Any], **kwargs: Any) -> None:
        trial.tune_trial(config["run"]["sampled"], **kwargs)

    request = trial.resources_for(dict(fixed))
    trainable = tune.with_resources(tune.with_parameters(confirm_trial, **trainable_kwargs),
                                    lambda config: request(config["run"]["sampled"]))
    tuner = tune.Tuner(
        trainable, param_space={"run": tune.grid_search(runs)},
        tune_config=tune.TuneConfig(reuse_actors=True, trial_dirname_creator=trial.trial_dirname),
        run_config=tune.RunConfig(name=layout.CONFIRM_DIR, storage_path=str(exp_dir), verbose=0,
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                                  failure_config=tune.FailureConfig(max_failures=0)))
    out = []
    for result in tuner.fit():
        run = result.config["run"]
        if result.error is not None or result.checkpoint is None:
            print(f"confirm: {run['of']} seed {run['seed']} failed: {result.error}", flush=True)
            continue
        out.append({"of": run["of"], "seed": run["seed"], **result.metrics,
                    "export_path": str(Path(result.checkpoint.path) / layout.EXPORT_DIR)})
    return out


def summarize_confirmation(front: pd.DataFrame, runs: Iterable[Mapping[str, Any]], objectives: Mapping[str, str],
                           test: TestSplit | None, *, threads: int = 1) -> pd.DataFrame:
    """One row per front recipe over its original run and the confirmation runs: n_runs, mean and std
    (ddof 1) of val_acc, test_acc (deployed file on the test split) and the size objective, and
    `on_confirmed_front`: whether it stays non-dominated among the front recipes on (mean test_acc,
    mean size) — mean val_acc where there is no test split."""
    from raytune_ft import pareto

    size = next(m for m, mode in objectives.items() if mode == "min")
    acc = next(m for m, mode in objectives.items() if mode == "max")
    by_recipe: dict[str, list[dict[str, Any]]] = {}
    for _, row in front.iterrows():
        by_recipe[str(row["trial_id"])] = [{**row.to_dict(), "seed": row.get("seed", TrialConfig.seed)}]
    for run in runs:
        run = dict(run)
        if test is not None and "test_acc" not in run and Path(run["export_path"]).is_dir():
            run.update(evaluate_export(run["export_path"], test, threads=threads)[0])
        by_recipe[run["of"]].append(run)
    rows = []
    for trial_id, group in by_recipe.items():
        table = pd.DataFrame(group)
        row: dict[str, Any] = {"trial_id": trial_id, "n_runs": len(table),
                               "seeds": " ".join(str(int(s)) for s in table["seed"])}
        for metric in dict.fromkeys([acc, "test_acc", size]):
            values = pd.to_numeric(table.get(metric, pd.Series(dtype=float)), errors="coerce")
            row[f"{metric}_mean"] = values.mean()
            row[f"{metric}_std"] = values.std(ddof=1) if len(values) > 1 else math.nan
        rows.append(row)
    summary = pd.DataFrame(rows)
    honest = "test_acc_mean" if summary["test_acc_mean"].notna().all() else f"{acc}_mean"
    mask = pareto.pareto_mask(pareto.objective_matrix(summary, {honest: "max", f"{size}_mean": "min"}))
    summary["on_confirmed_front"] = mask
    return summary
