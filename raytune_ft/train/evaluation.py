"""Evaluation of a network on tensors (`evaluate`, `predict_logits`) and BatchNorm recalibration
(`recalibrate_batchnorm`: running statistics re-estimated on training batches before evaluating).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from raytune_ft.families.base import Dist, autocast


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256, *,
             dist: Dist | None = None, dtype: torch.dtype | None = None) -> dict[str, float]:
    """val_acc and val_loss (mean cross-entropy) of `model` on (x, y). With several ranks each
    evaluates every world_size-th sample and the sums are all-reduced: the whole set, once."""
    dist = dist or Dist()
    device = next(model.parameters()).device
    model.eval()
    x, y = x[dist.rank :: dist.world_size], y[dist.rank :: dist.world_size]
    correct, loss_sum = 0.0, 0.0
    for i in range(0, len(x), batch_size):
        with autocast(device, dtype):
            logits = model(x[i : i + batch_size].to(device, non_blocking=True)).float()
        target = y[i : i + batch_size].to(device, non_blocking=True)
        loss_sum += float(nn.functional.cross_entropy(logits, target, reduction="sum"))
        correct += float((logits.argmax(dim=1) == target).sum())
    correct, loss_sum, n = dist.sum([correct, loss_sum, float(len(x))])
    return {"val_acc": correct / n, "val_loss": loss_sum / n}


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor], *, dist: Dist | None = None,
                          same_on_every_rank: bool = True, memory_format: torch.memory_format = torch.contiguous_format,
                          dtype: torch.dtype | None = None) -> None:
    """Re-estimate BatchNorm running statistics as a plain average over `batches`.

    The running averages lag behind weights that change quickly (fine-tuning at a high learning
    rate, pruning masks); evaluating with fresh statistics measures the model actually trained.
    When the ranks saw different batches the statistics are averaged across ranks, so every
    rank (and the checkpoint rank 0 writes) holds the same model.
    """
    dist = dist or Dist()
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    batches = list(batches)
    if not norms or not batches:
        return
    device = next(model.parameters()).device
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    model.train()
    for x in batches:
        with autocast(device, dtype):
            model(x.to(device, non_blocking=True).contiguous(memory_format=memory_format))
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    if dist.world_size > 1 and not same_on_every_rank:
        for m in norms:
            for buffer in (m.running_mean, m.running_var):
                torch.distributed.all_reduce(buffer)
                buffer /= dist.world_size


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    model.eval()
    device = next(model.parameters()).device
    return torch.cat([model(x[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)])
