"""The training objective of a trial: task loss, distillation and fine-tuning regularizers.

`objective()` returns a dict of named terms; the loop backpropagates only `loss` and logs
every term. Weight decay is not here: it is decoupled and applied by the optimizer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al. 2015: T² · KL(softmax(t/T) ‖ softmax(s/T)), averaged over the batch.

    The T² factor keeps the gradient scale independent of T.
    """
    t = temperature
    log_p_student = F.log_softmax(student_logits / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits / t, dim=-1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * t * t


class L2SP:
    """L2-SP (Li, Grandvalet & Davoine, ICML 2018) toward the pretrained starting point:

        alpha · Σ_backbone ‖w − w⁰‖²  +  beta · Σ_head ‖w‖²

    `anchors` holds a detached copy w⁰ of every backbone parameter, by name, taken when this
    object is built (before training). Structured pruning shrinks the anchors together with
    the parameters (pruning.ChannelPruner), so the pull stays channel-for-channel.
    """

    def __init__(self, model: nn.Module, head_names: set[str], alpha: float, beta: float) -> None:
        self.model, self.head_names = model, head_names
        self.alpha, self.beta = alpha, beta
        self.anchors = {n: p.detach().clone() for n, p in model.named_parameters() if n not in head_names}

    def __call__(self) -> torch.Tensor:
        to_start = torch.zeros(())
        head = torch.zeros(())
        for name, p in self.model.named_parameters():
            if name in self.head_names:
                head = head + p.pow(2).sum()
            else:
                to_start = to_start + (p - self.anchors[name]).pow(2).sum()
        return self.alpha * to_start + self.beta * head


def objective(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    label_smoothing: float = 0.0,
    teacher_logits: torch.Tensor | None = None,
    kd_alpha: float = 0.0,
    kd_temperature: float = 1.0,
    l2sp: L2SP | None = None,
) -> dict[str, torch.Tensor]:
    """loss = (1 − kd_alpha)·CE(y, s) + kd_alpha·T²·KL(t_T ‖ s_T) + L2-SP.

    Without a teacher the KD term is absent and the task loss has weight 1.
    """
    task = F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
    terms = {"task_loss": task}
    loss = task
    if teacher_logits is not None:
        kd = distillation_loss(logits, teacher_logits, kd_temperature)
        terms["kd_loss"] = kd
        loss = (1.0 - kd_alpha) * task + kd_alpha * kd
    if l2sp is not None:
        reg = l2sp()
        terms["l2sp_loss"] = reg
        loss = loss + reg
    terms["loss"] = loss
    return terms
