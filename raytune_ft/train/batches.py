"""Batch sources `fit` takes training batches from: `TensorBatches` (tensors in memory, a seeded
permutation per epoch, optional augmentation) and `IterableBatches` (an iterable such as Ray
Data's shard). Both implement `families.base.BatchSource`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch

from raytune_ft.families.base import Batch, Dist

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]  # (images, generator) -> images


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
