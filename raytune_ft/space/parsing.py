"""The records a search-space file is made of and their validation.

`parse_space` turns the loaded YAML of one file (spaces.parse_value reads it) into the fields of
`spaces.Space`; every mistake raises SpaceError naming the file, the key and the bad value. The
`--set` overrides of `Space.with_overrides` go through the same checks. No Optuna here (spaces.py bridges to it).
"""

from __future__ import annotations

import collections.abc
import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any, NoReturn

from raytune_ft import data_fraction
from raytune_ft.config import FIELD_TYPES, TrialConfig, coerce, unknown_key_message

TOP_KEYS = ("name", "description", "fixed", "teacher", "search", "scheduler", "params", "objectives")
# The teacher section: a ready checkpoint, or its own TrialConfig fields (model, weights, epochs, lr,
# image_size, ...) written directly or under `overrides:` (the older spelling); unset fields come
# from `fixed`, except `weights` when the teacher's model differs from the students'.
TEACHER_KEYS = ("checkpoint", "overrides", *FIELD_TYPES)
# The teacher must see the students' images in the students' order (precomputed logits are looked
# up by sample index): these data settings are the students', only the input size may differ.
SHARED_DATA_FIELDS = ("dataset", "data_root", "val_fraction", "max_samples", "data_seed", "download",
                      "on_bad_image")
PARAM_KEYS = {
    "float": ("type", "low", "high", "log", "step", "when"),
    "int": ("type", "low", "high", "log", "step", "when"),
    "categorical": ("type", "choices", "when"),
}
SAMPLERS = ("tpe", "gp", "nsga2", "random")  # spaces.Space.make_sampler builds them
KD_GATES = ("auto", "keep", "drop")  # search.kd_gate
CALLBACKS = ("mlflow", "tensorboard", "wandb")  # search.callbacks: search/tracking.py builds them
MODES = ("max", "min")
# The teacher is a dense model: distillation, pruning and quantization are forced off for it. The
# regularizers (weight decay, L2-SP, label smoothing) are off unless its own section switches them
# on (a from-scratch residual teacher needs weight decay); they are not inherited from `fixed`.
TEACHER_REGULARIZERS = ("use_weight_decay", "use_l2sp", "use_label_smoothing")
TECHNIQUE_FLAGS = tuple(name for name in FIELD_TYPES if name.startswith("use_")
                        and name not in ("use_gpu", *TEACHER_REGULARIZERS))
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

    sampler: str = "tpe"  # one of SAMPLERS; tpe: the best at a small budget (docs/benchmarks.md)
    num_samples: int = 12  # trials in the experiment
    max_concurrent: int = 1  # trials running at the same time
    # false: a new trial is asked for as soon as one ends (no core idles). true: a new group of
    # max_concurrent trials only when the whole previous group ended, so the sampler sees the same
    # history on every run with the same seed (reproducible; a core idles while the group's longest
    # trial runs: 20-25 % of the cores in the shipped Fashion-MNIST search, docs/benchmarks.md)
    synchronous: bool = False
    seed: int = 0  # sampler seed
    population_size: int = 6  # NSGA-II generation size (ignored by the other samplers)
    n_startup_trials: int = 4  # finished trials (recipes included) before tpe / gp stop sampling at random
    # expert-seeded starts: complete recipes (param -> value), run first in this order (recipes.py)
    initial: tuple[dict[str, Any], ...] = ()
    max_failures: int = 0  # retries of a failed trial (each from its newest checkpoint)
    checkpoint_every: int = 1  # epochs between two trial checkpoints (the last epoch always checkpoints)
    keep_checkpoints: int = 2  # newest checkpoints kept per trial; older ones are deleted
    # data-size fidelity (search/fidelity.py): < 1 makes a two-stage search — every trial trains on
    # this stratified fraction of the training split, then the `promote` best recipes (the subset
    # front first, then the nearest in NSGA-II order) are retrained on all of it; the front is theirs
    data_fraction: float = 1.0
    promote: int = 3
    # epochs of each full-data retraining (stage 2); None: the trials' `epochs`. The subset stage
    # only has to rank recipes; the files a user ships come from stage 2 (docs/search.md)
    promote_epochs: int | None = None
    # stage 2 also retrains this many other fully trained stage-1 recipes drawn at random (seeded by
    # `seed`): the check that the subset ranks recipes as the full data does (fidelity.json's τ over
    # every promoted recipe, and a line when a random one beats a promoted one); they join the front
    promote_random: int = 0
    # the teacher-quality gate (search/gate.py): "auto" stops sampling distillation once a finished
    # student's val_acc comes within kd_gate_margin of the teacher's; "keep" samples it regardless;
    # "drop" never samples it (use_kd false in every trial)
    kd_gate: str = "auto"
    kd_gate_margin: float = 0.005
    # experiment tracking (search/tracking.py): Ray Tune logger callbacks by name, one of CALLBACKS
    # each; tensorboard's files are written anyway (Tune's default), mlflow into <experiment>/mlflow.db
    callbacks: tuple[str, ...] = ()


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
# Per-epoch stand-ins that the int8 file of a quantized trial changes and that have no int8
# stand-in (model_bytes_compressed has one: quantization.int8_weight_bytes)
INT8_CHANGES = ("model_bytes", "nonzero_params")


