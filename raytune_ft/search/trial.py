"""The Ray glue: the dense teacher as one Ray task, and one Tune trial running train.fit().

Single-worker trials run fit() inside the Tune function trainable (actors are reused between
trials): a trial's start-up costs about 3 s against about 21 s for a nested Ray Train run
(docs/benchmarks.md, "Framework overhead"). With `workers_per_trial > 1` the trainable starts a
Ray Train `TorchTrainer` (the V2 driver pattern) whose workers run the same fit() as DDP ranks and
report through `TuneReportCallback`. Also here: a trial's inputs (`training_inputs`,
`train_subset`), its checkpoints (`_save_epoch`, `load_training_checkpoint`), the export and
measurement of its final model (`export_and_measure`, `epoch_size_metrics`), the resources it asks
for, and the progress callback (`Progress`). What is not Ray is a call into `train/`, `models`,
`data/` and `deploy/`.
"""

from __future__ import annotations

import functools
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from ray import tune

from raytune_ft import data as data_mod
from raytune_ft import layout, models, train
from raytune_ft.config import TrialConfig
from raytune_ft.data import Splits, parquet
from raytune_ft.deploy import export
from raytune_ft.search import planned, progress
from raytune_ft.train import teachers


def export_and_measure(model: torch.nn.Module, cfg: TrialConfig, data: Splits, metrics: dict[str, Any],
                       directory: Path, *, quantize: bool | None = None) -> dict[str, Any]:
    """Export the final model (model.pt2, model.onnx and, when quantized, model.int8.onnx) with
    its manifest, and measure the deployed file (export.ship). Quantized (`quantize`, default
    cfg.use_quantization): val_acc is the int8 file's accuracy in ONNX Runtime on the validation
    split, calibrated on training images only (quantization.py). The export asks the trial's
    families: each may prepare the network (`before_export`) and replace the shipped file
    (`at_export`). Raises ExportError."""
    from raytune_ft import families

    inp = models.input_config(cfg.model)  # the mean/std the inputs were normalized with (data/)
    manifest = {
        "config": cfg.to_dict(),
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
        "class_names": list(data.class_names),
        "normalization": {"mean": list(inp.mean), "std": list(inp.std)},
    }
    if data.decode_view:  # decoded from image files: the centre crop and resampling it was made with
        manifest["decode"] = {"crop_pct": float(data.decode_view[0]), "interpolation": str(data.decode_view[1])}
    # export and its measurements run on the CPU (ONNX Runtime's CPU provider is the deployment
    # target); a GPU trial's network goes back to its device afterwards
    device = next(model.parameters()).device
    model.cpu()
    active = families.build(cfg)
    for family in active:
        family.before_export(model)
    if quantize is not None and quantize != cfg.use_quantization:
        # the dense teacher's fp32 and int8 baselines: its config's technique switches are off
        active = [f for f in active if f.name != "quantization"]
        active += [families.family("quantization")(cfg)] if quantize else []
    transforms = [f for f in active if type(f).at_export is not families.Family.at_export]

    def transform(path: Path) -> Path:
        for family in transforms:
            path = family.at_export(path, data.x_train) or path
        return path

    measured = export.ship(model, directory, image_size=cfg.image_size, manifest=manifest, threads=cfg.worker_cpus,
                           latency_budget_s=cfg.latency_budget_s, val=(data.x_val, data.y_val),
                           val_acc=metrics.get("val_acc"), quantize=transform if transforms else None)
    model.train()
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model.to(device=device, memory_format=memory_format)
    return measured


EPOCH_SIZE_METRICS = ("model_bytes", "model_bytes_compressed", "macs", "flops")


