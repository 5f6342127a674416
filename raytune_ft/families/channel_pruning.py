"""The structured channel pruning family: whole channels removed with Torch-Pruning's dependency
graph (DepGraph, Fang et al. CVPR 2023) in a few steps spread over the pruning window.

The network gets physically smaller (fewer parameters, MACs and bytes), so everything that
refers to its parameters follows each pruning step: the optimizer and DDP wrapper (rebuilt by
the loop), magnitude masks (`structure_changed`), and L2-SP's anchors (pruned with the same
channels, through `Family.shadows`). Only this module imports `torch_pruning`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from raytune_ft import models
from raytune_ft.config import CHANNEL_IMPORTANCE, CHANNEL_SCOPES
from raytune_ft.families.base import Family
from raytune_ft.families.pruning import window

if TYPE_CHECKING:
    from raytune_ft.families.base import Run


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

    def step(self, *shadows: dict[str, torch.Tensor]) -> None:
        """Prune one step. Each of `shadows` (name -> tensor shaped like that parameter, e.g.
        L2-SP's pretrained weights) loses the same channels as its parameters."""
        names = {module: name for name, module in self.model.named_modules()}
        for group in self.pruner.step(interactive=True):
            cuts = [(dep.target.module, dep.handler.__name__, list(idxs)) for dep, idxs in group]
            group.prune()
            for anchors in shadows:
                for module, handler, idxs in cuts:
                    _shrink_like(anchors, names.get(module), module, handler, idxs)
        params = dict(self.model.named_parameters())
        for anchors in shadows:
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
    start, end = window(total_steps, start_fraction, end_fraction)
    if steps == 1:
        return [end]
    return sorted({round(start + i * (end - start) / (steps - 1)) for i in range(steps)})


class ChannelPruning(Family):
    """`channel_pruning_steps` pruning steps spread over [pruning_start, pruning_end], each right
    after the backward pass (Taylor importance ranks channels by weight × gradient; under fp16 the
    gradients are scaled uniformly, which keeps the ranking). A step replaces parameters, so it
    returns True and the loop rebuilds what refers to them. The graph is traced at `start` on two
    training images; the classifier head is never pruned."""

    name = "channel_pruning"
    switches = ("use_channel_pruning",)
    fields = ("use_channel_pruning", "channel_pruning_ratio", "channel_importance", "channel_pruning_steps",
              "channel_pruning_scope", "channel_round_to", "pruning_start", "pruning_end")

    def start(self, run: Run) -> None:
        cfg = self.cfg
        example = run.source.example().to(run.device).contiguous(memory_format=run.memory_format)
        self.pruner = ChannelPruner(
            run.model, example, ratio=cfg.channel_pruning_ratio, importance=cfg.channel_importance,
            steps=cfg.channel_pruning_steps, scope=cfg.channel_pruning_scope, head=models.classifier(run.model),
            round_to=cfg.channel_round_to,
        )
        self.prune_at = set(channel_prune_steps(run.total_steps, start_fraction=cfg.pruning_start,
                                                end_fraction=cfg.pruning_end, steps=cfg.channel_pruning_steps))

    def before_step(self, run: Run) -> bool:
        if run.step not in self.prune_at:
            return False
        self.pruner.step(*(shadow for family in run.families for shadow in family.shadows()))
        return True

    def state_dict(self) -> dict[str, Any]:
        return {"channel_pruner": self.pruner.state_dict()}

    def load_state_dict(self, run: Run, state: dict[str, Any]) -> None:
        self.pruner.load_state_dict(state["channel_pruner"])
