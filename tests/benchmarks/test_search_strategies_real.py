"""The real-search benchmark (benchmarks/search_strategies_real.py): its summary of the budget to
reach random search's final hypervolume, hypervolume at a wall time, the asynchronous replay of
synchronous runs, strategy names as search arguments, and the fine-tune clock on the recorded runs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def real():
    """benchmarks/search_strategies_real.py as a module."""
    spec = importlib.util.spec_from_file_location("search_strategies_real",
                                                  ROOT / "benchmarks" / "search_strategies_real.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_real_runs_summary_measures_the_budget_to_reach_random_searchs_final_hypervolume(real):
    """benchmarks/search_strategies_real.py: the fraction of trials at which each seed first reaches
    the median final HV of random search (unseeded when it ran), and 'never' as infinity."""
    import pandas as pd

    rows = []
    for strategy, seed, curve in (("random+unseeded", 0, [0.1, 0.3, 0.5, 0.5]),
                                  ("random+unseeded", 1, [0.2, 0.4, 0.6, 0.7]),  # target: median(0.5, 0.7) = 0.6
                                  ("random", 0, [0.9, 0.9, 0.9, 0.9]),  # seeded random: not the baseline
                                  ("tpe", 0, [0.2, 0.6, 0.6, 0.8]),  # reaches it at trial 2 of 4
                                  ("tpe", 1, [0.3, 0.4, 0.5, 0.55])):  # never
        rows += [{"strategy": strategy, "seed": seed, "completed": k + 1, "elapsed_s": 60.0 * (k + 1),
                  "hypervolume": hv} for k, hv in enumerate(curve)]
    table = real.summary(pd.DataFrame(rows), budget=4).set_index("strategy")
    assert table.loc["tpe", "reached"] == "1/2" and np.isinf(table.loc["tpe", "reach_random_median"])
    assert table.loc["random+unseeded", "reached"] == "1/2"  # seed 0 ends at 0.5 < 0.6
    assert table.loc["random", "reach_random_median"] == pytest.approx(0.25)
    assert table.loc["tpe", "final_hv_median"] == pytest.approx(0.675)


def test_hypervolume_at_a_wall_time_counts_only_trials_ended_by_then(real):
    """A trial's hypervolume counts from the moment it ends: between two ends the curve is flat
    (an interpolation would credit the next trial's result before it existed)."""
    import pandas as pd

    run = pd.DataFrame({"elapsed_s": [300.0, 100.0], "hypervolume": [0.9, 0.5]})  # unsorted on purpose
    assert real.hv_at(run, np.array([50.0, 100.0, 299.0, 300.0, 1e6])).tolist() == [0.0, 0.5, 0.5, 0.9, 0.9]


def test_asynchronous_replay_starts_each_trial_when_a_slot_frees(real):
    """Groups of two (measured with search.synchronous): a 1-min and a 5-min trial, then two more.
    Replayed, the third starts when the short one ends, not when the group ended."""
    import pandas as pd

    trials = pd.DataFrame({"trial_id": ["a", "b", "c", "d"], "start_time": [0.0, 0.0, 300.0, 300.0],
                           "end_time": [60.0, 300.0, 420.0, 360.0]})
    out = real.replay_asynchronous(trials, slots=2).set_index("trial_id")
    assert out["start_time"].to_dict() == {"a": 0.0, "b": 0.0, "c": 60.0, "d": 180.0}
    assert out["end_time"].to_dict() == {"a": 60.0, "b": 300.0, "c": 180.0, "d": 240.0}  # durations kept


def test_cost_to_front_strategy_names_become_search_arguments(real):
    assert real.strategy_args("by_hand", 12, 0.25, 3) == ["--num-samples", "1", "--set", "search.data_fraction=1"]
    args = real.strategy_args("tpe+fidelity+mo_asha", 12, 0.25, 3)
    assert args[:2] == ["--num-samples", "12"] and "search.data_fraction=0.25" in args and "search.promote=3" in args
    assert "scheduler.type=mo_asha" in args and "search.initial=[]" not in args
    assert "search.initial=[]" in real.strategy_args("random+unseeded+fulldata", 4, 0.5, 2)
    assert "search.synchronous=true" in real.strategy_args("tpe+synchronous", 4, 0.5, 2)
    assert "scheduler=none" in real.strategy_args("tpe+fifo", 4, 0.5, 2)
    with pytest.raises(SystemExit, match="unknown strategy 'tpe\\+bogus'"):
        real.strategy_args("tpe+bogus", 4, 0.5, 2)


def test_the_fine_tune_clock_divides_each_runs_wall_time_by_its_own_dense_fine_tune(real):
    """Runs made on different CPUs compare on one clock: the wall time over the run's own dense
    full-data fine-tune (its teacher's wall_time_s). Read on the recorded cost-to-front runs, whose
    teachers took 507.7 s and 538.6 s: the same hypervolume at 1 fine-tune as at that many seconds."""
    import json

    runs = ROOT / "benchmarks" / "results" / "cost_to_front" / "runs"
    folders = {("c", 0): runs / "random_unseeded_fulldata_synchronous-s0",
               ("e", 0): runs / "tpe_mo_asha_kd_recipe-s0"}
    table = real.curves(folders)
    units = {k: json.loads((f / "teacher.json").read_text())["wall_time_s"] for k, f in folders.items()}
    assert units[("c", 0)] != units[("e", 0)]
    for (strategy, seed), unit in units.items():
        run = table[(table["strategy"] == strategy) & (table["seed"] == seed)]
        assert np.allclose(run["fine_tunes"], run["elapsed_s"] / unit)
    minutes = real.cost_table(folders, table, [unit / 60 for unit in units.values()])
    tunes = real.cost_table(folders, table, [1.0], clock="fine-tunes").set_index("strategy")
    minutes = minutes.set_index("strategy")
    for strategy in ("e", "c"):
        at_unit = f"hv_at_{units[strategy, 0] / 60:g}_min_median"
        assert tunes.loc[strategy, "hv_at_1_ft_median"] == minutes.loc[strategy, at_unit]
    assert tunes.attrs["equal_time"].endswith(" ft")