def epoch_size_metrics(model: torch.nn.Module, names: tuple[str, ...], image_size: int, *,
                       int8: bool = False) -> dict[str, Any]:
    """Cheap stand-ins, every epoch, for the exported-model sizes an early-stopping scheduler ranks
    on: model_bytes(_compressed) of the state dict serialized in memory (gzip level 6, as
    export.measure_export), macs/flops of the live model. Only `names` are computed. `int8` (the
    trial ships model.int8.onnx): model_bytes_compressed is gzip of the weights on the int8 grid
    (quantization.int8_weight_bytes); space parsing refuses model_bytes then."""
    import gzip
    import io

    out: dict[str, Any] = {}
    if int8 and "model_bytes_compressed" in names:
        from raytune_ft.families.quantization import int8_weight_bytes

        out["model_bytes_compressed"] = len(gzip.compress(int8_weight_bytes(model), compresslevel=6))
    elif {"model_bytes", "model_bytes_compressed"} & set(names):
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        raw = buffer.getvalue()
        out["model_bytes"] = len(raw)
        if "model_bytes_compressed" in names:
            out["model_bytes_compressed"] = len(gzip.compress(raw, compresslevel=6))
    if {"macs", "flops"} & set(names):
        model.eval()  # one image: BatchNorm must not use (or update) batch statistics
        with torch.no_grad():
            flops = export.count_flops(model, image_size)
        model.train()
        out.update(macs=flops // 2, flops=flops)
    return {k: v for k, v in out.items() if k in names}


def _setup_torch(cfg: TrialConfig, threads: int) -> None:
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)  # before build_model: the new head's initial weights follow the seed
    torch.set_flush_denormal(True)  # tiny weights late in a cosine schedule slow CPU math otherwise


def online_teacher(cfg: TrialConfig) -> bool:
    """Whether KD must run the teacher model on each training batch: with augmentation (or a
    streamed dataset, whose batches are decoded and augmented on the fly) the student sees images
    the precomputed logits (un-augmented, in memory) were not computed on."""
    return cfg.augment or data_mod.streams(cfg)


