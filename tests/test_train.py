import math

import pytest
import torch

from raytune_ft import pruning, train
from raytune_ft.config import TrialConfig
from tests.conftest import TINY_HEAD, TinyClassifier


def _fit(cfg, splits, teacher_logits=None, model=None):
    torch.manual_seed(0)
    model = model or TinyClassifier()
    reports = []
    train.fit(cfg, model, splits, head_names=TINY_HEAD, teacher_logits=teacher_logits,
              report=lambda metrics, m, state: reports.append(dict(metrics)))
    return model, reports


def test_lr_schedule_is_a_pure_function():
    assert train.lr_at(0, base_lr=1.0, total_steps=100, schedule="cosine") == 1.0
    assert train.lr_at(100, base_lr=1.0, total_steps=100, schedule="cosine") == pytest.approx(0.0)
    assert train.lr_at(4, base_lr=1.0, total_steps=100, schedule="cosine", warmup_steps=10) == pytest.approx(0.5)
    assert train.lr_at(50, base_lr=0.1, total_steps=100, schedule="constant") == 0.1


def test_fit_learns_and_reports_every_epoch(tiny_splits):
    cfg = TrialConfig(epochs=4, batch_size=16, lr=0.02, channels_last=False)
    _, reports = _fit(cfg, tiny_splits)
    assert [r["epoch"] for r in reports] == [1, 2, 3, 4]
    for key in ("val_acc", "val_loss", "train_loss", "task_loss", "params", "nonzero_params", "sparsity", "lr"):
        assert key in reports[-1]
    assert reports[-1]["val_acc"] >= 0.9


def test_pruning_reaches_exact_final_sparsity_and_pruned_weights_stay_zero(tiny_splits):
    cfg = TrialConfig(epochs=3, batch_size=16, lr=0.02, use_pruning=True, final_sparsity=0.75,
                      pruning_start=0.0, pruning_end=0.5, pruning_frequency=2, pruning_scope="layer",
                      use_weight_decay=True, weight_decay=0.01, channels_last=False)
    model, reports = _fit(cfg, tiny_splits)
    prunable = pruning.prunable_parameters(model, TINY_HEAD)
    for name, w in prunable.items():
        assert int((w == 0).sum()) == round(0.75 * w.numel()), name
    assert reports[-1]["sparsity"] == pytest.approx(0.75, abs=1e-3)
    assert reports[1]["sparsity"] == pytest.approx(reports[-1]["sparsity"])  # held after the window


def test_kd_and_l2sp_terms_are_reported(tiny_splits):
    teacher = torch.nn.functional.one_hot(tiny_splits.y_train, 3).float() * 5
    cfg = TrialConfig(epochs=2, batch_size=16, lr=0.02, use_kd=True, kd_alpha=0.5, kd_temperature=2.0,
                      use_l2sp=True, l2sp_alpha=0.01, use_label_smoothing=True, channels_last=False)
    _, reports = _fit(cfg, tiny_splits, teacher_logits=teacher)
    assert reports[-1]["kd_loss"] > 0 and reports[-1]["l2sp_loss"] > 0
    assert reports[-1]["val_acc"] >= 0.9


def test_kd_without_teacher_logits_is_refused(tiny_splits):
    with pytest.raises(ValueError, match="no teacher logits"):
        _fit(TrialConfig(epochs=1, use_kd=True), tiny_splits)


def test_non_finite_loss_fails_with_a_clear_reason(tiny_splits):
    cfg = TrialConfig(epochs=2, batch_size=16, lr=1e30, optimizer="sgd", channels_last=False)
    with pytest.raises(FloatingPointError, match=r"loss became (nan|inf) at epoch"):
        _fit(cfg, tiny_splits)


def test_fit_is_deterministic(tiny_splits):
    cfg = TrialConfig(epochs=2, batch_size=16, lr=0.02, channels_last=False)
    a, ra = _fit(cfg, tiny_splits)
    b, rb = _fit(cfg, tiny_splits)
    assert ra[-1]["val_loss"] == rb[-1]["val_loss"]
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert not math.isnan(ra[-1]["train_loss"])
