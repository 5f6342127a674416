"""What one trial (or the teacher) trains on and leaves behind: its torch settings, its batches and
distillation teacher (`training_inputs`, the stratified subset of a first-stage trial
`train_subset`, a streamed split), and its per-epoch checkpoint (`save_epoch`,
`load_training_checkpoint`): the one place the in-process trial, every Ray Train worker and the
teacher choose them."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raytune_ft import checkpoints, data_fraction, layout, train
from raytune_ft import data as data_mod
from raytune_ft.config import TrialConfig
from raytune_ft.data import Splits, parquet
from raytune_ft.deploy.measure import epoch_size_metrics, export_and_measure
from raytune_ft.train import teachers


def setup_torch(cfg: TrialConfig, threads: int) -> None:
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)  # before build_model: the new head's initial weights follow the seed
    torch.set_flush_denormal(True)  # tiny weights late in a cosine schedule slow CPU math otherwise


def device_for(cfg: TrialConfig) -> torch.device:
    if not cfg.use_gpu:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("use_gpu is true but this process sees no CUDA device "
                           "(check the Ray node's GPUs and gpus_per_worker)")
    return torch.device("cuda", torch.cuda.current_device())


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
        if data_fraction.is_subset(cfg.data_fraction):
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
        if data_fraction.is_subset(cfg.data_fraction):  # a subset-fidelity trial: the same stratified rows everywhere
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


def train_stream(cfg: TrialConfig, data: Splits) -> Any:
    """The streamed training split for dataset parquet in this process, decoded as `data`'s
    validation split was (its decode_view), else None."""
    return parquet.ray_datasets(cfg, decode_view=data.decode_view)["train"] if data_mod.streams(cfg) else None


def load_training_checkpoint(model: torch.nn.Module, folder: Path) -> dict[str, Any] | None:
    """Load a trial checkpoint's weights into `model` (shrunk first if it was channel-pruned) and
    return its training state, or None for a final checkpoint (which has none). Both files are
    read with weights_only=True: a checkpoint cannot run code when it is loaded."""
    checkpoints.load_weights(model, folder)
    path = folder / layout.TRAINING_STATE
    return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None


def save_epoch(cfg: TrialConfig, data: Splits, metrics: dict[str, Any], model: torch.nn.Module, directory: Path,
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
        checkpoints.save_checkpoint(directory, model, config=cfg.to_dict(), class_names=data.class_names,
                                    metrics=metrics)
    return metrics, written

