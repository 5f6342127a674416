"""Search spaces: the YAML files in `search_spaces/`, validated on load.

A space says which `TrialConfig` fields are fixed, which are searched (with Optuna
distributions, optionally conditional on a categorical parent), how the dense teacher is
obtained, the sampler settings and the objectives. Every mistake fails at load time, naming
the file, the key and the bad value.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import importlib.resources
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import yaml

from raytune_ft.config import FIELD_TYPES, TrialConfig, coerce, unknown_key_message

if TYPE_CHECKING:
    import optuna

TOP_KEYS = ("name", "description", "fixed", "teacher", "search", "scheduler", "params", "objectives")
TEACHER_KEYS = ("checkpoint", "overrides")
PARAM_KEYS = {
    "float": ("type", "low", "high", "log", "step", "when"),
    "int": ("type", "low", "high", "log", "step", "when"),
    "categorical": ("type", "choices", "when"),
}
SAMPLERS = ("nsga2", "tpe", "random")
MODES = ("max", "min")
# The teacher is a plain dense fine-tune: these switches are forced off for it (use_gpu is
# where it runs, not a technique: the teacher keeps it).
TECHNIQUE_FLAGS = tuple(name for name in FIELD_TYPES if name.startswith("use_") and name != "use_gpu")
_METRIC_RE = re.compile(r"[a-z_][a-z0-9_]*")


class SpaceError(ValueError):
    """A search space file or a `--set` override is invalid; the message says where and why."""


@dataclass(frozen=True)
class ParamSpec:
    """One searched `TrialConfig` field, mapped onto an Optuna `suggest_*` call."""

    name: str
    type: str  # "float" | "int" | "categorical"
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple = ()
    when: dict[str, tuple] = field(default_factory=dict)  # parent -> values that activate it


@dataclass(frozen=True)
class SearchSettings:
    """How the experiment samples: the `search:` block of a space file."""

    sampler: str = "nsga2"  # one of SAMPLERS
    num_samples: int = 12  # trials in the experiment
    max_concurrent: int = 1  # trials running at the same time
    seed: int = 0  # sampler seed
    population_size: int = 6  # NSGA-II generation size (ignored by the other samplers)
    max_failures: int = 0  # retries of a failed trial (each from its newest checkpoint)
    checkpoint_every: int = 1  # epochs between two trial checkpoints (the last epoch always checkpoints)
    keep_checkpoints: int = 2  # newest checkpoints kept per trial; older ones are deleted


@dataclass(frozen=True)
class SchedulerSettings:
    """Early stopping: the `scheduler:` block of a space file (absent: every trial trains to the end)."""

    type: str = "mo_asha"  # one of SCHEDULERS
    grace_period: int = 1  # epochs before the first rung
    reduction_factor: float = 3  # eta: the top 1/eta of a rung continue; rungs at grace_period * eta^k
    max_t: int | None = None  # last rung; None: the trials' epochs


SCHEDULERS = ("mo_asha",)
# Metrics train.fit reports every epoch, and the exported-model sizes a trial can also measure
# every epoch when MO-ASHA needs them (trial.epoch_size_metrics); latency only at the end.
PER_EPOCH_METRICS = ("val_acc", "val_loss", "train_loss", "task_loss", "params", "nonzero_params", "sparsity",
                     "model_bytes", "model_bytes_compressed", "macs", "flops")
# Per-epoch stand-ins that the int8 file of a quantized trial changes (quantization.py)
INT8_CHANGES = ("model_bytes", "model_bytes_compressed", "nonzero_params")


# Smallest accepted value of each integer search setting (numpy seeds must be >= 0).
_SEARCH_MINIMUM = {
    "num_samples": 1,
    "max_concurrent": 1,
    "seed": 0,
    "population_size": 2,
    "max_failures": 0,
    "checkpoint_every": 1,
    "keep_checkpoints": 1,
}


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
        return _max_epochs(self.fixed, self.params)

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
            value = _parse_value(where, text)
            section, dot, sub = key.partition(".")
            if dot and section == "teacher":
                if sub == "checkpoint":
                    checkpoint = _parse_checkpoint(where, "teacher.checkpoint", value)
                elif sub in FIELD_TYPES:
                    teacher_overrides.update(
                        _parse_fields(where, "teacher.overrides", {sub: value}, teacher=True)
                    )
                else:
                    _fail(where, key, unknown_key_message(sub, ["checkpoint", *FIELD_TYPES]))
            elif dot and section == "scheduler":
                raw = dataclasses.asdict(scheduler) if scheduler else {}
                scheduler = _parse_scheduler(where, {**raw, sub: value})
            elif dot and section == "search":
                if sub not in _SEARCH_MINIMUM and sub != "sampler":
                    _fail(where, key, unknown_key_message(sub, _search_fields()))
                search = _parse_search(where, {**dataclasses.asdict(search), sub: value})
            elif key in FIELD_TYPES:
                if key in searched:
                    _fail(
                        where,
                        "",
                        f"{key} is searched in params of {self.path}; remove it from params "
                        "or narrow its range there (--set only changes fixed values)",
                    )
                fixed.update(_parse_fields(where, "fixed", {key: value}))
            else:
                valid = [*FIELD_TYPES, "teacher.checkpoint", "teacher.<field>"]
                valid += [f"search.{k}" for k in _search_fields()]
                valid += [f"scheduler.{f.name}" for f in dataclasses.fields(SchedulerSettings)]
                _fail(where, "", unknown_key_message(key, valid))
        # Fields can depend on each other (pruning_start <= pruning_end): check them together.
        where = f"{self.path} with {' '.join(f'--set {a}' for a in assignments)}"
        _check_against_config(where, fixed, teacher_overrides, self.params)
        _check_scheduler(where, scheduler, fixed, self.params, self.objectives)
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
        return TrialConfig.from_dict(_teacher_values(self.fixed, self.teacher_overrides))

    def define_by_run(self) -> Callable[[optuna.trial.Trial], None]:
        """An Optuna define-by-run function sampling `params` (for Tune's OptunaSearch)."""
        return _DefineByRun(self.params)

    def make_sampler(self, seed: int | None = None) -> optuna.samplers.BaseSampler:
        """The Optuna sampler named in `search`; `seed` replaces `search.seed` when given."""
        import warnings

        import optuna

        seed = self.search.seed if seed is None else seed
        if self.search.sampler == "nsga2":
            return optuna.samplers.NSGAIISampler(
                population_size=self.search.population_size, seed=seed
            )
        if self.search.sampler == "tpe":
            # multivariate + group model conditional params jointly; constant_liar keeps
            # concurrent trials from all proposing the same point. `group` is marked
            # experimental in Optuna, which is known and accepted here.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.samplers.TPESampler(
                    seed=seed, multivariate=True, group=True, constant_liar=True
                )
        assert self.search.sampler == "random", self.search.sampler
        return optuna.samplers.RandomSampler(seed=seed)

    def metric_and_mode(self) -> tuple[list[str], list[str]]:
        """`(metrics, modes)` in file order, as OptunaSearch takes them."""
        return list(self.objectives), list(self.objectives.values())


