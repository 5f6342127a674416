"""The sampler's study in Optuna's own storage: a JournalStorage file in the experiment folder
(`layout.OPTUNA_JOURNAL`) that `optuna.load_study` and optuna-dashboard open, kept equal to the
in-memory study that Tune pickles with its searcher (`write_study`, called by searcher.py).

The in-memory study stays the sampler's: on --resume Tune restores the searcher, study included,
from its last snapshot and runs again what happened after it, so the file follows the study and
not the other way round. Each `write_study` appends what changed since the last one; when the
study no longer extends what the file holds (a resume rolled it back to the snapshot), the file's
study is deleted and written anew — by appending too, so a reader that follows the file never
sees a half-written study, and the file never holds a trial twice. Why a journal file and not
SQLite: docs/api.md.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState


def open_storage(path: str | Path) -> optuna.storages.JournalStorage:
    """The JournalStorage of the file `path` (created empty when missing)."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(path)))


def load_study(path: str | Path) -> optuna.Study:
    """The study in the journal file `path` (it holds one: the experiment's)."""
    return optuna.load_study(study_name=None, storage=open_storage(path))


def write_study(study: optuna.Study, path: str | Path, metric_names: Sequence[str]) -> None:
    """Make the study named `study.study_name` in the journal file `path` equal to `study`: same
    directions, trials in the same order (same numbers) with their states, params, values and
    attributes, and `metric_names` as the objectives' names (`study.metric_names` once loaded)."""
    path = Path(path)
    try:
        if _torn(path):
            raise ValueError(f"{path}: the last line is incomplete")
        storage = open_storage(path)
        study_id = _study_id(storage, study.study_name)
    except ValueError:  # a line torn by a killed writer: keep the file aside, write a new one
        path.replace(path.with_name(f"{path.name}.broken"))
        storage, study_id = open_storage(path), None
    trials = study.get_trials(deepcopy=False)
    written = storage.get_all_trials(study_id, deepcopy=False) if study_id is not None else []
    if study_id is None or len(written) > len(trials) or not all(map(_follows, written, trials)):
        if study_id is not None:
            storage.delete_study(study_id)
        study_id = storage.create_new_study(study.directions, study.study_name)
        with warnings.catch_warnings():  # set_metric_names is marked experimental: known, accepted
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.load_study(study_name=study.study_name, storage=storage).set_metric_names(list(metric_names))
        written = []
    for number, trial in enumerate(trials):
        if number >= len(written):
            storage.create_new_trial(study_id, template_trial=trial)
        elif not _same(written[number], trial):
            _advance(storage, storage.get_trial_id_from_study_id_trial_number(study_id, number), written[number], trial)


def _torn(path: Path) -> bool:
    """The file ends inside a line (its writer was killed mid-write): appending would corrupt it."""
    if not path.is_file() or not path.stat().st_size:
        return False
    with open(path, "rb") as f:
        f.seek(-1, 2)
        return f.read(1) != b"\n"


def _study_id(storage: optuna.storages.BaseStorage, name: str) -> int | None:
    try:
        return storage.get_study_id_from_name(name)
    except KeyError:
        return None


def _same(old: FrozenTrial, new: FrozenTrial) -> bool:
    return (old.state == new.state and old.params == new.params and old.values == new.values
            and old.user_attrs == new.user_attrs and old.system_attrs == new.system_attrs)


def _follows(old: FrozenTrial, new: FrozenTrial) -> bool:
    """`new` is `old` later on: a finished trial unchanged; an unfinished one with the same params
    and attributes so far and its state moved only forward (waiting -> running -> finished)."""
    if old.state.is_finished():
        return _same(old, new)
    if old.state == TrialState.RUNNING and new.state == TrialState.WAITING:
        return False
    return _contains(new.params, old.params) and _contains(new.user_attrs, old.user_attrs)


def _contains(new: dict[str, Any], old: dict[str, Any]) -> bool:
    return all(k in new and new[k] == v for k, v in old.items())


def _advance(storage: optuna.storages.BaseStorage, trial_id: int, old: FrozenTrial, new: FrozenTrial) -> None:
    """Append to the journal what `new` has that `old` (its earlier copy there) has not."""
    for name, value in new.params.items():
        if name not in old.params:
            distribution = new.distributions[name]
            storage.set_trial_param(trial_id, name, distribution.to_internal_repr(value), distribution)
    for key, value in new.user_attrs.items():
        if key not in old.user_attrs or old.user_attrs[key] != value:
            storage.set_trial_user_attr(trial_id, key, value)
    for key, value in new.system_attrs.items():
        if key not in old.system_attrs or old.system_attrs[key] != value:
            storage.set_trial_system_attr(trial_id, key, value)
    if new.state != old.state:
        storage.set_trial_state_values(trial_id, new.state, new.values)
