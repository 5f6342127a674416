"""The quantization family and the deployed artifact: int8 PTQ through ONNX Runtime, calibration
on training images only, the shipped file reproduced without raytune_ft, export failures."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import TINY_HEAD, TinyClassifier

from raytune_ft import layout, train
from raytune_ft.config import TrialConfig
from raytune_ft.deploy import export
from raytune_ft.families import quantization
from raytune_ft.search import trial


def _trained_tiny(splits) -> TinyClassifier:
    cfg = TrialConfig(weights="none", epochs=3, batch_size=32, lr=1e-2, bn_recalibration_batches=0)
    torch.manual_seed(0)
    model = TinyClassifier()
    train.fit(cfg, model, splits, head_names=TINY_HEAD, report=lambda *_: None)
    return model


def test_int8_file_reproduces_the_manifest_val_acc_in_a_process_with_only_onnxruntime(tmp_path, tiny_splits):
    model = _trained_tiny(tiny_splits)
    cfg = TrialConfig(weights="none", image_size=8, batch_size=32, use_quantization=True, quant_calibration_batches=2,
                      latency_budget_s=0.1)
    fp32_acc = train.evaluate(model, tiny_splits.x_val, tiny_splits.y_val)["val_acc"]
    measured = trial.export_and_measure(model, cfg, tiny_splits, {"val_acc": fp32_acc, "epoch": 3}, tmp_path)
    manifest = json.loads((tmp_path / layout.MANIFEST).read_text())
    assert manifest["deployed"] == layout.INT8_FILE and (tmp_path / layout.INT8_FILE).is_file()
    assert manifest["files"] == [layout.MODEL_FILE, layout.ONNX_FILE, layout.INT8_FILE]
    assert manifest["metrics"]["val_acc"] == measured["val_acc"] and measured["val_acc_fp32"] == fp32_acc
    assert measured["val_acc"] > 0.6  # learnable problem: the int8 file is still a classifier
    int8_bytes = (tmp_path / layout.INT8_FILE).stat().st_size
    assert measured["model_bytes"] == int8_bytes  # the shipped file is the measured one
    assert set(export.DEPLOYED_METRICS) <= set(measured)

    np.save(tmp_path / "x.npy", tiny_splits.x_val.numpy())
    np.save(tmp_path / "y.npy", tiny_splits.y_val.numpy())
    code = (
        "import json, sys, numpy as np, onnxruntime as ort\n"
        f"d = {str(tmp_path)!r}\n"
        "m = json.load(open(d + '/manifest.json'))\n"
        "s = ort.InferenceSession(d + '/' + m['deployed'], providers=['CPUExecutionProvider'])\n"
        "x, y = np.load(d + '/x.npy'), np.load(d + '/y.npy')\n"
        "right = int((s.run(None, {'images': x})[0].argmax(1) == y).sum())\n"
        "assert abs(right - m['metrics']['val_acc'] * len(y)) <= 1, (right, m['metrics']['val_acc'])\n"
        "bad = [k for k in sys.modules if k.split('.')[0] in ('torch', 'raytune_ft', 'onnx')]\n"
        "assert not bad, bad\nprint('ok', right)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.stdout.startswith("ok"), proc.stderr


def test_calibration_sees_only_a_random_sample_of_training_images(tmp_path, tiny_splits):
    """Validation images are 100x brighter: had calibration seen one, the input's activation
    range (the first QuantizeLinear's scale) would be ~100x wider."""
    from onnx import load, numpy_helper

    model = _trained_tiny(tiny_splits).eval()
    x_train = tiny_splits.x_train.abs()  # in [0, ~4]
    x_val = tiny_splits.x_val * 100.0
    export.export_onnx(model, tmp_path / layout.ONNX_FILE, image_size=8)
    family = quantization.Quantization(calibration_batches=2, calibration_method="minmax", batch_size=16, seed=3)
    reader = family.reader(x_train)
    out = family.at_export(tmp_path / layout.ONNX_FILE, x_train, reader=reader)

    seen = np.array(reader.seen)
    assert len(seen) == 32 == len(set(seen.tolist())) and seen.max() < len(x_train)
    assert not np.array_equal(np.sort(seen), np.arange(32))  # a random sample, not the first rows
    assert np.array_equal(seen, quantization.Quantization(2, "minmax", 16, seed=3).calibration_indices(len(x_train)))
    graph = load(str(out)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    first = next(n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "images")
    scale = float(inits[first.input[1]])
    sample_max = float(x_train[torch.from_numpy(seen)].max())
    assert scale == pytest.approx(sample_max / 255, rel=0.05)  # uint8, range [0, max] of the sample
    assert scale < float(x_val.max()) / 255 / 10
    assert export.onnx_accuracy(out, tiny_splits.x_val, tiny_splits.y_val) >= 0  # the file runs


def test_calibration_method_is_validated_with_the_choices():
    with pytest.raises(ValueError, match=r"quant_calibration_method 'kl'.*entropy.*minmax.*percentile"):
        TrialConfig(quant_calibration_method="kl")
    with pytest.raises(ValueError, match="quant_calibration_batches"):
        TrialConfig(quant_calibration_batches=0)


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_histogram_calibration_methods_quantize(tmp_path, tiny_splits, method):
    model = _trained_tiny(tiny_splits).eval()
    export.export_onnx(model, tmp_path / layout.ONNX_FILE, image_size=8)
    out = quantization.Quantization(2, method, 16).at_export(tmp_path / layout.ONNX_FILE, tiny_splits.x_train)
    ops = {n.op_type for n in __import__("onnx").load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert export.onnx_accuracy(out, tiny_splits.x_val, tiny_splits.y_val) > 0.5


def test_ort_latency_reports_medians_and_spreads(tmp_path):
    export.export_onnx(TinyClassifier().eval(), tmp_path / "m.onnx", image_size=8)
    out = export.ort_latency_ms(tmp_path / "m.onnx", image_size=8, threads=1, budget_s=0.05)
    assert set(out) == {"latency_ms_b1", "latency_ms_b32", "latency_ms_b1_iqr", "latency_ms_b32_iqr"}
    assert all(v >= 0 for v in out.values()) and out["latency_ms_b1"] > 0


@pytest.mark.e2e
def test_a_model_onnx_cannot_export_fails_its_trial_with_a_one_line_reason(tmp_path, tiny_splits):
    """A real Tune run of two trials: an FFT model (no ONNX export for aten::fft_rfft2) fails
    with the reason in trials.csv's error column; the other trial completes."""
    import ray
    from ray import tune

    from raytune_ft.report import results

    fixed = {"weights": "none", "image_size": 8, "epochs": 1, "batch_size": 32, "cpus_per_trial": 1,
             "bn_recalibration_batches": 0, "latency_budget_s": 0.05, "use_quantization": True}

    def trainable(sampled):
        import timm.models._registry as registry
        from torch import nn

        class FFTNet(nn.Module):
            def __init__(self, fft: bool) -> None:
                super().__init__()
                self.fft, self.conv, self.fc = fft, nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4, 3)

            def forward(self, x):
                x = self.conv(x)
                x = torch.fft.rfft2(x).abs() if self.fft else x
                return self.fc(x.mean(dim=(2, 3)))

            def get_classifier(self):
                return self.fc

            def reset_classifier(self, n):
                self.fc = nn.Linear(4, n)

        for name, fft in (("test_fftnet", True), ("test_plainnet", False)):
            def entry(pretrained=False, fft=fft, **_):
                return FFTNet(fft)
            entry.__name__, entry.__module__ = name, "timm.models.resnet"
            registry.register_model(entry)
        trial.tune_trial(sampled, fixed=fixed, data=tiny_splits, teacher_logits=None)

    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "space.json").write_text(json.dumps({"fixed": fixed, "params": ["model"],
                                                             "objectives": {"val_acc": "max"}}))
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        tune.Tuner(trainable, param_space={"model": tune.grid_search(["test_fftnet", "test_plainnet"])},
                   tune_config=tune.TuneConfig(trial_dirname_creator=trial.trial_dirname),
                   run_config=tune.RunConfig(name="exp", storage_path=str(tmp_path), verbose=0)).fit()
    finally:
        ray.shutdown()
    table = results.read_trials(tmp_path / "exp").set_index("model")
    assert table.loc["test_plainnet", "status"] == results.COMPLETED
    assert table.loc["test_fftnet", "status"] == results.FAILED
    error = table.loc["test_fftnet", "error"]
    assert "ONNX export failed" in error and "fft_rfft2" in error and "\n" not in error


def test_mo_asha_with_quantization_refuses_a_size_objective_the_int8_file_changes(tmp_path):
    from conftest import without_initial

    from raytune_ft.space.spaces import SpaceError, builtin_space_path, load_space

    text = without_initial(builtin_space_path("quickstart_mo_asha").read_text())
    quantized = text.replace("  use_kd: {type: categorical", "  use_quantization: {type: categorical, choices: "
                             "[true, false]}\n  use_kd: {type: categorical", 1)
    (tmp_path / "ok.yaml").write_text(quantized)  # nonzero_params... is what the int8 file changes too
    with pytest.raises(SpaceError, match=r"objectives\.nonzero_params.*use_quantization"):
        load_space(tmp_path / "ok.yaml")
    (tmp_path / "bytes.yaml").write_text(quantized.replace("nonzero_params: min", "model_bytes: min"))
    with pytest.raises(SpaceError, match=r"bytes\.yaml.*objectives\.model_bytes\b.*use_quantization"):
        load_space(tmp_path / "bytes.yaml")
    # the int8 file's gzip has a per-epoch stand-in (quantization.int8_weight_bytes): ranked, not refused
    (tmp_path / "gzip.yaml").write_text(quantized.replace("nonzero_params: min", "model_bytes_compressed: min"))
    assert load_space(tmp_path / "gzip.yaml").objectives == {"val_acc": "max", "model_bytes_compressed": "min"}
    (tmp_path / "macs.yaml").write_text(quantized.replace("nonzero_params: min", "macs: min"))
    assert load_space(tmp_path / "macs.yaml").objectives == {"val_acc": "max", "macs": "min"}


def test_dominance_line_says_whether_and_by_how_much_the_front_beats_a_baseline():
    import pandas as pd

    from raytune_ft import pareto

    objectives = {"val_acc": "max", "model_bytes_compressed": "min"}
    base = {"val_acc": 0.98, "model_bytes_compressed": 1000}
    front = pd.DataFrame({"val_acc": [0.985, 0.97], "model_bytes_compressed": [400, 200]})
    line = pareto.dominance_line(front, objectives, base, "the int8 teacher")
    assert line.startswith("1 front point(s) dominate the int8 teacher") and "+0.50 pts" in line and "40.0%" in line
    assert pareto.dominance_line(front.iloc[1:], objectives, base, "x").startswith("no front point dominates x")
    assert "cannot compare" in pareto.dominance_line(front, objectives, {"val_acc": 0.9}, "x")


def test_histogram_calibration_takes_whole_batches_of_a_small_training_split(tmp_path, tiny_splits):
    """40 training rows, batches of 16: ORT's percentile calibrator fails on a ragged last batch,
    so calibration takes the two whole batches (32 rows)."""
    export.export_onnx(_trained_tiny(tiny_splits).eval(), tmp_path / layout.ONNX_FILE, image_size=8)
    family = quantization.Quantization(7, "percentile", 16)
    reader = family.reader(tiny_splits.x_train[:40])
    family.at_export(tmp_path / layout.ONNX_FILE, tiny_splits.x_train[:40], reader=reader)
    assert len(reader.seen) == 32
    assert len(quantization.Quantization(4, "minmax", 64).calibration_indices(40)) == 40  # fewer: one batch
