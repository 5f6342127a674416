"""Gradual magnitude pruning: the sparsity schedule (a pure function) and exact-sparsity masks.

Zhu & Gupta 2017, "To prune, or not to prune": s_t = s_f + (s_i − s_f)·(1 − (t − t₀)/(t₁ − t₀))³
for t₀ ≤ t ≤ t₁, s_i before and s_f after. Masks zero the smallest-magnitude weights of every
conv and linear layer except the classifier head, either with one global threshold or the same
ratio in each layer. Pruned weights are stored as real zeros (no reparametrisation), so a saved
state dict is the deployable model and `weight != 0` recovers the mask after a reload.
"""

from __future__ import annotations

import torch
from torch import nn


def sparsity_at(step: int, *, final: float, start: int, end: int, initial: float = 0.0) -> float:
    """Target sparsity at optimizer step `step` for a cubic schedule over [start, end]."""
    if step < start:
        return initial
    if step >= end or end <= start:
        return final
    progress = (step - start) / (end - start)
    return final + (initial - final) * (1.0 - progress) ** 3


def prune_steps(total_steps: int, *, start_fraction: float, end_fraction: float, frequency: int) -> list[int]:
    """Optimizer steps at which masks are updated: every `frequency` steps in the window, plus its end.

    The end step is always included so the final sparsity is reached exactly.
    """
    last = max(total_steps - 1, 0)
    start = min(round(start_fraction * total_steps), last)
    end = min(max(round(end_fraction * total_steps), start), last)
    steps = list(range(start, end, frequency))
    return sorted(set(steps) | {end})


def prunable_parameters(model: nn.Module, head_names: set[str]) -> dict[str, nn.Parameter]:
    """Weights of conv and linear layers, the classifier head excepted."""
    out = {}
    for module_name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            name = f"{module_name}.weight" if module_name else "weight"
            if name not in head_names:
                out[name] = module.weight
    return out


@torch.no_grad()
def magnitude_masks(weights: dict[str, torch.Tensor], sparsity: float, scope: str) -> dict[str, torch.Tensor]:
    """Bool masks (True = keep) zeroing exactly round(sparsity·n) weights, globally or per layer.

    Ties are broken by topk order, so the count is exact even when many weights are equal.
    """
    if scope == "layer":
        return {name: _keep_largest(w.abs().flatten(), sparsity).view_as(w) for name, w in weights.items()}
    if scope != "global":
        raise ValueError(f"unknown pruning_scope {scope!r}; choose from ['global', 'layer']")
    flat = torch.cat([w.abs().flatten() for w in weights.values()])
    keep = _keep_largest(flat, sparsity)
    masks, offset = {}, 0
    for name, w in weights.items():
        masks[name] = keep[offset : offset + w.numel()].view_as(w)
        offset += w.numel()
    return masks


def _keep_largest(values: torch.Tensor, sparsity: float) -> torch.Tensor:
    n_keep = values.numel() - round(sparsity * values.numel())
    keep = torch.zeros(values.numel(), dtype=torch.bool, device=values.device)
    if n_keep > 0:
        keep[torch.topk(values, n_keep, sorted=False).indices] = True
    return keep


@torch.no_grad()
def apply_masks(weights: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> None:
    for name, mask in masks.items():
        weights[name].mul_(mask)


def masks_from_zeros(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Recover masks from a pruned model (its pruned weights are exact zeros)."""
    return {name: w != 0 for name, w in weights.items()}


@torch.no_grad()
def size_metrics(model: nn.Module, prunable: dict[str, torch.Tensor]) -> dict[str, float]:
    """params, nonzero_params (whole model) and sparsity (over the prunable weights)."""
    params = sum(p.numel() for p in model.parameters())
    nonzero = sum(int(torch.count_nonzero(p)) for p in model.parameters())
    total = sum(w.numel() for w in prunable.values())
    zeros = sum(w.numel() - int(torch.count_nonzero(w)) for w in prunable.values())
    return {"params": params, "nonzero_params": nonzero, "sparsity": zeros / total if total else 0.0}
