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

from raytune_ft import layout, pareto
from raytune_ft.layout import COMPLETED


def promoted(trials: pd.DataFrame, objectives: Mapping[str, str], k: int) -> pd.DataFrame:
    """The `k` completed stage-1 trials to retrain on all the data, best first by NSGA-II order
    (the front, then the nearest fronts by crowding distance), with their stage-1 rank (`stage1_rank`)."""
    done = trials[trials["status"] == COMPLETED].reset_index(drop=True)
    values = pareto.objective_matrix(done, objectives)
    done = done[np.isfinite(values).all(axis=1)].reset_index(drop=True)
    values = values[np.isfinite(values).all(axis=1)]
    front_of, crowding = pareto.rank_keys(values)
    order = np.lexsort((np.arange(len(done)), -crowding, front_of))[:k]
    chosen = done.iloc[order].copy()
    chosen["stage1_rank"] = np.arange(1, len(chosen) + 1)
    chosen["stage1_front"] = front_of[order]
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
        configs.append({**sampled, "data_fraction": 1.0, **({"epochs": epochs} if epochs else {})})
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
    space_json["fixed"] = {**space_json.get("fixed", {}), "data_fraction": 1.0,
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
    from raytune_ft.search import tracking, trial

    params = [p.name for p in space.params]
    chosen = promoted(stage1, space.objectives, space.search.promote)
    epochs = space.search.promote_epochs or space.trial_config({}).epochs
    print(f"stage 2: {len(chosen)} recipe(s) of {len(stage1)} trained on {space.search.data_fraction:g} of the "
          f"data retrained on all of it for {epochs} epochs: {', '.join(map(str, chosen['trial_id']))}", flush=True)
    trainable = tune.with_resources(tune.with_parameters(trial.tune_trial, **trial_inputs),
                                    trial.resources_for(space.fixed))
    try:
        run_stage2(stage2_configs(chosen, params, space.search.promote_epochs), exp_dir, trainable,
                   epochs=space.search.promote_epochs, max_concurrent=space.search.max_concurrent,
                   keep_checkpoints=space.search.keep_checkpoints, max_failures=space.search.max_failures,
                   callbacks=tracking.logger_callbacks(space.search.callbacks, exp_dir))  # mlflow etc. see them too
    except Exception as err:  # noqa: BLE001  (stage 1's results must survive whatever stage 2 does)
        print(f"stage 2 failed: {type(err).__name__}: {err}; the front is the subset stage's", flush=True)
        return stage1.assign(stage=1)
    trials = results.read_trials(exp_dir)  # both stages: it joins <exp>/stage2
    ranks = dict(zip(chosen["trial_id"].astype(str), chosen["stage1_rank"], strict=True))
    trials["stage1_rank"] = [ranks.get(str(t)) if stage == 1 else None
                             for t, stage in zip(trials["trial_id"], trials["stage"], strict=True)]
    summary = write_agreement(exp_dir, trials, space.objectives)
    print(f"stage 2: Kendall tau of val_acc, subset vs all data, over {summary['n']} promoted recipe(s): "
          f"{summary['kendall_tau']:.2f}", flush=True)
    return trials


def agreement(trials: pd.DataFrame, objectives: Mapping[str, str], accuracy: str = "val_acc") -> tuple[
        pd.DataFrame, dict[str, Any]]:
    """How well stage 1 predicted stage 2, over the promoted recipes that finished both: a table
    (one row per promoted recipe: its stage-1 and full-data accuracy, its rank by accuracy in
    each stage among them, whether it is on the full-data front) and a summary (Kendall's τ-b of
    the two accuracies, n, the share of the full-data front that stage 1 had on its own front)."""
    from scipy.stats import kendalltau

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
                     "on_full_front": row["trial_id"] in front_ids})
    table = pd.DataFrame(rows)
    summary: dict[str, Any] = {"n": len(table), "kendall_tau": math.nan, "kendall_p": math.nan}
    if len(table):
        table["rank_subset"] = table[f"{accuracy}_subset"].rank(ascending=False, method="min").astype(int)
        table["rank_full"] = table[f"{accuracy}_full"].rank(ascending=False, method="min").astype(int)
        if len(table) >= 2:
            tau = kendalltau(table[f"{accuracy}_subset"], table[f"{accuracy}_full"])
            summary.update(kendall_tau=float(tau.statistic), kendall_p=float(tau.pvalue))
        summary["full_front_size"] = int(table["on_full_front"].sum())
    return table, summary


def write_agreement(exp_dir: Path, trials: pd.DataFrame, objectives: Mapping[str, str]) -> dict[str, Any]:
    """`fidelity.csv` and `fidelity.json` in the experiment folder; returns the summary."""
    table, summary = agreement(trials, objectives)
    table.to_csv(exp_dir / layout.FIDELITY_CSV, index=False)
    (exp_dir / layout.FIDELITY_JSON).write_text(json.dumps(summary, indent=2, default=_json_number))
    return summary


def _json_number(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else str(value)
