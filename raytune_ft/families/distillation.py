"""The knowledge distillation family (Hinton, Vinyals & Dean 2015): the student also learns the
teacher's softened outputs,

    loss = (1 − kd_alpha)·task_loss + kd_alpha·kd_loss,  kd_loss = T²·KL(softmax(t/T) ‖ softmax(s/T)).

The teacher's logits come precomputed per training sample (indexed by the batch's sample
indices) or from a teacher network run on the same, augmented batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from raytune_ft.config import TrialConfig
from raytune_ft.families.base import Family, autocast

if TYPE_CHECKING:
    from raytune_ft.families.base import Run


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al. 2015: T² · KL(softmax(t/T) ‖ softmax(s/T)), averaged over the batch.

    The T² factor keeps the gradient scale independent of T.
    """
    t = temperature
    log_p_student = F.log_softmax(student_logits / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits / t, dim=-1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * t * t


class Distillation(Family):
    """`kd_loss` on every batch, with the weights of Hinton's formula on it and on `task_loss`."""

    name = "distillation"
    switches = ("use_kd",)
    fields = ("use_kd", "kd_alpha", "kd_temperature")

    def __init__(self, cfg: TrialConfig) -> None:
        super().__init__(cfg)
        self.loss_weights = {"task_loss": 1.0 - cfg.kd_alpha, "kd_loss": cfg.kd_alpha}

    def start(self, run: Run) -> None:
        if run.teacher_logits is None and run.teacher is None:
            raise ValueError("use_kd is true but no teacher logits (or teacher model) were given")
        if run.teacher is not None:
            run.teacher.to(device=run.device, memory_format=run.memory_format).eval()
        if run.teacher_logits is not None:
            run.teacher_logits = run.teacher_logits.to(run.device)

    def loss_terms(self, run: Run) -> dict[str, torch.Tensor]:
        return {"kd_loss": distillation_loss(run.logits, self._teacher_outputs(run), self.cfg.kd_temperature)}

    @staticmethod
    def _teacher_outputs(run: Run) -> torch.Tensor:
        """The teacher's logits for this batch: precomputed ones by sample index, else a forward pass."""
        if run.teacher_logits is not None:
            if run.idx is None:
                raise ValueError("precomputed teacher logits need the batch's sample indices (an `index` column)")
            return run.teacher_logits[run.idx.to(run.teacher_logits.device)]
        with torch.no_grad(), autocast(run.device, run.teacher_dtype):
            return run.teacher(run.x).float()
