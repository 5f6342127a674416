"""The whole search, planned during the teacher phase: what the trials after the teacher will cost,
in units of the teacher's measured epoch time, so the teacher's progress line can say what is left
of the search and not only of the teacher (progress.py prints it; benchmarks/eta_error.py replays
it on recorded runs).

`plan_after_teacher` times one training step of the teacher and of each student model the space can
sample (`step_seconds`), turns them into epoch-time ratios (`epoch_ratio`, `ratio_growth` for stage
2 on all the data), plans MO-ASHA's expected epochs by its own rung rule (`expected_epochs`) and
returns an `AfterTeacher`, whose `seconds` schedules the trials on `max_concurrent` slots.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from raytune_ft.search.progress import makespan


@dataclass(frozen=True)
class AfterTeacher:
    """The trials that follow the teacher, planned in units of the teacher's measured epoch time, so
    the teacher phase's line can say what is left of the whole search: each stage-1 trial as (its
    epoch time / the teacher's, its expected epochs), in start order; stage 2's trials likewise;
    both scheduled on `slots` (search.max_concurrent), stage 2 after stage 1."""

    stage1: tuple[tuple[float, float], ...] = ()
    stage2: tuple[tuple[float, float], ...] = ()
    slots: int = 1

    def seconds(self, teacher_epoch_s: float) -> float:
        """Seconds the trials will take when the teacher's epochs take `teacher_epoch_s`."""
        return (makespan([teacher_epoch_s * r * n for r, n in self.stage1], self.slots)
                + makespan([teacher_epoch_s * r * n for r, n in self.stage2], self.slots))


def epoch_ratio(step_s: float, batch_size: int, train_rows: float, teacher_step_s: float,
                teacher_batch_size: int, teacher_train_rows: float, val_rows: float = 0.0) -> float:
    """A trial's epoch time over the teacher's, from one timed training step of each (at its own
    batch size, threads and precision): an epoch is train_rows / batch_size steps plus the
    validation split's forward passes, counted as a third of a training step each (the backward pass
    costs about twice the forward) and not growing with the data fraction."""
    def cost(step: float, batch: int, rows: float) -> float:
        return step * (rows + val_rows / 3) / batch

    return cost(step_s, batch_size, train_rows) / cost(teacher_step_s, teacher_batch_size, teacher_train_rows)


