"""The training objective of a step: the task loss and every active family's named loss terms,
and `loss`, their weighted sum — the only term the loop backpropagates; it logs every term.

Families add terms and weights (distillation.py: kd_loss and Hinton's weights; regularization.py:
l2sp_loss, and label smoothing as the task criterion); the loop itself knows none of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from raytune_ft.families.base import Run


def objective(run: Run) -> dict[str, torch.Tensor]:
    """task_loss = run.criterion(logits, y), then each family's terms in registry order, then
    loss = Σ_name w_name·term_name with the families' `loss_weights` (default 1), e.g.
    (1 − kd_alpha)·task_loss + kd_alpha·kd_loss + l2sp_loss."""
    terms = {"task_loss": run.criterion(run.logits, run.y)}
    weights: dict[str, float] = {}
    for family in run.families:
        terms.update(family.loss_terms(run))
        weights.update(family.loss_weights)
    loss = None
    for name, term in terms.items():
        part = weights[name] * term if name in weights else term
        loss = part if loss is None else loss + part
    return {**terms, "loss": loss}
