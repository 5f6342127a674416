"""Tests for raytune_ft.data.views: the students' decode config and the same tensors normalized for
another architecture."""

from __future__ import annotations

import dataclasses

import torch

from raytune_ft import data, models
from raytune_ft.config import TrialConfig
from raytune_ft.data import views

IMAGENET = models.InputConfig((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _normalize(pixels: torch.Tensor, inp: models.InputConfig) -> torch.Tensor:
    return (pixels - torch.tensor(inp.mean).view(1, 3, 1, 1)) / torch.tensor(inp.std).view(1, 3, 1, 1)


def test_student_view_renormalizes_only_when_the_architecture_needs_it():
    pixels = torch.rand(4, 3, 8, 8)
    split = data.Splits(_normalize(pixels, IMAGENET), torch.arange(4), _normalize(pixels, IMAGENET), torch.arange(4),
                        ("a", "b", "c", "d"), mean=IMAGENET.mean, std=IMAGENET.std)
    assert views.student_view(split, TrialConfig(model="efficientnet_lite1")) is split  # ImageNet stats
    vit = TrialConfig(model="vit_tiny_patch16_224")  # timm: mean = std = 0.5
    inp = models.input_config(vit.model)
    assert inp.mean != IMAGENET.mean
    view = views.student_view(split, vit)
    torch.testing.assert_close(view.x_train, _normalize(pixels, inp))
    assert view.mean == inp.mean and torch.equal(view.y_val, split.y_val)
    assert not views.same_view(split, vit) and views.same_view(view, dataclasses.replace(vit, image_size=8))


def test_renormalize_is_the_identity_for_the_same_statistics_and_exact_otherwise():
    pixels = torch.rand(2, 3, 4, 4)
    x = _normalize(pixels, IMAGENET)
    assert views.renormalize(x, IMAGENET.mean, IMAGENET.std, "efficientnet_lite0") is x
    half = models.input_config("vit_tiny_patch16_224")
    torch.testing.assert_close(views.renormalize(x, IMAGENET.mean, IMAGENET.std, "vit_tiny_patch16_224"),
                               _normalize(pixels, half))


def test_data_config_decodes_a_searched_architecture_once_in_a_shared_view():
    fixed = {"dataset": "digits", "image_size": 28}
    # compact CNNs resize and crop alike (whole image): the first choice's view serves all of them
    assert views.data_config(fixed, ("compact_cnn_16", "compact_cnn_24")).model == "compact_cnn_16"
    # Lite0 crops 0.875, the compact CNNs do not: no shared view, the default model's
    assert views.data_config(fixed, ("compact_cnn_16", "efficientnet_lite0")).model == TrialConfig().model
    assert views.data_config({**fixed, "model": "compact_cnn_24"}, ("compact_cnn_16",)).model == "compact_cnn_24"
