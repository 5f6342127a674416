"""The closing summary (report/summary.py) from hand-made rows shaped like real pareto.csv rows:
the recipe in a few words, the columns a person compares, and every line within 100 columns for
the quickstart and the fashion_mnist space, long recipes included."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from raytune_ft.report import summary

OBJECTIVES = {"val_acc": "max", "model_bytes_compressed": "min"}
MEASURED = ("val_acc", "test_acc", "test_acc_low", "test_acc_high", "model_bytes_compressed", "latency_ms_b1")


def _row(trial_id: str, model: str, measured: tuple[float, ...], **config) -> dict:
    """A pareto.csv row: trial and status, the config columns (fixed and searched), the metrics."""
    return {"trial_id": trial_id, "status": "completed", "model": model, "lr": 0.005, "epochs": 12,
            "batch_size": 64, **config, **dict(zip(MEASURED, measured, strict=True)), "val_acc_fp32": measured[0],
            "model_bytes": 4 * measured[4], "params": 3_371_082, "sparsity": config.get("final_sparsity", 0.0),
            "test_n": 357, "latency_ms_b32": 9.1, "export_path": f"/x/trial_{trial_id}/checkpoint_000011/export"}


QUICKSTART = {"weights": "pretrained", "dataset": "digits", "image_size": 32, "optimizer": "adamw",
              "cpus_per_trial": 1, "use_pruning": True, "pruning_scope": "global"}
QUICKSTART_FRONT = pd.DataFrame([
    _row("1a2b3c4d", "efficientnet_lite1", (0.9721, 0.9748, 0.953, 0.987, 820_331, 0.61), **QUICKSTART,
         use_weight_decay=True, weight_decay=3e-4, use_l2sp=True, l2sp_alpha=1e-2, l2sp_beta=1e-4,
         use_label_smoothing=True, label_smoothing=0.1534, use_kd=True, kd_alpha=0.7, kd_temperature=3.71,
         final_sparsity=0.9123, pruning_end=0.6, pruning_frequency=10, use_quantization=True,
         quant_calibration_batches=4, quant_calibration_method="percentile"),
    _row("5e6f7a8b", "efficientnet_lite0", (0.9916, 0.9888, 0.972, 0.996, 1_982_004, 0.72), **QUICKSTART,
         use_weight_decay=False, use_l2sp=False, use_label_smoothing=False, use_kd=False, final_sparsity=0.6,
         pruning_end=0.5, pruning_frequency=10, use_quantization=True, quant_calibration_batches=4,
         quant_calibration_method="minmax"),
])
TEACHER = {"model": "efficientnet_lite2", "val_acc": 0.9777, "test_acc": 0.9888, "test_acc_low": 0.972,
           "test_acc_high": 0.996, "model_bytes_compressed": 17_800_000, "latency_ms_b1": 1.9,
           "baselines": {
               "teacher_fp32": {"baseline": "teacher_fp32", "val_acc": 0.9777, "test_acc": 0.9888,
                                "test_acc_low": 0.9716, "test_acc_high": 0.9957,
                                "model_bytes_compressed": 17_800_000, "latency_ms_b1": 1.9},
               "teacher_int8": {"baseline": "teacher_int8", "val_acc": 0.9777, "test_acc": 0.9804,
                                "test_acc_low": 0.960, "test_acc_high": 0.991,
                                "model_bytes_compressed": 4_160_000, "latency_ms_b1": 0.95}}}

FASHION = {"weights": "auto", "dataset": "fashion_mnist", "image_size": 28, "use_quantization": True,
           "amp": "auto", "data_fraction": 1.0, "stage": 2}
FASHION_FRONT = pd.DataFrame([
    _row("687e6d3c", "compact_cnn_16", (0.9241, 0.9171, 0.9115, 0.9223, 31_687, 0.166), **FASHION, augment=True,
         use_weight_decay=True, weight_decay=0.0058, use_label_smoothing=True, label_smoothing=0.0525,
         use_kd=True, kd_alpha=0.6, kd_temperature=7.25, use_pruning=True, final_sparsity=0.7766),
    _row("1f508aef", "compact_cnn_24", (0.9363, 0.9337, 0.9287, 0.9384, 121_633, 0.219), **FASHION, augment=False,
         use_weight_decay=False, use_label_smoothing=True, label_smoothing=0.15, use_kd=False, use_pruning=False),
    _row("0fb841cb", "compact_cnn_32", (0.9371, math.nan, math.nan, math.nan, 241_002, 0.31), **FASHION,
         augment=True, use_weight_decay=True, use_label_smoothing=False, use_kd=True, kd_temperature=4.0,
         use_pruning=True, final_sparsity=0.3, quant_aware_fraction=0.2),
])


def test_recipe_words_name_each_active_family_briefly():
    assert summary.recipe_words({"use_kd": True, "kd_temperature": 4.0, "use_pruning": True,
                                 "final_sparsity": 0.75, "use_quantization": True}) == "KD T=4 · 75 % sparse · int8"
    assert summary.recipe_words({"use_label_smoothing": True, "label_smoothing": 0.15,
                                 "use_quantization": True}) == "LS 0.15 · int8"
    assert summary.recipe_words({"use_weight_decay": "True", "use_channel_pruning": True,
                                 "channel_pruning_ratio": 0.5, "use_quantization": True,
                                 "quant_aware_fraction": 0.25}) == "wd · ch-pruned 50 % · QAT"
    # a column missing or empty (NaN in a CSV) takes TrialConfig's default: off
    assert summary.recipe_words({"use_kd": math.nan, "kd_temperature": math.nan}) == "fp32"


@pytest.mark.parametrize("front", [QUICKSTART_FRONT, FASHION_FRONT], ids=["quickstart", "fashion_mnist"])
def test_closing_summary_fits_100_columns(front, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    notes = ["6 trials (6 completed) in 3.9 min",
             "2 front point(s) dominate the int8 teacher (val_acc=0.9777, model_bytes_compressed=4.16e+06); "
             "best: val_acc +1.39 pts, model_bytes_compressed 19.7% of it"]
    text = summary.closing_summary(front, TEACHER, OBJECTIVES, str(tmp_path / "ray_results" / "quickstart-20261207-"
                                                                    "221530"), notes=notes)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 100, "\n" + text
    header = next(line for line in lines if line.startswith("model"))
    for column in ("recipe", "val", "test [95 %]", "gzip", "latency"):
        assert column in header
    body = "\n".join(lines)
    assert "dense teacher · fp32" in body and "dense teacher · int8 PTQ" in body
    for _, row in front.iterrows():  # every point: its model, val_acc, size and latency, in pareto.csv's order
        assert row["model"] in body and f"{row['val_acc']:.4f}" in body
    models = [m for line in lines for m in front["model"] if line.startswith(m)]
    assert models == list(front["model"])
    assert "ray_results/quickstart-20261207-221530/:" in body  # relative to the current directory
    assert "pareto.csv (the front, every column)" in body and "pareto.png" in body
    assert "python -m raytune_ft.analyze ray_results/quickstart-20261207-221530" in body


def test_closing_summary_shows_interval_size_latency_and_wraps_a_long_recipe():
    text = summary.closing_summary(QUICKSTART_FRONT, TEACHER, OBJECTIVES, "s3://bucket/runs/q")
    assert "0.9888 [0.972, 0.996]" in text and "1.98 MB" in text and "820 KB" in text and "0.72 ms" in text
    # the long recipe, wrapped between its words, every word kept
    words = "wd · L2-SP · LS 0.15 · KD T=3.7 · 91 % sparse · int8".split(" · ")
    recipe_lines = [line for line in text.splitlines() if any(w in line for w in words[1:])]
    assert len(recipe_lines) >= 2 and all(any(w in "".join(recipe_lines) for w in [word]) for word in words)
    assert "in s3://bucket/runs/q/:" in text


def test_a_point_without_test_accuracy_and_an_empty_front():
    text = summary.closing_summary(FASHION_FRONT, TEACHER, OBJECTIVES, "/tmp/x")
    line = next(ln for ln in text.splitlines() if ln.startswith("compact_cnn_32"))
    assert "–" in line and "QAT" in text  # no test_acc: a dash, not "nan"
    assert "nan" not in text
    empty = summary.closing_summary(FASHION_FRONT.iloc[:0], {"model": "efficientnet_lite0", "val_acc": 0.9},
                                    OBJECTIVES, "/tmp/x")
    assert "the front is empty" in empty and "dense teacher" in empty
