"""Expert-seeded starts (`search.initial`, recipes.py) and the samplers that take them: validation
errors, the enqueued trials in the real Optuna study, start-up counting, and `--resume` of a real
search killed while a recipe trains."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest

from raytune_ft.report import results
from raytune_ft.search import searcher
from raytune_ft.space import spaces
from raytune_ft.space.spaces import SpaceError, load_space
from tests.conftest import kill_session

SPACE = """\
name: seeded
fixed: {epochs: 2}
teacher: {model: efficientnet_lite2}
search:
  sampler: tpe
  n_startup_trials: 2
  initial:
    - {lr: 0.01, use_kd: true, kd_alpha: 0.5, pruning_frequency: 10, model: efficientnet_lite0}
    - {lr: 0.002, use_kd: false, pruning_frequency: 20, model: efficientnet_lite0}
params:
  model: {type: categorical, choices: [efficientnet_lite0, efficientnet_lite1]}
  lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}
  use_kd: {type: categorical, choices: [true, false]}
  kd_alpha: {type: float, low: 0.1, high: 0.9, when: {use_kd: true}}
  pruning_frequency: {type: int, low: 5, high: 20, step: 5}
objectives: {val_acc: max, nonzero_params: min}
"""
FIRST = "    - {lr: 0.01, use_kd: true, kd_alpha: 0.5, pruning_frequency: 10, model: efficientnet_lite0}\n"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "seeded.yaml"
    path.write_text(text)
    return path


@pytest.fixture
def seeded(tmp_path) -> spaces.Space:
    return load_space(write(tmp_path, SPACE))


def test_recipes_load_coerced_in_file_order(seeded):
    assert seeded.search.initial == (
        {"model": "efficientnet_lite0", "lr": 0.01, "use_kd": True, "kd_alpha": 0.5, "pruning_frequency": 10},
        {"model": "efficientnet_lite0", "lr": 0.002, "use_kd": False, "pruning_frequency": 20},
    )
    assert all(isinstance(r["lr"], float) for r in seeded.search.initial)


@pytest.mark.parametrize("recipe, fragments", [
    ("{lr: 0.01, use_kd: true, kd_alpa: 0.5, pruning_frequency: 10, model: efficientnet_lite0}",
     ["search.initial[0].kd_alpa", "not a searched param", "did you mean 'kd_alpha'"]),
    ("{lr: 0.01, use_kd: false, kd_alpha: 0.5, pruning_frequency: 10, model: efficientnet_lite0}",
     ["search.initial[0].kd_alpha", "inactive", "use_kd is True", "use_kd=False"]),
    ("{lr: 0.01, use_kd: true, pruning_frequency: 10, model: efficientnet_lite0}",
     ["search.initial[0].kd_alpha", "missing", "active because use_kd=True"]),
    ("{use_kd: false, pruning_frequency: 10, model: efficientnet_lite0}",
     ["search.initial[0].lr", "missing", "always searched"]),
    ("{lr: 0.5, use_kd: false, pruning_frequency: 10, model: efficientnet_lite0}",
     ["search.initial[0].lr", "0.5 is outside the searched range [0.001, 0.01]"]),
    ("{lr: fast, use_kd: false, pruning_frequency: 10, model: efficientnet_lite0}",
     ["search.initial[0].lr", "finite number", "'fast'"]),
    ("{lr: 0.01, use_kd: false, pruning_frequency: 12, model: efficientnet_lite0}",
     ["search.initial[0].pruning_frequency", "12 is not on the grid", "step 5"]),
    ("{lr: 0.01, use_kd: false, pruning_frequency: 10.0, model: efficientnet_lite0}",
     ["search.initial[0].pruning_frequency", "must be an int", "10.0"]),
    ("{lr: 0.01, use_kd: maybe, pruning_frequency: 10, model: efficientnet_lite0}",
     ["search.initial[0].use_kd", "use_kd must be bool", "'maybe'"]),
    ("{lr: 0.01, use_kd: false, pruning_frequency: 10, model: efficientnet_lite2}",
     ["search.initial[0].model", "'efficientnet_lite2' is not one of the choices", "efficientnet_lite1"]),
    ("{lr: 0.01, use_kd: false, pruning_frequency: 10, model: efficientnet_lite0, epochs: 3}",
     ["search.initial[0].epochs", "epochs is fixed (= 2), not searched"]),
    ("[lr, 0.01]", ["search.initial[0]", "must be a non-empty mapping"]),
])
def test_a_bad_recipe_is_an_error_naming_file_index_and_param(tmp_path, recipe, fragments):
    path = write(tmp_path, SPACE.replace(FIRST, f"    - {recipe}\n"))
    with pytest.raises(SpaceError) as err:
        load_space(path)
    message = str(err.value)
    assert message.startswith(f"{path}: search.initial[0]")
    for fragment in fragments:
        assert fragment in message, message


def test_the_second_recipe_is_named_by_its_index_and_a_whole_config_is_checked(tmp_path):
    text = SPACE.replace("fixed: {epochs: 2}", "fixed: {epochs: 2, use_pruning: true}")
    text = text.replace("  pruning_frequency:", "  pruning_start: {type: float, low: 0.0, high: 0.6}\n"
                        "  pruning_end: {type: float, low: 0.3, high: 0.9}\n  pruning_frequency:")
    text = text.replace("pruning_frequency: 10,", "pruning_frequency: 10, pruning_start: 0.1, pruning_end: 0.8,")
    ok = text.replace("pruning_frequency: 20,", "pruning_frequency: 20, pruning_start: 0.2, pruning_end: 0.4,")
    assert load_space(write(tmp_path, ok)).search.initial[1]["pruning_end"] == 0.4
    path = write(tmp_path, text.replace("pruning_frequency: 20,", "pruning_frequency: 20, pruning_start: 0.6, "
                                        "pruning_end: 0.4,"))
    with pytest.raises(SpaceError, match=r"seeded\.yaml: search\.initial\[1\]: .*pruning_end.*pruning_start"):
        load_space(path)
    not_a_list = SPACE[:SPACE.index("  initial:")] + "  initial: {lr: 0.01}\n" + SPACE[SPACE.index("params:"):]
    with pytest.raises(SpaceError, match=r"search\.initial: must be a list of recipes"):
        load_space(write(tmp_path, not_a_list))


def test_set_search_initial_replaces_or_drops_the_recipes(seeded):
    assert seeded.with_overrides(["search.initial=[]"]).search.initial == ()
    one = seeded.with_overrides(["search.initial=[{lr: 0.005, use_kd: false, pruning_frequency: 5, "
                                 "model: efficientnet_lite1}]"])
    assert one.search.initial == ({"model": "efficientnet_lite1", "lr": 0.005, "use_kd": False,
                                   "pruning_frequency": 5},)
    with pytest.raises(SpaceError, match=r"--set search\.initial=.*search\.initial\[0\]\.lr: missing"):
        seeded.with_overrides(["search.initial=[{use_kd: false, pruning_frequency: 5, model: efficientnet_lite1}]"])
    with pytest.raises(SpaceError, match=r"search.n_startup_trials: must be an int >= 1, got 0"):
        seeded.with_overrides(["search.n_startup_trials=0"])


@pytest.mark.parametrize("name", spaces.builtin_space_names())
def test_every_shipped_space_has_two_to_four_commented_recipes(name):
    space = load_space(spaces.builtin_space_path(name))
    assert space.search.sampler == "tpe"
    assert 2 <= len(space.search.initial) <= 4
    for recipe in space.search.initial:
        space.trial_config(recipe)
    text = Path(space.path).read_text()
    block = text[text.index("  initial:"):]
    recipes = [i for i, line in enumerate(block.splitlines()) if line.startswith("    - {")]
    lines = block.splitlines()
    assert len(recipes) == len(space.search.initial)
    assert all(lines[i - 1].lstrip().startswith("#") for i in recipes)  # each says where it comes from


def _searcher(space: spaces.Space) -> searcher.HonestOptunaSearch:
    metrics, modes = space.metric_and_mode()
    return searcher.HonestOptunaSearch(space=space.define_by_run(), metric=metrics, mode=modes,
                                      sampler=space.make_sampler(), epochs=2,
                                      points_to_evaluate=[dict(r) for r in space.search.initial])


def _models_the_next_trial(study: optuna.Study) -> bool:
    """Whether the sampler's model (not its random start-up) would propose the next trial (a
    probe trial, told FAIL afterwards: no sampler counts it; none may be waiting, ask() would take it)."""
    assert not study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    trial = study.ask()
    frozen = study._storage.get_trial(trial._trial_id)
    space = study.sampler.infer_relative_search_space(study, frozen)
    relative = study.sampler.sample_relative(study, frozen, space)
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    return bool(relative)


@pytest.mark.parametrize("sampler", ["tpe", "gp"])
def test_recipes_run_first_as_ordinary_study_trials_and_count_as_startup(seeded, sampler):
    space = seeded.with_overrides([f"search.sampler={sampler}"])
    searcher = _searcher(space)
    study = searcher._ot_study
    first = searcher.suggest("a")
    assert first == space.search.initial[0]
    searcher.on_trial_complete("a", {"epoch": 2, "val_acc": 0.8, "nonzero_params": 1000})
    assert searcher.suggest("b") == space.search.initial[1]
    assert not _models_the_next_trial(study)  # 1 finished < n_startup_trials 2
    searcher.on_trial_complete("b", {"epoch": 2, "val_acc": 0.7, "nonzero_params": 500})
    assert _models_the_next_trial(study)  # the two recipes are the start-up trials
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert [t.number for t in done] == [0, 1]
    for t, recipe in zip(done, space.search.initial, strict=True):
        assert {k: t.params[k] for k in recipe} == recipe
        assert "fixed_params" in t.system_attrs  # enqueued, then told like any other trial
    assert done[0].values == [0.8, 1000]


def test_gp_samples_a_flat_space_and_the_config_keeps_the_active_params(seeded):
    space = seeded.with_overrides(["search.sampler=gp", "search.initial=[]"])
    assert isinstance(space.make_sampler(), optuna.samplers.GPSampler)
    searcher = _searcher(space)
    for i in range(4):
        config = searcher.suggest(str(i))
        trial = searcher._ot_trials[str(i)]
        assert set(trial.params) == {p.name for p in space.params}  # every param, every trial
        assert ("kd_alpha" in config) == config["use_kd"]  # the config: only what the recipe uses
        space.trial_config(config)
        searcher.on_trial_complete(str(i), {"epoch": 2, "val_acc": 0.5 + i / 10, "nonzero_params": 1000 - i})
    tpe = seeded.with_overrides(["search.initial=[]"])
    searcher = _searcher(tpe)
    config = searcher.suggest("x")
    assert set(searcher._ot_trials["x"].params) == set(config)  # tpe: only active params are sampled


# --- a real search, killed while a recipe trains, then resumed -----------------------------------

EPOCHS = 4
REAL = f"""
name: seeded
fixed: {{model: efficientnet_lite0, weights: none, dataset: digits, max_samples: 150, image_size: 32,
        epochs: {EPOCHS}, batch_size: 32, export: false, cpus_per_trial: 1, use_pruning: true,
        bn_recalibration_batches: 1}}
