"""Quantization-aware fine-tuning (quantization.FakeQuantization): the grid it trains on is the one
ONNX Runtime ships, it acts only in its window, and the network it leaves is the plain one."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from raytune_ft import train
from raytune_ft.config import TrialConfig
from raytune_ft.deploy import export
from raytune_ft.families import quantization
from raytune_ft.families.quantization import FakeQuantization, Quantization, fake_quantize_input, fake_quantize_weight
from tests.conftest import TINY_HEAD, TinyClassifier

pytestmark = pytest.mark.usefixtures("one_thread")


def test_fake_quantized_weights_are_the_grid_onnxruntime_ships(tmp_path, tiny_splits):
    """conv -> BN: ORT folds BN into the conv and quantizes per channel; fake-quantizing the
    folded weight gives the same int8 values times the same scales."""
    torch.manual_seed(0)
    model = TinyClassifier()
    with torch.no_grad():  # BN with real statistics and a negative scale: folding changes every channel
        model.bn.running_mean.uniform_(-1, 1), model.bn.running_var.uniform_(0.5, 2), model.bn.weight.uniform_(-2, 2)
    model.eval()
    fp32 = export.export_onnx(model, tmp_path / "model.onnx", image_size=8)
    int8 = Quantization(calibration_batches=1, batch_size=16).at_export(fp32, tiny_splits.x_train)

    graph = onnx.load(str(int8)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    first_conv = next(n for n in graph.node if n.op_type == "Conv")
    dq = next(n for n in graph.node if n.op_type == "DequantizeLinear" and n.output[0] == first_conv.input[1])
    q, scale = inits[dq.input[0]].astype(np.float32), inits[dq.input[1]]
    shipped = q * scale.reshape(-1, 1, 1, 1)

    bn = model.bn
    factor = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    folded = (model.conv.weight * factor.reshape(-1, 1, 1, 1)).detach()
    trained = fake_quantize_weight(folded).numpy()
    assert np.abs(q).max() <= quantization.WEIGHT_QMAX
    np.testing.assert_allclose(trained, shipped, rtol=1e-5, atol=1e-7)
    # and the grid commutes with folding: fake-quantizing the unfolded weight, then folding, is the same
    np.testing.assert_allclose((fake_quantize_weight(model.conv.weight.detach()) * factor.reshape(-1, 1, 1, 1))
                               .detach().numpy(), shipped, rtol=1e-5, atol=1e-6)


def test_fake_quantized_inputs_take_256_levels_and_pass_gradients_straight_through():
    bounds = torch.full((2,), float("nan"))
    x = torch.linspace(-1.0, 3.0, 2000, requires_grad=True)
    y = fake_quantize_input(x, bounds, observe=True)
    assert torch.equal(bounds, torch.tensor([-1.0, 3.0]))  # the first batch sets the range
    assert len(torch.unique(y.detach())) == 256
    assert float((y - x).detach().abs().max()) <= 4.0 / 255 / 2 + 1e-6
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))  # in range: gradient 1
    fake_quantize_input(torch.full((4,), 7.0), bounds, observe=True)
    assert bounds[1] == pytest.approx(3.0 + quantization.RANGE_MOMENTUM * 4.0)  # an EMA afterwards
    frozen = bounds.clone()
    fake_quantize_input(torch.full((4,), 70.0), bounds, observe=False)
    assert torch.equal(bounds, frozen)


def _fit(splits, **settings):
    cfg = TrialConfig(epochs=2, batch_size=16, channels_last=False, lr=0.02, use_quantization=True, **settings)
    torch.manual_seed(0)
    model = TinyClassifier()
    reports: list[dict] = []
    train.fit(cfg, model, splits, head_names=TINY_HEAD, report=lambda m, _model, _s: reports.append(dict(m)))
    return model, reports


def test_quant_aware_fine_tuning_acts_only_in_its_window_and_leaves_the_plain_network(tiny_splits):
    ptq, ptq_reports = _fit(tiny_splits)
    qat, qat_reports = _fit(tiny_splits, quant_aware_fraction=0.5)  # 6 steps an epoch: the second epoch
    assert [r["quant_aware"] for r in qat_reports] == [0.0, 1.0]
    assert "quant_aware" not in ptq_reports[0]
    assert qat_reports[0]["val_acc"] == ptq_reports[0]["val_acc"]  # the same run before the window
    assert qat_reports[0]["train_loss"] == ptq_reports[0]["train_loss"]
    assert qat_reports[1]["train_loss"] != ptq_reports[1]["train_loss"]  # then it trains another network
    assert not FakeQuantization.installed(qat)  # export sees the float network ...
    assert list(qat.state_dict()) == list(ptq.state_dict())  # ... with the usual parameter names
    assert not torch.equal(qat.conv.weight, ptq.conv.weight)


def test_installed_layers_skip_modules_with_their_own_forward():
    class Same(torch.nn.Conv2d):
        def forward(self, x):  # a padding-same convolution computes differently: left in float
            return super().forward(x)

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), Same(4, 4, 1), torch.nn.Flatten(), torch.nn.Linear(4, 2))
    fake = FakeQuantization()
    fake.install(model)
    assert sorted(fake.bounds) == ["0", "3"]
    out = model(torch.randn(2, 3, 3, 3))
    assert out.shape == (2, 2) and not torch.isnan(fake.bounds["0"]).any()
    FakeQuantization.remove(model)
    assert "forward" not in model[0].__dict__ and not FakeQuantization.installed(model)


def test_quant_aware_fraction_needs_quantization_and_a_fraction():
    with pytest.raises(ValueError, match="quant_aware_fraction is 0.25 but use_quantization is false"):
        TrialConfig(quant_aware_fraction=0.25)
    with pytest.raises(ValueError, match="quant_aware_fraction"):
        TrialConfig(use_quantization=True, quant_aware_fraction=1.5)
