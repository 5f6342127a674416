"""The Ray glue: the dense teacher as one Ray task, and one Tune trial running train.fit().

Single-worker trials run fit() inside the Tune function trainable (actors are reused between
trials): a trial's start-up costs about 3 s against about 21 s for a nested Ray Train run
(docs/benchmarks.md, "Framework overhead"). With `workers_per_trial > 1` the trainable starts a
Ray Train `TorchTrainer` (the V2 driver pattern) whose workers run the same fit() as DDP ranks and
report through `TuneReportCallback`. Also here: the resources a trial asks for (`resources_for`,
`missing_resources`, `missing_data_cpus`) and its folder name. A trial's inputs and checkpoints are
in search/inputs.py, the export and measurement of its final model in deploy/measure.py, the
progress callback in search/progress.py (callers reach those names through this module's
`__all__`). What is not Ray is a call into `train/`, `data/`, `checkpoints` and `deploy/`.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from raytune_ft import data as data_mod
from raytune_ft import models, train
from raytune_ft.config import TrialConfig
from raytune_ft.data import Splits, views
from raytune_ft.deploy.measure import EPOCH_SIZE_METRICS, epoch_size_metrics, export_and_measure
from raytune_ft.search import forecast, planned, progress
from raytune_ft.search.inputs import (
    device_for,
    load_training_checkpoint,
    online_teacher,
    save_epoch,
    setup_torch,
    train_stream,
    train_subset,
    training_inputs,
)
from raytune_ft.search.progress import Progress

# what callers reach through this module (the glue's public names), though they live beside it
__all__ = ["EPOCH_SIZE_METRICS", "Progress", "epoch_size_metrics", "export_and_measure", "fit_teacher",
           "fit_teacher_remote", "load_training_checkpoint", "missing_data_cpus", "missing_resources",
           "online_teacher", "resources_for", "train_subset", "training_inputs", "trial_dirname", "tune_trial"]


def fit_teacher(cfg: TrialConfig, data: Splits, progress_log: str | None = None,
                after: forecast.AfterTeacher | None = None) -> dict[str, Any]:
    """Fine-tune the dense teacher `cfg` (its own model, weights and settings) on `data`, its own
    view of the students' split (teachers.teacher_splits); returns its state dict, final metrics
    and train-set logits in that row order (None for dataset parquet, whose training split is not
    in memory: trials use the model). Each epoch's line says the time left (progress.py): of the
    whole search when `after` plans the trials that follow (its teacher-relative epochs at this
    teacher's mean epoch time), else of the teacher; recorded into `progress_log` when given."""
    setup_torch(cfg, cfg.worker_cpus)
    model = models.build_model(cfg.model, data.num_classes, weights=cfg.weights, dropout=cfg.dropout)
    started = time.perf_counter()
    dist = train.Dist(device=device_for(cfg))
    batches, _, _ = training_inputs(cfg, data, dist=dist, stream=train_stream(cfg, data))
    epoch_times: list[float] = []

    def report(metrics: dict[str, Any], _model: torch.nn.Module, _state: Any) -> None:
        epoch_times.append(metrics["epoch_time_s"])
        teacher_eta = progress.teacher_time_left(epoch_times, cfg.epochs - metrics["epoch"])
        trials_eta = after.seconds(sum(epoch_times) / len(epoch_times)) if after is not None else None
        eta = teacher_eta + (trials_eta or 0.0)
        progress.record(progress_log, "teacher", elapsed_s=round(time.perf_counter() - started, 1), eta_s=eta,
                        teacher_eta_s=round(teacher_eta, 1), covers="search" if after is not None else "teacher",
                        epoch=metrics["epoch"], epochs=cfg.epochs)
        left = ""
        if after is not None:
            left = f", search {progress.format_eta(eta)}"
        elif metrics["epoch"] < cfg.epochs:
            left = f", {progress.format_eta(eta)}"
        print(f"[teacher] epoch {metrics['epoch']}/{cfg.epochs}  val_acc={metrics['val_acc']:.4f}  "
              f"train_loss={metrics['train_loss']:.4f}  {metrics['precision']}  ({metrics['epoch_time_s']:.1f}s{left})",
              flush=True)

    metrics = train.fit(cfg, model, data, head_names=models.head_parameter_names(model), report=report,
                        batches=batches, dist=dist)
    metrics["wall_time_s"] = time.perf_counter() - started
    logits = train.predict_logits(model, data.x_train) if len(data.x_train) else None
    model.cpu()
    return {
        "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "metrics": metrics,
        "train_logits": logits,
    }


def fit_teacher_remote(cfg: TrialConfig, data: Splits, after: forecast.AfterTeacher | None = None) -> dict[str, Any]:
    """Run fit_teacher as a Ray task with one worker's resources (on a cluster: on a worker node);
    the teacher always trains in one process."""
    task = ray.remote(num_cpus=cfg.worker_cpus, num_gpus=cfg.gpus_per_worker if cfg.use_gpu else 0)(fit_teacher)
    return ray.get(task.remote(cfg, data, progress.log_path(), after))


def resources_for(fixed: dict[str, Any]) -> Callable[[dict[str, Any]], Any]:
    """Tune's resource request for a trial with settings {**fixed, **sampled} (TrialConfig.ray_resources).
    A sampled combination that is invalid gets the fixed settings' request; the trial itself
    then fails with the validation error and the search goes on."""
    from ray.tune import PlacementGroupFactory

    def request(sampled: dict[str, Any]) -> PlacementGroupFactory:
        try:
            cfg = TrialConfig.from_dict({**fixed, **sampled})
        except ValueError:
            cfg = TrialConfig.from_dict(fixed)
        return PlacementGroupFactory([cfg.ray_resources()])

    return request


def missing_resources(cfg: TrialConfig, available: dict[str, float]) -> str | None:
    """Why one trial of `cfg` can never start on a cluster with `available` resources (Ray's
    cluster_resources()), or None. Ray Train would otherwise wait for its workers forever."""
    need = {"CPU": cfg.workers_per_trial * cfg.worker_cpus,
            "GPU": cfg.workers_per_trial * cfg.gpus_per_worker if cfg.use_gpu else 0.0}
    for kind, amount in need.items():
        if amount > available.get(kind, 0.0) + 1e-9:
            fields = "workers_per_trial x cpus_per_worker (or cpus_per_trial)" if kind == "CPU" \
                else "workers_per_trial x gpus_per_worker"
            return (f"one trial needs {amount:g} {kind} ({fields}: {cfg.workers_per_trial} x "
                    f"{cfg.worker_cpus if kind == 'CPU' else cfg.gpus_per_worker:g}) but the Ray cluster has "
                    f"{available.get(kind, 0.0):g}")
    return None


def missing_data_cpus(cfg: TrialConfig, available: dict[str, float], *, concurrent: int = 1) -> str | None:
    """Why dataset parquet would stall on a local cluster with `available` resources, or None:
    Ray Data's read/decode tasks need a CPU that no trial (or the teacher) holds, and with every
    CPU reserved by `concurrent` trials they would wait forever."""
    if not data_mod.streams(cfg):
        return None
    held = concurrent * cfg.workers_per_trial * cfg.worker_cpus
    if held + 1 <= available.get("CPU", 0.0) + 1e-9:
        return None
    return (f"dataset parquet streams through Ray Data, whose decode tasks need at least 1 CPU besides the "
            f"{held:g} that {concurrent} concurrent trial(s) reserve (workers_per_trial x cpus_per_worker "
            f"x max_concurrent), but the Ray cluster has {available.get('CPU', 0.0):g}")


def tune_trial(
    sampled: dict[str, Any],
    *,
    fixed: dict[str, Any],
    data: Splits,
    teacher_logits: torch.Tensor | None,
    teacher_model: dict[str, Any] | None = None,
    epoch_metrics: tuple[str, ...] = (),
    checkpoint_every: int = 1,
) -> None:
    """Ray Tune function trainable: one recipe, fine-tuned, checkpointed every `checkpoint_every`
    epochs and after the last one.

    A retried or restored trial (`max_failures`, `--resume`) continues after the epoch of its
    newest checkpoint: weights, optimizer, masks, schedules and RNG states as they were.
    epoch_metrics: the size objectives an early-stopping scheduler ranks at every epoch: those in
    EPOCH_SIZE_METRICS are measured cheaply, those in planned.PLANNED_METRICS are also reported as
    planned_<m> (the final model's, planned.py); the final epoch's export measurement replaces the
    measured ones when export is on.
    teacher_model: {"config", "state_dict"} of the dense teacher, for KD with an online teacher
    (training_inputs decides between it and teacher_logits).
    """
    cfg = TrialConfig.from_dict({**fixed, **sampled})
    data = views.student_view(data, cfg)  # a searched architecture may normalize differently
    logging.getLogger("ray.train").setLevel(logging.WARNING)  # one "checkpoint created" line per epoch
    if cfg.workers_per_trial > 1:
        _ray_train_trial(cfg, data, teacher_logits if cfg.use_kd else None, epoch_metrics, checkpoint_every,
                         teacher_model=teacher_model if cfg.use_kd else None)
        return
    setup_torch(cfg, cfg.worker_cpus)
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
        with tempfile.TemporaryDirectory() as tmp:
            metrics, written = save_epoch(cfg, data, metrics, model, Path(tmp), trial_id, state,
                                           epoch_metrics=epoch_metrics, checkpoint_every=checkpoint_every)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp) if written else None)

    dist = train.Dist(device=device_for(cfg))
    batches, logits, teacher = training_inputs(cfg, data, dist=dist, stream=train_stream(cfg, data),
                                               teacher_logits=teacher_logits, teacher_model=teacher_model)
    train.fit(
        cfg,
        model,
        data,
        head_names=models.head_parameter_names(model),
        report=report,
        teacher_logits=logits,
        teacher=teacher,
        batches=batches,
        dist=dist,
        resume=resume,
        observers=planned.observers(cfg, epoch_metrics),
    )