teacher: {{epochs: 1}}
search:
  sampler: tpe
  num_samples: 3
  max_concurrent: 1
  n_startup_trials: 2
  initial:
    - {{lr: 0.005, final_sparsity: 0.8}}
    - {{lr: 0.002, final_sparsity: 0.6}}
params:
  lr: {{type: float, low: 1.0e-3, high: 1.0e-2, log: true}}
  final_sparsity: {{type: float, low: 0.5, high: 0.9}}
objectives: {{val_acc: max, nonzero_params: min}}
"""


def _epochs(trial_dir: Path) -> list[int]:
    return [r["epoch"] for r in results._read_results(trial_dir / "result.json")]


def _search(space: Path, storage: Path, log: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "raytune_ft.search", "--space", str(space), "--storage-path",
                             str(storage), "--name", "s", *extra], stdout=open(log, "a"),  # noqa: SIM115
                            stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})


def _recorded_trials(exp: Path) -> int:
    """Trials in Tune's newest experiment snapshot (the searcher's state is saved with it)."""
    files = sorted(exp.glob("experiment_state-*.json"), key=lambda p: p.stat().st_mtime)
    return len(json.loads(files[-1].read_text())["trial_data"]) if files else 0


@pytest.mark.e2e
def test_resume_of_a_seeded_search_does_not_run_a_started_recipe_again(tmp_path):
    space, storage, log = tmp_path / "seeded.yaml", tmp_path / "results", tmp_path / "search.log"
    space.write_text(REAL)
    exp = storage / "s"
    proc = _search(space, storage, log)

    def second_recipe_training() -> Path | None:  # trial folders are named by random ids: not in order
        trials = sorted(exp.glob("trial_*"), key=lambda t: -len(_epochs(t)))
        if len(trials) != 2 or len(_epochs(trials[0])) < EPOCHS or _recorded_trials(exp) < 2:
            return None
        return trials[1] if 1 <= len(_epochs(trials[1])) < EPOCHS else None

    try:
        deadline, unfinished = time.monotonic() + 480, None
        while time.monotonic() < deadline and proc.poll() is None and unfinished is None:
            unfinished = second_recipe_training()
            time.sleep(0.2)
    finally:
        kill_session(proc)  # the driver and the local Ray cluster it started share its session
    assert unfinished is not None, log.read_text()[-4000:]
    epochs_before = len(_epochs(unfinished))
    recipes = load_space(space).search.initial
    config = results._read_results(unfinished / "result.json")[0]["config"]
    assert {k: config[k] for k in recipes[1]} == recipes[1]  # killed while the second recipe trained

    resumed = _search(space, storage, log, "--resume")
    assert resumed.wait(timeout=600) == 0, log.read_text()[-4000:]
    trials = pd.read_csv(exp / "trials.csv")
    assert len(trials) == 3 and (trials.status == "completed").all()
    ran = trials[["lr", "final_sparsity"]].to_dict("records")
    assert all(ran.count(r) == 1 for r in recipes)  # each recipe ran exactly once
    epochs = _epochs(unfinished)  # the recipe went on from its checkpoint: no epoch trained twice
    assert epochs == list(range(1, EPOCHS + 1)) and epochs_before < EPOCHS
    study = pd.read_csv(exp / "optuna_trials.csv").sort_values("number")
    assert list(study["state"]) == ["COMPLETE"] * 3
    assert study[["params_lr", "params_final_sparsity"]].iloc[:2].values.tolist() == \
        [[r["lr"], r["final_sparsity"]] for r in recipes]
