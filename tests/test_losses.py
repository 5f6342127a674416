import torch

from raytune_ft import losses
from tests.conftest import TINY_HEAD, TinyClassifier


def test_kd_term_is_zero_when_student_equals_teacher():
    logits = torch.randn(16, 10)
    assert float(losses.distillation_loss(logits, logits.clone(), temperature=4.0)) < 1e-6


def test_kd_term_is_positive_and_scaled_by_t_squared():
    s, t = torch.randn(16, 10), torch.randn(16, 10)
    kd1 = losses.distillation_loss(s, t, 1.0)
    assert kd1 > 0
    # T^2 * KL at large T ~ (T^2)(1/T^2) * const: the scale stays comparable, unlike plain KL
    kd8 = losses.distillation_loss(s, t, 8.0)
    plain_kl8 = kd8 / 64
    assert plain_kl8 < kd1 / 10 < kd8


def test_l2sp_is_zero_at_pretrained_weights_and_grows_when_moved():
    torch.manual_seed(0)
    model = TinyClassifier()
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.zero_()
    reg = losses.L2SP(model, TINY_HEAD, alpha=0.1, beta=0.01)
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
    terms = losses.objective(s, y, teacher_logits=t, kd_alpha=0.3, kd_temperature=2.0)
    assert set(terms) == {"loss", "task_loss", "kd_loss"}
    assert torch.isclose(terms["loss"], 0.7 * terms["task_loss"] + 0.3 * terms["kd_loss"])
    plain = losses.objective(s, y)
    assert set(plain) == {"loss", "task_loss"} and torch.equal(plain["loss"], plain["task_loss"])


def test_label_smoothing_changes_the_task_loss():
    s, y = torch.randn(8, 5), torch.randint(0, 5, (8,))
    assert not torch.isclose(losses.objective(s, y)["loss"], losses.objective(s, y, label_smoothing=0.2)["loss"])
