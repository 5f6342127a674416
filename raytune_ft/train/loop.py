"""fit(): fine-tune one model with a trial's recipe. Plain PyTorch, no Ray.

The loop is a fixed skeleton: batches → forward → the task loss and every active technique
family's named terms (losses.py; the families' contract is families/base.Family) → backward →
the families' moments → optimizer step, then per epoch BatchNorm recalibration, evaluation and
`report(metrics, model, state)`; `state()` is what `fit(resume=...)` needs to continue from that
epoch exactly (`training_state`). AMP, DDP, channels_last and BatchNorm recalibration are the
loop's own plumbing. The same loop runs in one process or as one rank of a data-parallel group
(`Dist`): only who launches it and what `report` does differ. The batch sources it draws from (in
memory, or an iterable such as Ray Data's) are in train/batches.py.
"""

from __future__ import annotations

import copy
import functools
import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from raytune_ft import families
from raytune_ft.config import TrialConfig
from raytune_ft.data import Splits
from raytune_ft.families import pruning
from raytune_ft.families.base import BatchSource, Dist, Family, Run, autocast
from raytune_ft.train import losses
from raytune_ft.train.batches import TensorBatches
from raytune_ft.train.evaluation import evaluate, recalibrate_batchnorm

Report = Callable[[dict[str, Any], nn.Module, Callable[[], dict[str, Any]]], None]