@dataclass(frozen=True)
class _DefineByRun:
    """Samples each param whose `when` conditions hold; a module-level class so it pickles
    (Tune checkpoints its searcher with pickle, which cannot store a closure)."""

    params: tuple[ParamSpec, ...]

    def __call__(self, trial: optuna.trial.Trial) -> None:
        sampled: dict[str, Any] = {}
        for p in self.params:
            active = all(
                parent in sampled and sampled[parent] in allowed
                for parent, allowed in p.when.items()
            )
            if not active:
                continue
            if p.type == "float":
                value = trial.suggest_float(p.name, p.low, p.high, log=p.log, step=p.step)
            elif p.type == "int":
                value = trial.suggest_int(p.name, p.low, p.high, step=p.step or 1, log=p.log)
            else:
                value = trial.suggest_categorical(p.name, list(p.choices))
            sampled[p.name] = value


def load_space(path: str | os.PathLike) -> Space:
    """Read and validate one space file; raises SpaceError naming the file, key and value."""
    where = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SpaceError(f"{where}: cannot read the file: {exc.strerror or exc}") from exc
    data = _parse_value(where, text, what="file")
    return _parse_space(where, data)


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


# --- parsing -----------------------------------------------------------------------------


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


def _parse_value(where: str, text: str, what: str = "value") -> Any:
    try:
        return yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader: no arbitrary objects
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpaceError(f"{where}: {at}invalid YAML {what}: {problem}") from exc


