"""One search, end to end (`run_experiment`): the inputs checked (options.prepare), the teacher and
the trials (run.run_search), the full-data stage of a two-stage search (fidelity.py), the deployed
files re-timed together, the results and the test split written (run.write_results,
run.honest_results) and the closing summary printed."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

from raytune_ft import data_fraction, layout
from raytune_ft.search.options import SearchOptions, prepare
from raytune_ft.search.run import honest_results, run_search, write_results
from raytune_ft.search.storage import Location


def run_experiment(space: str | os.PathLike | Mapping[str, Any] = "quickstart", *, overrides: Sequence[str] = (),
                   num_samples: int | None = None, max_concurrent: int | None = None, seed: int | None = None,
                   storage_path: str | None = None, name: str | None = None, address: str | None = None,
                   dashboard_host: str | None = None, confirm: int = 1, resume: bool = False) -> Location:
    """One search, end to end: check the inputs (prepare), run the trials (run_search), re-time and
    test the deployed files, write the results and print the summary; returns where the experiment
    is. The arguments are the command line's flags (SearchOptions). Raises UserError on bad input,
    before Ray starts for everything that can be checked then."""
    # before Ray is imported: repeated worker lines folded except the trials' own (which differ only
    # in numbers); off a terminal, no progress bars, colour codes or pid prefixes (console.py)
    from raytune_ft.search import console

    console.configure()
    options = SearchOptions(space=space, overrides=tuple(overrides), num_samples=num_samples,
                            max_concurrent=max_concurrent, seed=seed, storage_path=storage_path, name=name,
                            address=address, dashboard_host=dashboard_host, confirm=confirm, resume=resume)
    space, where = prepare(options)
    started = time.perf_counter()
    print(f"experiment: {where.uri}\nspace: {space.path} ({space.search.num_samples} trials, "
          f"sampler {space.search.sampler}, seed {space.search.seed})", flush=True)
    _, teacher, trial_inputs = run_search(space, where, address=address, dashboard_host=dashboard_host, resume=resume)
    from raytune_ft.report import results as results_mod

    # Tune's files are complete once fit() returned
    trials = results_mod.load_experiment(where.uri).trials if where.remote else results_mod.read_trials(where.local)
    if data_fraction.is_subset(space.search.data_fraction):  # a subset stage came first: the full-data one now
        from raytune_ft.search import fidelity

        trials = fidelity.second_stage(trials, space, where.local, trial_inputs)
        where.upload(layout.STAGE2_DIR, layout.FIDELITY_CSV, layout.FIDELITY_JSON)
    from raytune_ft.deploy import remeasure

    trials, teacher = remeasure.after_search(trials, teacher, space.fixed, where.local, where.upload)
    front = write_results(trials, space, where, teacher)
    front, teacher, confirmed = honest_results(trials, front, space, where, teacher, trial_inputs, confirm)

    from raytune_ft import pareto
    from raytune_ft.report import summary
    from raytune_ft.search import progress

    counts = trials["status"].value_counts().to_dict()
    notes = [f"{len(trials)} trials ({', '.join(f'{n} {s}' for s, n in counts.items())}) in "
             f"{(time.perf_counter() - started) / 60:.1f} min"]
    int8 = (teacher.get("baselines") or {}).get("teacher_int8")
    notes += [pareto.dominance_line(front, space.objectives, int8, "the int8 teacher")] if int8 is not None else []
    print("\n" + summary.closing_summary(front, teacher, space.objectives, where.uri, notes=notes))
    progress.finish()
    where.upload(layout.PROGRESS_JSONL)
    if confirmed is not None:
        from raytune_ft.report import tables

        print(f"\nconfirmed with {confirm} seeds per front recipe ({where.uri}/confirmed.csv):\n"
              + tables.format_front(confirmed, list(confirmed.columns)))
    return where