def lr_at(step: int, *, base_lr: float, total_steps: int, schedule: str, warmup_steps: int = 0) -> float:
    """Learning rate at `step`: linear warm-up, then cosine decay to zero or constant."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return base_lr
    if schedule == "cosine":
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown lr_schedule {schedule!r}; choose from ['constant', 'cosine']")


def precision(cfg: TrialConfig, device: torch.device) -> tuple[torch.dtype | None, torch.amp.GradScaler | None]:
    """Autocast dtype and gradient scaler for `cfg.amp` on `device`.

    CUDA: bf16 where the GPU supports it (no scaler needed: bf16 has fp32's range), otherwise
    fp16 with a GradScaler. CPU: bf16 autocast (no fp16 path on CPU). Whether bf16 pays on a CPU
    depends on the CPU and the network (2-core AMD EPYC with AVX512-BF16, one thread: compact_cnn_32
    1.65x faster, EfficientNet-Lite0's depthwise convs 2.4x slower), so `amp` is off by default
    and "auto" measures (`measured_dtype`); here "auto" on a CPU answers fp32, start_run times it.
    amp off: (None, None), plain fp32.
    """
    if not cfg.amp or (cfg.amp == "auto" and device.type != "cuda"):
        return None, None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16, torch.amp.GradScaler("cuda")
    return torch.bfloat16, None


def measured_dtype(model: nn.Module, x: torch.Tensor, *, train: bool, repeats: int = 3,
                   margin: float = 1.1) -> torch.dtype | None:
    """bf16 if autocast in bf16 runs `model` on batch `x` at least `margin` times faster than fp32
    on this CPU, else None (fp32): a training step (forward + backward, `train`) or a no-grad
    forward, best of `repeats` after one warm-up each. Runs on a copy, so `model`'s weights,
    BatchNorm statistics and gradients are untouched; costs a few steps (about 1-3 s at 28 px)."""
    probe = copy.deepcopy(model).train(train)
    best: dict[torch.dtype | None, float] = {}
    for dtype in (None, torch.bfloat16):
        times = []
        for _ in range(repeats + 1):
            started = time.perf_counter()
            with torch.set_grad_enabled(train), autocast(x.device, dtype):
                out = probe(x).float()
            if train:
                out.logsumexp(dim=1).mean().backward()
                probe.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - started)
        best[dtype] = min(times[1:])
    return torch.bfloat16 if best[torch.bfloat16] * margin <= best[None] else None


def _auto_dtypes(cfg: TrialConfig, model: nn.Module, teacher: nn.Module | None, x: torch.Tensor,
                 dist: Dist) -> tuple[torch.dtype | None, torch.dtype | None]:
    """`amp: auto` on a CPU: the student's training dtype and the online teacher's forward dtype,
    each measured on a batch of the trial's size (at most 64 images); under DDP bf16 only where
    every rank measured it faster, so all ranks compute alike."""
    layout = torch.channels_last if cfg.channels_last else torch.contiguous_format
    x = x[: min(cfg.batch_size, 64)].to(dist.device).contiguous(memory_format=layout)
    chosen = [measured_dtype(model, x, train=True),
              measured_dtype(teacher, x, train=False) if teacher is not None else None]
    votes = dist.sum([float(d is not None) for d in chosen])  # unchanged for one process
    student, teacher_dtype = (torch.bfloat16 if v >= dist.world_size else None for v in votes)
    return student, teacher_dtype


def fit(cfg: TrialConfig, model: nn.Module, data: Splits, *, head_names: set[str], report: Report,
        teacher_logits: torch.Tensor | None = None, teacher: nn.Module | None = None,
        batches: BatchSource | None = None, dist: Dist | None = None, resume: dict[str, Any] | None = None,
        observers: list[Family] | None = None) -> dict[str, Any]:
    """Fine-tune `model` in place for cfg.epochs with the recipe's families; returns the last epoch's metrics.

    teacher_logits: (n_train, num_classes) logits of the teacher on the training samples, by sample
    index; or `teacher`, a model run on the same (augmented) batch; one is required when cfg.use_kd.
    batches: the training batches (default: data.x_train / data.y_train in memory, TensorBatches);
    data.x_val / data.y_val are the validation set. dist: this process's rank, the world size and the
    device (default: one CPU process); with world_size > 1 the model is wrapped in DDP, every rank
    calls fit() with the same arguments and `report` gets the same metrics on every rank. resume: a
    `state()` that `report` got from an earlier run of the same config, with `model` holding that
    epoch's weights (checkpoints.load_weights): training goes on as if it had never stopped.
    observers: families outside the registry, called after the recipe's (planned.PlannedSizes).
    Raises FloatingPointError when the loss stops being finite.
    """
    run = start_run(cfg, model, data, head_names=head_names, teacher_logits=teacher_logits, teacher=teacher,
                    batches=batches, dist=dist, observers=observers)
    if resume is not None:
        _load_state(run, resume)
    x_val = data.x_val.contiguous(memory_format=run.memory_format)  # laid out once for every evaluation
    warmup_steps = round(cfg.warmup_fraction * run.total_steps)
    metrics: dict[str, Any] = {}
    for epoch in range(run.epoch, cfg.epochs):
        started = time.perf_counter()
        run.model.train()
        sums: dict[str, float] = {}
        for x, y, idx in run.source.epoch(epoch):
            run.lr = lr_at(run.step, base_lr=cfg.lr, total_steps=run.total_steps, schedule=cfg.lr_schedule,
                           warmup_steps=warmup_steps)
            for family in run.families:
                family.before_forward(run)
            run.x = x.to(run.device, non_blocking=True).contiguous(memory_format=run.memory_format)
            run.y, run.idx = y.to(run.device, non_blocking=True), idx
            with run.autocast():
                run.logits = run.trained(run.x).float()
            terms = losses.objective(run)  # task_loss, every family's named terms, and their weighted sum `loss`
            _check_finite(terms, epoch, run)
            run.optimizer.zero_grad(set_to_none=True)
            (run.scaler.scale(terms["loss"]) if run.scaler else terms["loss"]).backward()
            restructured = False
            for family in run.families:
                if family.before_step(run):  # parameters were replaced: what refers to them follows
                    restructured = True
                    follow_structure(run)
            for group in run.optimizer.param_groups:
                group["lr"] = run.lr
            if run.scaler is None:
                run.optimizer.step()
            elif not restructured:  # the scaler refuses an optimizer without gradients
                run.scaler.step(run.optimizer)
                run.scaler.update()
            for family in run.families:
                family.after_step(run)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            run.step += 1

        calibration, same = run.source.calibration(cfg.bn_recalibration_batches)
        if cfg.bn_recalibration_batches:
            recalibrate_batchnorm(run.model, calibration, dist=run.dist, same_on_every_rank=same,
                                  memory_format=run.memory_format, dtype=run.dtype)
        means = dict(zip(sums, run.dist.sum([v / run.source.steps_per_epoch / run.dist.world_size
                                             for v in sums.values()]), strict=True))
        metrics = {
            "epoch": epoch + 1,
            **evaluate(run.model, x_val, data.y_val, dist=run.dist, dtype=run.dtype),
            **{f"train_{k}" if k == "loss" else k: v for k, v in means.items()},
            **pruning.size_metrics(run.model, pruning.prunable_parameters(run.model, head_names)),
            **{k: v for family in run.families for k, v in family.epoch_end(run).items()},
            "lr": run.lr,
            "precision": _dtype_name(run.dtype),
            "epoch_time_s": time.perf_counter() - started,
        }
        report(metrics, run.model, functools.partial(training_state, run, epoch=epoch + 1))
    return metrics


def start_run(cfg: TrialConfig, model: nn.Module, data: Splits, *, head_names: set[str],
              teacher_logits: torch.Tensor | None = None, teacher: nn.Module | None = None,
              batches: BatchSource | None = None, dist: Dist | None = None,
              observers: list[Family] | None = None) -> Run:
    """The Run that fit() trains: the loop's plumbing (seed, device, memory format, rank 0's weights,
    precision, batches), then the active families' `start`, then the optimizer and DDP wrapper."""
    dist = dist or Dist()
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    torch.manual_seed(cfg.seed)
    if cfg.sync_batchnorm and dist.world_size > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device=dist.device, memory_format=memory_format)
    if dist.world_size > 1:  # start from rank 0's weights before anything (L2-SP anchors, masks) reads them
        with torch.no_grad():
            for tensor in model.state_dict().values():
                torch.distributed.broadcast(tensor, src=0)
    dtype, scaler = precision(cfg, dist.device)
    if dist.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest kernels
    source = batches or TensorBatches(data.x_train, data.y_train, batch_size=cfg.batch_size, seed=cfg.seed,
                                      dist=dist)
    run = Run(cfg, model, head_names, source, dist, memory_format, dtype, scaler,
              total_steps=cfg.epochs * source.steps_per_epoch, teacher_logits=teacher_logits, teacher=teacher,
              teacher_dtype=dtype, families=[*families.build(cfg), *(observers or [])])
    for family in run.families:
        family.start(run)
    if cfg.amp == "auto" and dist.device.type != "cuda":  # after `start`: the teacher is on the device, in eval
        run.dtype, run.teacher_dtype = _auto_dtypes(cfg, model, run.teacher, data.x_val, dist)  # training's shapes
    run.optimizer = _optimizer(cfg, model)
    # Under DDP the wrapper only runs forward/backward (and all-reduces gradients); families and
    # evaluation use the module itself. Gradients are identical on every rank after the
    # all-reduce, so weights, magnitude masks and pruned channels are too.
    run.trained = _ddp(model, dist)
    return run


