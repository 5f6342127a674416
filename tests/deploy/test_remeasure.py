"""After the search every deployed file is re-timed while nothing trains (remeasure.py); the trials
table, the baselines and the manifests carry the re-timed latency, the in-search one is kept."""

import json

import pandas as pd
import torch

from raytune_ft import layout
from raytune_ft.deploy import export, remeasure
from raytune_ft.report import results
from tests.conftest import TinyClassifier


def _shipped(directory, value: float):
    """A real exported file whose manifest claims an in-search latency of `value` ms."""
    torch.manual_seed(0)
    export.export_model(TinyClassifier().eval(), directory, image_size=8, manifest={})
    stale = {"latency_ms_b1": value, "latency_ms_b32": value, "latency_ms_b1_iqr": 0.0, "latency_ms_b32_iqr": 0.0}
    export.update_manifest(directory, metrics=stale)
    return stale


def test_completed_trials_and_baselines_are_retimed_and_the_search_value_is_kept(tmp_path):
    stale = _shipped(tmp_path / "trial" / "export", 999.0)
    _shipped(tmp_path / "teacher" / "export", 999.0)
    trials = pd.DataFrame([
        {"trial_id": "a", "status": "completed", "export_path": str(tmp_path / "trial" / "export"), **stale},
        {"trial_id": "b", "status": "failed", "export_path": None, **stale},  # nothing shipped: untouched
    ])
    teacher = {"latency_ms_b32": 999.0, "baselines": {"teacher_fp32": {
        "baseline": "teacher_fp32", "file": str(tmp_path / "teacher" / "export" / layout.ONNX_FILE), **stale}}}

    out, teacher_out = remeasure.remeasure(trials, teacher, threads=1, budget_s=0.1)

    a, b = out.iloc[0], out.iloc[1]
    assert 0 < a.latency_ms_b1 < 999 and 0 < a.latency_ms_b32 < 999 and a.latency_ms_b32_iqr >= 0
    assert a.latency_ms_b32_search == 999.0 and b.latency_ms_b32 == 999.0
    assert 0 < teacher_out["baselines"]["teacher_fp32"]["latency_ms_b32"] < 999
    assert teacher_out["latency_ms_b32"] == teacher_out["baselines"]["teacher_fp32"]["latency_ms_b32"]
    manifest = json.loads((tmp_path / "trial" / "export" / layout.MANIFEST).read_text())
    assert manifest["metrics"][remeasure.RETIMED] and manifest["metrics"]["latency_ms_b32"] == a.latency_ms_b32
    # the trials table rebuilt from the folders (analyze) reads the re-timed value back
    overlay = results._retimed_latency(tmp_path / "trial" / "export", dict(stale))
    assert overlay["latency_ms_b32"] == a.latency_ms_b32 and overlay["latency_ms_b32_search"] == 999.0


def test_a_folder_without_a_manifest_is_left_alone(tmp_path):
    assert remeasure.time_file(tmp_path, threads=1, budget_s=0.1) is None
    assert results._retimed_latency(tmp_path, {"latency_ms_b32": 5.0}) == {}
