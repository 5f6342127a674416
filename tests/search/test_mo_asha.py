"""MO-ASHA ranking and decisions on hand-made rung histories; single objective against Ray's ASHA."""

from __future__ import annotations

import pickle
from types import SimpleNamespace

import numpy as np
import pytest
from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

from raytune_ft import pareto
from raytune_ft.search import mo_asha


def test_non_dominated_fronts_and_crowding():
    # minimisation; 0,1,2 are the Pareto set, 3 is dominated by 1 only, 4 by everything
    pts = np.array([[0.0, 4.0], [1.0, 1.0], [4.0, 0.0], [2.0, 2.0], [5.0, 5.0]])
    fronts = [sorted(f.tolist()) for f in pareto.non_dominated_fronts(pts)]
    assert fronts == [[0, 1, 2], [3], [4]]
    # duplicates share a front
    assert [sorted(f.tolist()) for f in pareto.non_dominated_fronts(np.array([[1.0, 1], [1, 1], [2, 2]]))] \
        == [[0, 1], [2]]
    cd = pareto.crowding_distance(np.array([[0.0, 4.0], [1.0, 1.0], [2.0, 0.5], [4.0, 0.0]]))
    assert np.isinf(cd[0]) and np.isinf(cd[3])
    assert cd[1] == pytest.approx((2 - 0) / 4 + (4 - 0.5) / 4)
    assert cd[2] == pytest.approx((4 - 1) / 4 + (1 - 0) / 4)


def test_select_top_fills_fronts_then_crowding():
    pts = np.array([[0.0, 4.0], [1.0, 1.0], [4.0, 0.0], [2.0, 2.0], [5.0, 5.0], [1.1, 1.1]])
    # front 0 = {0, 1, 2}; the inner point 1 has the smallest crowding, so top-2 keeps the extremes
    assert pareto.select_top(pts, 2).tolist() == [0, 2]
    assert pareto.select_top(pts, 3).tolist() == [0, 1, 2]
    assert pareto.select_top(pts, 4).tolist() == [0, 1, 2, 5]  # front 1 = {3, 5}: equal (inf) -> lower index
    # an all-equal front: ties broken by index, deterministic
    assert pareto.select_top(np.ones((4, 2)), 2).tolist() == [0, 1]


def test_to_minimization_flips_max_and_nan_is_worst():
    out = pareto.to_minimization(np.array([[0.9, 100.0], [np.nan, 50.0]]), ["max", "min"], nan_as_worst=True)
    assert out.tolist() == [[-0.9, 100.0], [np.inf, 50.0]]


def test_rungs_match_ray():
    assert mo_asha.rung_milestones(1, 5, 2) == [1, 2, 4]
    assert mo_asha.rung_milestones(1, 9, 3) == [1, 3, 9]
    assert mo_asha.rung_milestones(2, 5, 3) == [2]


def test_two_objectives_hand_made_rung():
    eta = 2
    # accuracy (max), size (min) -> minimisation points
    rung = pareto.to_minimization(np.array([[0.90, 100], [0.80, 50], [0.70, 200], [0.60, 300]]), ["max", "min"],
                                  nan_as_worst=True)
    # m = 4 recorded, eta = 2: allowance = 3 - ceil(1.5) = 1 point may rank ahead
    assert mo_asha.rank_allowance(4, eta) == 1
    # dominates every recorded trial: nothing ahead -> continues
    assert mo_asha.continues_at_rung(rung, [-0.95, 40], eta)
    # on the first front as an extreme point (smallest model): ties with the other extreme
    # (both crowding inf), the inner front-0 point is not ahead -> continues
    assert mo_asha.continues_at_rung(rung, [-0.50, 10], eta)
    # dominated by (0.9, 100) and (0.8, 50): two ahead > 1 -> stopped
    assert not mo_asha.continues_at_rung(rung, [-0.75, 120], eta)
    # dominated by (0.9, 100) alone, but then in front 1 behind both front-0 points: stopped
    assert mo_asha.ahead_count(rung, [-0.85, 110]) == 2
    assert not mo_asha.continues_at_rung(rung, [-0.85, 110], eta)
    # on front 0 between the two extremes: both extremes (infinite crowding) are ahead: stopped
    assert mo_asha.ahead_count(rung, [-0.85, 80]) == 2
    assert not mo_asha.continues_at_rung(rung, [-0.85, 80], eta)
    # with a third of the rung allowed ahead (eta = 1.5: 3 - ceil(1.0) = 2) the same point continues
    assert mo_asha.continues_at_rung(rung, [-0.85, 80], 1.5)
    # the first trial at a rung always continues
    assert mo_asha.continues_at_rung(np.empty((0, 2)), [0.0, 0.0], eta)


