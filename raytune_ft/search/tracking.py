"""Experiment tracking: the logger callbacks a space names in `search.callbacks`, built from Ray
Tune's own integrations, and the check, before Ray starts, that their packages are installed.

- `tensorboard`: `TBXLoggerCallback`, event files in every trial folder. Tune adds it by itself
  whenever tensorboardX is installed (it comes with ray[tune]), so it is on in every search;
  naming it only makes a missing package an error. `tensorboard --logdir <experiment>`.
- `mlflow`: `MLflowLoggerCallback`, one MLflow run per trial (its config as params, every epoch's
  metrics), in an MLflow experiment named after the experiment folder, stored in
  `<experiment>/mlflow.db` (SQLite: MLflow 3 keeps its `./mlruns` file store in maintenance mode
  and refuses it by default; no server either way), or at `$MLFLOW_TRACKING_URI` when set.
- `wandb`: `WandbLoggerCallback`, one W&B run per trial in the project `raytune_ft`, grouped by
  the experiment's name (needs `wandb login`, or `WANDB_MODE=offline` for local files).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from raytune_ft import layout
from raytune_ft.space.parsing import CALLBACKS

PACKAGES = {"mlflow": "mlflow", "tensorboard": "tensorboardX", "wandb": "wandb"}  # module each one imports
INSTALL = {  # how to get it, said when it is missing
    "mlflow": 'pip install -c constraints.txt -e ".[mlflow]"',
    "tensorboard": 'pip install -c constraints.txt -e .  (tensorboardX comes with ray[tune])',
    "wandb": 'pip install -c constraints.txt -e ".[wandb]"',
}
WANDB_PROJECT = "raytune_ft"


class TrackingError(ValueError):
    """A callback whose package is not installed; the message says what to install."""


def check_installed(names: Sequence[str]) -> None:
    """Raise TrackingError for the first of `names` whose package cannot be imported."""
    for name in names:
        assert name in CALLBACKS, name  # parsing.parse_search refuses other names
        if importlib.util.find_spec(PACKAGES[name]) is None:
            raise TrackingError(f"search.callbacks: {name} needs the package {PACKAGES[name]!r}, which is not "
                                f"installed; install it with: {INSTALL[name]}")


def logger_callbacks(names: Sequence[str], exp_dir: Path) -> list[Any]:
    """The Tune callbacks for `names` (CALLBACKS), writing next to the experiment folder `exp_dir`."""
    check_installed(names)
    return [BUILDERS[name](exp_dir) for name in names]


def mlflow_uri(exp_dir: Path) -> str:
    """Where MLflow runs go: $MLFLOW_TRACKING_URI when set, else <experiment>/mlflow.db."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(exp_dir / layout.MLFLOW_DB).resolve()}"


def _tensorboard(exp_dir: Path) -> Any:
    from ray.tune.logger import TBXLoggerCallback

    return TBXLoggerCallback()


def _mlflow(exp_dir: Path) -> Any:
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    return MLflowLoggerCallback(tracking_uri=mlflow_uri(exp_dir), experiment_name=exp_dir.name)


def _wandb(exp_dir: Path) -> Any:
    from ray.air.integrations.wandb import WandbLoggerCallback

    return WandbLoggerCallback(project=WANDB_PROJECT, group=exp_dir.name)


BUILDERS = {"mlflow": _mlflow, "tensorboard": _tensorboard, "wandb": _wandb}
