"""What distillation buys, by teacher (docs/benchmarks.md): EfficientNet-Lite0 students on
Fashion-MNIST at equal epochs with no KD, KD from the dense Lite0 and KD from Lite2.

Data: Fashion-MNIST's IDX files from Debian's `dataset-fashion-mnist` (read directly, 28 px gray
-> 3 x `--size` px, ImageNet normalization): a stratified `--train` subset of the 60k training
images (a further `--val` of them for fit()'s per-epoch val_acc, never used to choose anything)
and a stratified `--test` subset of the 10k test images, touched once per model at the end.

Teachers (fine-tuned once, seed 0, every technique off, `--teacher-epochs`): the dense Lite0 and
Lite2 (both ImageNet-pretrained from their PyPI packages), at the students' size (32 px), so their
precomputed logits are the product's path (teachers.teacher_splits is the identity here).
Students: Lite0, `--epochs`, `--seeds` seeds each, no KD / KD (kd_alpha, kd_temperature) from
each teacher with precomputed logits. Test accuracy per seed, and the Wilson 95 % interval of the
pooled correct / total over the seeds. Cost: seconds per training step of a no-KD student, a
precomputed-logits KD student and an online teacher (augment on, teacher forward per batch:
teachers.build_online_teacher as trial.training_inputs builds it), over `--timing-steps` steps.

    PYTHONPATH=. python benchmarks/kd_teachers.py --out benchmarks/results/kd_teachers.json
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raytune_ft import data as data_mod
from raytune_ft import models, train
from raytune_ft.config import TrialConfig
from raytune_ft.deploy import holdout
from raytune_ft.train import teachers

FASHION = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ("t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
           "ankle boot")



def stratified(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return data_mod.stratified_take(labels, n, rng)


def to_input(images: np.ndarray, size: int) -> torch.Tensor:
    """(n, 28, 28) uint8 -> (n, 3, size, size) float, ImageNet-normalized (the Lite models' statistics)."""
    x = torch.from_numpy(images.astype(np.float32) / 255.0)[:, None].repeat(1, 3, 1, 1)
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    mean = torch.tensor(models.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(models.IMAGENET_STD).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()


def load(args: argparse.Namespace) -> tuple[data_mod.Splits, torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(0)
    x = data_mod.read_idx(FASHION / "train-images-idx3-ubyte.gz")
    y = data_mod.read_idx(FASHION / "train-labels-idx1-ubyte.gz")
    keep = stratified(y, args.train + args.val, rng)
    x, y = x[keep], y[keep]
    val = stratified(y, args.val, rng)
    tr = np.setdiff1d(np.arange(len(y)), val)
    xt = data_mod.read_idx(FASHION / "t10k-images-idx3-ubyte.gz")
    yt = data_mod.read_idx(FASHION / "t10k-labels-idx1-ubyte.gz")
    test = stratified(yt, args.test, rng)
    splits = data_mod.Splits(to_input(x[tr], args.size), torch.as_tensor(y[tr], dtype=torch.int64),
                             to_input(x[val], args.size), torch.as_tensor(y[val], dtype=torch.int64), CLASSES)
    return splits, to_input(xt[test], args.size), torch.as_tensor(yt[test], dtype=torch.int64)



def fit(cfg: TrialConfig, splits: data_mod.Splits, *, logits: torch.Tensor | None = None,
        teacher: torch.nn.Module | None = None, max_steps: int | None = None) -> tuple[torch.nn.Module, dict]:
    """train.fit of a fresh pretrained `cfg.model`; `max_steps`: stop (by exception) after that many steps."""
    torch.set_num_threads(cfg.cpus_per_trial)
    model = models.build_model(cfg.model, splits.num_classes, weights=cfg.weights)
    augment = functools.partial(data_mod.augment_batch, min_scale=cfg.crop_min_scale) if cfg.augment else None
    batches = train.TensorBatches(splits.x_train, splits.y_train, batch_size=cfg.batch_size, seed=cfg.seed,
                                  augment=augment)
    if max_steps is not None:  # time the steps only: a source that ends the run after max_steps
        batches.steps_per_epoch = max_steps
    started = time.perf_counter()
    metrics = train.fit(cfg, model, splits, head_names=models.head_parameter_names(model),
                        report=lambda m, _model, _state: print(f"  epoch {m['epoch']} val_acc={m['val_acc']:.4f}",
                                                               flush=True),
                        teacher_logits=logits, teacher=teacher, batches=batches)
    metrics["wall_s"] = time.perf_counter() - started
    metrics["steps"] = batches.steps_per_epoch * cfg.epochs
    return model, metrics


def test_correct(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    return int((train.predict_logits(model.to(memory_format=torch.contiguous_format), x).argmax(1) == y).sum())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train", type=int, default=640)
    p.add_argument("--val", type=int, default=200)
    p.add_argument("--test", type=int, default=1000)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--teacher-epochs", type=int, default=3)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--kd-alpha", type=float, default=0.7)
    p.add_argument("--kd-temperature", type=float, default=4.0)
    p.add_argument("--timing-steps", type=int, default=6)
    # 1 thread: on a 2-core machine shared by other jobs, 2 torch threads were 5.5x slower per step
    # (oneDNN/OpenMP threads wait for each other when a core is taken away; docs/benchmarks.md)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results/kd_teachers.json")
    args = p.parse_args()
    started = time.perf_counter()
    splits, x_test, y_test = load(args)
    n_test = len(y_test)
    print(f"fashion-mnist: {len(splits.y_train)} train, {len(splits.y_val)} val, {n_test} test at {args.size} px",
          flush=True)
    base = dict(image_size=args.size, batch_size=64, lr=args.lr, epochs=args.epochs, cpus_per_trial=args.threads,
                export=False, bn_recalibration_batches=2)
    out: dict[str, Any] = {"args": vars(args), "teachers": {}, "students": {}, "timing": {}}

    teacher_models, logits = {}, {}
    for name in ("efficientnet_lite0", "efficientnet_lite2"):
        cfg = TrialConfig(**{**base, "model": name, "epochs": args.teacher_epochs, "seed": 0})
        view = teachers.teacher_splits(splits, cfg)  # the teacher's own view: the same tensors at 32 px
        print(f"teacher {name}: fine-tuning {cfg.epochs} epochs", flush=True)
        model, metrics = fit(cfg, view)
        correct = test_correct(model, x_test, y_test)
        logits[name] = train.predict_logits(model, view.x_train)
        teacher_models[name] = {"config": cfg.to_dict(),
                                "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()}}
        out["teachers"][name] = {"test_acc": correct / n_test, "wilson95": holdout.wilson_interval(correct, n_test),
                                 "wall_s": metrics["wall_s"], "s_per_step": metrics["wall_s"] / metrics["steps"],
                                 "params": sum(t.numel() for t in model.parameters())}
        print(f"teacher {name}: test_acc={correct / n_test:.4f}  {metrics['wall_s']:.0f}s", flush=True)

    arms = {"no KD": None, "KD from Lite0": "efficientnet_lite0", "KD from Lite2": "efficientnet_lite2"}
    for arm, teacher in arms.items():
        rows = []
        for seed in range(args.seeds):
            kd = {"use_kd": True, "kd_alpha": args.kd_alpha, "kd_temperature": args.kd_temperature} if teacher else {}
            cfg = TrialConfig(**{**base, "model": "efficientnet_lite0", "seed": seed, **kd})
            print(f"student ({arm}) seed {seed}", flush=True)
            model, metrics = fit(cfg, splits, logits=logits[teacher] if teacher else None)
            correct = test_correct(model, x_test, y_test)
            rows.append({"seed": seed, "test_acc": correct / n_test, "correct": correct, "wall_s": metrics["wall_s"],
                         "s_per_step": metrics["wall_s"] / metrics["steps"]})
            print(f"  test_acc={correct / n_test:.4f}  {metrics['wall_s']:.0f}s", flush=True)
        total = sum(r["correct"] for r in rows)
        out["students"][arm] = {"per_seed": rows, "mean_test_acc": statistics.mean(r["test_acc"] for r in rows),
                                "pooled_wilson95": holdout.wilson_interval(total, n_test * len(rows)),
                                "median_s_per_step": statistics.median(r["s_per_step"] for r in rows)}
        json.dump(out, open(args.out, "w"), indent=2)

    # per-step cost with augmentation: no KD, and an online teacher (a forward per batch), each
    # over the same `timing_steps` steps of one epoch
    timing_cfg = {**base, "model": "efficientnet_lite0", "epochs": 1, "augment": True, "crop_min_scale": 0.35,
                  "bn_recalibration_batches": 0}
    for label, teacher in (("no KD, augment", None), ("online Lite0 teacher", "efficientnet_lite0"),
                           ("online Lite2 teacher", "efficientnet_lite2")):
        kd = {"use_kd": True} if teacher else {}
        cfg = TrialConfig(**{**timing_cfg, **kd})
        online = teachers.build_online_teacher(teacher_models[teacher], cfg, splits.num_classes) if teacher else None
        _, metrics = fit(cfg, splits, teacher=online, max_steps=args.timing_steps)
        out["timing"][label] = {"s_per_step": metrics["wall_s"] / metrics["steps"]}
        print(f"timing {label}: {metrics['wall_s'] / metrics['steps']:.2f} s/step", flush=True)
    out["total_wall_s"] = time.perf_counter() - started
    json.dump(out, open(args.out, "w"), indent=2)
    print(json.dumps({k: v for k, v in out.items() if k != "args"}, indent=2))


if __name__ == "__main__":
    main()
