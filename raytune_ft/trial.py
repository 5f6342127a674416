"""The Ray glue: the dense teacher as one Ray task, and one Tune trial running fit() in-process.

Single-worker trials run inside the Tune function trainable (actors are reused between
trials), which costs ~0.7 s per trial against ~20 s for a nested Ray Train run (DESIGN.md).
Everything here that is not Ray is a call into train.py / models.py.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from ray import tune

from raytune_ft import export, models, train
from raytune_ft.config import TrialConfig
from raytune_ft.data import Splits

EXPORT_DIR = "export"  # inside a trial's final checkpoint folder
TRAINING_STATE = "training_state.pt"  # inside every other checkpoint: train.training_state, to resume from


def export_and_measure(model: torch.nn.Module, cfg: TrialConfig, data: Splits, metrics: dict[str, Any],
                       directory: Path) -> dict[str, Any]:
    """Export the final model with its manifest and measure the reloaded artifact (export.py)."""
    from raytune_ft import data as data_mod

    manifest = {
        "config": cfg.to_dict(),
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
        "class_names": list(data.class_names),
        "normalization": {"mean": list(data_mod.IMAGENET_MEAN), "std": list(data_mod.IMAGENET_STD)},
    }
    export.export_model(model, directory, image_size=cfg.image_size, manifest=manifest)
    measured = export.measure_export(directory, image_size=cfg.image_size, threads=cfg.cpus_per_trial,
                                     latency_budget_s=cfg.latency_budget_s)
    model.train()
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    return measured


def _setup_torch(cfg: TrialConfig) -> None:
    torch.set_num_threads(cfg.cpus_per_trial)
    torch.set_flush_denormal(True)  # tiny weights late in a cosine schedule slow CPU math otherwise


def fit_teacher(cfg: TrialConfig, data: Splits) -> dict[str, Any]:
    """Fine-tune the dense teacher; returns its state dict, final metrics and train-set logits."""
    _setup_torch(cfg)
    model = models.build_model(cfg.model, data.num_classes, weights=cfg.weights, dropout=cfg.dropout)
    started = time.perf_counter()

    def report(metrics: dict[str, Any], _model: torch.nn.Module, _state: Any) -> None:
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
    checkpoint_every: int = 1,
) -> None:
    """Ray Tune function trainable: one recipe, fine-tuned, checkpointed every `checkpoint_every`
    epochs and after the last one.

    A retried or restored trial (`max_failures`, `--resume`) continues after the epoch of its
    newest checkpoint: weights, optimizer, masks, schedules and RNG states as they were.
    """
    cfg = TrialConfig.from_dict({**fixed, **sampled})
    _setup_torch(cfg)
    logging.getLogger("ray.train").setLevel(logging.WARNING)  # one "checkpoint created" line per epoch
    trial_id = tune.get_context().get_trial_id()
    model = models.build_model(cfg.model, data.num_classes, weights=cfg.weights, dropout=cfg.dropout)
    resume = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            resume = load_training_checkpoint(model, Path(folder))
        if resume is None:  # the final checkpoint: the trial had finished before it was interrupted
            print(f"[{trial_id}] already trained ({checkpoint.path})", flush=True)
            return
        print(f"[{trial_id}] resuming after epoch {resume['epoch']} from {checkpoint.path}", flush=True)

    def report(metrics: dict[str, Any], model: torch.nn.Module, state: Any) -> None:
        final = metrics["epoch"] == cfg.epochs
        line = (f"[{trial_id}] epoch {metrics['epoch']}/{cfg.epochs}  val_acc={metrics['val_acc']:.4f}  "
                f"sparsity={metrics['sparsity']:.3f}  params={metrics['params']:,}  "
                f"nonzero_params={metrics['nonzero_params']:,}")
        if not final and metrics["epoch"] % checkpoint_every:
            print(line, flush=True)
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as tmp:
            if final:  # the deployable model: export and measure it; nothing to resume from
                if cfg.export:
                    metrics = {**metrics, **export_and_measure(model, cfg, data, metrics, Path(tmp) / EXPORT_DIR)}
            else:
                torch.save(state(), Path(tmp) / TRAINING_STATE)
            print(line, flush=True)
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
        resume=resume,
    )


def load_training_checkpoint(model: torch.nn.Module, folder: Path) -> dict[str, Any] | None:
    """Load a trial checkpoint's weights into `model` (shrunk first if it was channel-pruned) and
    return its training state, or None for a final checkpoint (which has none). Both files are
    read with weights_only=True: a checkpoint cannot run code when it is loaded."""
    state = torch.load(folder / models.CHECKPOINT_WEIGHTS, map_location="cpu", weights_only=True)
    models.resize_to_state_dict(model, state)
    model.load_state_dict(state)
    path = folder / TRAINING_STATE
    return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None


def trial_dirname(trial: Any) -> str:
    """Short trial folder names (Tune's default packs the whole config into the name)."""
    return f"trial_{trial.trial_id}"


class Progress(tune.Callback):
    """One line when a trial starts, finishes or fails (never per epoch), e.g.

        [4/10 done, 1 running, 0 failed | front 2, HV 0.6123 | 3.2 min] trial 5cb43b1c finished: ...

    Counts come from Tune's trial list (so they stay right after `--resume`). The front is over
    the completed trials' last results; with `epochs` (the fixed epoch count; a trial's own
    `epochs` in its config wins) a trial that reported fewer epochs is early-stopped and stays
    off it. The hypervolume uses analyze's normalisation — 1 − accuracy and size / the dense
    `teacher`'s size, reference point (1, 1) — so it is the number the report shows; without a
    `teacher` the largest value seen so far is the scale, and early values can still move.
    """

    def __init__(self, total: int, objectives: dict[str, str], *,
                 teacher: dict[str, Any] | None = None, epochs: int | None = None) -> None:
        self.total, self.objectives = total, dict(objectives)
        self.teacher, self.epochs = (dict(teacher) if teacher else None), epochs
        self.started = time.time()  # wall clock: still meaningful after a restore

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        recipe = ", ".join(f"{k}={_short(v)}" for k, v in trial.config.items())
        print(f"{self._stamp(trials)} trial {trial.trial_id} started: {recipe}", flush=True)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # Tune calls this while the trial is still RUNNING; count it as done already.
        result = trial.last_result or {}
        values = ", ".join(f"{k}={_short(result.get(k))}" for k in self.objectives)
        stopped = "" if self._fully_trained(trial) else " (early-stopped, not on the front)"
        print(f"{self._stamp(trials, done=trial)} trial {trial.trial_id} finished: {values}{stopped}",
              flush=True)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        print(f"{self._stamp(trials)} trial {trial.trial_id} FAILED (see trials.csv; the search goes on)",
              flush=True)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        print(f"{self._stamp(trials)} search finished", flush=True)

    def summary(self, trials: list, done: Any = None) -> dict[str, Any]:
        """Counts (done, running, failed, pending), front size and hypervolume of `trials`."""
        import pandas as pd

        from raytune_ft import analyze, pareto

        status = {t.trial_id: t.status for t in trials}
        if done is not None:
            status[done.trial_id] = "TERMINATED"
        counts = {s: sum(1 for v in status.values() if v == s)
                  for s in ("TERMINATED", "RUNNING", "ERROR", "PENDING")}
        finished = [t for t in trials if status[t.trial_id] == "TERMINATED" and self._fully_trained(t)]
        rows = [{"trial_id": t.trial_id, "status": "completed",
                 **{k: (t.last_result or {}).get(k) for k in self.objectives}} for t in finished]
        front_size, hv = 0, 0.0
        if rows:
            table = pd.DataFrame(rows)
            front_size = len(pareto.pareto_front(table, self.objectives))
            scales = analyze.hv_scales(table, self.objectives, self.teacher)
            points = analyze.normalize(table, self.objectives, scales)
            points = points[np.isfinite(points).all(axis=1)]
            hv = pareto.hypervolume(points, np.ones(len(self.objectives))) if len(points) else 0.0
        return {"done": counts["TERMINATED"], "running": counts["RUNNING"], "failed": counts["ERROR"],
                "pending": counts["PENDING"], "front": front_size, "hypervolume": hv,
                "elapsed_min": (time.time() - self.started) / 60}

    def _stamp(self, trials: list, done: Any = None) -> str:
        s = self.summary(trials, done)
        return (f"[{s['done'] + s['failed']}/{self.total} done, {s['running']} running, "
                f"{s['failed']} failed | front {s['front']}, HV {s['hypervolume']:.4f} | "
                f"{s['elapsed_min']:.1f} min]")

    def _fully_trained(self, trial: Any) -> bool:
        required = (trial.config or {}).get("epochs", self.epochs)
        return required is None or int((trial.last_result or {}).get("epoch", 0) or 0) >= int(required)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)
