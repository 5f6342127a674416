"""Planned final sizes: what a trial's model will measure once its pruning schedules are done,
known from its config before training, for MO-ASHA to rank at every rung (mo_asha.py).

A pruning schedule reaches its target only at the end of its window, so at an early rung the
model's *current* size says little about the trial. `PlannedSizes` reports, at every epoch,
`planned_<m>` for each size objective m in PLANNED_METRICS: the value of m measured the same way
as the trial's final row (on the exported ONNX file with `export`, else on the PyTorch model) for
the model the config will produce:

* channel pruning: a copy of the starting network pruned once at the start with the family's own
  Torch-Pruning call (ratio, scope, round_to, all its steps): params, macs, flops and the fp32
  file's model_bytes of that copy. Exact for `channel_pruning_scope: uniform` (every group keeps
  a fixed share of its channels, whatever their importance); for `global` the split between
  layers depends on the importance at pruning time, so the plan is the split at the start.
  `taylor` needs gradients, so the copy is ranked by `l1` (same counts under uniform).
* magnitude pruning: nonzero_params = nonzero weights outside the prunable layers + the weights
  the final mask keeps, N − round(s_f·N) over all prunable weights (`pruning_scope: global`) or
  Σ_l n_l − round(s_f·n_l) per layer (`layer`); exact once the non-prunable weights are nonzero
  (after the first optimizer steps). Without magnitude pruning the prunable weights' nonzeros are
  counted on the current model once its structure is the planned one.
* with `export`, counts are the ONNX file's: BatchNorm folded into the convolutions shifts
  params and nonzero_params by the same structural offset, measured once on the exported copy.

Not planned: model_bytes_compressed (gzip depends on the trained values; MO-ASHA ranks its
per-epoch stand-in, for a quantized trial the weights on the int8 grid) and the int8 file's
model_bytes and nonzero_params under use_quantization (space parsing's check_scheduler refuses
those objectives under MO-ASHA: they are known only after calibration at export).
"""

from __future__ import annotations

import copy
import io
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from raytune_ft import layout, models
from raytune_ft.config import TrialConfig
from raytune_ft.deploy import export
from raytune_ft.families.base import Family
from raytune_ft.families.pruning import prunable_parameters

if TYPE_CHECKING:
    from raytune_ft.families.base import Run

PLANNED_METRICS = ("params", "nonzero_params", "model_bytes", "macs", "flops")
PREFIX = "planned_"  # the reported name of a planned size: planned_nonzero_params, ...


def observers(cfg: TrialConfig, metrics: tuple[str, ...]) -> list[Family]:
    """[PlannedSizes] when some of `metrics` (the sizes a scheduler ranks) can be planned, else []."""
    planned = tuple(m for m in metrics if m in PLANNED_METRICS)
    return [PlannedSizes(cfg, planned)] if planned else []


def kept_weights(sizes: list[int], sparsity: float, scope: str) -> int:
    """Weights a magnitude mask keeps at `sparsity` over layers of `sizes` elements (as
    magnitude_pruning.magnitude_masks counts them)."""
    if scope == "layer":
        return sum(n - round(sparsity * n) for n in sizes)
    total = sum(sizes)
    return total - round(sparsity * total)


def plan(cfg: TrialConfig, model: nn.Module, head_names: set[str]) -> dict[str, int]:
    """Structure numbers of the model `cfg` will produce from `model` (its weights at the start,
    not changed): a pruned copy is built and measured. Plain ints, stored in the training state."""
    from raytune_ft.families.channel_pruning import ChannelPruner

    final = copy.deepcopy(model).cpu().float().eval()
    if cfg.use_channel_pruning:
        importance = "l1" if cfg.channel_importance == "taylor" else cfg.channel_importance
        example = torch.randn(2, 3, cfg.image_size, cfg.image_size)
        pruner = ChannelPruner(final, example, ratio=cfg.channel_pruning_ratio, importance=importance,
                               steps=cfg.channel_pruning_steps, scope=cfg.channel_pruning_scope,
                               head=models.classifier(final), round_to=cfg.channel_round_to)
        for _ in range(cfg.channel_pruning_steps):
            pruner.step()
    final.eval()
    sizes = [w.numel() for w in prunable_parameters(final, head_names).values()]
    params = sum(p.numel() for p in final.parameters())
    with torch.no_grad():
        flops = export.count_flops(final, cfg.image_size)
    out = {"torch_params": params, "prunable": sum(sizes), "flops": flops,
           "kept": kept_weights(sizes, cfg.final_sparsity, cfg.pruning_scope) if cfg.use_pruning else -1}
    if cfg.export:  # the deployed fp32 file's counts and bytes (export.measure_deployed)
        _distinct_values(final)
        with tempfile.TemporaryDirectory() as tmp:
            path = export.export_onnx(final, Path(tmp) / layout.ONNX_FILE, image_size=cfg.image_size)
            out["params"] = export.onnx_weight_counts(path)[0]
            out["model_bytes"] = path.stat().st_size
    else:  # the per-epoch stand-ins (trial.epoch_size_metrics)
        buffer = io.BytesIO()
        torch.save(final.state_dict(), buffer)
        out["params"], out["model_bytes"] = params, len(buffer.getvalue())
    return out


