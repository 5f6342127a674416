"""What a search is asked to do (`SearchOptions`: the command line's flags, or run_experiment's
keyword arguments) and `prepare`: everything that can fail on user input — the space file or dict,
--set, models and weights, the data, tracking packages, the experiment folder — checked before Ray
starts, each error one line naming the file, key or value."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from raytune_ft import layout
from raytune_ft.search.storage import DEFAULT_STORAGE, STORAGE_ENV, Location, UserError, locate

DATA_FIELDS = ("dataset", "data_root", "image_size", "val_fraction", "test_fraction", "max_samples",
               "max_test_samples", "data_seed", "download", "on_bad_image")

DICT_SPACE = "<space dict>"  # where a space given as a dict is said to come from in its error messages



@dataclass(frozen=True)
class SearchOptions:
    """What one search is asked to do: the command line's flags (parse_args gives the same names) or
    `run_experiment`'s keyword arguments."""

    space: str | os.PathLike | Mapping[str, Any] = "quickstart"  # built-in name, YAML path, or a dict like one
    overrides: tuple[str, ...] = ()  # KEY=VALUE, as --set
    num_samples: int | None = None  # None: the space's search.num_samples (likewise the next two)
    max_concurrent: int | None = None
    seed: int | None = None
    storage_path: str | None = None  # None: $RAYTUNE_FT_STORAGE, else ./ray_results
    name: str | None = None  # None: <space name>-<date>-<time>
    address: str | None = None  # a running Ray cluster to join; None: start a local one
    dashboard_host: str | None = None  # the local cluster's dashboard address; None: no dashboard
    confirm: int = 1  # runs per front recipe (1: no confirmation runs)
    resume: bool = False  # continue <storage_path>/<name>



def load_space(space: str | os.PathLike | Mapping[str, Any]) -> Any:
    """A space given as a built-in name, a YAML path, or a dict shaped like a space file (its
    errors name DICT_SPACE); validated like a file. Raises SpaceError."""
    from raytune_ft.space import recipes, spaces

    if isinstance(space, Mapping):
        fields = spaces.parse_space(DICT_SPACE, dict(space))
        fields["search"] = recipes.check_initial(DICT_SPACE, fields["search"], fields["params"], fields["fixed"])
        return spaces.Space(path=DICT_SPACE, **fields)
    return spaces.load_space(spaces.resolve_space(str(space)))



def prepare(args: SearchOptions | argparse.Namespace):
    """Everything that can fail on user input, checked before Ray starts; returns (space, where).
    `args`: SearchOptions, or parse_args' Namespace (the same names). A space given as a dict is
    written into the experiment folder as space.yaml once all checks passed (the file space.json names)."""
    from raytune_ft import data, models
    from raytune_ft.config import TrialConfig
    from raytune_ft.search import tracking
    from raytune_ft.space import spaces
    from raytune_ft.train import teachers

    if not isinstance(args, SearchOptions):
        args = SearchOptions(**{**vars(args), "overrides": tuple(args.overrides)})
    if args.confirm < 1:
        raise UserError(f"--confirm must be >= 1 (runs per front recipe), got {args.confirm}")
    try:
        space = load_space(args.space)
        overrides = list(args.overrides)
        for flag, key in (("num_samples", "num_samples"), ("max_concurrent", "max_concurrent"), ("seed", "seed")):
            if getattr(args, flag) is not None:
                overrides.append(f"search.{key}={getattr(args, flag)}")
        space = space.with_overrides(overrides)
        searched_data = [p.name for p in space.params if p.name in DATA_FIELDS]
        if searched_data:
            raise UserError(f"{space.path}: params.{searched_data[0]}: data settings "
                            f"({', '.join(DATA_FIELDS)}) must be fixed, not searched")
        data.check_dataset(TrialConfig.from_dict(space.fixed))  # the students' data, which the teacher shares
        teachers.check_architectures(space)  # every student choice and the teacher: names, local weights, classes
        tracking.check_installed(space.search.callbacks)
    except (spaces.SpaceError, models.ModelError, data.DataError, ValueError) as err:
        raise UserError(str(err)) from err

    name = args.name or f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    where = locate(args.storage_path or os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE, name)
    try:
        exists = where.exists()
    except OSError as err:  # a URI: no credentials, no such bucket, unreachable endpoint
        raise UserError(f"--storage-path: cannot read {where.uri!r}: {err}") from err
    if exists and not args.resume:
        raise UserError(f"experiment folder {where.uri!r} already exists; pass --resume to continue "
                        "it or choose a new --name (nothing was changed)")
    if args.resume and not exists:
        raise UserError(f"--resume: experiment folder {where.uri!r} does not exist")
    if args.resume and not where.has(layout.SPACE_JSON):
        raise UserError(f"--resume: {where.uri!r} is not a raytune_ft experiment (no space.json); "
                        "nothing was restored")
    if args.resume and where.remote:  # the teacher and settings, to continue from (no trial weights)
        from raytune_ft.report import results

        where.local.rmdir()
        where = Location(where.uri, results.fetch(where.uri))
    if isinstance(args.space, Mapping):
        import yaml

        where.local.mkdir(parents=True, exist_ok=True)
        plain = json.loads(json.dumps(dict(args.space), default=str))  # tuples -> lists, paths -> strings
        (where.local / layout.SPACE_YAML).write_text(yaml.safe_dump(plain, sort_keys=False))
        where.upload(layout.SPACE_YAML)
        space = dataclasses.replace(space, path=f"{where.uri}/{layout.SPACE_YAML}")
    return space, where

