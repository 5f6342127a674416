"""Data-size fidelity (search/fidelity.py): which recipes are promoted, the subset a stage-1 trial
trains on, how the two stages are joined and compared; and a real two-stage search, resumed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from raytune_ft import search, train
from raytune_ft.config import TrialConfig
from raytune_ft.search import fidelity, trial

OBJECTIVES = {"val_acc": "max", "nonzero_params": "min"}


def _stage1() -> pd.DataFrame:
    # a, b, c on the front; d dominated by b only; e by everything; f failed
    return pd.DataFrame({
        "trial_id": list("abcdef"),
        "status": ["completed"] * 5 + ["failed"],
        "val_acc": [0.95, 0.90, 0.80, 0.85, 0.50, np.nan],
        "nonzero_params": [1000, 500, 100, 600, 2000, np.nan],
        "lr": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
        "data_fraction": 0.25,
    })


def test_promoted_takes_the_front_first_then_the_nearest_in_nsga2_order():
    chosen = fidelity.promoted(_stage1(), OBJECTIVES, 4)
    assert set(chosen["trial_id"][:3]) == {"a", "b", "c"} and chosen["trial_id"][3] == "d"
    assert chosen["stage1_rank"].tolist() == [1, 2, 3, 4] and chosen["stage1_front"].tolist() == [0, 0, 0, 1]
    assert len(fidelity.promoted(_stage1(), OBJECTIVES, 10)) == 5  # never a failed trial


def test_stage2_configs_are_the_sampled_values_on_all_the_data(tmp_path):
    folder = tmp_path / "trial_a"
    (folder / "checkpoint_000001").mkdir(parents=True)
    (folder / "params.json").write_text(json.dumps({"lr": 0.1, "use_kd": False}))
    chosen = pd.DataFrame({"trial_id": ["a"], "checkpoint": [str(folder / "checkpoint_000001")], "lr": [0.1]})
    assert fidelity.stage2_configs(chosen, ["lr", "use_kd"]) == [{"lr": 0.1, "use_kd": False, "data_fraction": 1.0}]
    assert fidelity.stage2_configs(chosen, ["lr", "use_kd"], epochs=30) == [
        {"lr": 0.1, "use_kd": False, "data_fraction": 1.0, "epochs": 30}]  # search.promote_epochs


def test_combine_marks_stages_and_the_front_uses_full_data_only():
    stage1 = _stage1()
    chosen = fidelity.promoted(stage1, OBJECTIVES, 3)
    stage2 = pd.DataFrame({"trial_id": ["x", "y", "z"], "status": ["completed"] * 3,
                           "val_acc": [0.97, 0.93, 0.85], "nonzero_params": [1000, 500, 100], "lr": [0.1, 0.2, 0.3]})
    from raytune_ft.report import results

    both = results.with_stage2(stage1, stage2, ["lr"])
    both["stage1_rank"] = both["trial_id"].map(dict(zip(chosen["trial_id"], chosen["stage1_rank"], strict=True)))
    assert both["stage"].tolist() == [1] * 6 + [2] * 3
    assert both.loc[both["stage"] == 2, "promoted_from"].tolist() == ["a", "b", "c"]
    assert set(results.front(both, OBJECTIVES)["trial_id"]) <= {"x", "y", "z"}  # full-data trials only
    assert set(results.front(stage1, OBJECTIVES)["trial_id"]) == {"a", "b", "c"}  # none: the subset front
    # a subset row better than every full-data row in both objectives still stays off the front
    best_subset = both.assign(val_acc=np.where(both["trial_id"] == "a", 0.999, both["val_acc"]),
                              nonzero_params=np.where(both["trial_id"] == "a", 10, both["nonzero_params"]))
    assert "a" not in set(results.front(best_subset, OBJECTIVES)["trial_id"])
    table, summary = fidelity.agreement(both, OBJECTIVES)
    assert summary["n"] == 3 and summary["kendall_tau"] == pytest.approx(1.0)  # same order in both stages
    assert table["on_full_front"].all() and table["rank_full"].tolist() == [1, 2, 3]
    reversed_ = both.assign(val_acc=np.where(both["stage"] == 2, both["val_acc"].iloc[::-1].to_numpy(),
                                             both["val_acc"]))
    assert fidelity.agreement(reversed_, OBJECTIVES)[1]["kendall_tau"] == pytest.approx(-1.0)


def test_random_promotions_are_drawn_from_the_rest_seeded_and_marked():
    chosen = fidelity.promoted(_stage1(), OBJECTIVES, 2, random=2, seed=0)
    assert chosen["promotion"].tolist() == ["top", "top", "random", "random"]
    assert set(chosen["trial_id"][:2]) <= {"a", "b", "c"} and "f" not in set(chosen["trial_id"])
    assert not set(chosen["trial_id"][2:]) & set(chosen["trial_id"][:2])
    again = fidelity.promoted(_stage1(), OBJECTIVES, 2, random=2, seed=0)
    assert again["trial_id"].tolist() == chosen["trial_id"].tolist()  # seeded: a resume draws the same
    assert len(fidelity.promoted(_stage1(), OBJECTIVES, 4, random=3)) == 5  # no more than there are


def _two_stages(full: list[float], promotion: list[str]) -> pd.DataFrame:
    stage1 = _stage1().iloc[:4].assign(stage=1, promotion=promotion)
    stage2 = pd.DataFrame({"trial_id": list("wxyz"), "status": ["completed"] * 4, "val_acc": full,
                           "nonzero_params": [1000, 500, 100, 600], "stage": 2, "promoted_from": list("abcd")})
    return pd.concat([stage1, stage2], ignore_index=True)


def test_a_random_recipe_that_beats_a_promoted_one_is_said_in_one_line(tmp_path):
    # subset: a 0.95, b 0.90, c 0.80, d 0.85; d was drawn at random and beats c and b on all the data
    both = _two_stages([0.96, 0.91, 0.92, 0.94], ["top", "top", "top", "random"])
    table, summary = fidelity.agreement(both, OBJECTIVES)
    assert table["promotion"].tolist() == ["top", "top", "top", "random"]
    assert summary["disagreement"].startswith("the subset's ranking disagreed with the full data: recipe d, drawn "
                                              "at random (subset val_acc 0.8500), reached 0.9400")
    assert "above promoted recipe b" in summary["disagreement"]
    low, high = summary["kendall_tau_ci95"]
    assert -1 <= low <= summary["kendall_tau"] <= high <= 1 and np.isfinite(summary["spearman_rho"])
    agreeing = fidelity.agreement(_two_stages([0.96, 0.93, 0.89, 0.90], ["top", "top", "top", "random"]),
                                  OBJECTIVES)[1]
    assert agreeing["disagreement"] is None and agreeing["kendall_tau"] == pytest.approx(1.0)
    summary = fidelity.write_agreement(tmp_path, both, OBJECTIVES)
    assert json.loads((tmp_path / "fidelity.json").read_text())["disagreement"] == summary["disagreement"]


def test_a_stage1_trial_trains_on_the_same_stratified_subset_and_its_teacher_logits():
    y = torch.arange(400) % 4
    x = torch.arange(400, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 3, 2, 2).contiguous()
    logits = torch.arange(400, dtype=torch.float32).view(-1, 1).expand(-1, 4).contiguous()
    cfg = TrialConfig(data_fraction=0.25, use_kd=True, batch_size=500, data_seed=0)
    keep = trial.train_subset(y, cfg)
    assert len(keep) == 100 and torch.bincount(y[keep]).tolist() == [25] * 4
    assert torch.equal(keep, trial.train_subset(y, cfg))  # every process draws the same rows
    from raytune_ft.data import Splits

    data = Splits(x, y, x[:8], y[:8], tuple("abcd"))
    source, teacher_logits, _ = trial.training_inputs(cfg, data, dist=train.Dist(), teacher_logits=logits)
    images, labels, idx = next(iter(source.epoch(0)))
    assert len(labels) == 100
    # batch index i is a row of the subset, and the teacher's logits follow it
    assert torch.equal(teacher_logits[idx][:, 0], images[:, 0, 0, 0])


@pytest.mark.parametrize(("assignment", "fragment"), [
    ("data_fraction=0", r"data_fraction must be > 0.0 and <= 1.0, got 0.0"),
    ("data_fraction=1.5", r"data_fraction must be > 0.0 and <= 1.0, got 1.5"),
])
def test_a_fraction_outside_0_1_is_refused_naming_the_key(assignment, fragment):
    key, value = assignment.split("=")
    with pytest.raises(ValueError, match=fragment):
        TrialConfig(**{key: float(value)})


@pytest.mark.e2e
def test_two_stage_search_promotes_retrains_and_resumes_without_repeating_stage_1(tmp_path):
    import ray

    argv = ["--storage-path", str(tmp_path), "--name", "fid", "--set", "max_samples=240", "--set", "epochs=1",
            "--set", "image_size=32", "--set", "search.initial=[]", "--set", "search.max_concurrent=2",
            "--set", "teacher.epochs=1", "--set", "teacher.model=efficientnet_lite0", "--num-samples", "3",
            "--set", "latency_budget_s=0.05", "--set", "search.data_fraction=0.5", "--set", "search.promote=2",
            "--set", "search.promote_epochs=2"]
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        assert search.main(argv) == 0
        exp = tmp_path / "fid"
        trials = pd.read_csv(exp / "trials.csv")
        stage1, stage2 = trials[trials["stage"] == 1], trials[trials["stage"] == 2]
        assert len(stage1) == 3 and (stage1["data_fraction"] == 0.5).all()
        assert len(stage2) == 2 and (stage2["data_fraction"] == 1.0).all()
        # stage 1 trains 1 epoch, the full-data retraining search.promote_epochs = 2, and both are complete
        assert (stage1["epochs_trained"] == 1).all() and (stage2["epochs_trained"] == 2).all()
        assert (stage2["epochs"] == 2).all() and (stage1["epochs"] == 1).all()
        assert (trials["status"] == "completed").all()
        assert set(stage2["promoted_from"]) <= set(stage1["trial_id"])
        front = pd.read_csv(exp / "pareto.csv")
        assert set(front["trial_id"]) <= set(stage2["trial_id"])  # the front is made of full-data trials
        summary = json.loads((exp / "fidelity.json").read_text())
        assert summary["n"] == 2 and "kendall_tau" in summary
        from raytune_ft.report import results

        assert results.load_experiment(exp).state == "finished"
        killed = tmp_path / "killed"  # as a kill during stage 2 leaves it: stage 1 only
        shutil.copytree(exp, killed, ignore=shutil.ignore_patterns("stage2", "trials.csv", "pareto.csv"))
        assert results.load_experiment(killed).state == "unfinished"
        from raytune_ft import analyze

        assert analyze.main([str(exp), "--out", str(tmp_path / "report")]) == 0
        page = (tmp_path / "report" / "report.html").read_text()
        assert "Data-size fidelity" in page and (tmp_path / "report" / "fidelity.png").stat().st_size > 0
        # --resume after the end: neither stage runs a trial again
        assert search.main([*argv, "--resume"]) == 0
        again = pd.read_csv(exp / "trials.csv")
        assert sorted(again["trial_id"]) == sorted(trials["trial_id"])
    finally:
        ray.shutdown()


@pytest.mark.parametrize(("assignments", "fragment"), [
    (["search.data_fraction=0"], r"search\.data_fraction: must be a number in \(0, 1\]"),
    (["search.data_fraction=1.5"], r"search\.data_fraction: must be a number in \(0, 1\]"),
    (["search.data_fraction=0.5", "search.promote=9"], r"search\.promote: promotes 9 recipes .*num_samples = 6"),
    (["search.promote=0"], r"search\.promote: must be an int >= 1"),
    (["search.promote_epochs=0"], r"search\.promote_epochs: must be an int >= 1 .* or null"),
    (["search.promote_epochs=ten"], r"search\.promote_epochs: must be an int >= 1 .*got 'ten'"),
    (["search.data_fraction=abc"], r"search\.data_fraction: must be a number in \(0, 1\].*got 'abc'"),
    (["search.promote=1.5"], r"search\.promote: must be an int >= 1, got 1\.5"),
    (["search.promote_random=-1"], r"search\.promote_random: must be an int >= 0, got -1"),
    (["search.promote_random=x"], r"search\.promote_random: must be an int >= 0, got 'x'"),
    (["search.data_fraction=0.5", "search.promote=4", "search.promote_random=3"],
     r"search\.promote_random: 4 best and 3 random recipes cannot be drawn from search\.num_samples = 6"),
])
def test_bad_fidelity_settings_fail_at_load_naming_the_key(assignments, fragment):
    from raytune_ft.space import SpaceError, builtin_space_path, load_space

    with pytest.raises(SpaceError, match=fragment) as caught:
        load_space(builtin_space_path("quickstart")).with_overrides(assignments)
    assert "\n" not in str(caught.value)  # one line


@pytest.mark.parametrize(("search_yaml", "fragment"), [
    ("data_fraction: 0", r"fid\.yaml: search\.data_fraction: must be a number in \(0, 1\]"),
    ("data_fraction: 0.5\n  promote: 0", r"fid\.yaml: search\.promote: must be an int >= 1"),
    ("data_fraction: 0.5\n  promote: 7", r"fid\.yaml: search\.promote: promotes 7 recipes"),
    ("promote_random: -2", r"fid\.yaml: search\.promote_random: must be an int >= 0, got -2"),
    ("data_fraction: 0.5\n  promote: 5\n  promote_random: 2", r"fid\.yaml: search\.promote_random: 5 best and 2"),
    ("promote_epochs: 0", r"fid\.yaml: search\.promote_epochs: must be an int >= 1"),
])
def test_bad_fidelity_settings_in_the_file_fail_at_load_in_one_line_naming_file_and_key(search_yaml, fragment,
                                                                                        tmp_path):
    import yaml

    from raytune_ft.space import SpaceError, builtin_space_path, load_space

    raw = yaml.safe_load(builtin_space_path("quickstart").read_text())
    assert raw["search"]["num_samples"] == 6, "the cases below count on the quickstart's 6 trials"
    text = builtin_space_path("quickstart").read_text().replace("\nsearch:\n", f"\nsearch:\n  {search_yaml}\n", 1)
    assert text != builtin_space_path("quickstart").read_text()
    (tmp_path / "fid.yaml").write_text(text)
    with pytest.raises(SpaceError, match=fragment) as caught:
        load_space(tmp_path / "fid.yaml")
    assert "\n" not in str(caught.value)


STAGE2_DRIVER = '''
import json, sys
from pathlib import Path

import ray
from ray import tune

from raytune_ft import data as data_mod
from raytune_ft.config import TrialConfig
from raytune_ft.search import fidelity, trial

exp, fixed, configs = Path(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3])
ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=True)
data = data_mod.load_splits(TrialConfig.from_dict(fixed)).without_test()
trainable = tune.with_parameters(trial.tune_trial, fixed=fixed, data=data, teacher_logits=None)
fidelity.run_stage2(configs, exp, trainable, max_concurrent=1, keep_checkpoints=1, max_failures=0)
print("stage 2 returned", flush=True)
'''


@pytest.mark.e2e
def test_stage2_killed_mid_trial_resumes_without_repeating_a_finished_trial_and_a_failed_one_is_recorded(tmp_path):
    """The search's stage 2 (fidelity.run_stage2 with the trials' own trainable, one trial at a time) killed
    with SIGKILL — the driver and the Ray processes it started — while its third recipe trains: the
    recipe that had finished is not trained again, the interrupted one continues after its last epoch, a
    recipe whose trial failed (lr < 0) is recorded as failed and did not stop the ones after it."""
    import os
    import subprocess
    import sys
    import time

    from raytune_ft.report import results
    from tests.conftest import kill_session, session_pids

    exp = tmp_path / "exp"
    exp.mkdir()
    fixed = {"dataset": "digits", "max_samples": 240, "image_size": 8, "model": "compact_cnn_16", "weights": "none",
             "epochs": 2, "batch_size": 64, "export": False, "cpus_per_trial": 1}
    (exp / "space.json").write_text(json.dumps({"fixed": fixed, "params": ["lr", "epochs"]}))
    configs = [{"lr": 0.01, "data_fraction": 1.0},  # finishes before the kill
               {"lr": -1.0, "data_fraction": 1.0},  # fails: TrialConfig refuses it in the trial
               {"lr": 0.02, "data_fraction": 1.0, "epochs": 25}]  # killed while it trains
    (tmp_path / "driver.py").write_text(STAGE2_DRIVER)
    command = [sys.executable, str(tmp_path / "driver.py"), str(exp), json.dumps(fixed), json.dumps(configs)]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    stage = exp / "stage2"

    def trial_dir(lr: float) -> Path | None:
        return next((d for d in stage.glob("trial_*") if (d / "params.json").is_file()
                     and json.loads((d / "params.json").read_text()).get("lr") == lr), None)

    def epochs(lr: float) -> list[int]:
        folder = trial_dir(lr)
        return [r["epoch"] for r in results._read_results(folder / "result.json")] if folder else []

    log = open(tmp_path / "first.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    try:
        deadline = time.monotonic() + 420
        while time.monotonic() < deadline and proc.poll() is None and len(epochs(0.02)) < 3:
            time.sleep(0.1)
    finally:
        kill_session(proc)
        log.close()
    first = (tmp_path / "first.log").read_text()
    assert 3 <= len(epochs(0.02)) < 25, first[-3000:]
    assert epochs(0.01) == [1, 2] and trial_dir(-1.0) is not None, first[-3000:]
    assert not session_pids(proc.pid)
    killed_at = len(epochs(0.02))

    second = subprocess.run(command, capture_output=True, text=True, env=env, timeout=420)
    text = second.stdout + second.stderr
    assert second.returncode == 0 and "stage 2: resuming" in text and "stage 2 returned" in text, text[-3000:]
    assert epochs(0.01) == [1, 2]  # finished before the kill: not trained again
    resumed = epochs(0.02)
    assert resumed[:killed_at] == list(range(1, killed_at + 1)) and sorted(set(resumed)) == list(range(1, 26))
    # continued from its newest checkpoint, not from the start: at most the epoch the kill cut short runs twice
    assert resumed.count(1) == 1 and len(resumed) <= 26, resumed
    rows = results.read_trials(stage).set_index("lr")
    assert len(rows) == 3  # no recipe handed out twice
    assert rows.loc[0.01, "status"] == "completed" and rows.loc[0.02, "status"] == "completed"
    assert rows.loc[-1.0, "status"] == "failed" and "lr" in rows.loc[-1.0, "error"]
