"""The fixed moments of `train.fit` at which a technique family acts: the `Family` base class.

A family (regularization, distillation, magnitude pruning, channel pruning) subclasses `Family`,
names the `TrialConfig` fields that switch it on and shape it, and overrides only the moments it
needs. Every moment gets `run` (`train.Run`): fit's inputs, the network, the optimizer, the step,
this step's learning rate and batch. Families are registered by name in `families.py`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch

from raytune_ft.config import TrialConfig

if TYPE_CHECKING:
    from raytune_ft.train import Run


class Family:
    """One technique family of a trial's recipe, active when one of its `switches` is true.

    The loop calls every active family, in registry order, at these moments of each step:

        before_forward   the step's batch is drawn, nothing computed (masks to update?)
        loss_terms       the student's logits exist: named terms added to `loss`
                         (times `loss_weights[name]`, default 1); the loop logs every term
        before_step      gradients exist, the optimizer has not stepped; return True after
                         changing the network's structure (parameters replaced), then the loop
                         rebuilds the optimizer and DDP wrapper and calls `structure_changed`
        after_step       the optimizer has stepped

    and `start` once before the first step, `epoch_end` after each epoch's evaluation (metrics).
    A family that acts only in the last part of training keeps a pure schedule of the step and
    acts from `before_forward`; one that acts only after training (e.g. on the exported model)
    implements no moment of the loop — the export glue builds the trial's families and calls it.
    Resume: `state_dict` (plain tensors, numbers and dicts, read with `weights_only=True`)
    joins `train.training_state` under the family's own keys and comes back in `load_state_dict`.
    """

    name: ClassVar[str]
    switches: ClassVar[tuple[str, ...]]  # bool TrialConfig fields: the family is active when any is true
    fields: ClassVar[tuple[str, ...]]  # every TrialConfig field the family reads (switches included)

    def __init__(self, cfg: TrialConfig) -> None:
        self.cfg = cfg
        self.loss_weights: dict[str, float] = {}  # multiplier of a named term in `loss` (default 1)

    @classmethod
    def active(cls, cfg: TrialConfig) -> bool:
        return any(getattr(cfg, switch) for switch in cls.switches)

    def start(self, run: Run) -> None:
        """Once, with the network on its device and before the optimizer is built or a resumed
        state loaded: take what refers to the network (anchors, schedules, the pruning graph)."""

    def before_forward(self, run: Run) -> None:
        """Step `run.step` begins; `run.lr` is its learning rate."""

    def loss_terms(self, run: Run) -> dict[str, torch.Tensor]:
        """Named loss terms of this batch (`run.x`, `run.y`, `run.idx`, float32 `run.logits`)."""
        return {}

    def before_step(self, run: Run) -> bool:
        """After backward, before the optimizer step. True: the network's structure changed."""
        return False

    def structure_changed(self, run: Run) -> None:
        """A family replaced parameters of `run.model`: drop references to the old ones."""

    def after_step(self, run: Run) -> None:
        """The optimizer has stepped (`run.step` is still this step's index)."""

    def epoch_end(self, run: Run) -> dict[str, float]:
        """Metrics of this family after the epoch's evaluation, reported with the loop's."""
        return {}

    def shadows(self) -> list[dict[str, torch.Tensor]]:
        """Tensors shaped like parameters, by parameter name (L2-SP's anchors): a family that
        removes channels removes the same ones from these, so they stay channel-for-channel."""
        return []

    def state_dict(self) -> dict[str, Any]:
        """This family's share of the resume state: what the weights do not already hold."""
        return {}

    def load_state_dict(self, run: Run, state: dict[str, Any]) -> None:
        """Continue from `state_dict()` of an earlier run (after `start`, with its weights loaded)."""
