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

from raytune_ft.search import forecast, progress

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


def test_stage_2_is_planned_at_the_epoch_time_of_the_recipes_it_would_promote():
    from raytune_ft.search.trial import Progress

    objectives = {"val_acc": "max", "nonzero_params": "min"}
    p = Progress(3, objectives, epochs=2, plan=progress.Plan(slots=1, later_trials=1, later_epochs=10,
                                                              data_fraction=0.5))
    for tid, seconds in (("fast", 5.0), ("slow", 50.0), ("worse", 7.0)):
        p.clock.start(tid, tid, 0.0)
        p.clock.epoch(tid, seconds)
        p.clock.epoch(tid, 2 * seconds)
    trials = [_trial("fast", "TERMINATED", 2, "fast"), _trial("slow", "TERMINATED", 2, "slow"),
              _trial("worse", "TERMINATED", 2, "worse")]
    trials[0].last_result.update(val_acc=0.95, nonzero_params=10)  # promoted: the front's best
    trials[1].last_result.update(val_acc=0.90, nonzero_params=20)  # dominated by fast
    trials[2].last_result.update(val_acc=0.80, nonzero_params=30)
    # one recipe promoted: fast's 5 s per epoch / 0.5 x 10 epochs, not the mean over all three (20.7 s)
    assert p.estimate(trials)[0] == pytest.approx(10 * 5.0 / 0.5)
    trials[1].last_result.update(val_acc=0.99, nonzero_params=5)  # now slow dominates
    assert p.estimate(trials)[0] == pytest.approx(10 * 50.0 / 0.5)


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


# --- the whole search planned during the teacher phase (AfterTeacher) ------------------------------

def test_after_teacher_schedules_both_stages_in_units_of_the_teachers_epoch():
    # teacher epoch 10 s: stage 1 jobs 0.5*2*10 = 10, 10 and 1.0*1*10 = 10 on 2 slots -> 20; then
    # stage 2: two jobs of 1.0*3*10 = 30 side by side -> 30
    after = forecast.AfterTeacher(stage1=((0.5, 2), (0.5, 2), (1.0, 1)), stage2=((1.0, 3),) * 2, slots=2)
    assert after.seconds(10.0) == 50
    assert forecast.AfterTeacher().seconds(10.0) == 0


def test_epoch_ratio_counts_steps_and_a_third_of_a_step_per_validation_batch():
    # a step of 0.1 s over 1,000 rows (10 steps) against the teacher's 0.2 s over 4,000 (40 steps)
    assert forecast.epoch_ratio(0.1, 100, 1000, 0.2, 100, 4000) == pytest.approx(1 / 8)
    # 300 validation rows are 100 rows' worth of steps in both epochs
    assert forecast.epoch_ratio(0.1, 100, 1000, 0.2, 100, 4000, val_rows=300) == pytest.approx(1.1 / 8.2)
    assert forecast.ratio_growth(0.25, 4000, 0) == pytest.approx(4)
    assert forecast.ratio_growth(0.25, 4000, 3000) == pytest.approx(5000 / 2000)  # validation does not grow


def test_expected_epochs_under_mo_asha_rungs():
    # no rung below the last epoch: every trial trains to the end
    assert forecast.expected_epochs(3, 4, [4], 3) == [4.0, 4.0, 4.0]
    # rungs 1, 3, 9 of 12 epochs, one objective: the first trial always continues; the second one
    # continues at rung 1 iff it beats the first (1/2), and then at every later rung (same rank): 6.5
    first, second = forecast.expected_epochs(2, 12, [1, 3, 9], 3, objectives=1, repeats=2000)
    assert first == 12 and second == pytest.approx(6.5, abs=0.4)
    many = forecast.expected_epochs(40, 12, [1, 3, 9], 3, simulated=12)
    assert len(many) == 40 and many[0] == 12 and many[-1] == many[12] < 6  # levelled off, extrapolated


def test_plan_after_teacher_on_the_fashion_mnist_space_with_equal_steps(monkeypatch):
    """Every model's step timed at 1 s: the ratios are the data's alone. Stage 1: 12,000 rows and
    12,000 validation rows (4,000 rows' worth of steps) against the teacher's 48,000 + 4,000; stage 2
    on all 48,000 rows, as long as the teacher's epoch (both batch 128)."""
    import torch

    from raytune_ft.space import builtin_space_path, load_space

    monkeypatch.setattr(forecast, "step_seconds", lambda *args, **kwargs: 1.0)
    space = load_space(builtin_space_path("fashion_mnist"))
    x = torch.zeros(4, 3, 28, 28)
    after = forecast.plan_after_teacher(space, space.teacher_config(), x, x, 10, 48_000, 12_000)
    assert after.slots == 2 and len(after.stage1) == 10
    assert all(r == pytest.approx(16_000 / 52_000) for r, _ in after.stage1)
    assert [n for _, n in after.stage1] == forecast.expected_epochs(10, 12, [3, 9], 3)  # grace period 3
    # the 2 best recipes and 1 drawn at random (search.promote_random)
    assert len(after.stage2) == 3 and all(r == pytest.approx(1.0) and n == 30 for r, n in after.stage2)


def test_eta_error_replays_a_plan_over_a_recorded_teacher(eta_error, tmp_path):
    t0 = 1_000.0
    rows = [{"time": t0, "phase": "start"},
            {"time": t0 + 10, "phase": "teacher", "elapsed_s": 10, "eta_s": 30, "epoch": 1, "epochs": 4},
            {"time": t0 + 20, "phase": "teacher", "elapsed_s": 20, "eta_s": 20, "epoch": 2, "epochs": 4},
            {"time": t0 + 40, "phase": "teacher", "elapsed_s": 40, "eta_s": 0, "epoch": 4, "epochs": 4},
            {"time": t0 + 100, "phase": "end"}]
    replayed = eta_error.replay(rows, {"stage1": [[1.0, 2], [1.0, 2]], "stage2": [], "slots": 1})
    # epoch 2: 2 epochs left at 10 s = 20, then two trials of 2 teacher epochs = 40 -> 60
    assert replayed[2]["eta_s"] == pytest.approx(60) and replayed[2]["teacher_eta_s"] == pytest.approx(20)
    result = eta_error.measure(replayed, at=0.2, trials_end=t0 + 90)  # at t0 + 20: 70 s left to the last trial
    assert result["estimate"]["covers"] == "search"
    assert result["estimate"]["relative_error"] == pytest.approx((60 - 70) / 70)
    half = eta_error.measure(replayed, at=0.5, trials_end=t0 + 90)["phases"]["teacher"]
    assert half["estimate_s"] == pytest.approx(20) and half["actual_s"] == 20  # its own share, at t0 + 20


def test_stage_two_lines_are_labelled_and_say_the_time_left(capsys):
    from raytune_ft.search.trial import Progress

    p = Progress(2, {"val_acc": "max"}, epochs=3, stage="stage 2 ", plan=progress.Plan(slots=2))
    p.clock.start("a", "m", 0.0)
    p.clock.epoch("a", 10.0)
    p.on_trial_start(0, [_trial("a", "RUNNING", 1), _trial("b", "PENDING", 0)], _trial("b", "PENDING", 0))
    line = capsys.readouterr().out
    # a: 2 epochs left at 10 s; b: 3 epochs at a's 10 s after it (one trial has run at a time so far): 50 s
    assert line.startswith("stage 2 [0/2 done, 1 running") and "~0.8 min left" in line and "trial b started" in line
