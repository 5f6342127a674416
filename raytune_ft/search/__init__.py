"""A search: the command line (`cli`, also `python -m raytune_ft.search`) over its stages
(`options`, `storage`, `teacher_stage`, `run`, `fidelity`; in order in `experiment`), the trial
glue that runs one trial in Tune (`trial`), the teacher's reuse (`teacher_reuse`) and quality gate
(`gate`), the searcher that tells Optuna how trials ended (`searcher`) and writes its study to
Optuna's journal file (`journal`), the tracking callbacks (`tracking`), MO-ASHA (`mo_asha`), the
planned sizes it ranks (`planned`) and the confirmation runs of the front (`confirmation`). Only
this layer (and the CLIs above it) imports `ray.tune`.
"""

from __future__ import annotations

from raytune_ft.search.cli import main, parse_args
from raytune_ft.search.experiment import run_experiment
from raytune_ft.search.options import DATA_FIELDS, SearchOptions, prepare
from raytune_ft.search.run import run_search
from raytune_ft.search.storage import DEFAULT_STORAGE, STORAGE_ENV, Location, UserError, locate
from raytune_ft.search.teacher_stage import BASELINE_METRICS, TRIAL_METRICS, obtain_teacher, students_data_config

__all__ = ["BASELINE_METRICS", "DATA_FIELDS", "DEFAULT_STORAGE", "STORAGE_ENV", "TRIAL_METRICS", "Location",
           "SearchOptions", "UserError", "locate", "main", "obtain_teacher", "parse_args", "prepare",
           "run_experiment", "run_search", "students_data_config"]
