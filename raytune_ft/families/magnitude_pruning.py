"""The gradual magnitude pruning family: its sparsity schedule (a pure function), exact-sparsity
masks, and what it does in the loop.

Zhu & Gupta 2017, "To prune, or not to prune": s_t = s_f + (s_i − s_f)·(1 − (t − t₀)/(t₁ − t₀))³
for t₀ ≤ t ≤ t₁, s_i before and s_f after. Masks zero the smallest-magnitude weights of every
conv and linear layer except the classifier head, either with one global threshold or the same
ratio in each layer. Pruned weights are stored as real zeros (no reparametrisation), so a saved
state dict is the deployable model and `weight != 0` recovers the mask after a reload.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from raytune_ft.families.base import Family
from raytune_ft.families.pruning import prunable_parameters, window

if TYPE_CHECKING:
    from raytune_ft.families.base import Run


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
    start, end = window(total_steps, start_fraction, end_fraction)
    return sorted(set(range(start, end, frequency)) | {end})


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


class MagnitudePruning(Family):
    """Masks updated to the schedule's sparsity before the forward pass of each of `prune_steps`,
    re-applied after every optimizer step so pruned weights stay exact zeros. When another
    family removes channels the masks are rebuilt on the new parameters: from the schedule at
    an update step (so the final sparsity is met exactly), else from the zeros."""

    name = "magnitude_pruning"
    switches = ("use_pruning",)
    fields = ("use_pruning", "final_sparsity", "pruning_start", "pruning_end", "pruning_frequency", "pruning_scope")

    def start(self, run: Run) -> None:
        cfg = self.cfg
        steps = prune_steps(run.total_steps, start_fraction=cfg.pruning_start, end_fraction=cfg.pruning_end,
                            frequency=cfg.pruning_frequency)
        self.prune_at = {s: sparsity_at(s, final=cfg.final_sparsity, start=steps[0], end=steps[-1]) for s in steps}
        self.masks: dict[str, torch.Tensor] = {}
        self.prunable = prunable_parameters(run.model, run.head_names)

    def before_forward(self, run: Run) -> None:
        if run.step in self.prune_at:
            self._update(run.step)

    def structure_changed(self, run: Run) -> None:
        self.prunable = prunable_parameters(run.model, run.head_names)
        if run.step in self.prune_at:  # channel and magnitude pruning both at the window's end
            self._update(run.step)
        elif self.masks:
            self.masks = masks_from_zeros(self.prunable)

    def after_step(self, run: Run) -> None:
        if self.masks:
            apply_masks(self.prunable, self.masks)

    def state_dict(self) -> dict[str, Any]:
        return {"masked": bool(self.masks)}  # the masks themselves are the zeros in the weights

    def load_state_dict(self, run: Run, state: dict[str, Any]) -> None:
        if state["masked"]:
            self.masks = masks_from_zeros(self.prunable)

    def _update(self, step: int) -> None:
        self.masks = magnitude_masks(self.prunable, self.prune_at[step], self.cfg.pruning_scope)
        apply_masks(self.prunable, self.masks)
