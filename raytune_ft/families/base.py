"""The fixed moments of `train.fit` at which a technique family acts: the `Family` base class.

A family (regularization, distillation, magnitude pruning, channel pruning, quantization)
subclasses `Family`, names the `TrialConfig` fields that switch it on and shape it, and overrides
only the moments it needs. Every moment gets `run` (`Run`, below): fit's inputs, the network, the
optimizer, the step, this step's learning rate and batch. Families are registered by name in
`families/__init__.py` (`FAMILIES`). Also here, below the loop that uses them: `Dist` (where a
rank runs) and `BatchSource` (what the loop draws batches from; train/batches.py implements it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from raytune_ft.config import TrialConfig


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
    acts from `before_forward`. Two moments belong to export, after training: `before_export`
    (the float network is about to be exported: undo what only training needs) and `at_export`
    (transform the exported ONNX file; return the file that ships instead, e.g. int8).
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

    def before_export(self, model: nn.Module) -> None:
        """Training is over and `model` (the float network) is about to be exported."""

    def at_export(self, onnx_path: Path, x_train: torch.Tensor) -> Path | None:
        """The fp32 ONNX file was written: return the file that ships instead (made from it, with
        training images `x_train` where calibration needs them), or None to ship it unchanged."""
        return None

    def shadows(self) -> list[dict[str, torch.Tensor]]:
        """Tensors shaped like parameters, by parameter name (L2-SP's anchors): a family that
        removes channels removes the same ones from these, so they stay channel-for-channel."""
        return []

    def state_dict(self) -> dict[str, Any]:
        """This family's share of the resume state: what the weights do not already hold."""
        return {}

    def load_state_dict(self, run: Run, state: dict[str, Any]) -> None:
        """Continue from `state_dict()` of an earlier run (after `start`, with its weights loaded)."""


Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]  # images, labels, sample indices


@dataclass(frozen=True)
class Dist:
    """This process's place in a data-parallel group; the default is a single CPU process.

    Under Ray Train: `Dist(ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device())`
    with the process group already initialised (gloo on CPU, NCCL on GPU).
    """

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of `values` over all ranks (all_reduce); unchanged for one process."""
        if self.world_size == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return t.tolist()


class BatchSource(Protocol):
    """Where fit() takes training batches from. Every rank must yield `steps_per_epoch` batches
    per epoch (DDP all-reduces once per step); a batch is this rank's share of a global batch."""

    steps_per_epoch: int

    def epoch(self, epoch: int) -> Iterator[Batch]: ...

    def example(self) -> torch.Tensor:
        """Two input images (for tracing the network's graph before channel pruning)."""
        ...

    def calibration(self, batches: int) -> tuple[Iterator[torch.Tensor], bool]:
        """Up to `batches` input batches for BatchNorm recalibration, and whether they are the
        same on every rank (then no averaging across ranks is needed)."""
        ...

    def state(self) -> dict[str, torch.Tensor]:
        """What `set_state` needs to continue with the next epoch's batches (resume)."""
        ...

    def set_state(self, state: dict[str, torch.Tensor]) -> None: ...


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


@dataclass(eq=False)
class Run:
    """What fit() shares with the technique families (`Family`) at every moment: its inputs,
    the network, the optimizer and where training stands. Families read it; at `start` one may
    replace `criterion` (the task loss), and one whose `before_step` changed `model`'s structure
    returns True so that the loop rebuilds `optimizer` and `trained` and tells every family."""

    cfg: TrialConfig
    model: nn.Module  # the network itself (under DDP the wrapper's module): families read and change it
    head_names: set[str]  # parameter names of the new classifier head
    source: BatchSource
    dist: Dist
    memory_format: torch.memory_format
    dtype: torch.dtype | None  # autocast dtype; None: fp32
    scaler: torch.amp.GradScaler | None  # fp16 loss scaling
    total_steps: int
    teacher_logits: torch.Tensor | None = None  # precomputed, by training sample index
    teacher: nn.Module | None = None
    teacher_dtype: torch.dtype | None = None  # autocast dtype of the online teacher's forward (amp: auto times it)
    families: list[Family] = field(default_factory=list)  # the active ones, in registry order
    optimizer: torch.optim.Optimizer = field(init=False)
    trained: nn.Module = field(init=False)  # what forward and backward run on: DDP's wrapper or `model`
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = nn.functional.cross_entropy  # task loss
    epoch: int = 0  # the first epoch this fit() trains (> 0 after resume)
    step: int = 0  # optimizer steps done before this one
    lr: float = 0.0  # this step's learning rate
    # this step's batch on the device, and the student's float32 logits of it
    x: torch.Tensor = field(init=False)
    y: torch.Tensor = field(init=False)
    idx: torch.Tensor | None = None
    logits: torch.Tensor = field(init=False)

    @property
    def device(self) -> torch.device:
        return self.dist.device

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.dtype)
