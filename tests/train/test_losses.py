import torch

from raytune_ft import families, train
from raytune_ft.config import TrialConfig
from raytune_ft.families import distillation, regularization
from raytune_ft.train import losses
from tests.conftest import TINY_HEAD, TinyClassifier


def _run(logits, targets, teacher_logits=None, **settings) -> train.Run:
    """A train.Run at the moment the loop computes the objective, with the families `settings` switch on."""
    cfg = TrialConfig(**settings)
    run = train.Run(cfg, TinyClassifier(), TINY_HEAD, train.TensorBatches(torch.zeros(4, 3, 8, 8), torch.zeros(4),
                    batch_size=2, seed=0), train.Dist(), torch.contiguous_format, None, None, total_steps=1,
                    teacher_logits=teacher_logits, families=families.build(cfg))
    for family in run.families:
        family.start(run)
    run.logits, run.y, run.idx = logits, targets, torch.arange(len(targets))
    return run


def test_kd_term_is_zero_when_student_equals_teacher():
    logits = torch.randn(16, 10)
    assert float(distillation.distillation_loss(logits, logits.clone(), temperature=4.0)) < 1e-6


def test_kd_term_is_positive_and_scaled_by_t_squared():
    s, t = torch.randn(16, 10), torch.randn(16, 10)
    kd1 = distillation.distillation_loss(s, t, 1.0)
    assert kd1 > 0
    # T^2 * KL at large T ~ (T^2)(1/T^2) * const: the scale stays comparable, unlike plain KL
    kd8 = distillation.distillation_loss(s, t, 8.0)
    plain_kl8 = kd8 / 64
    assert plain_kl8 < kd1 / 10 < kd8


def test_l2sp_is_zero_at_pretrained_weights_and_grows_when_moved():
    torch.manual_seed(0)
    model = TinyClassifier()
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.zero_()
    reg = regularization.L2SP(model, TINY_HEAD, alpha=0.1, beta=0.01)
    assert float(reg().detach()) == 0.0
    with torch.no_grad():
        model.conv.weight.add_(1.0)  # backbone: alpha * ||w - w0||^2
    assert torch.isclose(reg(), torch.tensor(0.1 * model.conv.weight.numel()))
    with torch.no_grad():
        model.fc.bias.fill_(2.0)  # head: beta * ||w||^2
    expected = 0.1 * model.conv.weight.numel() + 0.01 * 4.0 * model.fc.bias.numel()
    assert torch.isclose(reg(), torch.tensor(expected))


def test_objective_weights_task_and_kd_terms_and_returns_them_by_name():
    torch.manual_seed(0)
    s, t, y = torch.randn(8, 5), torch.randn(8, 5), torch.randint(0, 5, (8,))
    terms = losses.objective(_run(s, y, teacher_logits=t, use_kd=True, kd_alpha=0.3, kd_temperature=2.0))
    assert set(terms) == {"loss", "task_loss", "kd_loss"}
    assert torch.isclose(terms["loss"], 0.7 * terms["task_loss"] + 0.3 * terms["kd_loss"])
    plain = losses.objective(_run(s, y))
    assert set(plain) == {"loss", "task_loss"} and torch.equal(plain["loss"], plain["task_loss"])


def test_label_smoothing_changes_the_task_loss():
    s, y = torch.randn(8, 5), torch.randint(0, 5, (8,))
    smoothed = _run(s, y, use_label_smoothing=True, label_smoothing=0.2)
    assert not torch.isclose(losses.objective(_run(s, y))["loss"], losses.objective(smoothed)["loss"])
