"""A search: the command line (`cli`, also `python -m raytune_ft.search`), the trial glue that runs
one trial in Tune (`trial`), the searcher that tells Optuna how trials ended (`searcher`) and
writes its study to Optuna's journal file (`journal`), the tracking callbacks (`tracking`),
MO-ASHA (`mo_asha`), the planned sizes it ranks (`planned`) and the confirmation runs of the
front (`confirmation`). Only this layer (and the CLIs above it) imports `ray.tune`.
"""

from __future__ import annotations

from raytune_ft.search.cli import (
    BASELINE_METRICS,
    DATA_FIELDS,
    DEFAULT_STORAGE,
    STORAGE_ENV,
    TRIAL_METRICS,
    Location,
    UserError,
    locate,
    main,
    obtain_teacher,
    parse_args,
    prepare,
    run_search,
)

__all__ = ["BASELINE_METRICS", "DATA_FIELDS", "DEFAULT_STORAGE", "STORAGE_ENV", "TRIAL_METRICS", "Location",
           "UserError", "locate", "main", "obtain_teacher", "parse_args", "prepare", "run_search"]