# Smallest accepted value of each integer search setting (numpy seeds must be >= 0).
SEARCH_MINIMUM = {
    "num_samples": 1,
    "max_concurrent": 1,
    "seed": 0,
    "population_size": 2,
    "n_startup_trials": 1,
    "max_failures": 0,
    "checkpoint_every": 1,
    "keep_checkpoints": 1,
    "promote": 1,
    "promote_random": 0,
}



# --- parsing -----------------------------------------------------------------------------


def parse_space(where: str, data: Any) -> dict[str, Any]:
    """The keyword arguments of `spaces.Space` (all but `path`) for the YAML `data` of file `where`."""
    if not isinstance(data, dict):
        fail(where, "", f"the top level must be a mapping of {', '.join(TOP_KEYS)}, got {data!r}")
    _check_keys(where, "", data, TOP_KEYS)

    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        fail(where, "name", f"a non-empty string is required, got {name!r}")
    description = data.get("description", "")
    if description is None:
        description = ""
    if not isinstance(description, str):
        fail(where, "description", f"must be a string, got {description!r}")

    fixed = parse_fields(where, "fixed", _mapping(where, "fixed", data.get("fixed")))

    teacher = _mapping(where, "teacher", data.get("teacher"))
    _check_keys(where, "teacher", teacher, TEACHER_KEYS)
    checkpoint = parse_checkpoint(where, "teacher.checkpoint", teacher.get("checkpoint"))
    teacher_overrides = parse_fields(
        where,
        "teacher.overrides",
        _mapping(where, "teacher.overrides", teacher.get("overrides")),
        teacher=True,
    )
    direct = {k: v for k, v in teacher.items() if k not in ("checkpoint", "overrides")}
    for key in direct:
        if key in teacher_overrides:
            fail(where, f"teacher.{key}", f"set both as teacher.{key} and teacher.overrides.{key}; keep one")
    teacher_overrides.update(parse_fields(where, "teacher", direct, teacher=True))

    search = parse_search(where, _mapping(where, "search", data.get("search")))

    raw_params = _mapping(where, "params", data.get("params"), required=True)
    parsed: dict[str, ParamSpec] = {}
    for param_name, spec in raw_params.items():
        parsed[param_name] = _parse_param(where, param_name, spec, parsed, list(raw_params))
        if param_name in fixed:
            fail(
                where,
                f"params.{param_name}",
                f"{param_name} is both fixed (= {fixed[param_name]!r}) and searched; "
                "remove it from fixed or from params",
            )
    params = tuple(parsed.values())

    objectives = _parse_objectives(where, data.get("objectives"))
    check_against_config(where, fixed, teacher_overrides, params)
    check_teacher(where, fixed, teacher_overrides, checkpoint, params)
    scheduler = None
    if data.get("scheduler") is not None:
        scheduler = parse_scheduler(where, _mapping(where, "scheduler", data["scheduler"]))
    check_scheduler(where, scheduler, fixed, params, objectives)
    return dict(  # search.initial: checked against the params by spaces.load_space (recipes.py)
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


def parse_scheduler(where: str, raw: dict[str, Any]) -> SchedulerSettings:
    valid = [f.name for f in dataclasses.fields(SchedulerSettings)]
    _check_keys(where, "scheduler", raw, valid)
    kind = raw.get("type")
    if kind not in SCHEDULERS:
        fail(where, "scheduler.type", f"must be one of {', '.join(SCHEDULERS)}, got {kind!r}")
    grace = raw.get("grace_period", SchedulerSettings.grace_period)
    if not is_int(grace) or grace < 1:
        fail(where, "scheduler.grace_period", f"must be an int >= 1 (epochs), got {grace!r}")
    eta = raw.get("reduction_factor", SchedulerSettings.reduction_factor)
    if not is_number(eta) or not eta > 1:
        fail(where, "scheduler.reduction_factor", f"must be a number > 1, got {eta!r}")
    max_t = raw.get("max_t")
    if max_t is not None and (not is_int(max_t) or max_t < 1):
        fail(where, "scheduler.max_t", f"must be an int >= 1 (epochs) or null (= epochs), got {max_t!r}")
    return SchedulerSettings(type=kind, grace_period=grace, reduction_factor=eta, max_t=max_t)


def max_epochs(fixed: dict[str, Any], params: tuple[ParamSpec, ...]) -> int:
    for p in params:
        if p.name == "epochs":
            return int(max(p.choices) if p.type == "categorical" else p.high)
    return int(fixed.get("epochs", TrialConfig().epochs))


def check_scheduler(where: str, scheduler: SchedulerSettings | None, fixed: dict[str, Any],
                     params: tuple[ParamSpec, ...], objectives: dict[str, str]) -> None:
    """MO-ASHA ranks every objective at every rung: each must be measurable every epoch, and the
    rungs must fit inside training."""
    if scheduler is None:
        return
    for metric in objectives:
        if metric not in PER_EPOCH_METRICS:
            fail(where, f"objectives.{metric}",
                  f"scheduler {scheduler.type} compares every objective at every rung, but {metric} is measured "
                  f"only on the final exported model; choose objectives from {', '.join(PER_EPOCH_METRICS)} "
                  "or remove the scheduler")
    quantized = fixed.get("use_quantization") is True or any(p.name == "use_quantization" for p in params)
    for metric in objectives:
        if quantized and metric in INT8_CHANGES:
            fail(where, f"objectives.{metric}",
                 f"with use_quantization, {metric} of the shipped int8 file is known only after the last epoch, but "
                 f"scheduler {scheduler.type} compares it at every rung; use model_bytes_compressed (ranked on "
                 "the weights' int8 gzip each epoch) or another objective, fix "
                 "use_quantization: false, or remove the scheduler")
    epochs = max_epochs(fixed, params)
    max_t = scheduler.max_t if scheduler.max_t is not None else epochs
    if max_t < epochs:
        fail(where, "scheduler.max_t",
              f"{max_t} is below the trials' epochs ({epochs}): every trial would be cut at max_t and none "
              "would count as fully trained; use max_t >= epochs or leave it out (default: epochs)")
    if scheduler.grace_period >= max_t:
        fail(where, "scheduler.grace_period",
              f"{scheduler.grace_period} leaves no rung before max_t ({max_t}"
              f"{'' if scheduler.max_t is not None else ', = epochs'}), so nothing could be stopped early; "
              f"use a grace_period < {max_t}")


def parse_fields(
    where: str, key: str, raw: dict[str, Any], teacher: bool = False
) -> dict[str, Any]:
    """TrialConfig field -> value, each checked against the field's type (for fixed/overrides)."""
    out = {}
    for name, value in raw.items():
        if name not in FIELD_TYPES:
            fail(where, f"{key}.{name}", unknown_key_message(str(name), FIELD_TYPES))
        if teacher and name in TECHNIQUE_FLAGS:
            fail(
                where,
                f"{key}.{name}",
                f"{name} cannot be overridden for the teacher, which is always a dense model trained with "
                f"{', '.join(TECHNIQUE_FLAGS)} off (got {value!r}); its regularizers "
                f"({', '.join(TEACHER_REGULARIZERS)}) may be switched on",
            )
        if teacher and name in SHARED_DATA_FIELDS:
            fail(where, f"{key}.{name}",
                 f"the teacher sees the students' images in their order, so {', '.join(SHARED_DATA_FIELDS)} "
                 f"come from fixed; only image_size (its input size) may differ (got {value!r})")
        out[name] = coerce_at(where, f"{key}.{name}", name, value)
    return out


def parse_checkpoint(where: str, key: str, value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or not value):
        fail(where, key, f"must be a path (string) or null, got {value!r}")
    return value


def parse_search(where: str, raw: dict[str, Any]) -> SearchSettings:
    _check_keys(where, "search", raw, search_fields())
    raw = dict(raw)
    for key, value in raw.items():
        if key == "initial":  # each recipe is checked against the params by recipes.check_initial
            if value is not None and not isinstance(value, (list, tuple)):
                fail(where, "search.initial", f"must be a list of recipes (mappings param: value), got {value!r}")
            raw[key] = tuple(value or ())
        elif key == "sampler":
            if value not in SAMPLERS:
                fail(
                    where, "search.sampler", f"must be one of {', '.join(SAMPLERS)}, got {value!r}"
                )
        elif key == "callbacks":  # a name or a list of names
            names = (value,) if isinstance(value, str) else value
            if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
                fail(where, "search.callbacks", f"must be a list of names from {', '.join(CALLBACKS)}, got {value!r}")
            for name in names:
                if name not in CALLBACKS:
                    fail(where, "search.callbacks", f"unknown callback {name!r}; choose from {', '.join(CALLBACKS)}")
            raw[key] = tuple(dict.fromkeys(names))
        elif key == "synchronous":
            if not isinstance(value, bool):
                fail(where, "search.synchronous", f"must be true or false, got {value!r}")
        elif key == "data_fraction":
            if not is_number(value) or not 0 < value <= 1:
                fail(where, "search.data_fraction", f"must be a number in (0, 1] (1: no subset stage), got {value!r}")
            raw[key] = float(value)
        elif key == "kd_gate":
            if value not in KD_GATES:
                fail(where, "search.kd_gate", f"must be one of {', '.join(KD_GATES)} (auto: stop distilling once a "
                     f"student reaches the teacher; keep: always search it; drop: never), got {value!r}")
        elif key == "kd_gate_margin":
            if not is_number(value) or not 0 <= value < 1:
                fail(where, "search.kd_gate_margin", f"must be a number in [0, 1) (val_acc points the teacher must "
                     f"lead the best student by), got {value!r}")
            raw[key] = float(value)
        elif key == "promote_epochs":
            if value is not None and (not is_int(value) or value < 1):
                fail(where, "search.promote_epochs", f"must be an int >= 1 (the full-data retraining's epochs) or null "
                     f"(the trials' epochs), got {value!r}")
        elif not is_int(value) or value < SEARCH_MINIMUM[key]:
            fail(
                where, f"search.{key}", f"must be an int >= {SEARCH_MINIMUM[key]}, got {value!r}"
            )
    settings = SearchSettings(**raw)
    two_stage = data_fraction.is_subset(settings.data_fraction)
    if two_stage and settings.promote > settings.num_samples:
        fail(where, "search.promote", f"promotes {settings.promote} recipes to the full data but the subset stage "
             f"runs only search.num_samples = {settings.num_samples}; use a promote <= num_samples")
    if two_stage and settings.promote + settings.promote_random > settings.num_samples:
        fail(where, "search.promote_random", f"{settings.promote} best and {settings.promote_random} random recipes "
             f"cannot be drawn from search.num_samples = {settings.num_samples}; use promote + promote_random <= "
             "num_samples")
    return settings


def _parse_param(
    where: str, name: Any, raw: Any, earlier: dict[str, ParamSpec], all_names: list[Any]
) -> ParamSpec:
    key = f"params.{name}"
    if name not in FIELD_TYPES:
        fail(where, key, unknown_key_message(str(name), FIELD_TYPES))
    raw = _mapping(where, key, raw, required=True)
    kind = raw.get("type")
    if kind not in PARAM_KEYS:
        fail(where, f"{key}.type", f"must be one of {', '.join(PARAM_KEYS)}, got {kind!r}")
    _check_keys(where, key, raw, PARAM_KEYS[kind])
    when = _parse_when(where, name, raw.get("when"), earlier, all_names)

    if kind == "categorical":
        choices = raw.get("choices")
        if not isinstance(choices, list) or not choices:
            fail(where, f"{key}.choices", f"must be a non-empty list, got {choices!r}")
        coerced = tuple(coerce_at(where, f"{key}.choices", name, c) for c in choices)
        if len(set(coerced)) != len(coerced):
            fail(where, f"{key}.choices", f"has duplicates: {choices!r}")
        return ParamSpec(name=name, type=kind, choices=coerced, when=when)

    allowed = FIELD_TYPES[name]
    if float not in allowed and not (kind == "int" and int in allowed):
        field_type = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
        fix = "int" if int in allowed else "categorical"
        fail(
            where,
            f"{key}.type",
            f"{name} is {field_type}, so type {kind} cannot sample it; use type: {fix}",
        )
    number_check = is_int if kind == "int" else is_number
    for bound in ("low", "high"):
        value = raw.get(bound)
        if not number_check(value) or not math.isfinite(value):
            fail(where, f"{key}.{bound}", f"must be a finite {kind}, got {value!r}")
    low, high = raw["low"], raw["high"]
    if kind == "float":
        low, high = float(low), float(high)
    if not low < high:
        fail(where, key, f"low must be < high, got low={low!r}, high={high!r}")
    log = raw.get("log", False)
    if not isinstance(log, bool):
        fail(where, f"{key}.log", f"must be true or false, got {log!r}")
    if log and low <= 0:
        fail(where, f"{key}.low", f"must be > 0 when log: true, got {low!r}")
    step = raw.get("step")
    if step is not None:
        if log:
            fail(where, f"{key}.step", f"cannot be combined with log: true, got step={step!r}")
        if not is_number(step) or not step > 0:
            fail(where, f"{key}.step", f"must be a {kind} > 0, got {step!r}")
        # Optuna would silently lower `high` to the last reachable grid point.
        n_steps = (high - low) / step
        if abs(n_steps - round(n_steps)) > 1e-9:
            fail(
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
        fail(where, key, f"must be a mapping {{parent: value or [values]}}, got {raw!r}")
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
            fail(where, parent_key, f"{name} is conditioned on {parent!r}, which {problem}")
        if parent_spec.type != "categorical":
            fail(
                where,
                parent_key,
                f"{name} is conditioned on {parent!r}, a {parent_spec.type} param; "
                "only categorical params can be conditions",
            )
        values = values if isinstance(values, list) else [values]
        if not values:
            fail(where, parent_key, "must list at least one value")
        allowed = tuple(coerce_at(where, parent_key, parent, v) for v in values)
        for value in allowed:
            if value not in parent_spec.choices:
                fail(
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
            fail(
                where,
                f"objectives.{metric}",
                f"a metric name must match [a-z_][a-z0-9_]*, got {metric!r}",
            )
        if mode not in MODES:
            fail(where, f"objectives.{metric}", f"mode must be max or min, got {mode!r}")
    return dict(raw)


def check_against_config(
    where: str,
    fixed: dict[str, Any],
    teacher_overrides: dict[str, Any],
    params: tuple[ParamSpec, ...],
) -> None:
    """Build TrialConfigs to catch bad values: fixed, the teacher, and every param's extremes (a
    conditional param with its parents set to the first value that switches it on)."""
    build(where, "fixed", fixed)
    build(where, "teacher.overrides", teacher_values(fixed, teacher_overrides))
    for p in params:
        parents = {parent: values[0] for parent, values in p.when.items()}
        for value in p.choices if p.type == "categorical" else (p.low, p.high):
            build(where, f"params.{p.name}", {**fixed, **parents, p.name: value})


def check_teacher(where: str, fixed: dict[str, Any], teacher_overrides: dict[str, Any], checkpoint: str | None,
                  params: tuple[ParamSpec, ...]) -> None:
    """A searched student `model` needs the teacher's own: it cannot be inherited from fixed."""
    searched = {p.name for p in params}
    if "model" in searched and "model" not in teacher_overrides and checkpoint is None:
        fail(where, "teacher.model", "required when the students' model is searched (params.model): name the "
             "teacher's architecture, e.g. teacher: {model: efficientnet_lite2}, or give teacher.checkpoint")


def build(where: str, key: str, values: dict[str, Any]) -> None:
    try:
        TrialConfig.from_dict(values)
    except ValueError as exc:
        fail(where, key, str(exc))


def teacher_values(fixed: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """The teacher's TrialConfig fields: fixed, every technique off, then its own (regularizers it
    switches on). A weights file of the students does not fit another architecture: with its own
    model the teacher keeps only its own `weights` (default pretrained)."""
    base = dict(fixed)
    if overrides.get("model", base.get("model")) != base.get("model"):
        base.pop("weights", None)
    return {**base, **dict.fromkeys((*TECHNIQUE_FLAGS, *TEACHER_REGULARIZERS), False), **overrides}


# --- small helpers -----------------------------------------------------------------------


def fail(where: str, key: str, message: str) -> NoReturn:
    raise SpaceError(f"{where}: {key}: {message}" if key else f"{where}: {message}")


def _check_keys(where: str, key: str, raw: dict, valid: collections.abc.Iterable[str]) -> None:
    valid = list(valid)
    for k in raw:
        if k not in valid:
            fail(where, f"{key}.{k}" if key else str(k), unknown_key_message(str(k), valid))


def _mapping(where: str, key: str, raw: Any, required: bool = False) -> dict:
    if raw is None and not required:
        return {}
    if not isinstance(raw, dict) or (required and not raw):
        fail(where, key, f"must be a {'non-empty ' if required else ''}mapping, got {raw!r}")
    return raw


def coerce_at(where: str, key: str, name: str, value: Any) -> Any:
    try:
        return coerce(name, value)
    except ValueError as exc:
        fail(where, key, str(exc))


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def search_fields() -> list[str]:
    return [f.name for f in dataclasses.fields(SearchSettings)]