def _parse_space(where: str, data: Any) -> Space:
    if not isinstance(data, dict):
        _fail(where, "", f"the top level must be a mapping of {', '.join(TOP_KEYS)}, got {data!r}")
    _check_keys(where, "", data, TOP_KEYS)

    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        _fail(where, "name", f"a non-empty string is required, got {name!r}")
    description = data.get("description", "")
    if description is None:
        description = ""
    if not isinstance(description, str):
        _fail(where, "description", f"must be a string, got {description!r}")

    fixed = _parse_fields(where, "fixed", _mapping(where, "fixed", data.get("fixed")))

    teacher = _mapping(where, "teacher", data.get("teacher"))
    _check_keys(where, "teacher", teacher, TEACHER_KEYS)
    checkpoint = _parse_checkpoint(where, "teacher.checkpoint", teacher.get("checkpoint"))
    teacher_overrides = _parse_fields(
        where,
        "teacher.overrides",
        _mapping(where, "teacher.overrides", teacher.get("overrides")),
        teacher=True,
    )

    search = _parse_search(where, _mapping(where, "search", data.get("search")))

    raw_params = _mapping(where, "params", data.get("params"), required=True)
    parsed: dict[str, ParamSpec] = {}
    for param_name, spec in raw_params.items():
        parsed[param_name] = _parse_param(where, param_name, spec, parsed, list(raw_params))
        if param_name in fixed:
            _fail(
                where,
                f"params.{param_name}",
                f"{param_name} is both fixed (= {fixed[param_name]!r}) and searched; "
                "remove it from fixed or from params",
            )
    params = tuple(parsed.values())

    objectives = _parse_objectives(where, data.get("objectives"))
    _check_against_config(where, fixed, teacher_overrides, params)
    scheduler = None
    if data.get("scheduler") is not None:
        scheduler = _parse_scheduler(where, _mapping(where, "scheduler", data["scheduler"]))
    _check_scheduler(where, scheduler, fixed, params, objectives)
    return Space(
        path=where,
        name=name,
        description=description,
        fixed=fixed,
        teacher_checkpoint=checkpoint,
        teacher_overrides=teacher_overrides,
        search=search,
        params=params,
        objectives=objectives,
        scheduler=scheduler,
    )


def _parse_scheduler(where: str, raw: dict[str, Any]) -> SchedulerSettings:
    valid = [f.name for f in dataclasses.fields(SchedulerSettings)]
    _check_keys(where, "scheduler", raw, valid)
    kind = raw.get("type")
    if kind not in SCHEDULERS:
        _fail(where, "scheduler.type", f"must be one of {', '.join(SCHEDULERS)}, got {kind!r}")
    grace = raw.get("grace_period", SchedulerSettings.grace_period)
    if not _is_int(grace) or grace < 1:
        _fail(where, "scheduler.grace_period", f"must be an int >= 1 (epochs), got {grace!r}")
    eta = raw.get("reduction_factor", SchedulerSettings.reduction_factor)
    if not _is_number(eta) or not eta > 1:
        _fail(where, "scheduler.reduction_factor", f"must be a number > 1, got {eta!r}")
    max_t = raw.get("max_t")
    if max_t is not None and (not _is_int(max_t) or max_t < 1):
        _fail(where, "scheduler.max_t", f"must be an int >= 1 (epochs) or null (= epochs), got {max_t!r}")
    return SchedulerSettings(type=kind, grace_period=grace, reduction_factor=eta, max_t=max_t)


def _max_epochs(fixed: dict[str, Any], params: tuple[ParamSpec, ...]) -> int:
    for p in params:
        if p.name == "epochs":
            return int(max(p.choices) if p.type == "categorical" else p.high)
    return int(fixed.get("epochs", TrialConfig().epochs))


def _check_scheduler(where: str, scheduler: SchedulerSettings | None, fixed: dict[str, Any],
                     params: tuple[ParamSpec, ...], objectives: dict[str, str]) -> None:
    """MO-ASHA ranks every objective at every rung: each must be measurable every epoch, and the
    rungs must fit inside training."""
    if scheduler is None:
        return
    for metric in objectives:
        if metric not in PER_EPOCH_METRICS:
            _fail(where, f"objectives.{metric}",
                  f"scheduler {scheduler.type} compares every objective at every rung, but {metric} is measured "
                  f"only on the final exported model; choose objectives from {', '.join(PER_EPOCH_METRICS)} "
                  "or remove the scheduler")
    quantized = fixed.get("use_quantization") is True or any(p.name == "use_quantization" for p in params)
    for metric in objectives:
        if quantized and metric in INT8_CHANGES:
            _fail(where, f"objectives.{metric}",
                  f"with use_quantization, {metric} of the shipped int8 file is known only after the last epoch, but "
                  f"scheduler {scheduler.type} compares it at every rung; use another objective, fix "
                  "use_quantization: false, or remove the scheduler")
    epochs = _max_epochs(fixed, params)
    max_t = scheduler.max_t if scheduler.max_t is not None else epochs
    if max_t < epochs:
        _fail(where, "scheduler.max_t",
              f"{max_t} is below the trials' epochs ({epochs}): every trial would be cut at max_t and none "
              "would count as fully trained; use max_t >= epochs or leave it out (default: epochs)")
    if scheduler.grace_period >= max_t:
        _fail(where, "scheduler.grace_period",
              f"{scheduler.grace_period} leaves no rung before max_t ({max_t}"
              f"{'' if scheduler.max_t is not None else ', = epochs'}), so nothing could be stopped early; "
              f"use a grace_period < {max_t}")


