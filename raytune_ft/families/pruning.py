"""What the two pruning families share: the pruning window, which weights are prunable, the size
metrics every trial reports, and a trial's pruning method as one label.

The families themselves are magnitude_pruning.py (Zhu & Gupta 2017) and channel_pruning.py
(Torch-Pruning / DepGraph); both act inside the window [pruning_start, pruning_end].
"""

from __future__ import annotations

import torch
from torch import nn


def window(total_steps: int, start_fraction: float, end_fraction: float) -> tuple[int, int]:
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
def size_metrics(model: nn.Module, prunable: dict[str, torch.Tensor]) -> dict[str, float]:
    """params, nonzero_params (whole model) and sparsity (over the prunable weights)."""
    params = sum(p.numel() for p in model.parameters())
    nonzero = sum(int(torch.count_nonzero(p)) for p in model.parameters())
    total = sum(w.numel() for w in prunable.values())
    zeros = sum(w.numel() - int(torch.count_nonzero(w)) for w in prunable.values())
    return {"params": params, "nonzero_params": nonzero, "sparsity": zeros / total if total else 0.0}


def pruning_method(values: dict) -> str:
    """"channel+magnitude", "channel", "magnitude" or "none", from a trial's settings."""
    parts = [name for name, flag in (("channel", "use_channel_pruning"), ("magnitude", "use_pruning"))
             if values.get(flag)]
    return "+".join(parts) or "none"
