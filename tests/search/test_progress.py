"""The time-left estimate (search/progress.py and trial.Progress.estimate) on tiny inputs: the
scheduling arithmetic, the per-trial and per-model epoch clocks, the record, and
benchmarks/eta_error.py's measurement on a hand-written record."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from raytune_ft.search import progress

ROOT = Path(__file__).resolve().parents[2]


def test_makespan_puts_each_job_on_the_first_free_slot():
    assert progress.makespan([], 2) == 0.0
    assert progress.makespan([10, 10, 10], 1) == 30
    assert progress.makespan([10, 10, 10], 2) == 20  # 10+10 on one slot, 10 on the other
    assert progress.makespan([30], 2, busy=[20, 5]) == 35  # the job waits for the slot free at 5
    assert progress.makespan([], 2, busy=[20, 5]) == 20


def test_time_left_running_then_queued_then_a_later_stage():
    # running: 2 epochs left at 10 s, 4 at 5 s -> both slots free at 20; 3 queued of 3 epochs at
    # 10 s (30 s each): 20 -> 50, 50 -> 80 on one slot, 50 on the other: 80
    assert progress.time_left([(10, 2), (5, 4)], [(10, 3)] * 3, slots=2) == 80
    # then stage 2: two recipes of 3 epochs at 10 s / data_fraction 0.25 = 40 s per epoch, side by side
    assert progress.time_left([(10, 2), (5, 4)], [(10, 3)] * 3, slots=2, later=[(40, 3)] * 2) == 80 + 120


def test_teacher_time_left_and_the_printed_form():
    assert progress.teacher_time_left([60.0, 40.0], 10) == 500  # mean 50 s x 10 epochs
    assert progress.format_eta(500) == "~8.3 min left"
    assert progress.format_eta(1500) == "~25 min left"
    assert progress.format_eta(1500, upper_bound=True) == "at most ~25 min left"
    assert progress.format_eta(None) == "" and progress.format_eta(float("nan")) == ""


def test_epoch_clock_rates_per_trial_then_per_model_then_overall():
    clock = progress.EpochClock()
    clock.start("a", "cnn_16", 0.0)
    clock.start("b", "cnn_32", 0.0)
    assert clock.rate("a") is None
    clock.epoch("a", 12.0)  # a's first epoch, its setup included
    clock.epoch("a", 20.0)
    clock.epoch("b", 30.0)
    assert clock.rate("a") == 10.0 and clock.rate("b") == 30.0
    assert clock.rate("c", "cnn_32") == 30.0  # a trial not measured yet: its model's trials
    assert clock.rate("c", "cnn_64") == 20.0 == clock.rate("c")  # an unseen model: every measured trial
    clock.epoch("r", 50.0)  # a trial first seen mid-run (restored): its clock starts here
    assert clock.rate("r") == 20.0
    clock.epoch("r", 54.0)
    assert clock.rate("r") == 4.0


def _trial(tid: str, status: str, epoch: int, model: str = "m") -> SimpleNamespace:
    return SimpleNamespace(trial_id=tid, status=status, config={"model": model},
                           last_result={"val_acc": 0.9, "nonzero_params": 10, "epoch": epoch} if epoch else {})


def test_progress_estimate_on_a_hand_made_search():
    from raytune_ft.search.trial import Progress

    objectives = {"val_acc": "max", "nonzero_params": "min"}
    p = Progress(5, objectives, epochs=4, plan=progress.Plan(slots=2))
    assert p.estimate([_trial("a", "RUNNING", 0)]) == (None, False)  # nothing measured yet
    p.clock.start("a", "m", 0.0)
    p.clock.start("b", "m", 0.0)
    p.clock.epoch("a", 10.0)
    p.clock.epoch("b", 20.0)
    trials = [_trial("a", "RUNNING", 1), _trial("b", "RUNNING", 1)]
    # a: 3 epochs at 10 s = 30; b: 3 at 20 s = 60; 3 trials not started: 4 epochs at the mean 15 s = 60 each
    # slots free at 30 and 60 -> 90, 120, 150
    assert p.estimate(trials) == (pytest.approx(150), False)
    # the same with early stopping: an upper bound until a trial has ended ...
    p.plan = progress.Plan(slots=2, early_stopping=True)
    assert p.estimate(trials) == (pytest.approx(150), True)
    # ... then the queued ones are planned at the share of epochs the ended ones trained (1 of 4)
    ended = [_trial("a", "TERMINATED", 1), _trial("b", "RUNNING", 1)]
    seconds, upper = p.estimate(ended)
    assert not upper and seconds == pytest.approx(60)  # b: 60; 3 x (15 s x 1 epoch) on the slot free at 0
    # a two-stage plan adds stage 2 at the measured epoch time / data_fraction ...
    p.plan = progress.Plan(slots=2, later_trials=2, later_epochs=4, data_fraction=0.25)
    assert p.estimate(trials)[0] == pytest.approx(150 + 4 * 15 / 0.25)
    # ... that of the fully trained trials once one has ended (a: 4 epochs at 10 s), not b's 20 s
    p.clock.epoch("a", 20.0)
    p.clock.epoch("a", 30.0)
    p.clock.epoch("a", 40.0)
    done = [_trial("a", "TERMINATED", 4), _trial("b", "RUNNING", 1)]
    assert p.estimate(done)[0] == pytest.approx(60 + 60 + 4 * 10 / 0.25)  # b 60; 3 x 60 on 2 slots: 120


def test_record_appends_json_lines_and_skips_a_missing_folder(tmp_path, monkeypatch):
    monkeypatch.delenv(progress.LOG_ENV, raising=False)
    path = tmp_path / "progress.jsonl"
    progress.begin(path)
    assert progress.log_path() == str(path)
    progress.record(progress.log_path(), "trials", elapsed_s=5.0, eta_s=123.456, running=2)
    progress.record(tmp_path / "gone" / "progress.jsonl", "teacher", eta_s=1.0)  # another node: nothing
    progress.finish()
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["phase"] for r in rows] == ["start", "trials", "end"]
    assert rows[1]["eta_s"] == 123.5 and rows[1]["running"] == 2 and rows[0]["time"] <= rows[2]["time"]
    assert not (tmp_path / "gone").exists()
    monkeypatch.delenv(progress.LOG_ENV)


@pytest.fixture(scope="module")
def eta_error():
    spec = importlib.util.spec_from_file_location("eta_error", ROOT / "benchmarks" / "eta_error.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["eta_error"] = module
    spec.loader.exec_module(module)
    return module


def test_eta_error_scores_the_estimate_made_at_a_third_of_the_time(eta_error, tmp_path, capsys):
    t0 = 1_000.0
    rows = [{"time": t0 - 50, "phase": "start"},  # an earlier, resumed-over run: ignored
            {"time": t0, "phase": "start"},
            {"time": t0 + 60, "phase": "teacher", "elapsed_s": 50, "eta_s": 120},   # actual: 80 left (at 140)
            {"time": t0 + 140, "phase": "teacher", "elapsed_s": 130, "eta_s": 0},
            {"time": t0 + 200, "phase": "trials", "elapsed_s": 10, "eta_s": 150},   # the one at 1/3 (t0 + 200)
            {"time": t0 + 250, "phase": "trials", "elapsed_s": 60, "eta_s": 70},
            {"time": t0 + 600, "phase": "end"}]
    (tmp_path / "progress.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = eta_error.measure(eta_error.read_records(tmp_path), trials_end=t0 + 330)
    e = result["estimate"]
    assert result["total_s"] == 600 and e["phase"] == "trials" and e["made_at_s"] == 200
    assert e["actual_s"] == 130 and e["relative_error"] == pytest.approx(20 / 130)  # 150 vs 130 to the last trial
    assert e["search_left_s"] == 400 and e["relative_error_vs_search"] == pytest.approx(-250 / 400)
    teacher = result["phases"]["teacher"]  # began at t0 + 10, ended at t0 + 140: a third is t0 + 53.3
    assert teacher["estimate_s"] is None
    trials = result["phases"]["trials"]  # began at t0 + 190, ended at t0 + 330: a third is t0 + 236.7
    assert trials["estimate_s"] == 150 and trials["relative_error"] == pytest.approx(20 / 130)
    assert eta_error.main([str(tmp_path)]) == 0
    assert "phase trials" in capsys.readouterr().out
    (tmp_path / "progress.jsonl").write_text(json.dumps({"time": t0, "phase": "start"}) + "\n")
    assert eta_error.main([str(tmp_path)]) == 2  # not finished: said, not a traceback