def test_tie_inside_front_broken_by_crowding():
    # all recorded points and the new ones are mutually non-dominated (one front)
    rung = np.array([[0.0, 10.0], [1.0, 9.0], [2.0, 8.0], [10.0, 0.0]])
    # m = 4, eta = 4: allowance = 3 - ceil(2.25) = 0 -> only a trial nobody ranks ahead of continues
    assert mo_asha.rank_allowance(4, 4) == 0
    isolated = [6.0, 4.0]  # alone in the big gap: the largest inner crowding distance (1.6)
    front_of, cd = pareto.rank_keys(np.vstack([rung, isolated]))
    assert (front_of == 0).all() and np.isinf(cd[[0, 3]]).all()
    assert cd[4] == pytest.approx(1.6) and cd[4] > cd[1] and cd[4] > cd[2]
    # eta = 4 or 2: both extremes (inf) are ahead -> stopped
    assert mo_asha.ahead_count(rung, isolated) == 2
    assert not mo_asha.continues_at_rung(rung, isolated, 4) and not mo_asha.continues_at_rung(rung, isolated, 2)
    # eta = 1.25: allowance 3 - ceil(0.6) = 2 -> the isolated point continues ...
    assert mo_asha.rank_allowance(4, 1.25) == 2 and mo_asha.continues_at_rung(rung, isolated, 1.25)
    # ... a crowded one (between (1, 9) and (2, 8), crowding 0.2) has all four ahead -> stopped
    crowded = [1.5, 8.5]
    assert mo_asha.ahead_count(rung, crowded) == 4 and not mo_asha.continues_at_rung(rung, crowded, 1.25)
    # a new extreme (smallest first objective) ties with the other extreme: nobody is ahead
    assert mo_asha.ahead_count(rung, [-1.0, 11.0]) == 0 and mo_asha.continues_at_rung(rung, [-1.0, 11.0], 4)


def _ray_decisions(sequence, grace, max_t, eta):
    sched = AsyncHyperBandScheduler(time_attr="epoch", metric="val_acc", mode="max", grace_period=grace,
                                    max_t=max_t, reduction_factor=eta)
    out = []
    for trial_id, epoch, value in sequence:
        trial = SimpleNamespace(trial_id=trial_id)
        if trial_id not in sched._trial_info:
            np.random.seed(0)
            sched.on_trial_add(None, trial)
        out.append(sched.on_trial_result(None, trial, {"epoch": epoch, "val_acc": value}))
    return out


def _mo_decisions(sequence, grace, max_t, eta, metrics=("val_acc",), modes=("max",), extra=None):
    sched = mo_asha.MOASHAScheduler(list(metrics), list(modes), max_t=max_t, grace_period=grace,
                                    reduction_factor=eta)
    out = []
    for trial_id, epoch, value in sequence:
        result = {"epoch": epoch, "val_acc": value, **(extra or {})}
        out.append(sched.on_trial_result(None, SimpleNamespace(trial_id=trial_id), result))
    return out


def _async_sequence(rng, n_trials, max_t, stopped_by):
    """Interleaved reports of n_trials: a trial reports epochs 1.. until a decider stops it."""
    # trials start in a random staggered order; each report is (trial, epoch, value)
    quality = rng.random(n_trials)
    seq, epoch, alive = [], dict.fromkeys(range(n_trials), 0), list(range(n_trials))
    while alive:
        i = alive[rng.integers(len(alive))]
        epoch[i] += 1
        value = round(float(quality[i] * (1 - 0.5 ** epoch[i]) + 0.02 * rng.standard_normal()), 2)
        seq.append((f"t{i}", epoch[i], value))
        if epoch[i] >= max_t or stopped_by(seq) == TrialScheduler.STOP:
            alive.remove(i)
    return seq