@torch.no_grad()
def _distinct_values(model: nn.Module) -> None:
    """Random weights and BatchNorm statistics in place: the exporter stores equal tensors once
    (e.g. the zero biases of untrained BatchNorms), which trained weights never are, so the file
    of the planned structure would otherwise be smaller than the trained one."""
    g = torch.Generator().manual_seed(0)
    for p in model.parameters():
        p.copy_(torch.randn(p.shape, generator=g))
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_var is not None:
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g))
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


@torch.no_grad()
def planned_sizes(numbers: dict[str, int], model: nn.Module, head_names: set[str]) -> dict[str, int]:
    """PLANNED_METRICS from `plan`'s numbers and the current `model` (for the weights that are
    nonzero now). Before channel pruning is done, non-prunable weights count as nonzero."""
    offset = numbers["params"] - numbers["torch_params"]  # ONNX (BatchNorm folded) minus PyTorch; 0 without export
    final_structure = sum(p.numel() for p in model.parameters()) == numbers["torch_params"]
    if final_structure:
        prunable = sum(int(torch.count_nonzero(w)) for w in prunable_parameters(model, head_names).values())
        other = sum(int(torch.count_nonzero(p)) for p in model.parameters()) - prunable
    else:
        prunable, other = numbers["prunable"], numbers["torch_params"] - numbers["prunable"]
    kept = numbers["kept"] if numbers["kept"] >= 0 else prunable
    return {"params": numbers["params"], "nonzero_params": other + kept + offset,
            "model_bytes": numbers["model_bytes"], "macs": numbers["flops"] // 2, "flops": numbers["flops"]}


class PlannedSizes(Family):
    """Reports `planned_<m>` for `metrics` after every epoch (`epoch_end`). Not a technique and not
    in the registry: the trial glue adds it to fit() when a scheduler ranks sizes. The starting
    network is copied at `start` and planned at the first epoch's end; the plan joins the training
    state, so a resumed trial reports the same plan without re-planning its pruned network."""

    name = "planned_sizes"
    switches = ()
    fields = ("use_pruning", "final_sparsity", "pruning_scope", "use_channel_pruning", "channel_pruning_ratio",
              "channel_importance", "channel_pruning_steps", "channel_pruning_scope", "channel_round_to",
              "image_size", "export")

    def __init__(self, cfg: TrialConfig, metrics: tuple[str, ...]) -> None:
        super().__init__(cfg)
        unknown = [m for m in metrics if m not in PLANNED_METRICS]
        if unknown:
            raise ValueError(f"cannot plan {unknown}; choose from {list(PLANNED_METRICS)}")
        self.metrics = metrics
        self.numbers: dict[str, int] | None = None
        self._start: nn.Module | None = None

    def start(self, run: Run) -> None:
        self._start = copy.deepcopy(run.model).cpu()  # the network before any pruning step

    def epoch_end(self, run: Run) -> dict[str, float]:
        numbers = self._numbers(run)
        sizes = planned_sizes(numbers, run.model, run.head_names)
        return {f"{PREFIX}{m}": sizes[m] for m in self.metrics}

    def state_dict(self) -> dict[str, Any]:
        return {"planned_sizes": dict(self.numbers or {})}

    def load_state_dict(self, run: Run, state: dict[str, Any]) -> None:
        if state.get("planned_sizes"):
            self.numbers, self._start = dict(state["planned_sizes"]), None

    def _numbers(self, run: Run) -> dict[str, int]:
        if self.numbers is None:
            assert self._start is not None, "PlannedSizes.start was not called"
            self.numbers, self._start = plan(self.cfg, self._start, run.head_names), None
        return self.numbers