def _parse_fields(
    where: str, key: str, raw: dict[str, Any], teacher: bool = False
) -> dict[str, Any]:
    """TrialConfig field -> value, each checked against the field's type (for fixed/overrides)."""
    out = {}
    for name, value in raw.items():
        if name not in FIELD_TYPES:
            _fail(where, f"{key}.{name}", unknown_key_message(str(name), FIELD_TYPES))
        if teacher and name in TECHNIQUE_FLAGS:
            _fail(
                where,
                f"{key}.{name}",
                f"{name} cannot be overridden for the teacher, which is always trained with "
                f"{', '.join(TECHNIQUE_FLAGS)} off (got {value!r})",
            )
        out[name] = _coerce(where, f"{key}.{name}", name, value)
    return out


def _parse_checkpoint(where: str, key: str, value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or not value):
        _fail(where, key, f"must be a path (string) or null, got {value!r}")
    return value


def _parse_search(where: str, raw: dict[str, Any]) -> SearchSettings:
    _check_keys(where, "search", raw, _search_fields())
    for key, value in raw.items():
        if key == "sampler":
            if value not in SAMPLERS:
                _fail(
                    where, "search.sampler", f"must be one of {', '.join(SAMPLERS)}, got {value!r}"
                )
        elif not _is_int(value) or value < _SEARCH_MINIMUM[key]:
            _fail(
                where, f"search.{key}", f"must be an int >= {_SEARCH_MINIMUM[key]}, got {value!r}"
            )
    return SearchSettings(**raw)


def _parse_param(
    where: str, name: Any, raw: Any, earlier: dict[str, ParamSpec], all_names: list[Any]
) -> ParamSpec:
    key = f"params.{name}"
    if name not in FIELD_TYPES:
        _fail(where, key, unknown_key_message(str(name), FIELD_TYPES))
    raw = _mapping(where, key, raw, required=True)
    kind = raw.get("type")
    if kind not in PARAM_KEYS:
        _fail(where, f"{key}.type", f"must be one of {', '.join(PARAM_KEYS)}, got {kind!r}")
    _check_keys(where, key, raw, PARAM_KEYS[kind])
    when = _parse_when(where, name, raw.get("when"), earlier, all_names)

    if kind == "categorical":
        choices = raw.get("choices")
        if not isinstance(choices, list) or not choices:
            _fail(where, f"{key}.choices", f"must be a non-empty list, got {choices!r}")
        coerced = tuple(_coerce(where, f"{key}.choices", name, c) for c in choices)
        if len(set(coerced)) != len(coerced):
            _fail(where, f"{key}.choices", f"has duplicates: {choices!r}")
        return ParamSpec(name=name, type=kind, choices=coerced, when=when)

    allowed = FIELD_TYPES[name]
    if float not in allowed and not (kind == "int" and int in allowed):
        field_type = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
        fix = "int" if int in allowed else "categorical"
        _fail(
            where,
            f"{key}.type",
            f"{name} is {field_type}, so type {kind} cannot sample it; use type: {fix}",
        )
    is_number = _is_int if kind == "int" else _is_number
    for bound in ("low", "high"):
        value = raw.get(bound)
        if not is_number(value) or not math.isfinite(value):
            _fail(where, f"{key}.{bound}", f"must be a finite {kind}, got {value!r}")
    low, high = raw["low"], raw["high"]
    if kind == "float":
        low, high = float(low), float(high)
    if not low < high:
        _fail(where, key, f"low must be < high, got low={low!r}, high={high!r}")
    log = raw.get("log", False)
    if not isinstance(log, bool):
        _fail(where, f"{key}.log", f"must be true or false, got {log!r}")
    if log and low <= 0:
        _fail(where, f"{key}.low", f"must be > 0 when log: true, got {low!r}")
    step = raw.get("step")
    if step is not None:
        if log:
            _fail(where, f"{key}.step", f"cannot be combined with log: true, got step={step!r}")
        if not is_number(step) or not step > 0:
            _fail(where, f"{key}.step", f"must be a {kind} > 0, got {step!r}")
        # Optuna would silently lower `high` to the last reachable grid point.
        n_steps = (high - low) / step
        if abs(n_steps - round(n_steps)) > 1e-9:
            _fail(
                where,
                f"{key}.step",
                f"high - low = {high - low!r} is not a multiple of step {step!r}",
            )
    return ParamSpec(name=name, type=kind, low=low, high=high, log=log, step=step, when=when)