def expected_epochs(trials: int, epochs: int, milestones: Sequence[float], reduction_factor: float, *,
                    objectives: int = 2, repeats: int = 100, simulated: int = 24, seed: int = 0) -> list[float]:
    """Expected epochs of each of `trials` trials (in start order) under MO-ASHA's own rung rule
    (mo_asha.continues_at_rung), the trials exchangeable: each gets one random point (`objectives`
    i.i.d. uniform values) that ranks it at every rung (its planned size does not change between
    rungs and its accuracy rank mostly holds) and reaches each rung after the trials before it;
    averaged over `repeats` seeded draws. Trials after the first `simulated` take the mean of the
    last third of those (it has levelled off by then; this keeps the cost under a second).
    Asynchronous ASHA keeps early trials generously (the first at a rung always continues), so with
    few trials this is far above synchronous halving's 1 + (eta − 1)/eta + ... epochs."""
    from raytune_ft.search import mo_asha

    rungs = [m for m in milestones if m < epochs]
    count = min(trials, simulated)
    rng = np.random.default_rng(seed)
    total = np.zeros(count)
    for _ in range(repeats):
        points = rng.random((count, objectives))
        recorded: dict[float, list[np.ndarray]] = {m: [] for m in rungs}
        for i, point in enumerate(points):
            trained = float(epochs)
            for m in rungs:
                keep = mo_asha.continues_at_rung(np.array(recorded[m]).reshape(-1, objectives), point,
                                                 reduction_factor)
                recorded[m].append(point)
                if not keep:
                    trained = float(m)
                    break
            total[i] += trained
    out = [float(v) for v in total / repeats]
    tail = float(np.mean(out[-max(1, count // 3):])) if out else 0.0
    return out + [tail] * (trials - count)


def step_seconds(model: Any, x: Any, threads: int, *, amp: bool, repeats: int = 2) -> float:
    """One training step (forward, backward) of `model` on batch `x` with `threads` CPU threads:
    the best of `repeats` after a warm-up, in the faster of fp32 and bf16 autocast when `amp`
    (as `amp: auto` chooses, train/loop.measured_dtype). The thread count is restored after."""
    import torch

    from raytune_ft.families.base import autocast

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(threads)))
    model.train()
    best = float("inf")
    try:
        for dtype in (None, torch.bfloat16) if amp else (None,):
            for i in range(repeats + 1):
                started = time.perf_counter()
                with autocast(x.device, dtype):
                    out = model(x).float()
                out.logsumexp(dim=1).mean().backward()
                model.zero_grad(set_to_none=True)
                if i:
                    best = min(best, time.perf_counter() - started)
    finally:
        torch.set_num_threads(before)
    return best


def plan_after_teacher(space: Any, teacher_cfg: Any, x_teacher: Any, x_students: Any, num_classes: int,
                       train_rows: int, val_rows: int) -> AfterTeacher:
    """The trials after the teacher, planned from one timed training step of the teacher and of each
    student model the space can sample (step_seconds on a batch of its view of the data: `x_teacher`,
    `x_students`), each at its own
    batch size and threads: a student's epoch relative to the teacher's (epoch_ratio, stage 1 on
    search.data_fraction of `train_rows`); the `initial` recipes' models for the first trials, the
    mean over the model choices for the others and for stage 2 (which recipes are promoted is not
    known yet); epochs as planned, or MO-ASHA's expected epochs (expected_epochs). Not planned: an
    online teacher's forward in trials that distil with augmentation, the exports between stages.
    Costs one model build and 3-6 steps per model (a few seconds on a CPU)."""
    from raytune_ft import models
    from raytune_ft.config import TrialConfig

    fixed = TrialConfig.from_dict(space.fixed)
    choices = next((list(p.choices) for p in space.params if p.name == "model" and p.type == "categorical"),
                   [fixed.model])

    def step(model_name: str, cfg: Any, x: Any) -> float:
        net = models.build_model(model_name, num_classes, weights="none", dropout=cfg.dropout)
        batch = x[: cfg.batch_size]
        return step_seconds(net, batch, cfg.worker_cpus, amp=bool(cfg.amp)) * cfg.batch_size / len(batch)

    teacher_step = step(teacher_cfg.model, teacher_cfg, x_teacher)
    fraction = float(space.search.data_fraction)

    def ratio(model_name: str, rows: float) -> float:
        return epoch_ratio(step(model_name, fixed, x_students), fixed.batch_size, rows, teacher_step,
                           teacher_cfg.batch_size, train_rows, val_rows)

    stage1_ratio = {m: ratio(m, fraction * train_rows) for m in dict.fromkeys(choices)}
    mean1 = float(np.mean(list(stage1_ratio.values())))
    n, epochs = int(space.search.num_samples), int(fixed.epochs)
    if space.scheduler is not None:
        from raytune_ft.search import mo_asha

        settings = space.scheduler
        rungs = mo_asha.rung_milestones(settings.grace_period, settings.max_t or space.max_epochs(),
                                        settings.reduction_factor)
        planned = expected_epochs(n, epochs, rungs, settings.reduction_factor, objectives=len(space.objectives))
    else:
        planned = [float(epochs)] * n
    first = [stage1_ratio.get(r.get("model"), mean1) for r in space.search.initial][:n]
    stage1 = tuple(zip(first + [mean1] * (n - len(first)), planned, strict=True))
    stage2: tuple[tuple[float, float], ...] = ()
    if fraction < 1 and space.search.promote:
        # the full data: stage 2's epoch grows by the training rows only (x 1 / data_fraction)
        mean2 = float(np.mean([r * ratio_growth(fraction, train_rows, val_rows) for r in stage1_ratio.values()]))
        later = int(space.search.promote) + int(space.search.promote_random)
        stage2 = ((mean2, float(space.search.promote_epochs or epochs)),) * later
    return AfterTeacher(stage1=stage1, stage2=stage2, slots=max(1, int(space.search.max_concurrent)))


def ratio_growth(fraction: float, train_rows: float, val_rows: float) -> float:
    """How much longer an epoch on all `train_rows` takes than one on `fraction` of them, the
    validation part (val_rows forward passes, a third of a step each) the same in both."""
    return (train_rows + val_rows / 3) / (fraction * train_rows + val_rows / 3)