@pytest.mark.parametrize("eta,grace,max_t", [(2, 1, 8), (3, 1, 9), (4, 1, 16), (3, 2, 18)])
def test_single_objective_equals_ray_asha(eta, grace, max_t):
    rng = np.random.default_rng(eta * 100 + grace)
    for _ in range(5):
        # build the sequence by driving Ray's scheduler, then replay it through MO-ASHA
        ray_sched = AsyncHyperBandScheduler(time_attr="epoch", metric="val_acc", mode="max", grace_period=grace,
                                            max_t=max_t, reduction_factor=eta)

        def ray_step(seq, ray_sched=ray_sched):
            trial_id, epoch, value = seq[-1]
            trial = SimpleNamespace(trial_id=trial_id)
            if trial_id not in ray_sched._trial_info:
                ray_sched.on_trial_add(None, trial)
            return ray_sched.on_trial_result(None, trial, {"epoch": epoch, "val_acc": value})

        seq = _async_sequence(rng, 30, max_t, ray_step)
        ours = _mo_decisions(seq, grace, max_t, eta)
        theirs = _ray_decisions(seq, grace, max_t, eta)
        assert ours == theirs
        assert TrialScheduler.STOP in ours[: -1]  # the sequence did exercise stopping


def test_two_objectives_with_a_constant_one_agrees_with_ray_outside_the_interpolation_gap():
    """A constant second objective leaves the ranking to the first: the rank rule is ASHA's,
    except where ASHA's quantile interpolates between two recorded values (there it is stricter)."""
    rng = np.random.default_rng(7)
    eta, max_t = 3, 9
    for _ in range(5):
        seq = _async_sequence(rng, 25, max_t, lambda s: TrialScheduler.CONTINUE)
        ray = _ray_decisions(seq, 1, max_t, eta)
        two = _mo_decisions(seq, 1, max_t, eta, metrics=("val_acc", "params"), modes=("max", "min"),
                            extra={"params": 1000})
        diff = [i for i, (a, b) in enumerate(zip(ray, two, strict=True)) if a != b]
        assert all(ray[i] == TrialScheduler.CONTINUE and two[i] == TrialScheduler.STOP for i in diff)
        assert len(diff) <= len(seq) // 4


def test_decisions_at_rungs_and_max_t():
    sched = mo_asha.MOASHAScheduler(["val_acc", "nonzero_params"], ["max", "min"], max_t=4, grace_period=1,
                                    reduction_factor=2)

    def report(tid, epoch, acc, size):
        return sched.on_trial_result(None, SimpleNamespace(trial_id=tid), {"epoch": epoch, "val_acc": acc,
                                                                           "nonzero_params": size})

    assert report("a", 1, 0.9, 100) == TrialScheduler.CONTINUE  # first at rung 1
    assert report("b", 1, 0.5, 200) == TrialScheduler.STOP  # dominated by a, m=1: allowance 0
    assert report("c", 1, 0.6, 50) == TrialScheduler.CONTINUE  # non-dominated extreme
    assert report("a", 2, 0.95, 100) == TrialScheduler.CONTINUE  # first at rung 2
    assert report("a", 3, 0.96, 100) == TrialScheduler.CONTINUE  # no rung at 3
    assert report("c", 2, 0.7, 50) == TrialScheduler.CONTINUE
    assert report("a", 4, 0.97, 100) == TrialScheduler.STOP  # max_t: training over
    assert sched.stopped == {"b": 1}
    # picklable, and the restored copy decides the same
    clone = pickle.loads(pickle.dumps(sched))
    assert clone.rungs == sched.rungs
    new = {"epoch": 2, "val_acc": 0.1, "nonzero_params": 500}
    assert clone.on_trial_result(None, SimpleNamespace(trial_id="d"), {**new, "epoch": 1}) == TrialScheduler.STOP
    with pytest.raises(ValueError, match="nonzero_params"):
        sched.on_trial_result(None, SimpleNamespace(trial_id="e"), {"epoch": 1, "val_acc": 0.5})


def test_state_file_survives_a_restore(tmp_path):
    path = str(tmp_path / "mo_asha_state.pkl")
    sched = mo_asha.MOASHAScheduler(["val_acc", "params"], ["max", "min"], max_t=4, reduction_factor=2,
                                    state_path=path)
    pristine = pickle.dumps(sched)  # what Tuner.restore unpickles: the scheduler as at the start
    sched.on_trial_result(None, SimpleNamespace(trial_id="a"), {"epoch": 1, "val_acc": 0.9, "params": 10})
    restored = pickle.loads(pristine)
    assert not any(restored.rungs.values())
    # "b" is dominated by "a" (recorded before the restore): stopped only if the history came back
    assert restored.on_trial_result(None, SimpleNamespace(trial_id="b"),
                                    {"epoch": 1, "val_acc": 0.5, "params": 20}) == TrialScheduler.STOP
    assert set(restored.rungs[1]) == {"a", "b"}