def _parse_when(
    where: str, name: str, raw: Any, earlier: dict[str, ParamSpec], all_names: list[Any]
) -> dict[str, tuple]:
    key = f"params.{name}.when"
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not raw:
        _fail(where, key, f"must be a mapping {{parent: value or [values]}}, got {raw!r}")
    when: dict[str, tuple] = {}
    for parent, values in raw.items():
        parent_key = f"{key}.{parent}"
        parent_spec = earlier.get(parent)
        if parent_spec is None:
            if parent == name:
                problem = "is the param itself"
            elif parent in all_names:
                problem = f"is declared after {name}; move {parent} above {name} in params"
            else:
                problem = (
                    f"is not a param in params (searched so far: {', '.join(earlier) or 'none'})"
                )
            _fail(where, parent_key, f"{name} is conditioned on {parent!r}, which {problem}")
        if parent_spec.type != "categorical":
            _fail(
                where,
                parent_key,
                f"{name} is conditioned on {parent!r}, a {parent_spec.type} param; "
                "only categorical params can be conditions",
            )
        values = values if isinstance(values, list) else [values]
        if not values:
            _fail(where, parent_key, "must list at least one value")
        allowed = tuple(_coerce(where, parent_key, parent, v) for v in values)
        for value in allowed:
            if value not in parent_spec.choices:
                _fail(
                    where,
                    parent_key,
                    f"{value!r} is not one of the choices of {parent}: {list(parent_spec.choices)}",
                )
        when[parent] = allowed
    return when


def _parse_objectives(where: str, raw: Any) -> dict[str, str]:
    raw = _mapping(where, "objectives", raw, required=True)
    for metric, mode in raw.items():
        if not isinstance(metric, str) or not _METRIC_RE.fullmatch(metric):
            _fail(
                where,
                f"objectives.{metric}",
                f"a metric name must match [a-z_][a-z0-9_]*, got {metric!r}",
            )
        if mode not in MODES:
            _fail(where, f"objectives.{metric}", f"mode must be max or min, got {mode!r}")
    return dict(raw)


def _check_against_config(
    where: str,
    fixed: dict[str, Any],
    teacher_overrides: dict[str, Any],
    params: tuple[ParamSpec, ...],
) -> None:
    """Build TrialConfigs to catch bad values: fixed, the teacher, and every param's extremes."""
    _build(where, "fixed", fixed)
    _build(where, "teacher.overrides", _teacher_values(fixed, teacher_overrides))
    for p in params:
        for value in p.choices if p.type == "categorical" else (p.low, p.high):
            _build(where, f"params.{p.name}", {**fixed, p.name: value})


def _build(where: str, key: str, values: dict[str, Any]) -> None:
    try:
        TrialConfig.from_dict(values)
    except ValueError as exc:
        _fail(where, key, str(exc))


def _teacher_values(fixed: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    return {**fixed, **overrides, **dict.fromkeys(TECHNIQUE_FLAGS, False)}


# --- small helpers -----------------------------------------------------------------------


def _fail(where: str, key: str, message: str) -> NoReturn:
    raise SpaceError(f"{where}: {key}: {message}" if key else f"{where}: {message}")


def _check_keys(where: str, key: str, raw: dict, valid: collections.abc.Iterable[str]) -> None:
    valid = list(valid)
    for k in raw:
        if k not in valid:
            _fail(where, f"{key}.{k}" if key else str(k), unknown_key_message(str(k), valid))


def _mapping(where: str, key: str, raw: Any, required: bool = False) -> dict:
    if raw is None and not required:
        return {}
    if not isinstance(raw, dict) or (required and not raw):
        _fail(where, key, f"must be a {'non-empty ' if required else ''}mapping, got {raw!r}")
    return raw


def _coerce(where: str, key: str, name: str, value: Any) -> Any:
    try:
        return coerce(name, value)
    except ValueError as exc:
        _fail(where, key, str(exc))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _search_fields() -> list[str]:
    return [f.name for f in dataclasses.fields(SearchSettings)]


def _builtin_dirs() -> list[Path]:
    # Installed: package data next to the code. From a checkout: the repo's search_spaces/.
    packaged = Path(str(importlib.resources.files("raytune_ft") / "search_spaces"))
    return [packaged, Path(__file__).resolve().parent.parent / "search_spaces"]


def _names_text() -> str:
    return ", ".join(builtin_space_names()) or "(no built-in spaces found)"
