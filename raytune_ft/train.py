"""fit(): fine-tune one model with a trial's recipe. Plain PyTorch, no Ray.

The loop draws batches from in-memory tensors, applies the learning-rate schedule, the
pruning schedule and decoupled weight decay, backpropagates the `loss` term of
`losses.objective`, and after every epoch calls `report(metrics, model, state)`; `state()` is
what `fit(resume=...)` needs to continue from that epoch exactly (`training_state`).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from raytune_ft import losses, pruning
from raytune_ft.config import TrialConfig
from raytune_ft.data import Splits

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


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> dict[str, float]:
    """val_acc and val_loss (mean cross-entropy) of `model` on (x, y)."""
    model.eval()
    correct, loss_sum = 0, 0.0
    for i in range(0, len(x), batch_size):
        logits = model(x[i : i + batch_size])
        target = y[i : i + batch_size]
        loss_sum += float(nn.functional.cross_entropy(logits, target, reduction="sum"))
        correct += int((logits.argmax(dim=1) == target).sum())
    return {"val_acc": correct / len(x), "val_loss": loss_sum / len(x)}


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, x: torch.Tensor, batch_size: int, batches: int) -> None:
    """Re-estimate BatchNorm running statistics as a plain average over `batches` training batches.

    The running averages lag behind weights that change quickly (fine-tuning at a high learning
    rate, pruning masks); evaluating with fresh statistics measures the model actually trained.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or batches == 0:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    model.train()
    for i in range(min(batches, max(1, len(x) // batch_size))):
        model(x[i * batch_size : (i + 1) * batch_size])
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def fit(
    cfg: TrialConfig,
    model: nn.Module,
    data: Splits,
    *,
    head_names: set[str],
    report: Report,
    teacher_logits: torch.Tensor | None = None,
    resume: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Fine-tune `model` in place for cfg.epochs; returns the last epoch's metrics.

    teacher_logits: (n_train, num_classes) logits of the teacher on data.x_train, required
    when cfg.use_kd. resume: a `state()` that `report` got from an earlier run of the same
    config, with `model` holding that epoch's weights (see models.resize_to_state_dict):
    training goes on after that epoch as if it had never stopped. Raises FloatingPointError
    when the loss stops being finite.
    """
    if cfg.use_kd and teacher_logits is None:
        raise ValueError("use_kd is true but no teacher logits were given")
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    torch.manual_seed(cfg.seed)
    batches = torch.Generator().manual_seed(cfg.seed)
    n = len(data.x_train)
    batch_size = min(cfg.batch_size, n)
    steps_per_epoch = n // batch_size  # drop the ragged last batch: BatchNorm needs > 1 sample
    total_steps = cfg.epochs * steps_per_epoch
    warmup_steps = round(cfg.warmup_fraction * total_steps)

    l2sp = losses.L2SP(model, head_names, cfg.l2sp_alpha, cfg.l2sp_beta) if cfg.use_l2sp else None
    optimizer = _optimizer(cfg, model)
    decayed = [p for p in model.parameters() if p.ndim >= 2]  # no decay on norms and biases
    weight_decay = cfg.weight_decay if cfg.use_weight_decay else 0.0

    prunable = pruning.prunable_parameters(model, head_names)
    prune_at: dict[int, float] = {}
    if cfg.use_pruning:
        steps = pruning.prune_steps(
            total_steps,
            start_fraction=cfg.pruning_start,
            end_fraction=cfg.pruning_end,
            frequency=cfg.pruning_frequency,
        )
        prune_at = {
            s: pruning.sparsity_at(s, final=cfg.final_sparsity, start=steps[0], end=steps[-1]) for s in steps
        }
    masks: dict[str, torch.Tensor] = {}
    channel_pruner, channel_at = None, set()
    if cfg.use_channel_pruning:
        example = data.x_train[:2].contiguous(memory_format=memory_format)
        channel_pruner = pruning.ChannelPruner(
            model, example, ratio=cfg.channel_pruning_ratio, importance=cfg.channel_importance,
            steps=cfg.channel_pruning_steps, scope=cfg.channel_pruning_scope, head=model.get_classifier(),
        )
        channel_at = set(pruning.channel_prune_steps(
            total_steps, start_fraction=cfg.pruning_start, end_fraction=cfg.pruning_end,
            steps=cfg.channel_pruning_steps,
        ))

    # evaluation and BatchNorm recalibration read the same tensors every epoch: lay them out once
    x_val = data.x_val.contiguous(memory_format=memory_format)
    x_recalibrate = data.x_train[: batch_size * cfg.bn_recalibration_batches].contiguous(memory_format=memory_format)

    step, first_epoch = 0, 0
    if resume is not None:
        step, first_epoch = resume["step"], resume["epoch"]
        optimizer.load_state_dict(resume["optimizer"])
        batches.set_state(resume["batch_rng"])
        torch.set_rng_state(resume["torch_rng"])
        if resume["masked"]:  # pruned weights are exact zeros (pruning.py)
            masks = pruning.masks_from_zeros(prunable)
        if l2sp is not None:  # the pretrained weights, shrunk with any channels pruned so far
            l2sp.anchors = dict(resume["l2sp_anchors"])
        if channel_pruner is not None:
            channel_pruner.load_state_dict(resume["channel_pruner"])
    metrics: dict[str, Any] = {}
    for epoch in range(first_epoch, cfg.epochs):
        started = time.perf_counter()
        model.train()
        order = torch.randperm(n, generator=batches)
        sums: dict[str, float] = {}
        for i in range(steps_per_epoch):
            idx = order[i * batch_size : (i + 1) * batch_size]
            lr = lr_at(step, base_lr=cfg.lr, total_steps=total_steps, schedule=cfg.lr_schedule, warmup_steps=warmup_steps)
            if step in prune_at:
                masks = pruning.magnitude_masks(prunable, prune_at[step], cfg.pruning_scope)
                pruning.apply_masks(prunable, masks)
            logits = model(data.x_train[idx].contiguous(memory_format=memory_format))
            terms = losses.objective(
                logits,
                data.y_train[idx],
                label_smoothing=cfg.label_smoothing if cfg.use_label_smoothing else 0.0,
                teacher_logits=teacher_logits[idx] if cfg.use_kd else None,
                kd_alpha=cfg.kd_alpha,
                kd_temperature=cfg.kd_temperature,
                l2sp=l2sp,
            )
            if not torch.isfinite(terms["loss"]):
                values = {k: float(v.detach()) for k, v in terms.items()}
                raise FloatingPointError(
                    f"loss became {values['loss']} at epoch {epoch + 1}, step {step} (lr={lr:.3g}); "
                    "terms: " + ", ".join(f"{k}={v:.4g}" for k, v in values.items())
                )
            optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            if step in channel_at:
                # after backward: Taylor importance ranks channels by weight x gradient
                channel_pruner.step(anchors=l2sp.anchors if l2sp else None)
                # parameters were replaced by smaller ones: rebuild what refers to them
                optimizer = _optimizer(cfg, model)
                decayed = [p for p in model.parameters() if p.ndim >= 2]
                prunable = pruning.prunable_parameters(model, head_names)
                if step in prune_at:  # both at the window's end: hit the final sparsity exactly
                    masks = pruning.magnitude_masks(prunable, prune_at[step], cfg.pruning_scope)
                    pruning.apply_masks(prunable, masks)
                elif masks:
                    masks = pruning.masks_from_zeros(prunable)
                model.zero_grad(set_to_none=True)
            for group in optimizer.param_groups:
                group["lr"] = lr
            if weight_decay:
                with torch.no_grad():
                    torch._foreach_mul_(decayed, 1.0 - lr * weight_decay)
            optimizer.step()
            if masks:
                pruning.apply_masks(prunable, masks)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            step += 1

        recalibrate_batchnorm(model, x_recalibrate, batch_size, cfg.bn_recalibration_batches)
        metrics = {
            "epoch": epoch + 1,
            **evaluate(model, x_val, data.y_val),
            **{f"train_{k}" if k == "loss" else k: v / steps_per_epoch for k, v in sums.items()},
            **pruning.size_metrics(model, prunable),
            "lr": lr,
            "epoch_time_s": time.perf_counter() - started,
        }
        state = functools.partial(training_state, epoch=epoch + 1, step=step, optimizer=optimizer, batches=batches,
                                  masked=bool(masks), l2sp=l2sp, channel_pruner=channel_pruner)
        report(metrics, model, state)
    return metrics


def training_state(*, epoch: int, step: int, optimizer: torch.optim.Optimizer, batches: torch.Generator,
                   masked: bool, l2sp: losses.L2SP | None,
                   channel_pruner: pruning.ChannelPruner | None) -> dict[str, Any]:
    """Everything besides the weights that `fit(resume=...)` needs to continue after `epoch`:
    the step counter, optimizer moments, batch-order and dropout RNG states, whether magnitude
    masks are active (the masks themselves are the zeros in the weights), L2-SP's anchors and
    the channel-pruning progress. Tensors, numbers and dicts only: `torch.load(weights_only=True)`
    reads it back without unpickling code."""
    return {
        "epoch": epoch,
        "step": step,
        "optimizer": optimizer.state_dict(),
        "batch_rng": batches.get_state(),
        "torch_rng": torch.get_rng_state(),
        "masked": masked,
        "l2sp_anchors": dict(l2sp.anchors) if l2sp is not None else None,
        "channel_pruner": channel_pruner.state_dict() if channel_pruner is not None else None,
    }


def _optimizer(cfg: TrialConfig, model: nn.Module) -> torch.optim.Optimizer:
    params = list(model.parameters())
    if cfg.optimizer == "adamw":  # weight decay is applied by the loop, decoupled, for both
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; choose from ['adamw', 'sgd']")
