"""The sampler's study in Optuna's journal file (search/journal.py, searcher.HonestOptunaSearch):
what `optuna.load_study` reads after trials are asked and told, after Tune saved the searcher and
restored it on --resume (Tune's own SearchGenerator save/restore, no Ray cluster), and after a
writer was killed mid-line. The journal of a real search is tested in tests/test_api.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import optuna
import pytest
from ray.tune.search.search_generator import SearchGenerator

from raytune_ft import layout
from raytune_ft.search import journal
from raytune_ft.search.searcher import make_searcher
from raytune_ft.space.spaces import Space, builtin_space_path, load_space

EPOCHS = 2


@pytest.fixture
def space() -> Space:
    # two at a time, no seeded recipes: every trial is sampled
    return load_space(builtin_space_path("quickstart")).with_overrides(
        [f"epochs={EPOCHS}", "search.max_concurrent=2", "search.initial=[]", "search.sampler=random",
         "search.synchronous=true"])


def _searcher(space: Space, exp_dir: Path):
    searcher = make_searcher(space, exp_dir)
    searcher.set_search_properties(None, None, {})
    return searcher


def _tell(searcher, trial_id: str, config: dict, acc: float, size: float, *, epoch: int = EPOCHS,
          error: bool = False) -> None:
    searcher.on_trial_complete(trial_id, None if error else {
        "val_acc": acc, "model_bytes_compressed": size, "epoch": epoch, "config": config}, error=error)


def _rows(study: optuna.Study) -> list[tuple]:
    return [(t.number, t.state.name, t.user_attrs.get("trial_id"), t.values) for t in study.trials]


def test_the_journal_holds_the_study_and_follows_it_back_on_resume(space: Space, tmp_path: Path):
    exp = tmp_path / "exp"
    exp.mkdir()
    searcher = _searcher(space, exp)  # batch=True: results reach the study when the whole pair ended
    configs = {t: searcher.suggest(t) for t in ("t0", "t1")}
    _tell(searcher, "t0", configs["t0"], 0.9, 2e6)
    SearchGenerator(searcher).save_to_dir(str(tmp_path), session_str="s")  # Tune's snapshot
    _tell(searcher, "t1", configs["t1"], 0.8, 1e6)  # after the snapshot: lost to a killed driver
    searcher.suggest("t2")
    path = exp / layout.OPTUNA_JOURNAL
    study = journal.load_study(path)
    assert study.study_name == "exp" and study.metric_names == ["val_acc", "model_bytes_compressed"]
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    assert _rows(study) == [(0, "COMPLETE", "t0", [0.9, 2e6]), (1, "COMPLETE", "t1", [0.8, 1e6]),
                            (2, "RUNNING", "t2", None)]

    # --resume: Tune unpickles the searcher as built, then restores the snapshot into it
    resumed = make_searcher(space, exp)
    SearchGenerator(resumed).restore_from_dir(str(tmp_path))
    assert _rows(journal.load_study(path)) == [(0, "RUNNING", "t0", None), (1, "RUNNING", "t1", None)]
    _tell(resumed, "t1", configs["t1"], 0.8, 1e6)  # Tune runs t1 on from its checkpoint
    pair = {t: resumed.suggest(t) for t in ("t3", "t4")}
    _tell(resumed, "t3", pair["t3"], 0.5, 5e5, epoch=1)  # stopped early: PRUNED, no values
    _tell(resumed, "t4", pair["t4"], 0, 0, error=True)
    study = journal.load_study(path)
    assert _rows(study) == [(0, "COMPLETE", "t0", [0.9, 2e6]), (1, "COMPLETE", "t1", [0.8, 1e6]),
                            (2, "PRUNED", "t3", None), (3, "FAIL", "t4", None)]
    assert study.trials[2].user_attrs["early_stopped_at_epoch"] == 1
    memory = resumed.searcher._ot_study.trials  # the sampler's own study: the journal is its copy
    assert [(t.params, t.state) for t in study.trials] == [(t.params, t.state) for t in memory]
    assert optuna.get_all_study_names(journal.open_storage(path)) == ["exp"]  # the rolled-back copy is gone


def test_a_line_torn_by_a_killed_writer_is_set_aside(space: Space, tmp_path: Path):
    searcher = _searcher(space, tmp_path)
    config = searcher.suggest("t0")
    path = tmp_path / layout.OPTUNA_JOURNAL
    with open(path, "a") as f:
        f.write('{"op_code": 5, "worker_id": "x", "trial_')  # a write cut short
    _tell(searcher, "t0", config, 0.9, 2e6)
    assert _rows(journal.load_study(path)) == [(0, "COMPLETE", "t0", [0.9, 2e6])]
    assert (tmp_path / f"{layout.OPTUNA_JOURNAL}.broken").read_text().endswith('"trial_')


# --- the study of a real search (the shared `readme_run`), and of the same search resumed ---------


def _completed_values(exp_dir: Path) -> dict[str, list[float]]:
    import pandas as pd

    trials = pd.read_csv(exp_dir / layout.TRIALS_CSV)
    done = trials[trials["status"] == "completed"]
    return {row.trial_id: [float(row.val_acc), float(row.model_bytes_compressed)] for row in done.itertuples()}


def _study_values(study: optuna.Study) -> dict[str, list[float]]:
    return {t.user_attrs["trial_id"]: t.values for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE}


@pytest.mark.e2e
def test_optuna_loads_the_study_of_a_search_and_draws_its_front(readme_run):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(readme_run.path / layout.OPTUNA_JOURNAL)))
    study = optuna.load_study(study_name=readme_run.path.name, storage=storage)  # as a user would
    assert study.metric_names == ["val_acc", "model_bytes_compressed"]
    assert _study_values(study) == _completed_values(readme_run.path)  # every completed trial, its values
    figure = optuna.visualization.plot_pareto_front(study)
    assert sum(len(trace.x) for trace in figure.data if trace.x is not None) == len(study.trials)
    assert figure.layout.xaxis.title.text == "val_acc"


@pytest.mark.e2e
def test_a_resumed_search_keeps_one_copy_of_every_trial_in_its_study(readme_run, tmp_path):
    import json

    import raytune_ft
    from tests.conftest import tiny_overrides

    copy = tmp_path / readme_run.path.name
    shutil.copytree(readme_run.path, copy, ignore=shutil.ignore_patterns(layout.MLFLOW_DB))
    before = journal.load_study(copy / layout.OPTUNA_JOURNAL)
    overrides = {k: v for k, v in tiny_overrides().items() if k != "search.callbacks"}
    resumed = raytune_ft.run_search("quickstart", overrides, storage_path=str(tmp_path), name=copy.name, resume=True)
    assert len(resumed.trials) == 3 and (resumed.trials["status"] == "completed").all()
    study = journal.load_study(copy / layout.OPTUNA_JOURNAL)
    assert [(t.number, t.state, t.params) for t in study.trials] == [(t.number, t.state, t.params)
                                                                        for t in before.trials]
    assert _study_values(study) == _completed_values(copy)
    assert json.loads((copy / layout.SPACE_JSON).read_text())["search"]["num_samples"] == 3


def test_a_resume_from_a_moved_folder_writes_into_the_new_one(space: Space, tmp_path: Path):
    from raytune_ft.search.searcher import resume_into

    first, moved = tmp_path / "first" / "exp", tmp_path / "moved" / "exp"
    first.mkdir(parents=True)
    searcher = _searcher(space, first)
    config = searcher.suggest("t0")
    SearchGenerator(searcher).save_to_dir(str(tmp_path), session_str="s")
    shutil.copytree(first, moved)
    written = (first / layout.OPTUNA_JOURNAL).read_text()
    resumed = make_searcher(space, first)  # Tune's pickle names the first folder
    resume_into(moved)
    try:
        SearchGenerator(resumed).restore_from_dir(str(tmp_path))
    finally:
        resume_into(None)
    _tell(resumed, "t0", config, 0.9, 2e6)
    assert _rows(journal.load_study(moved / layout.OPTUNA_JOURNAL)) == [(0, "COMPLETE", "t0", [0.9, 2e6])]
    assert (moved / layout.OPTUNA_TRIALS_CSV).is_file() and not (first / layout.OPTUNA_TRIALS_CSV).exists()
    assert (first / layout.OPTUNA_JOURNAL).read_text() == written


def test_a_new_trial_is_asked_for_as_soon_as_one_ends_unless_synchronous(space: Space, tmp_path: Path):
    """Asynchronous (the default): the slot of a trial that ended is filled at once. synchronous:
    only when the whole group of max_concurrent ended (reproducible sampling, idle cores)."""
    for synchronous, refills in ((False, True), (True, False)):
        exp = tmp_path / f"exp-{synchronous}"
        exp.mkdir()
        searcher = _searcher(space.with_overrides([f"search.synchronous={str(synchronous).lower()}"]), exp)
        configs = {t: searcher.suggest(t) for t in ("t0", "t1")}
        assert searcher.suggest("t2") is None  # two running: no third
        _tell(searcher, "t0", configs["t0"], 0.9, 2e6)
        assert (searcher.suggest("t2") is not None) is refills
        _tell(searcher, "t1", configs["t1"], 0.8, 1e6)
        assert searcher.suggest("t3") is not None
