"""fit(): fine-tune one model with a trial's recipe. Plain PyTorch, no Ray.

The loop is a fixed skeleton: batches → forward → the task loss and every active technique
family's named terms (families.py, hooks.Family) → backward → the families' hooks → optimizer
step, then per epoch BatchNorm recalibration, evaluation and `report(metrics, model, state)`;
`state()` is what `fit(resume=...)` needs to continue from that epoch exactly (`training_state`).
AMP, DDP, channels_last and BatchNorm recalibration are the loop's own plumbing. The same loop
runs in one process or as one rank of a data-parallel group (`Dist`): only who launches it and
what `report` does differ. Batch sources (in memory, or an iterable such as Ray Data's) live here too.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from raytune_ft import families, losses, pruning
from raytune_ft.config import TrialConfig
from raytune_ft.data import Splits
from raytune_ft.hooks import Family

Report = Callable[[dict[str, Any], nn.Module, Callable[[], dict[str, Any]]], None]
Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]  # (images, generator) -> images
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


class TensorBatches:
    """Batches from in-memory tensors. Each epoch one permutation is drawn from a generator seeded
    with `seed` — the same on every rank — and cut into global batches of `batch_size`; rank r
    takes the r-th contiguous share of each. So the global batch, and the gradient DDP averages,
    is the same for any number of workers. The ragged last batch is dropped (BatchNorm needs
    more than one sample). `augment(images, generator)` runs on each rank's share, with a
    generator seeded per rank."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, *, batch_size: int, seed: int, dist: Dist | None = None,
                 augment: Augment | None = None) -> None:
        self.x, self.y, self.dist, self.augment = x, y, dist or Dist(), augment
        world = self.dist.world_size
        if batch_size % world:
            raise ValueError(f"batch_size ({batch_size}) must be a multiple of the number of workers ({world})")
        self.batch_size = min(batch_size, len(x) - len(x) % world)
        if self.batch_size < world:
            raise ValueError(f"{len(x)} training samples cannot be shared by {world} workers")
        self.steps_per_epoch = len(x) // self.batch_size
        self._order = torch.Generator().manual_seed(seed)
        self._augment = torch.Generator().manual_seed(seed * 7919 + self.dist.rank)
        # A fixed random sample for BatchNorm recalibration and graph tracing, drawn from its own
        # generator (the batch order's stays untouched: resume and DDP determinism) and the same
        # on every rank. Never the first rows: datasets stored class by class (every ImageFolder)
        # would give statistics of one or two classes.
        self._sample = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed + 104729))

    def epoch(self, epoch: int) -> Iterator[Batch]:
        order = torch.randperm(len(self.x), generator=self._order)
        share = self.batch_size // self.dist.world_size
        start = self.dist.rank * share
        for i in range(self.steps_per_epoch):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size][start : start + share]
            x = self.x[idx]
            if self.augment is not None:
                x = self.augment(x, self._augment)
            yield x, self.y[idx], idx

    def example(self) -> torch.Tensor:
        return self.x[self._sample[:2]]

    def state(self) -> dict[str, torch.Tensor]:
        return {"order": self._order.get_state(), "augment": self._augment.get_state()}

    def set_state(self, state: dict[str, torch.Tensor]) -> None:
        self._order.set_state(state["order"])
        self._augment.set_state(state["augment"])

    def calibration(self, batches: int) -> tuple[Iterator[torch.Tensor], bool]:
        # whole global batches on every rank: the statistics equal one worker's exactly
        n = min(batches, max(1, len(self.x) // self.batch_size))
        sample = self._sample
        return (self.x[sample[i * self.batch_size : (i + 1) * self.batch_size]] for i in range(n)), True


class IterableBatches:
    """Batches from an iterable of dicts with `image`, `label` and (for precomputed teacher
    logits) `index` columns, already this rank's share — e.g. in a Ray Train worker
    `lambda epoch: ray.train.get_dataset_shard("train").iter_torch_batches(batch_size=share)`,
    in-process `lambda epoch: ds.iter_torch_batches(batch_size=batch_size)`. Exactly
    `steps_per_epoch` batches are taken per epoch (a shorter epoch is an error: under DDP every
    rank must step equally often)."""

    def __init__(self, epoch_batches: Callable[[int], Iterable[dict[str, torch.Tensor]]], *,
                 steps_per_epoch: int) -> None:
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
        self.epoch_batches, self.steps_per_epoch = epoch_batches, steps_per_epoch
        self._first: torch.Tensor | None = None

    def epoch(self, epoch: int) -> Iterator[Batch]:
        taken = 0
        for batch in self.epoch_batches(epoch):
            if taken == self.steps_per_epoch:
                break
            index = batch.get("index")
            yield batch["image"], batch["label"], None if index is None else index.long()
            taken += 1
        if taken < self.steps_per_epoch:
            raise ValueError(f"epoch {epoch + 1}: the batch source gave {taken} batches, "
                             f"expected steps_per_epoch={self.steps_per_epoch}")

    def example(self) -> torch.Tensor:
        return next(iter(self.epoch_batches(0)))["image"][:2]

    def calibration(self, batches: int) -> tuple[Iterator[torch.Tensor], bool]:
        source = self.epoch_batches(0)
        return (b["image"] for _, b in zip(range(batches), source, strict=False)), False

    def state(self) -> dict[str, torch.Tensor]:
        return {}  # the iterable (e.g. Ray Data) owns its order; a resumed epoch reads it anew

    def set_state(self, state: dict[str, torch.Tensor]) -> None:
        pass


def lr_at(step: int, *, base_lr: float, total_steps: int, schedule: str, warmup_steps: int = 0) -> float:
    """Learning rate at `step`: linear warm-up, then cosine decay to zero or constant."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return base_lr
    if schedule == "cosine":
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown lr_schedule {schedule!r}; choose from ['constant', 'cosine']")


def precision(cfg: TrialConfig, device: torch.device) -> tuple[torch.dtype | None, torch.amp.GradScaler | None]:
    """Autocast dtype and gradient scaler for `cfg.amp` on `device`.

    CUDA: bf16 where the GPU supports it (no scaler needed: bf16 has fp32's range), otherwise
    fp16 with a GradScaler. CPU: bf16 autocast (no fp16 path on CPU; fast with AMX, slower than
    fp32 without it, so `amp` is off by default). amp off: (None, None), plain fp32.
    """
    if not cfg.amp:
        return None, None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16, torch.amp.GradScaler("cuda")
    return torch.bfloat16, None


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256, *,
             dist: Dist | None = None, dtype: torch.dtype | None = None) -> dict[str, float]:
    """val_acc and val_loss (mean cross-entropy) of `model` on (x, y). With several ranks each
    evaluates every world_size-th sample and the sums are all-reduced: the whole set, once."""
    dist = dist or Dist()
    device = next(model.parameters()).device
    model.eval()
    x, y = x[dist.rank :: dist.world_size], y[dist.rank :: dist.world_size]
    correct, loss_sum = 0.0, 0.0
    for i in range(0, len(x), batch_size):
        with _autocast(device, dtype):
            logits = model(x[i : i + batch_size].to(device, non_blocking=True)).float()
        target = y[i : i + batch_size].to(device, non_blocking=True)
        loss_sum += float(nn.functional.cross_entropy(logits, target, reduction="sum"))
        correct += float((logits.argmax(dim=1) == target).sum())
    correct, loss_sum, n = dist.sum([correct, loss_sum, float(len(x))])
    return {"val_acc": correct / n, "val_loss": loss_sum / n}


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor], *, dist: Dist | None = None,
                          same_on_every_rank: bool = True, memory_format: torch.memory_format = torch.contiguous_format,
                          dtype: torch.dtype | None = None) -> None:
    """Re-estimate BatchNorm running statistics as a plain average over `batches`.

    The running averages lag behind weights that change quickly (fine-tuning at a high learning
    rate, pruning masks); evaluating with fresh statistics measures the model actually trained.
    When the ranks saw different batches the statistics are averaged across ranks, so every
    rank (and the checkpoint rank 0 writes) holds the same model.
    """
    dist = dist or Dist()
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    batches = list(batches)
    if not norms or not batches:
        return
    device = next(model.parameters()).device
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    model.train()
    for x in batches:
        with _autocast(device, dtype):
            model(x.to(device, non_blocking=True).contiguous(memory_format=memory_format))
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    if dist.world_size > 1 and not same_on_every_rank:
        for m in norms:
            for buffer in (m.running_mean, m.running_var):
                torch.distributed.all_reduce(buffer)
                buffer /= dist.world_size


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    model.eval()
    device = next(model.parameters()).device
    return torch.cat([model(x[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)])


@dataclass(eq=False)
class Run:
    """What fit() shares with the technique families (hooks.Family) at every moment: its inputs,
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
        return _autocast(self.device, self.dtype)


def fit(cfg: TrialConfig, model: nn.Module, data: Splits, *, head_names: set[str], report: Report,
        teacher_logits: torch.Tensor | None = None, teacher: nn.Module | None = None,
        batches: BatchSource | None = None, dist: Dist | None = None, resume: dict[str, Any] | None = None,
        observers: list[Family] | None = None) -> dict[str, Any]:
    """Fine-tune `model` in place for cfg.epochs with the recipe's families; returns the last epoch's metrics.

    teacher_logits: (n_train, num_classes) logits of the teacher on the training samples, by sample
    index; or `teacher`, a model run on the same (augmented) batch; one is required when cfg.use_kd.
    batches: the training batches (default: data.x_train / data.y_train in memory, TensorBatches);
    data.x_val / data.y_val are the validation set. dist: this process's rank, the world size and the
    device (default: one CPU process); with world_size > 1 the model is wrapped in DDP, every rank
    calls fit() with the same arguments and `report` gets the same metrics on every rank. resume: a
    `state()` that `report` got from an earlier run of the same config, with `model` holding that
    epoch's weights (models.resize_to_state_dict): training goes on as if it had never stopped.
    observers: families outside the registry, called after the recipe's (planned.PlannedSizes).
    Raises FloatingPointError when the loss stops being finite.
    """
    run = start_run(cfg, model, data, head_names=head_names, teacher_logits=teacher_logits, teacher=teacher,
                    batches=batches, dist=dist, observers=observers)
    if resume is not None:
        _load_state(run, resume)
    x_val = data.x_val.contiguous(memory_format=run.memory_format)  # laid out once for every evaluation
    warmup_steps = round(cfg.warmup_fraction * run.total_steps)
    metrics: dict[str, Any] = {}
    for epoch in range(run.epoch, cfg.epochs):
        started = time.perf_counter()
        run.model.train()
        sums: dict[str, float] = {}
        for x, y, idx in run.source.epoch(epoch):
            run.lr = lr_at(run.step, base_lr=cfg.lr, total_steps=run.total_steps, schedule=cfg.lr_schedule,
                           warmup_steps=warmup_steps)
            for family in run.families:
                family.before_forward(run)
            run.x = x.to(run.device, non_blocking=True).contiguous(memory_format=run.memory_format)
            run.y, run.idx = y.to(run.device, non_blocking=True), idx
            with run.autocast():
                run.logits = run.trained(run.x).float()
            terms = losses.objective(run)  # task_loss, every family's named terms, and their weighted sum `loss`
            _check_finite(terms, epoch, run)
            run.optimizer.zero_grad(set_to_none=True)
            (run.scaler.scale(terms["loss"]) if run.scaler else terms["loss"]).backward()
            restructured = False
            for family in run.families:
                if family.before_step(run):  # parameters were replaced: what refers to them follows
                    restructured = True
                    _follow_structure(run)
            for group in run.optimizer.param_groups:
                group["lr"] = run.lr
            if run.scaler is None:
                run.optimizer.step()
            elif not restructured:  # the scaler refuses an optimizer without gradients
                run.scaler.step(run.optimizer)
                run.scaler.update()
            for family in run.families:
                family.after_step(run)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            run.step += 1

        calibration, same = run.source.calibration(cfg.bn_recalibration_batches)
        if cfg.bn_recalibration_batches:
            recalibrate_batchnorm(run.model, calibration, dist=run.dist, same_on_every_rank=same,
                                  memory_format=run.memory_format, dtype=run.dtype)
        means = dict(zip(sums, run.dist.sum([v / run.source.steps_per_epoch / run.dist.world_size
                                             for v in sums.values()]), strict=True))
        metrics = {
            "epoch": epoch + 1,
            **evaluate(run.model, x_val, data.y_val, dist=run.dist, dtype=run.dtype),
            **{f"train_{k}" if k == "loss" else k: v for k, v in means.items()},
            **pruning.size_metrics(run.model, pruning.prunable_parameters(run.model, head_names)),
            **{k: v for family in run.families for k, v in family.epoch_end(run).items()},
            "lr": run.lr,
            "epoch_time_s": time.perf_counter() - started,
        }
        report(metrics, run.model, functools.partial(training_state, run, epoch=epoch + 1))
    return metrics


def start_run(cfg: TrialConfig, model: nn.Module, data: Splits, *, head_names: set[str],
              teacher_logits: torch.Tensor | None = None, teacher: nn.Module | None = None,
              batches: BatchSource | None = None, dist: Dist | None = None,
              observers: list[Family] | None = None) -> Run:
    """The Run that fit() trains: the loop's plumbing (seed, device, memory format, rank 0's weights,
    precision, batches), then the active families' `start`, then the optimizer and DDP wrapper."""
    dist = dist or Dist()
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    torch.manual_seed(cfg.seed)
    if cfg.sync_batchnorm and dist.world_size > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device=dist.device, memory_format=memory_format)
    if dist.world_size > 1:  # start from rank 0's weights before anything (L2-SP anchors, masks) reads them
        with torch.no_grad():
            for tensor in model.state_dict().values():
                torch.distributed.broadcast(tensor, src=0)
    dtype, scaler = precision(cfg, dist.device)
    if dist.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest kernels
    source = batches or TensorBatches(data.x_train, data.y_train, batch_size=cfg.batch_size, seed=cfg.seed,
                                      dist=dist)
    run = Run(cfg, model, head_names, source, dist, memory_format, dtype, scaler,
              total_steps=cfg.epochs * source.steps_per_epoch, teacher_logits=teacher_logits, teacher=teacher,
              families=[*families.build(cfg), *(observers or [])])
    for family in run.families:
        family.start(run)
    run.optimizer = _optimizer(cfg, model)
    # Under DDP the wrapper only runs forward/backward (and all-reduces gradients); families and
    # evaluation use the module itself. Gradients are identical on every rank after the
    # all-reduce, so weights, magnitude masks and pruned channels are too.
    run.trained = _ddp(model, dist)
    return run


def _follow_structure(run: Run) -> None:
    """A family replaced parameters (channel pruning): a fresh optimizer over the new ones, every
    family's references, no stale gradients, and a new DDP wrapper (its buckets hold the old ones)."""
    run.optimizer = _optimizer(run.cfg, run.model)
    for family in run.families:
        family.structure_changed(run)
    run.model.zero_grad(set_to_none=True)
    run.trained = _ddp(run.model, run.dist)


def _check_finite(terms: dict[str, torch.Tensor], epoch: int, run: Run) -> None:
    if not torch.isfinite(terms["loss"]):
        values = {k: float(v.detach()) for k, v in terms.items()}
        raise FloatingPointError(
            f"loss became {values['loss']} at epoch {epoch + 1}, step {run.step} (lr={run.lr:.3g}); "
            "terms: " + ", ".join(f"{k}={v:.4g}" for k, v in values.items())
        )


def training_state(run: Run, *, epoch: int) -> dict[str, Any]:
    """Everything besides the weights that `fit(resume=...)` needs to continue after `epoch`: the
    step counter, optimizer moments, batch-order/augmentation and dropout RNG states, the fp16
    loss scale, and each active family's share under its own keys (magnitude pruning: `masked`,
    whether masks are active — the masks are the zeros in the weights; regularization:
    `l2sp_anchors`; channel pruning: `channel_pruner`, the schedule's progress). Tensors, numbers
    and dicts only: `torch.load(weights_only=True)` reads it back without unpickling code."""
    state = {
        "epoch": epoch,
        "step": run.step,
        "optimizer": run.optimizer.state_dict(),
        "batch_rng": run.source.state(),
        "torch_rng": torch.get_rng_state(),
        "grad_scaler": run.scaler.state_dict() if run.scaler is not None else None,
    }
    for family in run.families:
        share = family.state_dict()
        assert not share.keys() & state.keys(), f"{family.name}'s resume keys collide: {sorted(share)}"
        state.update(share)
    return state


def _load_state(run: Run, state: dict[str, Any]) -> None:
    """Continue from `training_state`: the loop's own part, then each family's."""
    run.step, run.epoch = state["step"], state["epoch"]
    run.optimizer.load_state_dict(state["optimizer"])
    run.source.set_state(state["batch_rng"])
    torch.set_rng_state(state["torch_rng"])
    for family in run.families:
        family.load_state_dict(run, state)
    if run.scaler is not None and state.get("grad_scaler"):
        run.scaler.load_state_dict(state["grad_scaler"])


def _ddp(model: nn.Module, dist: Dist) -> nn.Module:
    if dist.world_size == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [dist.device.index] if dist.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def _optimizer(cfg: TrialConfig, model: nn.Module) -> torch.optim.Optimizer:
    params = list(model.parameters())
    if cfg.optimizer == "adamw":  # weight decay is decoupled, applied by the regularization family
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; choose from ['adamw', 'sgd']")
