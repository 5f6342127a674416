"""Experiment tracking (search/tracking.py, `search.callbacks`): the names are validated on load,
a missing package names the extra to install before Ray starts, and after the shared small search
(`readme_run`, which logs to MLflow when its package is installed) MLflow's store holds one run per
trial and every trial folder TensorBoard's events."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from raytune_ft import layout
from raytune_ft.search import tracking
from raytune_ft.space.parsing import CALLBACKS
from raytune_ft.space.spaces import SpaceError, builtin_space_path, load_space

ROOT = Path(__file__).resolve().parents[2]


def test_every_callback_name_has_a_builder_and_an_install_line():
    assert set(tracking.BUILDERS) == set(tracking.PACKAGES) == set(tracking.INSTALL) == set(CALLBACKS)


@pytest.mark.parametrize(("value", "message"), [
    ("[mlfow]", "search.callbacks: unknown callback 'mlfow'; choose from mlflow, tensorboard, wandb"),
    ("3", "search.callbacks: must be a list of names from mlflow, tensorboard, wandb, got 3"),
])
def test_an_unknown_callback_lists_the_valid_ones(value, message):
    with pytest.raises(SpaceError, match=message):
        load_space(builtin_space_path("quickstart")).with_overrides([f"search.callbacks={value}"])


def test_callbacks_are_names_kept_once_in_order():
    space = load_space(builtin_space_path("quickstart"))
    assert space.search.callbacks == ()
    assert space.with_overrides(["search.callbacks=mlflow"]).search.callbacks == ("mlflow",)
    assert space.with_overrides(["search.callbacks=[tensorboard, mlflow, tensorboard]"]).search.callbacks == (
        "tensorboard", "mlflow")


def test_a_missing_package_names_the_extra_to_install_before_ray_starts(tmp_path):
    # sys.modules[name] = None is Python's own "this package cannot be imported"
    code = ("import sys; sys.modules['mlflow'] = None; from raytune_ft.search.cli import main; "
            "sys.exit(main(['--set', 'search.callbacks=[mlflow]', '--storage-path', sys.argv[1]]))")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == ("raytune_ft.search: error: search.callbacks: mlflow needs the package 'mlflow', "
                                   "which is not installed; install it with: "
                                   'pip install -c constraints.txt -e ".[mlflow]"')
    assert "Started a local Ray instance" not in proc.stdout + proc.stderr and not list(tmp_path.iterdir())


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed here")
def test_wandb_without_its_package_names_its_extra():
    with pytest.raises(tracking.TrackingError, match=r'pip install -c constraints.txt -e "\.\[wandb\]"'):
        tracking.check_installed(["wandb"])


@pytest.mark.e2e
@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="mlflow is not installed (the mlflow extra)")
def test_mlflow_holds_one_run_per_trial_and_tensorboard_files_are_written(readme_run):
    from mlflow.tracking import MlflowClient

    exp = readme_run.variables["exp"]
    client = MlflowClient(tracking_uri=f"sqlite:///{readme_run.path / layout.MLFLOW_DB}")
    experiment = client.get_experiment_by_name(exp.name)
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == sorted(f"tune_trial_{t}" for t in exp.trials["trial_id"])
    for run in runs:
        trial = exp.trials[exp.trials["trial_id"] == run.info.run_name.removeprefix("tune_trial_")].iloc[0]
        assert run.info.status == "FINISHED"
        assert run.data.metrics["val_acc"] == pytest.approx(trial["val_acc"])
        assert float(run.data.params["lr"]) == pytest.approx(trial["lr"])
    for trial_dir in readme_run.path.glob("trial_*"):  # Tune's own TensorBoard logger, on by default
        assert list(trial_dir.glob("events.out.tfevents.*")), trial_dir