def training_inputs(cfg: TrialConfig, data: Splits, *, dist: train.Dist, stream: Any = None,
                    teacher_logits: torch.Tensor | None = None, teacher_model: dict[str, Any] | None = None,
                    ) -> tuple[train.BatchSource, torch.Tensor | None, torch.nn.Module | None]:
    """The batch source and the KD teacher (precomputed logits or a model) for fit(); the one
    place the teacher, the in-process trial and every Ray Train worker choose them.

    In memory: TensorBatches, augmented per batch (data.augment_batch) when cfg.augment.
    dataset parquet: `stream` is the training split, a ray.data.Dataset in one process or this
    worker's `ray.train.get_dataset_shard("train")`; each rank takes batch_size // world_size rows
    per step (ragged ends dropped) for exactly the steps parquet.parquet_selection counts, equal on
    every rank. KD (cfg.use_kd): the teacher model from `teacher_model` ({"config", "state_dict"};
    its own architecture, normalization and input size, behind teachers.TeacherInput: it sees the
    student's augmented batch in its own view) when online_teacher(cfg), else `teacher_logits`
    (cheaper: no teacher forward per step; computed on the teacher's view of the same rows).
    """
    if data_mod.streams(cfg):
        if cfg.data_fraction < 1:
            raise ValueError(f"data_fraction {cfg.data_fraction} needs an in-memory dataset; dataset {cfg.dataset} "
                             "streams its training rows (set search.data_fraction: 1)")
        if stream is None:
            raise ValueError("dataset parquet: training_inputs needs the streamed train split")
        rows = parquet.parquet_selection(cfg)["train"][0]
        world = dist.world_size
        batch_size = min(cfg.batch_size, rows - rows % world)
        if batch_size < world or cfg.batch_size % world:
            raise ValueError(f"{rows} training rows and batch_size {cfg.batch_size} cannot be shared by {world} "
                             "workers (batch_size must be a multiple of workers_per_trial)")
        share = batch_size // world
        steps = (rows // world) // share  # Ray Train splits the stream into equal shards of rows // world

        def epoch_batches(epoch: int) -> Any:
            return stream.iter_torch_batches(batch_size=share, drop_last=True)

        source: train.BatchSource = train.IterableBatches(epoch_batches, steps_per_epoch=steps)
    else:
        augment = functools.partial(data_mod.augment_batch, crop=cfg.augment_crop, min_scale=cfg.crop_min_scale,
                                    padding=cfg.crop_padding, erasing=cfg.random_erasing) if cfg.augment else None
        x_train, y_train = data.x_train, data.y_train
        if cfg.data_fraction < 1:  # a subset-fidelity trial: the same stratified subset in every process
            keep = train_subset(data.y_train, cfg)
            x_train, y_train = x_train[keep], y_train[keep]
            teacher_logits = teacher_logits[keep] if teacher_logits is not None else None
        source = train.TensorBatches(x_train, y_train, batch_size=cfg.batch_size, seed=cfg.seed,
                                     dist=dist, augment=augment)
    if not cfg.use_kd:
        return source, None, None
    if not online_teacher(cfg):
        if teacher_logits is None:
            raise ValueError("use_kd is true but no precomputed teacher logits were given")
        return source, teacher_logits, None
    if teacher_model is None:
        raise ValueError("use_kd with augment or dataset parquet needs the teacher model (online teacher)")
    return source, None, teachers.build_online_teacher(teacher_model, cfg, data.num_classes, data.decode_view)


def train_subset(y_train: torch.Tensor, cfg: TrialConfig) -> torch.Tensor:
    """Indices (sorted) of the stratified `cfg.data_fraction` of the training split a subset-fidelity
    trial trains on: drawn with `data_seed`, so every trial and rank of a stage sees the same rows."""
    n = max(1, round(cfg.data_fraction * len(y_train)))
    keep = data_mod.stratified_take(y_train.numpy(), n, np.random.default_rng(cfg.data_seed + 3))
    return torch.from_numpy(np.sort(keep))


def _train_stream(cfg: TrialConfig, data: Splits) -> Any:
    """The streamed training split for dataset parquet in this process, decoded as `data`'s
    validation split was (its decode_view), else None."""
    return parquet.ray_datasets(cfg, decode_view=data.decode_view)["train"] if data_mod.streams(cfg) else None


def fit_teacher(cfg: TrialConfig, data: Splits, progress_log: str | None = None) -> dict[str, Any]:
    """Fine-tune the dense teacher `cfg` (its own model, weights and settings) on `data`, its own
    view of the students' split (teachers.teacher_splits); returns its state dict, final metrics
    and train-set logits in that row order (None for dataset parquet, whose training split is not
    in memory: trials use the model). Each epoch's line says the time left (progress.py), which
    is recorded into `progress_log` when given."""
    _setup_torch(cfg, cfg.worker_cpus)
    model = models.build_model(cfg.model, data.num_classes, weights=cfg.weights, dropout=cfg.dropout)
    started = time.perf_counter()
    dist = train.Dist(device=_device(cfg))
    batches, _, _ = training_inputs(cfg, data, dist=dist, stream=_train_stream(cfg, data))
    epoch_times: list[float] = []

    def report(metrics: dict[str, Any], _model: torch.nn.Module, _state: Any) -> None:
        epoch_times.append(metrics["epoch_time_s"])
        eta = progress.teacher_time_left(epoch_times, cfg.epochs - metrics["epoch"])
        progress.record(progress_log, "teacher", elapsed_s=round(time.perf_counter() - started, 1), eta_s=eta,
                        epoch=metrics["epoch"], epochs=cfg.epochs)
        left = f", {progress.format_eta(eta)}" if metrics["epoch"] < cfg.epochs else ""
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


def fit_teacher_remote(cfg: TrialConfig, data: Splits) -> dict[str, Any]:
    """Run fit_teacher as a Ray task with one worker's resources (on a cluster: on a worker node);
    the teacher always trains in one process."""
    task = ray.remote(num_cpus=cfg.worker_cpus, num_gpus=cfg.gpus_per_worker if cfg.use_gpu else 0)(fit_teacher)
    return ray.get(task.remote(cfg, data, progress.log_path()))


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
    data = teachers.student_view(data, cfg)  # a searched architecture may normalize differently
    logging.getLogger("ray.train").setLevel(logging.WARNING)  # one "checkpoint created" line per epoch
    if cfg.workers_per_trial > 1:
        _ray_train_trial(cfg, data, teacher_logits if cfg.use_kd else None, epoch_metrics, checkpoint_every,
                         teacher_model=teacher_model if cfg.use_kd else None)
        return
    _setup_torch(cfg, cfg.worker_cpus)
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
            metrics, written = _save_epoch(cfg, data, metrics, model, Path(tmp), trial_id, state,
                                           epoch_metrics=epoch_metrics, checkpoint_every=checkpoint_every)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp) if written else None)

    dist = train.Dist(device=_device(cfg))
    batches, logits, teacher = training_inputs(cfg, data, dist=dist, stream=_train_stream(cfg, data),
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


def load_training_checkpoint(model: torch.nn.Module, folder: Path) -> dict[str, Any] | None:
    """Load a trial checkpoint's weights into `model` (shrunk first if it was channel-pruned) and
    return its training state, or None for a final checkpoint (which has none). Both files are
    read with weights_only=True: a checkpoint cannot run code when it is loaded."""
    state = torch.load(folder / layout.CHECKPOINT_WEIGHTS, map_location="cpu", weights_only=True)
    models.resize_to_state_dict(model, state)
    model.load_state_dict(state)
    path = folder / layout.TRAINING_STATE
    return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None


def _device(cfg: TrialConfig) -> torch.device:
    if not cfg.use_gpu:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("use_gpu is true but this process sees no CUDA device "
                           "(check the Ray node's GPUs and gpus_per_worker)")
    return torch.device("cuda", torch.cuda.current_device())


def _save_epoch(cfg: TrialConfig, data: Splits, metrics: dict[str, Any], model: torch.nn.Module, directory: Path,
                trial_id: str, state: Any, *, epoch_metrics: tuple[str, ...] = (),
                checkpoint_every: int = 1) -> tuple[dict[str, Any], bool]:
    """This epoch's metrics to report (with `epoch_metrics` measured cheaply), and whether a
    checkpoint was written into `directory`: every `checkpoint_every` epochs with the training
    state to resume from, and after the last epoch with the exported, measured model instead."""
    if epoch_metrics:
        metrics = {**metrics, **epoch_size_metrics(model, epoch_metrics, cfg.image_size,
                                                   int8=cfg.use_quantization)}
    if cfg.on_bad_image == "skip":  # the list is layout.SKIPPED_TXT in the experiment folder (cli.py)
        metrics = {**metrics, "skipped": len(data.skipped)}
    final = metrics["epoch"] == cfg.epochs
    written = final or metrics["epoch"] % checkpoint_every == 0
    if final:  # the deployable model: export and measure it; nothing to resume from
        if cfg.export:
            metrics = {**metrics, **export_and_measure(model, cfg, data, metrics, directory / layout.EXPORT_DIR)}
    elif written:
        torch.save(state(), directory / layout.TRAINING_STATE)
    print(f"[{trial_id}] epoch {metrics['epoch']}/{cfg.epochs}  val_acc={metrics['val_acc']:.4f}  "
          f"sparsity={metrics['sparsity']:.3f}  params={metrics['params']:,}  "
          f"nonzero_params={metrics['nonzero_params']:,}  {metrics['precision']}  ({metrics['epoch_time_s']:.1f}s)",
          flush=True)
    if written:
        models.save_checkpoint(directory, model, config=cfg.to_dict(), class_names=data.class_names,
                               metrics=metrics)
    return metrics, written


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
        datasets={"train": _train_stream(cfg, data)} if data_mod.streams(cfg) else None,
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
    data: Splits = teachers.student_view(config["data"], cfg)
    context = ray.train.get_context()
    dist = train.Dist(context.get_world_rank(), context.get_world_size(), ray.train.torch.get_device())
    _setup_torch(cfg, cfg.worker_cpus)
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
                metrics, written = _save_epoch(cfg, data, metrics, model, Path(tmp), config["trial_id"], state,
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


class Progress(tune.Callback):
    """One line when a trial starts, finishes or fails (never per epoch), e.g.

        [4/10 done, 1 running, 0 failed | front 2, HV 0.6123 | 3.2 min, ~12 min left] trial 5cb43b1c finished: ...

    Counts come from Tune's trial list (so they stay right after `--resume`). The front is over
    the completed trials' last results; with `epochs` (the fixed epoch count; a trial's own
    `epochs` in its config wins) a trial that reported fewer epochs is early-stopped and stays
    off it. The hypervolume uses pareto's normalisation — 1 − accuracy and size / the dense
    `teacher`'s size, reference point (1, 1) — so it is the number the report shows; without a
    `teacher` the largest value seen so far is the scale, and early values can still move.
    The time left (progress.py, with `plan`: slots, early stopping, a second stage) shows once an
    epoch has been measured; every epoch's estimate is recorded (progress.log_path()), and a line
    is printed for the first one and then at least every PRINT_EVERY_S.
    """

    PRINT_EVERY_S = 600.0

    def __init__(self, total: int, objectives: dict[str, str], *,
                 teacher: dict[str, Any] | None = None, epochs: int | None = None,
                 plan: progress.Plan | None = None) -> None:
        self.total, self.objectives = total, dict(objectives)
        self.teacher, self.epochs = (dict(teacher) if teacher else None), epochs
        self.started = time.time()  # wall clock: still meaningful after a restore
        self.plan, self.clock = plan or progress.Plan(), progress.EpochClock()
        self.most_running, self.printed = 0, None

    def __setstate__(self, state: dict[str, Any]) -> None:  # restored from a search saved before these fields
        self.__dict__.update({"plan": progress.Plan(), "clock": progress.EpochClock(), "most_running": 0,
                              "printed": None, **state})

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.clock.start(trial.trial_id, trial.config.get("model"), time.time())
        recipe = ", ".join(f"{k}={_short(v)}" for k, v in trial.config.items())
        print(f"{self._stamp(trials)} trial {trial.trial_id} started: {recipe}", flush=True)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        now = time.time()
        self.clock.epoch(trial.trial_id, now)
        eta, upper = self.estimate(trials)
        running = sum(1 for t in trials if t.status == "RUNNING")
        progress.record(progress.log_path(), "trials", elapsed_s=round(now - self.started, 1), eta_s=eta,
                        upper_bound=upper, done=sum(1 for t in trials if t.status in ("TERMINATED", "ERROR")),
                        running=running, trial_id=trial.trial_id, epoch=result.get("epoch"))
        if eta is not None and (self.printed is None or now - self.printed >= self.PRINT_EVERY_S):
            print(f"{self._stamp(trials)} time left estimated from the epochs measured so far", flush=True)

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
        if self.plan.later_trials:
            print(f"{self._stamp(trials)} stage 1 finished; the time left is stage 2's", flush=True)
        else:
            print(f"{self._stamp(trials, eta=False)} search finished", flush=True)

    def summary(self, trials: list, done: Any = None) -> dict[str, Any]:
        """Counts (done, running, failed, pending), front size and hypervolume of `trials`."""
        import pandas as pd

        from raytune_ft import pareto

        status = self._status(trials, done)
        counts = {s: sum(1 for v in status.values() if v == s)
                  for s in ("TERMINATED", "RUNNING", "ERROR", "PENDING")}
        finished = [t for t in trials if status[t.trial_id] == "TERMINATED" and self._fully_trained(t)]
        rows = [{"trial_id": t.trial_id, "status": "completed",
                 **{k: (t.last_result or {}).get(k) for k in self.objectives}} for t in finished]
        front_size, hv = 0, 0.0
        if rows:
            table = pd.DataFrame(rows)
            front_size = len(pareto.pareto_front(table, self.objectives))
            scales = pareto.hv_scales(table, self.objectives, self.teacher)
            points = pareto.normalize(table, self.objectives, scales)
            points = points[np.isfinite(points).all(axis=1)]
            hv = pareto.hypervolume(points, np.ones(len(self.objectives))) if len(points) else 0.0
        return {"done": counts["TERMINATED"], "running": counts["RUNNING"], "failed": counts["ERROR"],
                "pending": counts["PENDING"], "front": front_size, "hypervolume": hv,
                "elapsed_min": (time.time() - self.started) / 60}

    def estimate(self, trials: list, done: Any = None) -> tuple[float | None, bool]:
        """(seconds left, whether that is an upper bound) for the trials of `trials` not ended, the
        ones the searcher has yet to start (of `total`) and the plan's later stage; (None, False)
        before any epoch was measured. See progress.py."""
        mean_rate = self.clock.rate("")
        if mean_rate is None:
            return None, False
        status = self._status(trials, done)
        self.most_running = max(self.most_running, sum(1 for v in status.values() if v == "RUNNING"))
        share, upper = 1.0, self.plan.early_stopping
        ended = [t for t in trials if status[t.trial_id] == "TERMINATED" and self._planned(t)]
        if upper and ended:  # early stopping: plan queued trials at the share of epochs ended ones trained
            share = float(np.mean([min(1.0, (t.last_result or {}).get("epoch", 0) / self._planned(t))
                                    for t in ended]))
            upper = False
        running, queued = [], []
        for t in trials:
            planned_epochs = self._planned(t)
            if status[t.trial_id] in ("TERMINATED", "ERROR") or planned_epochs is None:
                continue
            rate = self.clock.rate(t.trial_id, t.config.get("model"))
            if status[t.trial_id] == "RUNNING":
                running.append((rate, max(0, planned_epochs - (t.last_result or {}).get("epoch", 0))))
            else:
                queued.append((rate, planned_epochs * share))
        if self.epochs:
            queued += [(mean_rate, self.epochs * share)] * max(0, self.total - len(trials))
        slots = max(1, min(self.plan.slots, self.most_running or 1))
        later = [(mean_rate / self.plan.data_fraction, self.plan.later_epochs)] * self.plan.later_trials
        return progress.time_left(running, queued, slots, later), upper

    def _stamp(self, trials: list, done: Any = None, *, eta: bool = True) -> str:
        s = self.summary(trials, done)
        seconds, upper = self.estimate(trials, done) if eta else (None, False)
        left = progress.format_eta(seconds, upper_bound=upper)
        self.printed = time.time()
        return (f"[{s['done'] + s['failed']}/{self.total} done, {s['running']} running, "
                f"{s['failed']} failed | front {s['front']}, HV {s['hypervolume']:.4f} | "
                f"{s['elapsed_min']:.1f} min{', ' + left if left else ''}]")

    def _status(self, trials: list, done: Any = None) -> dict[str, str]:
        status = {t.trial_id: t.status for t in trials}
        if done is not None:
            status[done.trial_id] = "TERMINATED"
        return status

    def _planned(self, trial: Any) -> int | None:
        epochs = trial.config.get("epochs", self.epochs)
        return int(epochs) if epochs else None

    def _fully_trained(self, trial: Any) -> bool:
        from raytune_ft.report import results

        return results.fully_trained((trial.last_result or {}).get("epoch", 0), trial.config, self.epochs)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)
