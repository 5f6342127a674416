"""Data-size fidelity: a search in two stages that costs a few full-data fine-tunes.

Stage 1 is the usual search, every trial trained on `search.data_fraction` of the training split
(a stratified subset drawn with data_seed; the validation split is the full one, so stage-1 and
stage-2 val_acc are measured on the same images). Stage 2 retrains the `search.promote` best
stage-1 recipes on all the data, for `search.promote_epochs` epochs when set — the stage-1 front
first, then the recipes nearest it in NSGA-II order (non-dominated rank, then crowding distance;
Deb et al. 2002) — as its own Tune experiment (`<experiment>/stage2`, resumable), and the front
is recomputed from the full-data trials only. `agreement` reports how well the cheap ranking
predicted the expensive one (Kendall's τ of val_acc over the promoted recipes, and each recipe's
rank in both stages), as proxy-search papers rarely do (FABOLAS, Klein et al. 2017; Hyperband,
Li et al. 2018, use a data budget the same way).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from ray.tune.search import Searcher

from raytune_ft import data_fraction, layout, pareto
from raytune_ft.layout import COMPLETED


def promoted(trials: pd.DataFrame, objectives: Mapping[str, str], k: int, random: int = 0,
             seed: int = 0) -> pd.DataFrame:
    """The completed stage-1 trials to retrain on all the data: the `k` best by NSGA-II order (the
    front, then the nearest fronts by crowding distance), then `random` of the others drawn uniformly
    (seeded), each with its stage-1 rank in that order (`stage1_rank`), its front and `promotion`
    ("top" or "random")."""
    done = trials[trials["status"] == COMPLETED].reset_index(drop=True)
    values = pareto.objective_matrix(done, objectives)
    done = done[np.isfinite(values).all(axis=1)].reset_index(drop=True)
    values = values[np.isfinite(values).all(axis=1)]
    front_of, crowding = pareto.rank_keys(values)
    ranked = np.lexsort((np.arange(len(done)), -crowding, front_of))
    rest = ranked[k:]
    drawn = np.random.default_rng(seed).choice(rest, size=min(random, len(rest)), replace=False) if random else []
    order = np.concatenate([ranked[:k], np.asarray(drawn, dtype=int)]).astype(int)
    chosen = done.iloc[order].copy()
    rank_of = np.empty(len(ranked), dtype=int)
    rank_of[ranked] = np.arange(1, len(ranked) + 1)  # each trial's place in NSGA-II order
    chosen["stage1_rank"] = rank_of[order]
    chosen["stage1_front"] = front_of[order]
    chosen["promotion"] = ["top"] * min(k, len(ranked)) + ["random"] * len(drawn)
    return chosen.reset_index(drop=True)


def stage2_configs(chosen: pd.DataFrame, params: list[str], epochs: int | None = None) -> list[dict[str, Any]]:
    """Each promoted recipe's searched values, exactly as sampled (its params.json), with
    data_fraction 1 and, when given, `epochs` (search.promote_epochs): what a stage-2 trial is given."""
    configs = []
    for _, row in chosen.iterrows():
        checkpoint = row.get("checkpoint")
        params_file = Path(str(checkpoint)).parent / layout.TUNE_PARAMS_JSON if isinstance(checkpoint, str) else None
        sampled = json.loads(params_file.read_text()) if params_file is not None and params_file.is_file() \
            else {p: row[p] for p in params if p in row and not pd.isna(row[p])}
        configs.append({**data_fraction.on_full_data(sampled), **({"epochs": epochs} if epochs else {})})
    return configs


def run_stage2(configs: list[dict[str, Any]], exp_dir: Path, trainable: Any, *, max_concurrent: int,
               keep_checkpoints: int, max_failures: int, callbacks: list[Any] | None = None,
               epochs: int | None = None) -> Path:
    """Train `configs` as one Tune experiment `exp_dir/stage2` with the search's own trainable (no
    sampler, no scheduler); continues it where it stopped when it exists. Returns its folder.
    epochs: search.promote_epochs (already in each config), recorded in stage2/space.json too."""
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    from raytune_ft.search import trial

    stage_dir = exp_dir / layout.STAGE2_DIR
    space_json = json.loads((exp_dir / layout.SPACE_JSON).read_text())
    # what the stage-2 trials share, as trials.csv states it: all the data, `epochs` (promote_epochs) if set
    space_json["fixed"] = {**data_fraction.on_full_data(space_json.get("fixed", {})),
                           **({"epochs": epochs} if epochs else {})}
    stage_dir.mkdir(parents=True, exist_ok=True)
    (stage_dir / layout.SPACE_JSON).write_text(json.dumps(space_json, indent=2, default=str))
    if tune.Tuner.can_restore(str(stage_dir)):
        print(f"stage 2: resuming {stage_dir}", flush=True)
        tuner = tune.Tuner.restore(str(stage_dir), trainable, resume_errored=True)
    else:
        searcher = ConcurrencyLimiter(GivenConfigs(configs), max_concurrent=max_concurrent)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=searcher, num_samples=len(configs), reuse_actors=True,
                                        trial_dirname_creator=trial.trial_dirname),
            run_config=tune.RunConfig(name=layout.STAGE2_DIR, storage_path=str(exp_dir), verbose=0,
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=keep_checkpoints),
                                      failure_config=tune.FailureConfig(max_failures=max_failures),
                                      callbacks=callbacks or []))
    tuner.fit()
    return stage_dir


class GivenConfigs(Searcher):
    """A Tune searcher that hands out `configs` in order, exactly as given (no param space to fill,
    unlike BasicVariantGenerator's points_to_evaluate), then says FINISHED; it learns nothing."""

    def __init__(self, configs: list[dict[str, Any]]) -> None:
        super().__init__()
        self.configs, self.given = [dict(c) for c in configs], 0

    def set_search_properties(self, metric: Any, mode: Any, config: dict, **spec: Any) -> bool:
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if self.given >= len(self.configs):
            return self.FINISHED
        self.given += 1
        return dict(self.configs[self.given - 1])

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass

    def save(self, checkpoint_path: str) -> None:
        Path(checkpoint_path).write_text(json.dumps({"configs": self.configs, "given": self.given}, default=str))

    def restore(self, checkpoint_path: str) -> None:
        state = json.loads(Path(checkpoint_path).read_text())
        self.configs, self.given = state["configs"], state["given"]


def second_stage(stage1: pd.DataFrame, space: Any, exp_dir: Path, trial_inputs: dict[str, Any]) -> pd.DataFrame:
    """After the subset stage: promote, retrain on all the data (resumable), join the stages and
    write fidelity.csv / fidelity.json. A stage-2 failure is reported and loses nothing of stage 1
    (the table then holds stage 1 only and the front is the subset front)."""
    from ray import tune

    from raytune_ft.report import results
    from raytune_ft.search import progress, tracking, trial

    params = [p.name for p in space.params]
    chosen = promoted(stage1, space.objectives, space.search.promote, space.search.promote_random, space.search.seed)
    epochs = space.search.promote_epochs or space.trial_config({}).epochs
    drawn = chosen[chosen["promotion"] == "random"]
    print(f"stage 2: {len(chosen)} recipe(s) of {len(stage1)} trained on {space.search.data_fraction:g} of the "
          f"data retrained on all of it for {epochs} epochs: {', '.join(map(str, chosen['trial_id']))}"
          + (f" ({', '.join(map(str, drawn['trial_id']))} drawn at random: the check of the subset's ranking)"
             if len(drawn) else ""), flush=True)
    trainable = tune.with_resources(tune.with_parameters(trial.tune_trial, **trial_inputs),
                                    trial.resources_for(space.fixed))
    try:
        run_stage2(stage2_configs(chosen, params, space.search.promote_epochs), exp_dir, trainable,
                   epochs=space.search.promote_epochs, max_concurrent=space.search.max_concurrent,
                   keep_checkpoints=space.search.keep_checkpoints, max_failures=space.search.max_failures,
                   callbacks=[  # a line per trial event with the time left, as in stage 1; mlflow etc. see them too
                       progress.Progress(len(chosen), space.objectives, epochs=epochs, stage="stage 2 ",
                                         plan=progress.Plan(slots=max(1, int(space.search.max_concurrent)))),
                       *tracking.logger_callbacks(space.search.callbacks, exp_dir)])
    except Exception as err:  # noqa: BLE001  (stage 1's results must survive whatever stage 2 does)
        print(f"stage 2 failed: {type(err).__name__}: {err}; the front is the subset stage's", flush=True)
        return stage1.assign(stage=1)
    trials = results.read_trials(exp_dir)  # both stages: it joins <exp>/stage2
    ranks = dict(zip(chosen["trial_id"].astype(str), chosen["stage1_rank"], strict=True))
    how = dict(zip(chosen["trial_id"].astype(str), chosen["promotion"], strict=True))
    trials["stage1_rank"] = [ranks.get(str(t)) if stage == 1 else None
                             for t, stage in zip(trials["trial_id"], trials["stage"], strict=True)]
    trials["promotion"] = [how.get(str(t)) if stage == 1 else None
                           for t, stage in zip(trials["trial_id"], trials["stage"], strict=True)]
    summary = write_agreement(exp_dir, trials, space.objectives, seed=space.search.seed)
    low, high = summary["kendall_tau_ci95"]
    print(f"stage 2: Kendall tau of val_acc, subset vs all data, over {summary['n']} promoted recipe(s): "
          f"{summary['kendall_tau']:.2f} [95 % {low:.2f}, {high:.2f}]", flush=True)
    if summary.get("disagreement"):
        print(f"stage 2: {summary['disagreement']}", flush=True)
    return trials


def agreement(trials: pd.DataFrame, objectives: Mapping[str, str], accuracy: str = "val_acc",
              seed: int = 0) -> tuple[pd.DataFrame, dict[str, Any]]:
    """How well stage 1 predicted stage 2, over the promoted recipes that finished both: a table
    (one row per promoted recipe: its stage-1 and full-data accuracy, its rank by accuracy in
    each stage among them, how it was promoted, whether it is on the full-data front) and a summary
    (Kendall's τ-b and Spearman's ρ of the two accuracies with bootstrap 95 % intervals over the
    recipes, n, the full-data front's size, and `disagreement`: one sentence when a recipe drawn at
    random beat a promoted one on all the data, or the ranking reversed; else None)."""
    from scipy.stats import kendalltau, spearmanr

    stage1 = trials[trials["stage"] == 1].set_index("trial_id")
    if "stage1_rank" not in stage1.columns:
        stage1 = stage1.assign(stage1_rank=None)
    stage2 = trials[(trials["stage"] == 2) & (trials["status"] == COMPLETED) & trials["promoted_from"].notna()]
    front_ids = set(pareto.pareto_front(stage2, objectives)["trial_id"]) if len(stage2) else set()
    rows = []
    for _, row in stage2.iterrows():
        before = stage1.loc[row["promoted_from"]]
        rows.append({"recipe": row["promoted_from"], "trial_id": row["trial_id"],
                     f"{accuracy}_subset": float(before[accuracy]), f"{accuracy}_full": float(row[accuracy]),
                     **{f"{m}_full": row.get(m) for m in objectives if m != accuracy},
                     "stage1_rank": before.get("stage1_rank"),
                     "promotion": before.get("promotion") if isinstance(before.get("promotion"), str) else "top",
                     "on_full_front": row["trial_id"] in front_ids})
    table = pd.DataFrame(rows)
    summary: dict[str, Any] = {"n": len(table), "kendall_tau": math.nan, "kendall_p": math.nan,
                               "kendall_tau_ci95": [math.nan, math.nan], "spearman_rho": math.nan,
                               "spearman_rho_ci95": [math.nan, math.nan], "disagreement": None}
    if len(table):
        subset, full = table[f"{accuracy}_subset"].to_numpy(float), table[f"{accuracy}_full"].to_numpy(float)
        table["rank_subset"] = table[f"{accuracy}_subset"].rank(ascending=False, method="min").astype(int)
        table["rank_full"] = table[f"{accuracy}_full"].rank(ascending=False, method="min").astype(int)
        if len(table) >= 2:
            tau = kendalltau(subset, full)
            summary.update(kendall_tau=float(tau.statistic), kendall_p=float(tau.pvalue),
                           spearman_rho=float(spearmanr(subset, full).statistic))
        if len(table) >= 3:
            summary["kendall_tau_ci95"] = bootstrap_ci(subset, full, "kendall", seed=seed)
            summary["spearman_rho_ci95"] = bootstrap_ci(subset, full, "spearman", seed=seed)
        summary["full_front_size"] = int(table["on_full_front"].sum())
        summary["disagreement"] = disagreement(table, accuracy)
    return table, summary


def bootstrap_ci(subset: np.ndarray, full: np.ndarray, statistic: str, *, seed: int = 0,
                 resamples: int = 2000) -> list[float]:
    """Percentile bootstrap 95 % interval of Kendall's τ-b or Spearman's ρ over the recipes
    (pairs resampled with replacement; a resample with a constant side has no rank correlation
    and is left out). Wide with few recipes, as it should be."""
    from scipy.stats import kendalltau, spearmanr

    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        pick = rng.integers(0, len(subset), len(subset))
        a, b = subset[pick], full[pick]
        if np.ptp(a) == 0 or np.ptp(b) == 0:
            continue
        stat = kendalltau(a, b).statistic if statistic == "kendall" else spearmanr(a, b).statistic
        if np.isfinite(stat):
            values.append(stat)
    if not values:
        return [math.nan, math.nan]
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def disagreement(table: pd.DataFrame, accuracy: str = "val_acc") -> str | None:
    """One sentence when the full data ranked the promoted recipes otherwise than the subset did:
    a recipe drawn at random that the subset ranked below a promoted one beat it on all the data, or
    else the subset's best recipe was not the full data's best. None when they agree."""
    sub, full = f"{accuracy}_subset", f"{accuracy}_full"
    top, drawn = table[table["promotion"] == "top"], table[table["promotion"] == "random"]
    pairs = [(r, t) for _, r in drawn.iterrows() for _, t in top.iterrows() if r[sub] < t[sub] and r[full] > t[full]]
    if pairs:  # the subset put the drawn recipe below a promoted one; all the data put it above
        best_drawn, worst_top = max(pairs, key=lambda pair: pair[0][full] - pair[1][full])
        return (f"the subset's ranking disagreed with the full data: recipe {best_drawn['recipe']}, drawn at "
                f"random (subset {accuracy} {best_drawn[sub]:.4f}), reached {best_drawn[full]:.4f} on all the "
                f"data, above promoted recipe {worst_top['recipe']} ({worst_top[sub]:.4f} -> "
                f"{worst_top[full]:.4f})")
    if len(table) >= 2:
        best_subset, best_full = table.loc[table[sub].idxmax()], table.loc[table[full].idxmax()]
        if best_subset["recipe"] != best_full["recipe"] and best_full[full] > best_subset[full]:
            return (f"the subset's ranking disagreed with the full data: its best recipe {best_subset['recipe']} "
                    f"({best_subset[full]:.4f} on all the data) was beaten by {best_full['recipe']} "
                    f"({best_full[full]:.4f})")
    return None


def write_agreement(exp_dir: Path, trials: pd.DataFrame, objectives: Mapping[str, str],
                    seed: int = 0) -> dict[str, Any]:
    """`fidelity.csv` and `fidelity.json` in the experiment folder; returns the summary."""
    table, summary = agreement(trials, objectives, seed=seed)
    table.to_csv(exp_dir / layout.FIDELITY_CSV, index=False)
    (exp_dir / layout.FIDELITY_JSON).write_text(json.dumps(summary, indent=2, default=_json_number))
    return summary


def _json_number(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else str(value)