def follow_structure(run: Run) -> None:
    """A family replaced parameters (channel pruning): a fresh optimizer over the new ones, every
    family's references, no stale gradients, and a new DDP wrapper (its buckets hold the old ones)."""
    # new parameters come in the default layout: back to the run's (channels_last), as a resumed
    # run lays out the loaded network, or the two drift apart
    run.model.to(memory_format=run.memory_format)
    run.optimizer = _optimizer(run.cfg, run.model)
    for family in run.families:
        family.structure_changed(run)
    run.model.zero_grad(set_to_none=True)
    run.trained = _ddp(run.model, run.dist)


_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_DTYPE_NAMES: dict[torch.dtype | None, str] = {v: k for k, v in _DTYPES.items()}


def _dtype_name(dtype: torch.dtype | None) -> str:
    return _DTYPE_NAMES[dtype]


def _check_finite(terms: dict[str, torch.Tensor], epoch: int, run: Run) -> None:
    if not torch.isfinite(terms["loss"]):
        values = {k: float(v.detach()) for k, v in terms.items()}
        raise FloatingPointError(
            f"loss became {values['loss']} at epoch {epoch + 1}, step {run.step} (lr={run.lr:.3g}); "
            "terms: " + ", ".join(f"{k}={v:.4g}" for k, v in values.items())
        )


def training_state(run: Run, *, epoch: int) -> dict[str, Any]:
    """Everything besides the weights that `fit(resume=...)` needs to continue after `epoch`: the
    step counter, optimizer moments, batch-order/augmentation and dropout RNG states, the fp16
    loss scale, and each active family's share under its own keys (magnitude pruning: `masked`,
    whether masks are active — the masks are the zeros in the weights; regularization:
    `l2sp_anchors`; channel pruning: `channel_pruner`, the schedule's progress). Tensors, numbers
    and dicts only: `torch.load(weights_only=True)` reads it back without unpickling code."""
    state = {
        "epoch": epoch,
        "step": run.step,
        "optimizer": run.optimizer.state_dict(),
        "batch_rng": run.source.state(),
        "torch_rng": torch.get_rng_state(),
        # dropout on a GPU draws from the device's generator
        "cuda_rng": torch.cuda.get_rng_state(run.device) if run.device.type == "cuda" else None,
        "grad_scaler": run.scaler.state_dict() if run.scaler is not None else None,
        # what amp chose (amp: auto measures it): a resumed run trains on in the same precision
        "precision": _dtype_name(run.dtype),
        "teacher_precision": _dtype_name(run.teacher_dtype),
    }
    for family in run.families:
        share = family.state_dict()
        assert not share.keys() & state.keys(), f"{family.name}'s resume keys collide: {sorted(share)}"
        state.update(share)
    return state


def _load_state(run: Run, state: dict[str, Any]) -> None:
    """Continue from `training_state`: the loop's own part, then each family's."""
    run.step, run.epoch = state["step"], state["epoch"]
    run.optimizer.load_state_dict(state["optimizer"])
    run.source.set_state(state["batch_rng"])
    torch.set_rng_state(state["torch_rng"])
    if run.cfg.amp == "auto" and "precision" in state:
        run.dtype, run.teacher_dtype = _DTYPES[state["precision"]], _DTYPES[state["teacher_precision"]]
    if state.get("cuda_rng") is not None and run.device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda_rng"], run.device)
    for family in run.families:
        family.load_state_dict(run, state)
    if run.scaler is not None and state.get("grad_scaler"):
        run.scaler.load_state_dict(state["grad_scaler"])


def _ddp(model: nn.Module, dist: Dist) -> nn.Module:
    if dist.world_size == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [dist.device.index] if dist.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def _optimizer(cfg: TrialConfig, model: nn.Module) -> torch.optim.Optimizer:
    params = list(model.parameters())
    if cfg.optimizer == "adamw":  # weight decay is decoupled, applied by the regularization family
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; choose from ['adamw', 'sgd']")
