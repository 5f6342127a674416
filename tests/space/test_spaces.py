"""Tests for raytune_ft.space: the shipped files, sampling, samplers, errors and --set."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import optuna
import pytest

from raytune_ft.config import TrialConfig
from raytune_ft.space.spaces import (
    SAMPLERS,
    TEACHER_REGULARIZERS,
    TECHNIQUE_FLAGS,
    ParamSpec,
    SearchSettings,
    Space,
    SpaceError,
    builtin_space_names,
    builtin_space_path,
    load_space,
    resolve_space,
)

BUILTINS = ["quickstart", "quickstart_structured", "quickstart_mo_asha", "joint"]

# A small valid space; each error case below breaks it in one place.
VALID = """\
name: t
fixed:
  epochs: 2
params:
  use_kd: {type: categorical, choices: [true, false]}
  kd_alpha: {type: float, low: 0.1, high: 0.9, when: {use_kd: true}}
objectives:
  val_acc: max
"""
KD_ALPHA = "  kd_alpha: {type: float, low: 0.1, high: 0.9, when: {use_kd: true}}\n"
USE_KD = "  use_kd: {type: categorical, choices: [true, false]}\n"


def write(tmp_path: Path, text: str, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture
def quickstart() -> Space:
    return load_space(builtin_space_path("quickstart"))


# --- the shipped files ---------------------------------------------------------------------


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_space_loads(name: str) -> None:
    space = load_space(resolve_space(name))
    assert space.name == name
    assert space.params and list(space.objectives.items())[0] == ("val_acc", "max")
    size = list(space.objectives)[1]
    assert size in {"nonzero_params", "model_bytes", "model_bytes_compressed"} and space.objectives[size] == "min"
    assert space.metric_and_mode() == (["val_acc", size], ["max", "min"])
    assert isinstance(space.trial_config({}), TrialConfig)
    teacher = space.teacher_config()
    assert not any(getattr(teacher, flag) for flag in TECHNIQUE_FLAGS)
    assert {"use_pruning", "use_channel_pruning", "use_kd", "use_quantization"} <= set(TECHNIQUE_FLAGS)
    assert not set(TEACHER_REGULARIZERS) & set(TECHNIQUE_FLAGS)


def test_builtin_names_and_resolve(tmp_path: Path) -> None:
    assert set(BUILTINS) <= set(builtin_space_names())
    assert resolve_space("joint") == resolve_space("joint.yaml") == builtin_space_path("joint")
    own = write(tmp_path, VALID)
    assert resolve_space(str(own)) == own
    with pytest.raises(SpaceError, match=r"space file 'nope' not found; .*joint.*quickstart"):
        resolve_space("nope")
    with pytest.raises(SpaceError, match="no built-in search space 'nope'"):
        builtin_space_path("nope")


def test_quickstart_teacher_and_trial_config(quickstart: Space) -> None:
    assert quickstart.fixed["use_pruning"] is True
    assert quickstart.teacher_config().use_pruning is False  # the teacher stays dense
    assert quickstart.teacher_config().epochs == 15
    cfg = quickstart.trial_config({"lr": 0.002, "use_kd": True, "kd_alpha": 0.4})
    assert (cfg.lr, cfg.use_kd, cfg.kd_alpha, cfg.epochs) == (0.002, True, 0.4, quickstart.fixed["epochs"])


# --- sampling --------------------------------------------------------------------------------


def is_active(p: ParamSpec, sampled: dict) -> bool:
    return all(parent in sampled and sampled[parent] in ok for parent, ok in p.when.items())


@pytest.mark.parametrize("name", BUILTINS)
def test_define_by_run_samples_only_active_params(name: str) -> None:
    space = load_space(builtin_space_path(name))
    study = optuna.create_study(
        directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0)
    )
    define = space.define_by_run()
    seen_kd = set()
    for _ in range(30):
        trial = study.ask()
        assert define(trial) is None
        sampled = trial.params
        assert ("kd_alpha" in sampled) == sampled["use_kd"]
        assert ("kd_temperature" in sampled) == sampled["use_kd"]
        for p in space.params:
            assert (p.name in sampled) == is_active(p, sampled), p.name
        space.trial_config(sampled)  # every sample is a valid config
        seen_kd.add(sampled["use_kd"])
        study.tell(trial, [0.5, 1.0])
    assert seen_kd == {True, False}


@pytest.mark.parametrize("sampler", ["nsga2", "tpe", "random"])
def test_samplers_run_with_conditional_params(quickstart: Space, sampler: str) -> None:
    space = quickstart.with_overrides([f"search.sampler={sampler}", "search.population_size=4"])
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=space.make_sampler())
    define = space.define_by_run()
    for i in range(10):  # past NSGA-II's first generation and TPE's startup trials
        trial = study.ask()
        define(trial)
        space.trial_config(trial.params)
        study.tell(trial, [i / 10, 1.0 - trial.params["final_sparsity"]])
    assert len(study.trials) == 10


@pytest.mark.parametrize(
    ("sampler", "cls"),
    [
        ("nsga2", optuna.samplers.NSGAIISampler),
        ("tpe", optuna.samplers.TPESampler),
        ("random", optuna.samplers.RandomSampler),
    ],
)
def test_make_sampler_type(quickstart: Space, sampler: str, cls: type) -> None:
    space = dataclasses.replace(quickstart, search=SearchSettings(sampler=sampler))
    assert type(space.make_sampler()) is cls
    assert type(space.make_sampler(seed=3)) is cls


def test_define_by_run_pickles(quickstart: Space) -> None:
    # Tune checkpoints OptunaSearch (and the define-by-run function in it) with pickle.
    define = pickle.loads(pickle.dumps(quickstart.define_by_run()))
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1)).ask()
    define(trial)
    assert "lr" in trial.params


# --- load errors ------------------------------------------------------------------------------


def replaced(old: str, new: str) -> str:
    assert old in VALID, old
    return VALID.replace(old, new)


ERROR_CASES = {
    "malformed_yaml": (
        replaced("  epochs: 2\n", "  epochs: 2\n   bad: [1\n"),
        ["line 4", "invalid YAML"],
    ),
    "duplicate_key": (
        replaced("  epochs: 2\n", "  epochs: 2\n  epochs: 3\n"),
        ["line 4", "duplicate key 'epochs'"],
    ),
    "not_a_mapping": ("- a\n- b\n", ["top level must be a mapping", "['a', 'b']"]),
    "unknown_top_level_key": (VALID + "paramz: {}\n", ["paramz", "did you mean 'params'"]),
    "missing_name": (replaced("name: t\n", ""), ["name:", "None"]),
    "unknown_fixed_key": (
        replaced("  epochs: 2\n", "  lrr: 0.1\n"),
        ["fixed.lrr", "'lrr'", "did you mean 'lr'"],
    ),
    "fixed_wrong_type": (
        replaced("  epochs: 2\n", "  epochs: three\n"),
        ["fixed.epochs", "'three'"],
    ),
    "fixed_out_of_range": (
        replaced("  epochs: 2\n", "  final_sparsity: 1.5\n"),
        ["fixed:", "final_sparsity", "1.5"],
    ),
    "fixed_and_searched": (
        replaced("  epochs: 2\n", "  use_kd: true\n"),
        ["params.use_kd", "both fixed", "True"],
    ),
    "unknown_param": (
        VALID.replace("objectives", "  lrr: {type: float, low: 0.1, high: 0.2}\nobjectives"),
        ["params.lrr", "'lrr'"],
    ),
    "unknown_param_type": (
        replaced("type: float", "type: double"),
        ["params.kd_alpha.type", "'double'"],
    ),
    "unknown_spec_key": (
        replaced("high: 0.9,", "high: 0.9, lg: true,"),
        ["params.kd_alpha.lg", "'lg'", "valid keys"],
    ),
    "low_not_below_high": (
        replaced("low: 0.1, high: 0.9", "low: 0.9, high: 0.1"),
        ["params.kd_alpha", "low=0.9", "high=0.1"],
    ),
    "log_low_not_positive": (
        replaced("low: 0.1, high: 0.9", "low: -1.0, high: 0.9, log: true"),
        ["params.kd_alpha.low", "log: true", "-1.0"],
    ),
    "step_with_log": (
        replaced("low: 0.1, high: 0.9", "low: 0.1, high: 0.9, log: true, step: 0.1"),
        ["params.kd_alpha.step", "0.1"],
    ),
    "step_not_a_multiple": (
        VALID.replace(
            "objectives", "  pruning_frequency: {type: int, low: 5, high: 20, step: 4}\nobjectives"
        ),
        ["params.pruning_frequency.step", "4"],
    ),
    "param_out_of_range": (
        replaced("high: 0.9", "high: 1.5"),
        ["params.kd_alpha", "kd_alpha must be", "1.5"],
    ),
    "float_range_on_int_field": (
        VALID.replace(
            "objectives", "  pruning_frequency: {type: float, low: 5.0, high: 20.0}\nobjectives"
        ),
        ["params.pruning_frequency.type", "float", "use type: int"],
    ),
    "float_range_on_str_field": (
        VALID.replace("objectives", "  model: {type: float, low: 1.0, high: 2.0}\nobjectives"),
        ["params.model.type", "float", "categorical"],
    ),
    "int_range_with_float_bound": (
        VALID.replace("objectives", "  batch_size: {type: int, low: 16.5, high: 64}\nobjectives"),
        ["params.batch_size.low", "16.5"],
    ),
    "choice_wrong_type": (
        replaced("choices: [true, false]", "choices: [true, 'no']"),
        ["params.use_kd.choices", "'no'"],
    ),
    "choice_invalid_value": (
        VALID.replace(
            "objectives",
            "  pruning_scope: {type: categorical, choices: [global, layerwise]}\nobjectives",
        ),
        ["params.pruning_scope", "'layerwise'"],
    ),
    "condition_on_unknown_param": (
        replaced("when: {use_kd: true}", "when: {use_kdd: true}"),
        ["params.kd_alpha.when.use_kdd", "'use_kdd'"],
    ),
    "condition_on_later_param": (
        replaced(USE_KD + KD_ALPHA, KD_ALPHA + USE_KD),
        ["params.kd_alpha.when.use_kd", "declared after kd_alpha"],
    ),
    "condition_on_float_param": (
        VALID.replace(
            "objectives",
            "  kd_temperature: {type: float, low: 1.0, high: 2.0, when: {kd_alpha: 0.5}}\n"
            "objectives",
        ),
        ["params.kd_temperature.when.kd_alpha", "only categorical"],
    ),
    "condition_value_not_a_choice": (
        replaced("choices: [true, false]", "choices: [true]").replace(
            "use_kd: true}", "use_kd: false}"
        ),
        ["params.kd_alpha.when.use_kd", "False", "[True]"],
    ),
    "bad_objective_mode": (
        replaced("val_acc: max", "val_acc: maximize"),
        ["objectives.val_acc", "'maximize'"],
    ),
    "bad_metric_name": (
        replaced("val_acc: max", "Val-Acc: max"),
        ["objectives.Val-Acc", "'Val-Acc'"],
    ),
    "no_objectives": (replaced("  val_acc: max\n", ""), ["objectives", "None"]),
    "empty_params": (
        VALID.split("params:")[0] + "params: {}\nobjectives: {val_acc: max}\n",
        ["params", "{}"],
    ),
    "bad_sampler": (VALID + "search: {sampler: cmaes}\n", ["search.sampler", "'cmaes'"]),
    "bad_synchronous": (VALID + "search: {synchronous: 1}\n", ["search.synchronous", "true or false", "1"]),
    "bad_num_samples": (VALID + "search: {num_samples: 0}\n", ["search.num_samples", "0"]),
    "unknown_search_key": (VALID + "search: {samples: 3}\n", ["search.samples", "'num_samples'"]),
    "teacher_technique_flag": (
        VALID + "teacher: {overrides: {use_kd: true}}\n",
        ["teacher.overrides.use_kd", "True"],
    ),
    "teacher_bad_override": (
        VALID + "teacher: {overrides: {epochs: 0}}\n",
        ["teacher.overrides", "epochs", "0"],
    ),
    "teacher_bad_checkpoint": (VALID + "teacher: {checkpoint: 3}\n", ["teacher.checkpoint", "3"]),
}


@pytest.mark.parametrize(("text", "fragments"), ERROR_CASES.values(), ids=ERROR_CASES.keys())
def test_load_errors_name_file_key_and_value(
    tmp_path: Path, text: str, fragments: list[str]
) -> None:
    path = write(tmp_path, text, name="broken.yaml")
    with pytest.raises(SpaceError) as info:
        load_space(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_valid_template_loads(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, VALID))
    assert [p.name for p in space.params] == ["use_kd", "kd_alpha"]
    assert space.params[1].when == {"use_kd": (True,)}
    assert space.search == SearchSettings()


def test_missing_file_is_a_space_error(tmp_path: Path) -> None:
    with pytest.raises(SpaceError, match=r"missing\.yaml: cannot read"):
        load_space(tmp_path / "missing.yaml")


def test_exponent_without_dot_is_a_float(tmp_path: Path) -> None:
    # YAML 1.1 (PyYAML) would read 1e-3 as the string '1e-3'.
    space = load_space(
        write(tmp_path, replaced("  epochs: 2\n", "  lr: 1e-3\n  momentum: 9.5e-1\n"))
    )
    assert space.fixed == {"lr": 1e-3, "momentum": 0.95}


# --- --set overrides ------------------------------------------------------------------------


def test_with_overrides(quickstart: Space) -> None:
    space = quickstart.with_overrides(
        [
            "epochs=2",
            "momentum=9e-1",
            "data_root=null",
            "teacher.epochs=1",
            "teacher.checkpoint=ckpt/teacher.pt",
            "search.num_samples=3",
            "search.sampler=random",
        ]
    )
    assert space.fixed["epochs"] == 2 and space.trial_config({}).epochs == 2
    assert space.fixed["momentum"] == 0.9 and space.fixed["data_root"] is None
    assert space.teacher_overrides["epochs"] == 1 and space.teacher_config().epochs == 1
    assert space.teacher_checkpoint == "ckpt/teacher.pt"
    assert (space.search.num_samples, space.search.sampler) == (3, "random")
    assert quickstart.fixed["epochs"] != 2 and quickstart.search.num_samples != 3  # unchanged
    assert quickstart.with_overrides([]) == quickstart


def test_overrides_are_checked_together(tmp_path: Path) -> None:
    # Valid only as a pair: pruning_start=0.9 alone is past the default pruning_end (0.7).
    space = load_space(write(tmp_path, VALID)).with_overrides(
        ["pruning_start=0.9", "pruning_end=0.95"]
    )
    assert (space.fixed["pruning_start"], space.fixed["pruning_end"]) == (0.9, 0.95)


OVERRIDE_ERRORS = {
    "no_equals": ("epochs2", ["--set 'epochs2'", "expected KEY=VALUE"]),
    "unknown_key": (
        "epochz=2",
        ["--set 'epochz=2'", "'epochz'", "did you mean 'epochs'", "search.num_samples"],
    ),
    "searched_key": (
        "lr=0.1",
        ["--set 'lr=0.1'", "lr is searched in params", "remove it from params"],
    ),
    "bad_type": ("epochs=two", ["--set 'epochs=two'", "epochs must be int", "'two'"]),
    "bad_yaml": ("epochs=[2", ["--set 'epochs=[2'", "invalid YAML"]),
    "out_of_range": (
        "dropout=1.5",
        ["quickstart.yaml with --set dropout=1.5", "dropout must be", "1.5"],
    ),
    "breaks_a_param": ("pruning_start=0.5", ["params.pruning_end", "pruning_start (0.5)"]),
    "unknown_search_key": ("search.samples=3", ["search.samples", "'num_samples'"]),
    "bad_search_value": ("search.num_samples=0", ["search.num_samples", "0"]),
    "unknown_teacher_key": ("teacher.epochz=1", ["teacher.epochz", "'epochs'"]),
    "teacher_technique_flag": ("teacher.use_kd=true", ["teacher.overrides.use_kd"]),
}


@pytest.mark.parametrize(("arg", "fragments"), OVERRIDE_ERRORS.values(), ids=OVERRIDE_ERRORS.keys())
def test_override_errors(quickstart: Space, arg: str, fragments: list[str]) -> None:
    with pytest.raises(SpaceError) as info:
        quickstart.with_overrides([arg])
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_tunes_searcher_state_pickles_for_every_sampler(quickstart: Space, sampler: str, tmp_path) -> None:
    """Tune pickles the search algorithm (with its Optuna sampler) at every experiment snapshot and
    when the Tuner is built; Optuna 5.1's NSGAIISampler holds a thread lock and broke this."""
    from raytune_ft.search.searcher import make_searcher

    space = quickstart.with_overrides([f"search.sampler={sampler}", "search.population_size=4"])
    searcher = make_searcher(space, tmp_path)
    searcher.set_search_properties(None, None, {})
    first = searcher.suggest("t0")
    assert first is not None
    searcher.on_trial_complete("t0", {"val_acc": 0.5, "model_bytes": 1e6, "latency_ms_b1": 1.0,
                                      "epoch": space.fixed.get("epochs", 1), "config": first})
    restored = pickle.loads(pickle.dumps(searcher))  # what tuner_internal and the snapshots do
    assert restored.suggest("t1") is not None
    searcher.save(str(tmp_path / "searcher.pkl"))  # Tune's searcher checkpoint, read on --resume
    again = make_searcher(space, tmp_path)
    again.restore(str(tmp_path / "searcher.pkl"))
    assert again.suggest("t2") is not None
