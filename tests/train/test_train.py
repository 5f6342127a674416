import math

import pytest
import torch

from raytune_ft import train
from raytune_ft.config import TrialConfig
from raytune_ft.families import pruning
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


def test_bf16_autocast_on_cpu_trains(tiny_splits):
    """amp on CPU is bf16 autocast (fp16 + GradScaler is the CUDA path without bf16)."""
    cfg = TrialConfig(epochs=3, batch_size=16, lr=0.02, amp=True)
    assert train.precision(cfg, torch.device("cpu")) == (torch.bfloat16, None)
    assert train.precision(TrialConfig(), torch.device("cpu")) == (None, None)
    _, reports = _fit(cfg, tiny_splits)
    assert reports[-1]["val_acc"] >= 0.9 and math.isfinite(reports[-1]["train_loss"])


def test_measured_dtype_keeps_the_model_untouched_and_follows_the_margin(tiny_splits):
    """amp: auto's probe: bf16 only when it is `margin` times faster; weights and BN stats unchanged."""
    torch.manual_seed(0)
    model = TinyClassifier()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = tiny_splits.x_train[:16]
    assert train.measured_dtype(model, x, train=True, margin=float("inf")) is None
    assert train.measured_dtype(model, x, train=True, margin=0.0) is torch.bfloat16
    assert train.measured_dtype(model, x, train=False, margin=0.0) is torch.bfloat16
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_amp_auto_trains_reports_its_choice_and_keeps_it_on_resume(tiny_splits):
    """amp: "auto" on a CPU picks fp32 or bf16 by timing (reported as `precision` every epoch); the
    training state carries the choice, so a resumed run does not re-measure into another one."""
    cfg = TrialConfig(epochs=2, batch_size=16, lr=0.02, amp="auto")
    assert train.precision(cfg, torch.device("cpu")) == (None, None)  # start_run measures
    states = []
    torch.manual_seed(0)
    model = TinyClassifier()
    reports = []
    train.fit(cfg, model, tiny_splits, head_names=TINY_HEAD,
              report=lambda metrics, m, state: (reports.append(dict(metrics)), states.append(state())))
    assert {r["precision"] for r in reports} <= {"fp32", "bf16"} and len({r["precision"] for r in reports}) == 1
    assert states[0]["precision"] == reports[0]["precision"]
    other = "fp32" if reports[0]["precision"] == "bf16" else "bf16"
    resumed = []
    train.fit(cfg, TinyClassifier(), tiny_splits, head_names=TINY_HEAD, resume={**states[0], "precision": other},
              report=lambda metrics, m, state: resumed.append(dict(metrics)))
    assert [r["precision"] for r in resumed] == [other]
    with pytest.raises(ValueError, match="amp must be true, false or \"auto\", got 'bf16'"):
        TrialConfig(amp="bf16")


def test_an_iterator_of_batches_trains_like_the_in_memory_tensors(tiny_splits):
    """The hook for streamed data (Ray Data's iter_torch_batches): dicts with image/label/index
    columns, exactly steps_per_epoch per epoch; KD looks the teacher's logits up by `index`."""
    # BN recalibration off: a stream recalibrates on its first batches, the tensors on the first samples
    cfg = TrialConfig(epochs=2, batch_size=16, lr=0.02, channels_last=False, use_kd=True, bn_recalibration_batches=0)
    teacher = torch.nn.functional.one_hot(tiny_splits.y_train, 3).float() * 5
    reference = train.TensorBatches(tiny_splits.x_train, tiny_splits.y_train, batch_size=16, seed=0)
    recorded = {e: [{"image": x, "label": y, "index": i} for x, y, i in reference.epoch(e)] for e in range(2)}
    source = train.IterableBatches(lambda epoch: iter(recorded[epoch]), steps_per_epoch=reference.steps_per_epoch)
    torch.manual_seed(0)
    streamed = TinyClassifier()
    reports = []
    train.fit(cfg, streamed, tiny_splits, head_names=TINY_HEAD, teacher_logits=teacher, batches=source,
              report=lambda metrics, m, _s: reports.append(dict(metrics)))
    model, expected = _fit(cfg, tiny_splits, teacher_logits=teacher)
    assert reports[-1]["kd_loss"] == expected[-1]["kd_loss"]  # the same batches and teacher targets
    assert all(torch.equal(a, b) for a, b in zip(streamed.state_dict().values(), model.state_dict().values(),
                                                 strict=True))
    short = train.IterableBatches(lambda epoch: iter(recorded[0][:2]), steps_per_epoch=reference.steps_per_epoch)
    with pytest.raises(ValueError, match="gave 2 batches, expected steps_per_epoch=6"):
        train.fit(cfg, TinyClassifier(), tiny_splits, head_names=TINY_HEAD, teacher_logits=teacher, batches=short,
                  report=lambda metrics, m, _s: None)


def test_online_teacher_and_augmentation_hooks(tiny_splits):
    """KD from a teacher model run on the same augmented batch; `augment(images, generator)`
    gets each batch and a seeded generator (the data helper's augmentations plug in here)."""
    calls = []

    def flip(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        calls.append(len(x))
        return torch.where(torch.rand(len(x), 1, 1, 1, generator=g) < 0.5, x.flip(-1), x)

    source = train.TensorBatches(tiny_splits.x_train, tiny_splits.y_train, batch_size=16, seed=0, augment=flip)
    torch.manual_seed(1)
    teacher = TinyClassifier()
    cfg = TrialConfig(epochs=2, batch_size=16, lr=0.02, channels_last=False, use_kd=True, kd_alpha=0.5)
    reports = []
    train.fit(cfg, TinyClassifier(), tiny_splits, head_names=TINY_HEAD, teacher=teacher, batches=source,
              report=lambda metrics, m, _s: reports.append(dict(metrics)))
    assert calls == [16] * 12 and reports[-1]["kd_loss"] > 0
    assert not teacher.training  # the teacher is only evaluated
