"""The family ablation's space variants (benchmarks/family_ablation.py): each switches one family
off completely, recipes included, and still loads as a valid space."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from raytune_ft.space import builtin_space_path, load_space

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "family_ablation.py"


@pytest.fixture(scope="module")
def ablation():
    spec = importlib.util.spec_from_file_location("family_ablation", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_family_of_the_shipped_space_is_switched_off_in_its_own_valid_variant(ablation, tmp_path):
    files = ablation.variant_files(builtin_space_path("fashion_mnist"), tmp_path)
    assert set(files) == {"full", "no_distillation", "no_pruning", "no_regularization", "no_int8"}
    no_kd = load_space(files["no_distillation"])
    assert no_kd.fixed["use_kd"] is False
    assert not {"use_kd", "kd_alpha", "kd_temperature"} & {p.name for p in no_kd.params}
    assert all("use_kd" not in r and "kd_alpha" not in r for r in no_kd.search.initial)
    no_reg = load_space(files["no_regularization"])
    assert no_reg.fixed["use_weight_decay"] is False and no_reg.fixed["use_label_smoothing"] is False
    assert not {"weight_decay", "label_smoothing"} & {p.name for p in no_reg.params}
    assert load_space(files["no_int8"]).fixed["use_quantization"] is False
    assert {p.name for p in load_space(files["no_pruning"]).params} >= {"use_kd", "lr"}  # the rest untouched
