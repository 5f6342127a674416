"""Checkpoint folders: a model's weights as plain tensors (`layout.CHECKPOINT_WEIGHTS`, loadable with
`torch.load(weights_only=True)`) next to a JSON description (`layout.CHECKPOINT_META`: the resolved
config, class names, metrics). Written for every trial epoch and the dense teacher; read back by
`load_checkpoint`, which rebuilds the architecture (a channel-pruned one at its saved shapes).
"""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path

import torch
from torch import nn

from raytune_ft import models
from raytune_ft.errors import ModelError
from raytune_ft.layout import CHECKPOINT_META, CHECKPOINT_WEIGHTS


def save_checkpoint(
    directory: str | Path,
    model: nn.Module,
    *,
    config: dict,
    class_names: tuple[str, ...],
    metrics: dict,
) -> Path:
    """Write `model.pt` (state dict, loadable with weights_only=True) and `checkpoint.json`.

    The JSON holds the resolved trial config, class names and metrics: enough to rebuild the
    architecture and to reproduce the trial.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    torch.save(state, directory / CHECKPOINT_WEIGHTS)
    meta = {
        "raytune_ft_version": version("raytune_ft"),
        "config": config,
        "class_names": list(class_names),
        "metrics": metrics,
    }
    (directory / CHECKPOINT_META).write_text(json.dumps(meta, indent=2, default=str))
    return directory


def load_checkpoint(directory: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild the model saved by `save_checkpoint`; returns (model in eval mode, metadata)."""
    directory = Path(directory)
    meta = read_meta(directory)
    cfg = meta["config"]
    model = models.build_model(cfg["model"], len(meta["class_names"]), weights="none",
                               dropout=cfg.get("dropout", 0.0))
    load_weights(model, directory)
    return model.eval(), meta


def load_weights(model: nn.Module, directory: str | Path) -> None:
    """Load the weights of checkpoint folder `directory` into `model`, a fresh build of its
    architecture, shrunk first to the saved shapes if it was channel-pruned (weights_only: loading
    a checkpoint runs no code)."""
    state = torch.load(Path(directory) / CHECKPOINT_WEIGHTS, map_location="cpu", weights_only=True)
    resize_to_state_dict(model, state)
    model.load_state_dict(state)


def read_meta(directory: str | Path) -> dict:
    """The JSON description of checkpoint folder `directory`; ModelError if it is not one."""
    meta_path = Path(directory) / CHECKPOINT_META
    if not meta_path.is_file():
        raise ModelError(f"{str(directory)!r} is not a raytune_ft checkpoint (no {CHECKPOINT_META})")
    return json.loads(meta_path.read_text())


def resize_to_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Shrink layers of a freshly built model to the tensor shapes in `state`.

    A channel-pruned network is the same architecture with fewer channels; the saved tensor
    shapes say exactly how many, so a plain state dict (no pickled modules) is enough to
    rebuild it. Handles Conv2d (incl. depthwise), BatchNorm and Linear.
    """
    modules = dict(model.named_modules())
    for key, tensor in state.items():
        prefix, _, attr = key.rpartition(".")
        module = modules[prefix]
        current = getattr(module, attr)
        if current is None or current.shape == tensor.shape:
            continue
        if attr in module._parameters:
            module._parameters[attr] = nn.Parameter(torch.empty_like(tensor), requires_grad=current.requires_grad)
        else:
            module._buffers[attr] = torch.empty_like(tensor)
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            depthwise = module.groups > 1 and module.groups == module.in_channels
            module.out_channels = module.weight.shape[0]
            if depthwise:
                module.groups = module.in_channels = module.out_channels
            else:
                module.in_channels = module.weight.shape[1] * module.groups
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            stats = module.running_mean if module.running_mean is not None else module.weight
            module.num_features = stats.shape[0]
        elif isinstance(module, nn.Linear):
            module.out_features, module.in_features = module.weight.shape
