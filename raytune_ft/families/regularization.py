"""The regularization-for-fine-tuning family: decoupled weight decay, L2-SP and label smoothing,
each switchable off (regularizers can hurt on shifted targets: the search must be able to say no).

- Decoupled weight decay (Loshchilov & Hutter 2019, AdamW-style, for SGD too): before every
  optimizer step w ← w − lr·λ·w on weights with ndim ≥ 2 (no decay on norms and biases).
- L2-SP (Li, Grandvalet & Davoine, ICML 2018): the loss term `l2sp_loss`.
- Label smoothing (Szegedy et al. 2016): the task loss becomes CE against (1 − ε)·y + ε/K.
Dropout (`cfg.dropout`) belongs to the network: models.build_model puts it before the head.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from raytune_ft.config import TrialConfig
from raytune_ft.families.base import Family

if TYPE_CHECKING:
    from raytune_ft.families.base import Run


class L2SP:
    """L2-SP (Li, Grandvalet & Davoine, ICML 2018) toward the pretrained starting point:

        alpha · Σ_backbone ‖w − w⁰‖²  +  beta · Σ_head ‖w‖²

    `anchors` holds a detached copy w⁰ of every backbone parameter, by name, taken when this
    object is built (before training). Structured pruning shrinks the anchors together with
    the parameters (channel_pruning.ChannelPruner), so the pull stays channel-for-channel.
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


class Regularization(Family):
    """Weight decay at `before_step` (after any structural change of that step, with the step's
    learning rate), `l2sp_loss` from the weights the network had at `start`, label smoothing
    as the task criterion. Resume keeps L2-SP's anchors (pretrained weights, shrunk with any
    channels pruned so far): a resumed network no longer holds them."""

    name = "regularization"
    switches = ("use_weight_decay", "use_l2sp", "use_label_smoothing")
    fields = ("use_weight_decay", "weight_decay", "use_l2sp", "l2sp_alpha", "l2sp_beta",
              "use_label_smoothing", "label_smoothing")

    def __init__(self, cfg: TrialConfig) -> None:
        super().__init__(cfg)
        self.weight_decay = cfg.weight_decay if cfg.use_weight_decay else 0.0
        self.criterion = (functools.partial(F.cross_entropy, label_smoothing=cfg.label_smoothing)
                          if cfg.use_label_smoothing else None)
        self.l2sp: L2SP | None = None

    def start(self, run: Run) -> None:
        if self.cfg.use_l2sp:
            self.l2sp = L2SP(run.model, run.head_names, self.cfg.l2sp_alpha, self.cfg.l2sp_beta)
        if self.criterion is not None:
            run.criterion = self.criterion
        self.structure_changed(run)

    def structure_changed(self, run: Run) -> None:
        self.decayed = [p for p in run.model.parameters() if p.ndim >= 2]  # no decay on norms and biases

    def loss_terms(self, run: Run) -> dict[str, torch.Tensor]:
        return {"l2sp_loss": self.l2sp()} if self.l2sp is not None else {}

    def before_step(self, run: Run) -> bool:
        if self.weight_decay:
            with torch.no_grad():
                torch._foreach_mul_(self.decayed, 1.0 - run.lr * self.weight_decay)
        return False

    def shadows(self) -> list[dict[str, torch.Tensor]]:
        return [self.l2sp.anchors] if self.l2sp is not None else []

    def state_dict(self) -> dict[str, Any]:
        return {"l2sp_anchors": dict(self.l2sp.anchors) if self.l2sp is not None else None}

    def load_state_dict(self, run: Run, state: dict[str, Any]) -> None:
        if self.l2sp is not None:
            # checkpoints load onto the CPU: the anchors go back to the network's device
            self.l2sp.anchors = {name: a.to(run.device) for name, a in state["l2sp_anchors"].items()}
