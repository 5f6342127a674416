"""The teacher-quality gate (search/gate.py): distillation stops being sampled once a student comes
within the margin of the teacher, the decision is written down, and a user can force it either way."""

from __future__ import annotations

import json
import pickle

import pytest

from raytune_ft import layout
from raytune_ft.search.gate import KDGate
from raytune_ft.search.searcher import make_searcher
from raytune_ft.space import SpaceError, builtin_space_path, load_space


def test_the_gate_closes_when_a_student_comes_within_the_margin(tmp_path, capsys):
    gate = KDGate("auto", 0.01, teacher_val_acc=0.95, path=str(tmp_path / "g.json"))
    assert not gate.observe("t0", {"val_acc": 0.93}) and not gate.closed  # the teacher leads by 2 points
    assert not gate.observe("t1", {"val_acc": float("nan")})  # a failed metric says nothing
    assert gate.observe("t2", {"val_acc": 0.945})  # 0.5 points: not clearly stronger
    assert gate.closed and "t2" in gate.reason and "keep" in gate.reason
    assert "teacher gate: the teacher (val_acc 0.9500) is not clearly stronger" in capsys.readouterr().out
    written = json.loads((tmp_path / "g.json").read_text())
    assert written["closed"] and written["best_student_val_acc"] == 0.945 and written["students_seen"] == 2
    assert not gate.observe("t3", {"val_acc": 0.99})  # closes once


def test_keep_never_closes_and_drop_is_closed_from_the_start(tmp_path):
    keep = KDGate("keep", 0.01, teacher_val_acc=0.90)
    assert not keep.observe("t0", {"val_acc": 0.99}) and not keep.closed
    drop = KDGate("drop", 0.01, teacher_val_acc=0.99, path=str(tmp_path / "g.json"))
    assert drop.closed and json.loads((tmp_path / "g.json").read_text())["reason"].startswith("search.kd_gate is drop")


def _complete(searcher, trial_id: str, config: dict, val_acc: float, epochs: int) -> None:
    searcher.on_trial_complete(trial_id, {"val_acc": val_acc, "model_bytes": 1e6, "latency_ms_b1": 1.0,
                                          "epoch": epochs, "config": config})


def test_after_the_gate_closes_no_trial_distils_even_a_seeded_recipe_and_a_resume_keeps_it(tmp_path):
    space = load_space(builtin_space_path("quickstart"))
    epochs = space.fixed.get("epochs", 1)
    searcher = make_searcher(space, tmp_path, teacher_val_acc=0.90)
    searcher.set_search_properties(None, None, {})
    first = searcher.suggest("t0")
    assert first["use_kd"] is True  # the first seeded recipe distils
    _complete(searcher, "t0", first, 0.95, epochs)  # a student beats the teacher
    gate = json.loads((tmp_path / layout.TEACHER_GATE_JSON).read_text())
    assert gate["closed"] and gate["best_student_trial"] == "t0"
    configs = []
    for i in (1, 2, 3):  # the third seeded recipe distils too
        configs.append(searcher.suggest(f"t{i}"))
        _complete(searcher, f"t{i}", configs[-1], 0.5, epochs)
    assert all(c["use_kd"] is False and "kd_alpha" not in c for c in configs), configs
    assert all(space.trial_config(c).use_kd is False for c in configs)
    restored = pickle.loads(pickle.dumps(searcher))  # Tune's snapshot: the decision survives a resume
    assert restored.suggest("t4")["use_kd"] is False


def test_an_open_gate_leaves_distillation_to_the_sampler(tmp_path):
    space = load_space(builtin_space_path("quickstart"))
    searcher = make_searcher(space, tmp_path, teacher_val_acc=0.99)
    searcher.set_search_properties(None, None, {})
    first = searcher.suggest("t0")
    _complete(searcher, "t0", first, 0.90, space.fixed.get("epochs", 1))
    assert not json.loads((tmp_path / layout.TEACHER_GATE_JSON).read_text())["closed"]
    _complete(searcher, "t1", searcher.suggest("t1"), 0.90, space.fixed.get("epochs", 1))
    assert searcher.suggest("t2")["use_kd"] is True  # the third seeded recipe, as written


@pytest.mark.parametrize(("override", "fragment"), [
    ("search.kd_gate=sometimes", "search.kd_gate: must be one of auto, keep, drop"),
    ("search.kd_gate_margin=1.5", "search.kd_gate_margin: must be a number in [0, 1)"),
])
def test_bad_gate_settings_fail_at_load_naming_the_key(override, fragment):
    with pytest.raises(SpaceError) as info:
        load_space(builtin_space_path("quickstart")).with_overrides([override])
    assert fragment in str(info.value)
