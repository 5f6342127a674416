"""How a model sees the students' data: the config their images are decoded with once
(`data_config`), and the same tensors re-normalized for another architecture's pretrained statistics
(`renormalize`, `student_view`) or checked to be its view already (`same_view`). Used by the trials,
the teacher and the test split after the search.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from raytune_ft import models
from raytune_ft.config import TrialConfig
from raytune_ft.data.images import Splits


def same_view(data: Splits, cfg: TrialConfig) -> bool:
    """Whether `data` is already `cfg`'s input view (its model's mean/std, its image_size, and for
    images decoded from files its crop and interpolation)."""
    inp = models.input_config(cfg.model)
    size = data.x_val.shape[-1] if len(data.x_val) else cfg.image_size
    decoded_alike = not data.decode_view or tuple(data.decode_view) == (inp.crop_pct, inp.interpolation)
    return (tuple(data.mean) == tuple(inp.mean) and tuple(data.std) == tuple(inp.std) and size == cfg.image_size
            and decoded_alike)


def data_config(fixed: dict[str, Any], model_choices: tuple[str, ...] = ()) -> TrialConfig:
    """The config the students' data is decoded with, once for every trial (and the test split
    after the search): the fixed settings, and, when the architecture is searched, the first of
    `model_choices` if all of them resize and crop alike (same crop_pct and interpolation: e.g.
    compact CNNs without pretrained weights see the whole image), else the default model's view.
    Each trial then converts only the normalization (`student_view`); resizing and cropping are
    set here, at decode time, for all architectures."""
    cfg = TrialConfig.from_dict(fixed)
    if "model" in fixed or not model_choices:
        return cfg
    decodes = {(models.input_config(m).crop_pct, models.input_config(m).interpolation) for m in model_choices}
    return TrialConfig.from_dict({**fixed, "model": model_choices[0]}) if len(decodes) == 1 else cfg


def renormalize(x: torch.Tensor, mean: tuple, std: tuple, model: str) -> torch.Tensor:
    """Images normalized with `mean`/`std` re-normalized for `model`'s pretrained statistics:
    x' = (x · std_d + mean_d − mean_m) / std_m; `x` itself when they are the same."""
    inp = models.input_config(model)
    if tuple(mean) == tuple(inp.mean) and tuple(std) == tuple(inp.std) or not len(x):
        return x
    d_mean, d_std = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    m_mean, m_std = torch.tensor(inp.mean).view(1, 3, 1, 1), torch.tensor(inp.std).view(1, 3, 1, 1)
    return (x * d_std + d_mean - m_mean) / m_std


def student_view(data: Splits, cfg: TrialConfig) -> Splits:
    """`data` normalized for `cfg.model` (a searched architecture can normalize differently from the
    one the experiment loaded the data for, `renormalize`). `data` itself when nothing differs (the
    usual case: EfficientNet-Lite0/1/2 all use ImageNet's)."""
    inp = models.input_config(cfg.model)
    if tuple(data.mean) == tuple(inp.mean) and tuple(data.std) == tuple(inp.std):
        return data
    return dataclasses.replace(data, x_train=renormalize(data.x_train, data.mean, data.std, cfg.model),
                               x_val=renormalize(data.x_val, data.mean, data.std, cfg.model),
                               x_test=renormalize(data.x_test, data.mean, data.std, cfg.model),
                               mean=tuple(inp.mean), std=tuple(inp.std))