def _ray_train_trial(cfg: TrialConfig, data: Splits, teacher_logits: torch.Tensor | None,
                    epoch_metrics: tuple[str, ...] = (), checkpoint_every: int = 1, *,
                    teacher_model: dict[str, Any] | None = None) -> None:
    """Run the trial as a Ray Train TorchTrainer with cfg.workers_per_trial DDP workers.

    The Train run is named after the Tune trial's folder and stored inside the experiment, so
    its checkpoints land in the trial folder (`checkpoint_<time>/`, read by results.py) and a
    restored trial finds its Train run again under the same name. dataset parquet: the
    training split streams to the workers (`datasets={"train": ...}`, one shard each).
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train._internal.session import get_session
    from ray.train.torch import TorchConfig, TorchTrainer

    storage = get_session().storage
    resources = {"CPU": cfg.worker_cpus, **({"GPU": cfg.gpus_per_worker} if cfg.use_gpu else {})}
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"cfg": cfg.to_dict(), "data": data, "teacher_logits": teacher_logits,
                           "trial_id": tune.get_context().get_trial_id(), "epoch_metrics": epoch_metrics,
                           "checkpoint_every": checkpoint_every, "teacher_model": teacher_model},
        datasets={"train": train_stream(cfg, data)} if data_mod.streams(cfg) else None,
        scaling_config=ScalingConfig(num_workers=cfg.workers_per_trial, use_gpu=cfg.use_gpu,
                                     resources_per_worker=resources),
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        run_config=RunConfig(
            name=storage.trial_dir_name,
            storage_path=storage.experiment_fs_path,
            storage_filesystem=storage.storage_filesystem,
            checkpoint_config=CheckpointConfig(num_to_keep=1),
            failure_config=FailureConfig(max_failures=0),  # Tune's FailureConfig retries the trial
            callbacks=[_report_to_tune_callback()],
        ),
    )
    trainer.fit()


def _train_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: rank `r` of the trial's DDP group, running the same fit()."""
    import ray.train
    import ray.train.torch

    cfg = TrialConfig.from_dict(config["cfg"])
    data: Splits = views.student_view(config["data"], cfg)
    context = ray.train.get_context()
    dist = train.Dist(context.get_world_rank(), context.get_world_size(), ray.train.torch.get_device())
    setup_torch(cfg, cfg.worker_cpus)
    model = models.build_model(cfg.model, data.num_classes, weights=cfg.weights, dropout=cfg.dropout)
    resume = None
    checkpoint = ray.train.get_checkpoint()  # a restored Train run (same name) continues its newest one
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            resume = load_training_checkpoint(model, Path(folder))
        if resume is None:
            return

    def report(metrics: dict[str, Any], model: torch.nn.Module, state: Any) -> None:
        # every rank reports (Train counts calls); only rank 0 writes and passes a checkpoint
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if dist.rank == 0:
                metrics, written = save_epoch(cfg, data, metrics, model, Path(tmp), config["trial_id"], state,
                                               epoch_metrics=config["epoch_metrics"],
                                               checkpoint_every=config["checkpoint_every"])
                checkpoint = ray.train.Checkpoint.from_directory(tmp) if written else None
            ray.train.report(metrics, checkpoint=checkpoint)

    stream = ray.train.get_dataset_shard("train") if data_mod.streams(cfg) else None
    batches, logits, teacher = training_inputs(cfg, data, dist=dist, stream=stream,
                                               teacher_logits=config["teacher_logits"],
                                               teacher_model=config.get("teacher_model"))
    train.fit(cfg, model, data, head_names=models.head_parameter_names(model), report=report,
              teacher_logits=logits, teacher=teacher, batches=batches, dist=dist, resume=resume,
              observers=planned.observers(cfg, config["epoch_metrics"]))


def _report_to_tune_callback():
    from ray.tune.integration.ray_train import TuneReportCallback

    class ReportToTune(TuneReportCallback):
        """TuneReportCallback without its `checkpoint_path` entry: the trial's metrics stay the
        same as an in-process trial's (the checkpoint itself is in the trial folder)."""

        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
            self._training_actor_item_queue.put(dict(metrics[0]))

    return ReportToTune()


def trial_dirname(trial: Any) -> str:
    """Short trial folder names (Tune's default packs the whole config into the name)."""
    return f"trial_{trial.trial_id}"




