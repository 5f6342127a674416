"""Search spaces: the YAML files in `search_spaces/` as validated `Space`s, and the bridge to Optuna.

A space says which `TrialConfig` fields are fixed, which are searched (with Optuna
distributions, optionally conditional on a categorical parent), how the distillation teacher is
obtained (its own model, weights and fine-tuning settings, or a checkpoint), the sampler
settings, the `initial` recipes (recipes.py) and the objectives. YAML is read here, the records
are validated in parsing.py; every mistake fails at load time, naming the file, the key
and the bad value.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import importlib.resources
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from raytune_ft.config import FIELD_TYPES, TrialConfig, unknown_key_message
from raytune_ft.space import recipes
from raytune_ft.space.parsing import (  # noqa: F401  (re-exported: the public names of a space)
    INT8_CHANGES,
    MODES,
    PARAM_KEYS,
    PER_EPOCH_METRICS,
    SAMPLERS,
    SCHEDULERS,
    SEARCH_MINIMUM,
    TEACHER_KEYS,
    TEACHER_REGULARIZERS,
    TECHNIQUE_FLAGS,
    TOP_KEYS,
    ParamSpec,
    SchedulerSettings,
    SearchSettings,
    SpaceError,
    check_against_config,
    check_scheduler,
    check_teacher,
    fail,
    max_epochs,
    parse_checkpoint,
    parse_fields,
    parse_scheduler,
    parse_search,
    parse_space,
    search_fields,
    teacher_values,
)

if TYPE_CHECKING:
    import optuna


@dataclass(frozen=True)
class Space:
    """A validated search space file; build with `load_space`, adjust with `with_overrides`."""

    path: str  # the file it came from
    name: str  # default experiment name prefix
    description: str
    fixed: dict[str, Any]  # TrialConfig field -> value, the same for every trial
    teacher_checkpoint: str | None  # a ready teacher; None: fine-tune one first
    teacher_overrides: dict[str, Any]  # fields that differ from `fixed` for that fine-tune
    search: SearchSettings
    params: tuple[ParamSpec, ...]  # in file order; a conditional param follows its parent
    objectives: dict[str, str]  # metric -> "max" | "min", in file order
    scheduler: SchedulerSettings | None = None  # early stopping; None: none

    def max_epochs(self) -> int:
        """The most epochs a trial can have (epochs fixed, or the top of its searched range)."""
        return max_epochs(self.fixed, self.params)

    def with_overrides(self, assignments: list[str]) -> Space:
        """Apply `--set KEY=VALUE` strings: a TrialConfig field (into fixed), `teacher.KEY`,
        `search.KEY`. All are validated together, as if they had been written in the file.

        Values are parsed as YAML (`2` -> int, `0.5` -> float, `true` -> bool, `null` -> None).
        """
        fixed = dict(self.fixed)
        teacher_overrides = dict(self.teacher_overrides)
        checkpoint = self.teacher_checkpoint
        search = self.search
        scheduler = self.scheduler
        searched = {p.name for p in self.params}
        for arg in assignments:
            where = f"--set {arg!r}"
            key, sep, text = arg.partition("=")
            key = key.strip()
            if not sep or not key:
                raise SpaceError(f"{where}: expected KEY=VALUE, e.g. --set epochs=2")
            value = parse_value(where, text)
            section, dot, sub = key.partition(".")
            if dot and section == "teacher":
                if sub == "checkpoint":
                    checkpoint = parse_checkpoint(where, "teacher.checkpoint", value)
                elif sub in FIELD_TYPES:
                    teacher_overrides.update(
                        parse_fields(where, "teacher.overrides", {sub: value}, teacher=True)
                    )
                else:
                    fail(where, key, unknown_key_message(sub, ["checkpoint", *FIELD_TYPES]))
            elif key == "scheduler":  # --set scheduler=none: every trial trains to the end
                if value not in (None, "none"):
                    fail(where, "scheduler", f"--set scheduler= takes only none (no early stopping), got {value!r}; "
                         "set its fields as scheduler.type=mo_asha, scheduler.grace_period=...")
                scheduler = None
            elif dot and section == "scheduler":
                raw = dataclasses.asdict(scheduler) if scheduler else {}
                scheduler = parse_scheduler(where, {**raw, sub: value})
            elif dot and section == "search":
                if sub not in search_fields():
                    fail(where, key, unknown_key_message(sub, search_fields()))
                search = parse_search(where, {**dataclasses.asdict(search), sub: value})
            elif key in FIELD_TYPES:
                if key in searched:
                    fail(
                        where,
                        "",
                        f"{key} is searched in params of {self.path}; remove it from params "
                        "or narrow its range there (--set only changes fixed values)",
                    )
                fixed.update(parse_fields(where, "fixed", {key: value}))
            else:
                valid = [*FIELD_TYPES, "teacher.checkpoint", "teacher.<field>"]
                valid += [f"search.{k}" for k in search_fields()]
                valid += ["scheduler", *(f"scheduler.{f.name}" for f in dataclasses.fields(SchedulerSettings))]
                fail(where, "", unknown_key_message(key, valid))
        # Fields can depend on each other (pruning_start <= pruning_end): check them together.
        where = f"{self.path} with {' '.join(f'--set {a}' for a in assignments)}"
        check_against_config(where, fixed, teacher_overrides, self.params)
        check_teacher(where, fixed, teacher_overrides, checkpoint, self.params)
        check_scheduler(where, scheduler, fixed, self.params, self.objectives)
        search = recipes.check_initial(where, search, self.params, fixed)  # e.g. --set search.initial=[]
        return dataclasses.replace(
            self,
            fixed=fixed,
            teacher_checkpoint=checkpoint,
            teacher_overrides=teacher_overrides,
            search=search,
            scheduler=scheduler,
        )

    def trial_config(self, sampled: dict[str, Any]) -> TrialConfig:
        """The config of one trial: the fixed fields plus what the sampler chose."""
        return TrialConfig.from_dict({**self.fixed, **sampled})

    def teacher_config(self) -> TrialConfig:
        """The config of the dense teacher: fixed + teacher overrides, every technique off."""
        return TrialConfig.from_dict(teacher_values(self.fixed, self.teacher_overrides))

    def define_by_run(self) -> _DefineByRun:
        """An Optuna define-by-run function sampling `params` (for Tune's OptunaSearch). For the
        gp sampler it samples every param in every trial (a flat space, `_DefineByRun`)."""
        return _DefineByRun(self.params, flat=self.search.sampler == "gp")

    def make_sampler(self, seed: int | None = None) -> optuna.samplers.BaseSampler:
        """The Optuna sampler named in `search`; `seed` replaces `search.seed` when given.

        tpe: multivariate TPE over groups of params that occur together (so conditional params
        are modelled jointly with their parents), constant liar (concurrent trials do not all
        propose the same point). gp: GPSampler, a Gaussian process with log expected (hypervolume)
        improvement, LogEHVI for several objectives (Optuna >= 4.4). Both sample at random until
        `n_startup_trials` trials have finished, the `initial` recipes included. nsga2: NSGA-II
        with generations of `population_size` (the recipes are part of the first one). Every
        sampler is made lock-free picklable (`picklable_sampler`): Tune pickles the searcher.
        """
        import warnings

        import optuna

        seed = self.search.seed if seed is None else seed
        startup = self.search.n_startup_trials
        with warnings.catch_warnings():  # `group` and GPSampler are marked experimental: known, accepted
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if self.search.sampler == "nsga2":
                return picklable_sampler(optuna.samplers.NSGAIISampler(population_size=self.search.population_size,
                                                                        seed=seed))
            if self.search.sampler == "tpe":
                return picklable_sampler(optuna.samplers.TPESampler(
                    seed=seed, multivariate=True, group=True, constant_liar=True, n_startup_trials=startup))
            if self.search.sampler == "gp":
                # every param is in every trial (flat define-by-run), so none falls back to the
                # independent random sampler, which is what GPSampler does for a param missing
                # from some finished trials (its relative space is their intersection)
                return picklable_sampler(optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup))
        assert self.search.sampler == "random", self.search.sampler
        return picklable_sampler(optuna.samplers.RandomSampler(seed=seed))

    def metric_and_mode(self) -> tuple[list[str], list[str]]:
        """`(metrics, modes)` in file order, as OptunaSearch takes them."""
        return list(self.objectives), list(self.objectives.values())


def picklable_sampler(sampler: optuna.samplers.BaseSampler) -> optuna.samplers.BaseSampler:
    """`sampler` with every thread lock it holds replaced by a `PicklableLock`; returned, same type.
    Ray Tune pickles the searcher, and with it the sampler, when the Tuner is built and at every
    experiment snapshot; Optuna 5.1's genetic samplers (`NSGAIISampler`) hold a `threading.Lock`
    (`_thread_lock`), which cannot be pickled."""
    for name, value in list(vars(sampler).items()):
        if isinstance(value, _LOCK_TYPES):
            setattr(sampler, name, PicklableLock(reentrant=isinstance(value, _RLOCK_TYPE)))
    return sampler


_RLOCK_TYPE = type(threading.RLock())
_LOCK_TYPES = (type(threading.Lock()), _RLOCK_TYPE)


class PicklableLock:
    """A thread lock that pickles, as a new unlocked lock (a lock guards one process's threads;
    its state means nothing in another process). Used as `with lock:` or acquire/release."""

    def __init__(self, reentrant: bool = False) -> None:
        self.reentrant = reentrant
        self._lock = threading.RLock() if reentrant else threading.Lock()

    def __enter__(self) -> bool:
        return self._lock.__enter__()

    def __exit__(self, *exc: Any) -> None:
        self._lock.__exit__(*exc)

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return self._lock.acquire(blocking, timeout)

    def release(self) -> None:
        self._lock.release()

    def __reduce__(self) -> tuple:
        return PicklableLock, (self.reentrant,)


@dataclass(frozen=True)
class _DefineByRun:
    """Samples each param whose `when` conditions hold; a module-level class so it pickles
    (Tune checkpoints its searcher with pickle, which cannot store a closure).

    flat: sample every param in every trial, active or not, in the same order. GPSampler models
    only the params present in all finished trials and draws the others at random; flat, it
    models them all. The value of an inactive param has no effect: `active` drops it from the
    trial's config (search.searcher.HonestOptunaSearch applies it), while the study keeps it.
    """

    params: tuple[ParamSpec, ...]
    flat: bool = False
    # params no longer sampled: returned as constants (Ray's OptunaSearch adds a define-by-run
    # function's returned dict to the config); the teacher-quality gate pins use_kd to false
    pinned: dict[str, Any] = field(default_factory=dict)

    def __call__(self, trial: optuna.trial.Trial) -> dict[str, Any] | None:
        sampled: dict[str, Any] = dict(self.pinned)
        for p in self.params:
            if p.name in self.pinned or not self.flat and recipes.inactive_reason(p, sampled) is not None:
                continue
            if p.type == "float":
                value = trial.suggest_float(p.name, p.low, p.high, log=p.log, step=p.step)
            elif p.type == "int":
                value = trial.suggest_int(p.name, p.low, p.high, step=p.step or 1, log=p.log)
            else:
                value = trial.suggest_categorical(p.name, list(p.choices))
            sampled[p.name] = value
        return dict(self.pinned) or None

    def active(self, sampled: dict[str, Any]) -> dict[str, Any]:
        """`sampled` without the params that its own categorical choices switch off."""
        kept: dict[str, Any] = {}
        for p in self.params:
            if p.name in sampled and recipes.inactive_reason(p, kept) is None:
                kept[p.name] = sampled[p.name]
        return kept


# --- reading YAML ---------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys and reads `1e-4` as a float.

    PyYAML follows YAML 1.1, where a float needs a dot and a signed exponent (`1.0e-4`);
    `lr: 1e-4` or `--set lr=1e-3` would otherwise arrive as the string '1e-4'.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, collections.abc.Hashable):
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r}", key_node.start_mark
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_value(where: str, text: str, what: str = "value") -> Any:
    try:
        return yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader: no arbitrary objects
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpaceError(f"{where}: {at}invalid YAML {what}: {problem}") from exc


def load_space(path: str | os.PathLike) -> Space:
    """Read and validate one space file; raises SpaceError naming the file, key and value."""
    where = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SpaceError(f"{where}: cannot read the file: {exc.strerror or exc}") from exc
    data = parse_value(where, text, what="file")
    fields = parse_space(where, data)
    fields["search"] = recipes.check_initial(where, fields["search"], fields["params"], fields["fixed"])
    return Space(path=where, **fields)


def builtin_space_names() -> list[str]:
    """Names of the space files shipped with raytune_ft (`quickstart`, `joint`, ...)."""
    return sorted({p.stem for folder in _builtin_dirs() for p in folder.glob("*.yaml")})


def builtin_space_path(name: str) -> Path:
    """The file of the built-in space `name` (without `.yaml`)."""
    for folder in _builtin_dirs():
        path = folder / f"{name}.yaml"
        if path.is_file():
            return path
    raise SpaceError(f"no built-in search space {name!r}; choose from: {_names_text()}")


def resolve_space(arg: str) -> Path:
    """A `--space` argument: an existing file, or a built-in name like `joint` / `joint.yaml`."""
    path = Path(arg)
    if path.is_file():
        return path
    if path.parent == Path("."):  # a bare name, not a path to a missing file
        try:
            return builtin_space_path(path.name.removesuffix(".yaml"))
        except SpaceError:
            pass
    raise SpaceError(f"space file {arg!r} not found; give a path or one of: {_names_text()}")


def _builtin_dirs() -> list[Path]:
    # Installed: package data next to the code. From a checkout: the repo's search_spaces/.
    packaged = Path(str(importlib.resources.files("raytune_ft") / "search_spaces"))
    return [packaged, Path(__file__).resolve().parents[2] / "search_spaces"]


def _names_text() -> str:
    return ", ".join(builtin_space_names()) or "(no built-in spaces found)"
