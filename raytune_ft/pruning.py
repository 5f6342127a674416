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

from raytune_ft.config import CHANNEL_IMPORTANCE, CHANNEL_SCOPES


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
    start, end = _window(total_steps, start_fraction, end_fraction)
    return sorted(set(range(start, end, frequency)) | {end})


def _window(total_steps: int, start_fraction: float, end_fraction: float) -> tuple[int, int]:
    """First and last optimizer step of the pruning window, clipped to the run."""
    last = max(total_steps - 1, 0)
    start = min(round(start_fraction * total_steps), last)
    return start, min(max(round(end_fraction * total_steps), start), last)


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


# --- structured channel pruning (Torch-Pruning / DepGraph, Fang et al. CVPR 2023) -------------



def _importance(name: str):
    import torch_pruning as tp

    if name == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if name == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if name == "taylor":
        return tp.importance.GroupTaylorImportance()
    if name == "bn_scale":
        return tp.importance.BNScaleImportance()
    raise ValueError(f"unknown channel_importance {name!r}; choose from {sorted(CHANNEL_IMPORTANCE)}")


class ChannelPruner:
    """Remove whole channels with Torch-Pruning's dependency graph, in `steps` equal steps.

    After all steps every prunable group has lost `ratio` of its channels ("uniform") or the
    network as a whole has, with the least important groups losing most ("global"). Coupled
    layers (BatchNorm, depthwise convs, squeeze-excite, residual adds) shrink together, so the
    result is a physically smaller network. The classifier head is never pruned. With `round_to`
    > 1 every pruned layer keeps a multiple of `round_to` channels (vectorised int8/fp32 kernels
    want multiples of 8); 1 keeps any count.
    """

    def __init__(self, model: nn.Module, example_input: torch.Tensor, *, ratio: float, importance: str,
                 steps: int, scope: str, head: nn.Module, round_to: int = 1) -> None:
        import torch_pruning as tp

        if scope not in CHANNEL_SCOPES:
            raise ValueError(f"unknown channel_pruning_scope {scope!r}; choose from {sorted(CHANNEL_SCOPES)}")
        self.model = model
        self.needs_gradients = importance == "taylor"
        was_training = model.training
        model.eval()  # tracing the graph must not update BatchNorm statistics
        self.pruner = tp.pruner.MetaPruner(
            model, example_input, importance=_importance(importance), pruning_ratio=ratio,
            iterative_steps=steps, global_pruning=scope == "global", max_pruning_ratio=0.9,
            ignored_layers=[head], round_to=round_to if round_to > 1 else None,  # 1: Torch-Pruning's own path
        )
        model.train(was_training)

    def state_dict(self) -> dict:
        """Progress of the iterative schedule (steps done, channel counts before the first step),
        by module name and with plain ints, so a resumed run prunes towards the same targets."""
        names = {module: name for name, module in self.model.named_modules()}
        p = self.pruner
        return {
            "current_step": p.current_step,
            "initial_total_channels": p.initial_total_channels,
            "scope_initial_channels": dict(p._scope_initial_channels),
            "layer_init_out_ch": {names[m]: int(c) for m, c in p.layer_init_out_ch.items() if m in names},
            "layer_init_in_ch": {names[m]: int(c) for m, c in p.layer_init_in_ch.items() if m in names},
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue the schedule of `state_dict()` on the (already pruned) model this pruner wraps."""
        modules = dict(self.model.named_modules())
        p = self.pruner
        p.current_step = state["current_step"]
        p.initial_total_channels = state["initial_total_channels"]
        p._scope_initial_channels = dict(state["scope_initial_channels"])
        p.layer_init_out_ch.update({modules[n]: c for n, c in state["layer_init_out_ch"].items()})
        p.layer_init_in_ch.update({modules[n]: c for n, c in state["layer_init_in_ch"].items()})

    def step(self, anchors: dict[str, torch.Tensor] | None = None) -> None:
        """Prune one step. `anchors` (name -> tensor shaped like that parameter, e.g. L2-SP's
        pretrained weights) lose the same channels as their parameters."""
        names = {module: name for name, module in self.model.named_modules()}
        for group in self.pruner.step(interactive=True):
            cuts = [(dep.target.module, dep.handler.__name__, list(idxs)) for dep, idxs in group]
            group.prune()
            if anchors is not None:
                for module, handler, idxs in cuts:
                    _shrink_like(anchors, names.get(module), module, handler, idxs)
        if anchors is not None:
            params = dict(self.model.named_parameters())
            wrong = [k for k, a in anchors.items() if a.shape != params[k].shape]
            assert not wrong, f"anchors out of step with pruned parameters: {wrong[:3]}"


def _shrink_like(anchors: dict[str, torch.Tensor], prefix: str | None, module: nn.Module,
                 handler: str, idxs: list[int]) -> None:
    """Delete `idxs` from the anchors of `module`'s parameters along the dimension the pruning
    function cut (out-channels: dim 0; in-channels: dim 1), once their shapes differ."""
    if prefix is None:
        return
    dim = 0 if "out" in handler else 1
    for pname, param in module.named_parameters(recurse=False):
        key = f"{prefix}.{pname}" if prefix else pname
        anchor = anchors.get(key)
        if anchor is None or anchor.shape == param.shape or anchor.dim() <= dim:
            continue
        if anchor.shape[dim] - len(idxs) != param.shape[dim]:
            continue  # this cut was along the other dimension (e.g. depthwise in == out)
        keep = torch.ones(anchor.shape[dim], dtype=torch.bool)
        keep[idxs] = False
        anchors[key] = anchor[keep] if dim == 0 else anchor[:, keep]


def channel_prune_steps(total_steps: int, *, start_fraction: float, end_fraction: float, steps: int) -> list[int]:
    """`steps` optimizer steps evenly spread over the pruning window (the last at its end)."""
    start, end = _window(total_steps, start_fraction, end_fraction)
    if steps == 1:
        return [end]
    return sorted({round(start + i * (end - start) / (steps - 1)) for i in range(steps)})


def pruning_method(values: dict) -> str:
    """"channel+magnitude", "channel", "magnitude" or "none", from a trial's settings."""
    parts = [name for name, flag in (("channel", "use_channel_pruning"), ("magnitude", "use_pruning"))
             if values.get(flag)]
    return "+".join(parts) or "none"
