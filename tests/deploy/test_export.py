"""Export and measurement: the artifact reloads without raytune_ft and is measured from disk."""

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from raytune_ft import layout
from raytune_ft.deploy import export
from raytune_ft.families import channel_pruning, magnitude_pruning, pruning
from tests.conftest import TINY_HEAD, TinyClassifier


def test_export_writes_program_and_manifest_and_measures_the_reloaded_file(tmp_path):
    torch.manual_seed(0)
    model = TinyClassifier().eval()
    prunable = pruning.prunable_parameters(model, TINY_HEAD)
    magnitude_pruning.apply_masks(prunable, magnitude_pruning.magnitude_masks(prunable, 0.9, "global"))
    export.export_model(model, tmp_path, image_size=8, manifest={"class_names": ["a", "b", "c"]})
    manifest = json.loads((tmp_path / layout.MANIFEST).read_text())
    assert manifest["class_names"] == ["a", "b", "c"] and manifest["input_size"] == [3, 8, 8]

    m = export.measure_export(tmp_path, image_size=8, threads=1, latency_budget_s=0.2)
    assert set(m) == set(export.SIZE_METRICS)
    assert m["params"] == sum(p.numel() for p in model.parameters())
    assert m["nonzero_params"] == sum(int(torch.count_nonzero(p)) for p in model.parameters())
    assert m["model_bytes"] == (tmp_path / layout.MODEL_FILE).stat().st_size
    assert 0 < m["model_bytes_compressed"] < m["model_bytes"]
    assert m["flops"] == 2 * m["macs"]
    assert m["latency_ms_b1"] > 0 and m["latency_ms_b32"] > m["latency_ms_b1"] * 0.5
    x = torch.randn(5, 3, 8, 8)
    assert torch.allclose(export.load_exported(tmp_path)(x), model(x), atol=1e-5)


def test_macs_follow_the_counting_convention():
    """One 3x3 conv, 3->4 channels, on 8x8 with padding: 4*8*8 outputs x 3*3*3 MACs each."""
    conv = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False))
    assert export.count_flops(conv, 8) == 2 * (4 * 8 * 8) * (3 * 3 * 3)


def test_exported_model_runs_in_a_process_without_raytune_ft(tmp_path):
    torch.manual_seed(0)
    model = TinyClassifier().eval()
    export.export_model(model, tmp_path, image_size=8, manifest={})
    x = torch.randn(4, 3, 8, 8)
    torch.save({"x": x, "y": model(x).detach()}, tmp_path / "io.pt")
    code = (
        "import sys, torch; "
        f"m = torch.export.load({str(tmp_path / layout.MODEL_FILE)!r}).module(); "
        f"io = torch.load({str(tmp_path / 'io.pt')!r}, weights_only=True); "
        "assert torch.allclose(m(io['x']), io['y'], atol=1e-5); "
        "assert not any(k.startswith('raytune_ft') for k in sys.modules); print('ok')"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.stdout.strip() == "ok", proc.stderr


@pytest.mark.parametrize("importance", ["l2"])
def test_channel_pruned_model_exports_smaller(tmp_path, importance):
    from raytune_ft import models

    dense = models.build_model("efficientnet_lite0", 10, weights="none").eval()
    export.export_model(dense, tmp_path / "dense", image_size=32, manifest={})
    pruned = models.build_model("efficientnet_lite0", 10, weights="none")
    channel_pruning.ChannelPruner(pruned, torch.randn(2, 3, 32, 32), ratio=0.5, importance=importance, steps=1,
                                  scope="uniform", head=pruned.get_classifier()).step()
    export.export_model(pruned.eval(), tmp_path / "pruned", image_size=32, manifest={})
    a = export.measure_export(tmp_path / "dense", image_size=32, threads=1, latency_budget_s=0.3)
    b = export.measure_export(tmp_path / "pruned", image_size=32, threads=1, latency_budget_s=0.3)
    assert b["model_bytes"] < 0.6 * a["model_bytes"] and b["macs"] < 0.6 * a["macs"]


def test_onnx_is_written_and_valid_when_onnx_is_installed(tmp_path):
    onnx = pytest.importorskip("onnx", reason="the optional onnx package is not installed")
    export.export_model(TinyClassifier().eval(), tmp_path, image_size=8, manifest={})
    assert json.loads((tmp_path / layout.MANIFEST).read_text())["files"] == [layout.MODEL_FILE, layout.ONNX_FILE]
    model = onnx.load(str(tmp_path / layout.ONNX_FILE))
    onnx.checker.check_model(model)
    assert model.graph.input[0].name == "images"
