"""The Ray glue: the dense teacher as one Ray task, and one Tune trial running fit() in-process.

Single-worker trials run inside the Tune function trainable (actors are reused between
trials), which costs ~0.7 s per trial against ~20 s for a nested Ray Train run (DESIGN.md).
Everything here that is not Ray is a call into train.py / models.py.
"""

from __future__ import annotations

import logging
import tempfile
import time
from typing import Any

import ray
import torch
from ray import tune

from raytune_ft import models, train
from raytune_ft.config import TrialConfig
from raytune_ft.data import Splits


def _setup_torch(cfg: TrialConfig) -> None:
    torch.set_num_threads(cfg.cpus_per_trial)
    torch.set_flush_denormal(True)  # tiny weights late in a cosine schedule slow CPU math otherwise


def fit_teacher(cfg: TrialConfig, data: Splits) -> dict[str, Any]:
    """Fine-tune the dense teacher; returns its state dict, final metrics and train-set logits."""
    _setup_torch(cfg)
    model = models.build_model(cfg.model, data.num_classes, weights=cfg.weights, dropout=cfg.dropout)
    started = time.perf_counter()

    def report(metrics: dict[str, Any], _model: torch.nn.Module) -> None:
        print(f"[teacher] epoch {metrics['epoch']}/{cfg.epochs}  val_acc={metrics['val_acc']:.4f}  "
              f"train_loss={metrics['train_loss']:.4f}  ({metrics['epoch_time_s']:.1f}s)", flush=True)

    metrics = train.fit(cfg, model, data, head_names=models.head_parameter_names(model), report=report)
    metrics["wall_time_s"] = time.perf_counter() - started
    return {
        "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "metrics": metrics,
        "train_logits": train.predict_logits(model, data.x_train),
    }


def fit_teacher_remote(cfg: TrialConfig, data: Splits) -> dict[str, Any]:
    """Run fit_teacher as a Ray task with a trial's resources (on a cluster: on a worker node)."""
    task = ray.remote(num_cpus=cfg.cpus_per_trial)(fit_teacher)
    return ray.get(task.remote(cfg, data))


def tune_trial(
    sampled: dict[str, Any],
    *,
    fixed: dict[str, Any],
    data: Splits,
    teacher_logits: torch.Tensor | None,
) -> None:
    """Ray Tune function trainable: one recipe, fine-tuned and checkpointed every epoch."""
    cfg = TrialConfig.from_dict({**fixed, **sampled})
    _setup_torch(cfg)
    logging.getLogger("ray.train").setLevel(logging.WARNING)  # one "checkpoint created" line per epoch
    trial_id = tune.get_context().get_trial_id()
    model = models.build_model(cfg.model, data.num_classes, weights=cfg.weights, dropout=cfg.dropout)

    def report(metrics: dict[str, Any], model: torch.nn.Module) -> None:
        print(f"[{trial_id}] epoch {metrics['epoch']}/{cfg.epochs}  val_acc={metrics['val_acc']:.4f}  "
              f"sparsity={metrics['sparsity']:.3f}  nonzero_params={metrics['nonzero_params']:,}", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            models.save_checkpoint(
                tmp, model, config=cfg.to_dict(), class_names=data.class_names, metrics=metrics
            )
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))

    train.fit(
        cfg,
        model,
        data,
        head_names=models.head_parameter_names(model),
        report=report,
        teacher_logits=teacher_logits if cfg.use_kd else None,
    )


def trial_dirname(trial: Any) -> str:
    """Short trial folder names (Tune's default packs the whole config into the name)."""
    return f"trial_{trial.trial_id}"


class Progress(tune.Callback):
    """One line when a trial starts, ends or fails, with the count done and the time spent."""

    def __init__(self, total: int, objectives: dict[str, str]) -> None:
        self.total, self.objectives = total, objectives
        self.done = 0
        self.started = time.perf_counter()

    def _stamp(self) -> str:
        return f"[{self.done}/{self.total} done, {(time.perf_counter() - self.started) / 60:.1f} min]"

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        recipe = ", ".join(f"{k}={_short(v)}" for k, v in trial.config.items())
        print(f"{self._stamp()} trial {trial.trial_id} started: {recipe}", flush=True)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.done += 1
        result = trial.last_result or {}
        values = ", ".join(f"{k}={_short(result.get(k))}" for k in self.objectives)
        print(f"{self._stamp()} trial {trial.trial_id} finished: {values}", flush=True)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.done += 1
        print(f"{self._stamp()} trial {trial.trial_id} FAILED (see trials.csv; the search goes on)", flush=True)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)
